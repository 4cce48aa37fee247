#if canImport(Glibc)
import Glibc
#endif

/// A position inside a request's iovec list, for the engines that copy (the memory engine and the
/// bounce-buffer path): successive copies continue where the previous one stopped.
struct IovecCursor {
    let iovecs: UnsafeMutablePointer<iovec>?
    let count: Int
    var index = 0
    var offsetInCurrent = 0

    @inline(__always)
    init(_ iovecs: UnsafeMutablePointer<iovec>?, count: Int32) {
        self.iovecs = iovecs
        // A negative count is a caller bug; treating it as empty makes the copy come up short, which
        // the engines report as -EINVAL instead of reading wild memory.
        self.count = iovecs == nil ? 0 : max(Int(count), 0)
    }

    /// Copies up to `length` bytes out of the iovecs into `destination`; returns the bytes copied
    /// (fewer only when the iovecs run out).
    @inline(__always)
    mutating func gather(into destination: UnsafeMutableRawPointer, length: Int) -> Int {
        walk(buffer: destination, length: length, intoIovecs: false)
    }

    /// Copies up to `length` bytes from `source` into the iovecs; returns the bytes copied.
    @inline(__always)
    mutating func scatter(from source: UnsafeRawPointer, length: Int) -> Int {
        walk(buffer: UnsafeMutableRawPointer(mutating: source), length: length, intoIovecs: true)
    }

    /// The shared walk; the direction is a constant at each (inlined) call site.
    @inline(__always)
    private mutating func walk(buffer: UnsafeMutableRawPointer, length: Int, intoIovecs: Bool) -> Int {
        guard let iovecs else { return 0 }
        var done = 0
        while done < length && index < count {
            let iov = iovecs[index]
            let available = iov.iov_len - offsetInCurrent
            guard available > 0, let base = iov.iov_base else {
                index += 1
                offsetInCurrent = 0
                continue
            }
            let n = min(available, length - done)
            let segment = base + offsetInCurrent
            if intoIovecs {
                segment.copyMemory(from: buffer + done, byteCount: n)
            } else {
                (buffer + done).copyMemory(from: segment, byteCount: n)
            }
            done += n
            offsetInCurrent += n
            if offsetInCurrent == iov.iov_len {
                index += 1
                offsetInCurrent = 0
            }
        }
        return done
    }
}
