#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// The requests an engine does synchronously on the backing fd: flush, discard, write zeroes, and
/// reads/writes whose buffers O_DIRECT cannot take, which go through an aligned bounce buffer.
/// Every result is 0 or a negative errno; nothing here throws or allocates after init.
///
/// Owned by one engine (one thread); the bounce buffer is freed with it.
struct SyncFileIO: ~Copyable {
    let fd: Int32
    let isBlockDevice: Bool
    /// O_DIRECT is on, so `needsBounce` has to check alignment at all.
    let directIO: Bool
    /// Alignment masks O_DIRECT imposes: buffer addresses, and file offsets and segment lengths.
    let memoryMask: UInt
    let offsetMask: UInt64
    /// Bounce windows start and end on multiples of this (mask form): the larger of the two
    /// alignments, so every window is valid for O_DIRECT. 0 for buffered I/O: exact ranges.
    let windowMask: UInt64
    let bounce: UnsafeMutableRawPointer
    let bounceSize: Int

    /// 1 MiB: a whole request of the sizes guests usually send (Linux caps a virtio-blk request at
    /// max_sectors_kb, 1280 KiB by default, and most are far smaller) fits in one or two chunks, and
    /// a megabyte per queue is a small price for a path that only misaligned requests take.
    static let defaultBounceSize = 1 << 20

    init(store: BackingStore) throws(BlockIOError) {
        // Everything that can fail comes first: a noncopyable struct's fields are set all together.
        guard let file = store.file else {
            throw .invalid(store.engineKind.rawValue, path: store.path, "the store has no file")
        }
        let memoryAlignment = max(store.directMemoryAlignment, 1)
        let offsetAlignment = max(store.directOffsetAlignment, 1)
        let window = store.directIO ? max(memoryAlignment, offsetAlignment) : 1
        let size = max(SyncFileIO.defaultBounceSize, Int(window))
        // Page alignment (4096) satisfies every O_DIRECT memory alignment Linux reports up to a page.
        var raw: UnsafeMutableRawPointer?
        let r = posix_memalign(&raw, max(4096, Int(memoryAlignment)), size)
        guard r == 0, let raw else {
            throw BlockIOError("posix_memalign", path: store.path, errno: r, reason: "bounce buffer of \(size) bytes")
        }
        fd = file.rawValue
        isBlockDevice = store.isBlockDevice
        directIO = store.directIO
        memoryMask = UInt(memoryAlignment - 1)
        offsetMask = UInt64(offsetAlignment - 1)
        windowMask = UInt64(window - 1)
        bounceSize = size
        bounce = raw
    }

    deinit { free(bounce) }

    // MARK: flush, discard, write zeroes

    /// fdatasync: commits every write that completed before it, which is virtio's FLUSH contract.
    static func flush(fd: Int32) -> Int32 {
        while true {
            if fdatasync(fd) == 0 { return 0 }
            let error = errno
            if error != EINTR { return -error }
        }
    }

    /// Block device: BLKDISCARD. File: punch a hole (the size stays), which reads back as zeros.
    func discard(offset: UInt64, length: UInt64) -> Int32 {
        if isBlockDevice { return cvh_blk_discard(fd, offset, length) }
        return cvh_fallocate(fd, CVH_FALLOC_FL_PUNCH_HOLE | CVH_FALLOC_FL_KEEP_SIZE, offset, length)
    }

    /// Makes the range read back as zeros. `unmap` lets the blocks be deallocated (virtio's
    /// WRITE_ZEROES with the UNMAP flag). Each step falls back to the next when the kernel or
    /// filesystem answers EOPNOTSUPP:
    /// - block device: unmap → fallocate(PUNCH_HOLE) (zeroes by unmapping); then BLKZEROOUT, which the
    ///   kernel itself emulates with writes when the device has no zeroing command;
    /// - file: unmap → fallocate(PUNCH_HOLE); then fallocate(ZERO_RANGE); then writing zeros.
    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) -> Int32 {
        let keepSize = CVH_FALLOC_FL_KEEP_SIZE
        if unmap {
            let r = cvh_fallocate(fd, CVH_FALLOC_FL_PUNCH_HOLE | keepSize, offset, length)
            if r != -EOPNOTSUPP { return r }
        }
        if isBlockDevice { return cvh_blk_zeroout(fd, offset, length) }
        let r = cvh_fallocate(fd, CVH_FALLOC_FL_ZERO_RANGE | keepSize, offset, length)
        if r != -EOPNOTSUPP { return r }
        var noSource: IovecCursor?
        return write(offset: offset, length: length, source: &noSource)
    }

    // MARK: the bounce path

    /// Whether O_DIRECT would refuse this read or write: an offset, length, buffer address or
    /// segment length off the device's alignment. Guests mostly send aligned buffers, but nothing
    /// obliges them to. Checked per request; a loop over the few iovecs with no memory traffic
    /// beyond reading them.
    @inline(__always)
    func needsBounce(_ request: BlockRequest) -> Bool {
        guard directIO else { return false }
        if (request.offset | request.length) & offsetMask != 0 { return true }
        guard let iovecs = request.iovecs else { return false }
        let lengthMask = UInt(truncatingIfNeeded: offsetMask)
        var misaligned: UInt = 0
        for i in 0..<Int(max(request.iovecCount, 0)) {
            let iov = iovecs[i]
            misaligned |= (UInt(bitPattern: iov.iov_base) & memoryMask) | (UInt(iov.iov_len) & lengthMask)
        }
        return misaligned != 0
    }

    /// Does a read or write that `needsBounce` now, through the bounce buffer.
    func transfer(_ request: BlockRequest) -> Int32 {
        guard request.operation.isWrite else {
            return read(offset: request.offset, length: request.length, iovecs: request.iovecs, count: request.iovecCount)
        }
        var source: IovecCursor? = IovecCursor(request.iovecs, count: request.iovecCount)
        let r = write(offset: request.offset, length: request.length, source: &source)
        // The bounce path writes with pwrite: make a durable write durable the plain way.
        return r == 0 && request.operation == .writeDurable ? Self.flush(fd: fd) : r
    }

    /// Reads through the bounce buffer, one chunk at a time: each window is widened to the aligned
    /// blocks around the wanted bytes, read whole, and the wanted part copied to the iovecs.
    func read(offset: UInt64, length: UInt64, iovecs: UnsafeMutablePointer<iovec>?, count: Int32) -> Int32 {
        var cursor = IovecCursor(iovecs, count: count)
        var done: UInt64 = 0
        while done < length {
            let w = window(at: offset + done, remaining: length - done)
            let got = preadUpTo(bounce, count: w.length, at: w.start)
            if got < 0 { return Int32(got) }
            // A short read ends at end of file; the caller keeps requests inside the capacity, so
            // the wanted bytes missing means the file shrank under us.
            if got < w.head + w.wanted { return -EIO }
            if cursor.scatter(from: bounce + w.head, length: w.wanted) != w.wanted { return -EINVAL }
            done += UInt64(w.wanted)
        }
        return 0
    }

    /// Writes the iovecs (or zeros when `source` is nil) through the bounce buffer. A window whose
    /// first or last block is only partly covered reads that block first and writes it back whole
    /// (read-modify-write); only a guest ignoring the advertised block size causes that.
    func write(offset: UInt64, length: UInt64, source: inout IovecCursor?) -> Int32 {
        let block = Int(windowMask) + 1
        var done: UInt64 = 0
        while done < length {
            let w = window(at: offset + done, remaining: length - done)
            let tail = w.length - w.head - w.wanted
            if w.head != 0 {
                let r = readBlock(into: bounce, count: block, at: w.start)
                if r != 0 { return r }
            }
            if tail != 0 && (w.head == 0 || w.length > block) {
                let r = readBlock(into: bounce + (w.length - block), count: block, at: w.start + UInt64(w.length - block))
                if r != 0 { return r }
            }
            if source != nil {
                if source!.gather(into: bounce + w.head, length: w.wanted) != w.wanted { return -EINVAL }
            } else {
                (bounce + w.head).initializeMemory(as: UInt8.self, repeating: 0, count: w.wanted)
            }
            let r = pwriteAll(bounce, count: w.length, at: w.start)
            if r != 0 { return r }
            done += UInt64(w.wanted)
        }
        return 0
    }

    /// One chunk: `wanted` bytes at `head` within the aligned window [start, start + length).
    private struct Window {
        var start: UInt64
        var length: Int
        var head: Int
        var wanted: Int
    }

    @inline(__always)
    private func window(at position: UInt64, remaining: UInt64) -> Window {
        let start = position & ~windowMask
        let head = Int(position - start)
        // bounceSize is a multiple of the window alignment and head is less than one block, so the
        // widened window below never exceeds the buffer.
        let wanted = Int(min(remaining, UInt64(bounceSize - head)))
        let end = (position + UInt64(wanted) + windowMask) & ~windowMask
        return Window(start: start, length: Int(end - start), head: head, wanted: wanted)
    }

    /// Reads one block for read-modify-write; past the end of the file it is zeros.
    private func readBlock(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) -> Int32 {
        let got = preadUpTo(buffer, count: count, at: offset)
        if got < 0 { return Int32(got) }
        if got < count { (buffer + got).initializeMemory(as: UInt8.self, repeating: 0, count: count - got) }
        return 0
    }

    /// pread, retried on EINTR and continued after a short read until end of file. Returns the bytes
    /// read, or a negative errno.
    private func preadUpTo(_ buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) -> Int {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + UInt64(done)))
            if n > 0 {
                done += n
                // O_DIRECT cannot continue from an unaligned position; a short read there is the end.
                if directIO && (offset + UInt64(done)) & windowMask != 0 { break }
                continue
            }
            if n == 0 { break }
            let error = errno
            if error != EINTR { return -Int(error) }
        }
        return done
    }

    /// pwrite of the whole buffer, retried on EINTR and continued after a short write.
    private func pwriteAll(_ buffer: UnsafeRawPointer, count: Int, at offset: UInt64) -> Int32 {
        var done = 0
        while done < count {
            let n = pwrite(fd, buffer + done, count - done, off_t(offset + UInt64(done)))
            if n > 0 {
                done += n
                continue
            }
            // 0 bytes written with bytes left: no progress is possible (the device is full).
            if n == 0 { return -EIO }
            let error = errno
            if error != EINTR { return -error }
        }
        return 0
    }
}
