#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

/// Reads a fuzz input front to back. Running out is not an error: every read past the end yields
/// zeros / empty, so any byte string is a valid input and the fuzzer never wastes runs on a format
/// check of ours.
public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    }

    public var remaining: Int { bytes.count - offset }
    public var isEmpty: Bool { remaining == 0 }

    public mutating func u8() -> UInt8 {
        guard remaining >= 1 else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// Little-endian, like every field of the vhost-user and virtio wire formats.
    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }

    /// Up to `n` bytes (fewer at the end of the input).
    public mutating func take(_ n: Int) -> UnsafeRawBufferPointer {
        let k = max(0, min(n, remaining))
        defer { offset += k }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + k])
    }

    public mutating func rest() -> UnsafeRawBufferPointer { take(remaining) }
}

/// Kinds of fd a fuzz input may attach to a message. Real fds, so the code under test does real
/// fstat/mmap/fcntl/poll on them and closes them for real.
public enum FuzzFD {
    /// Size of the memfds handed out: large enough for any ring layout of a queue of 1024, small
    /// enough that mapping one per message costs little; the fuzzer picks region sizes and offsets
    /// around it (a region past the end of the file must be refused, or touching it raises SIGBUS).
    public static let memfdSize = 256 << 10

    public static func memfd() -> Int32 {
        // VhostSystem's helper: memfd_create is a _GNU_SOURCE API that Swift's Glibc does not import.
        do { return try makeMemFD(name: "fuzz-guest", size: memfdSize).release() } catch { fatalError("memfd: \(error)") }
    }

    public static func eventfd() -> Int32 {
        do { return try EventFD(nonBlocking: true).fd.release() } catch { fatalError("eventfd: \(error)") }
    }

    /// Whether `fd` is still open: the targets check that code that took ownership of an fd closed it.
    public static func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) != -1 }

    /// Number of open fds in this process: a leak check around one run.
    public static func openCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = 0
        while readdir(dir) != nil { n += 1 }
        return n
    }
}

/// libFuzzer's entry point for programs that keep their own main (clang's FuzzerDriver.cpp).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// Runs libFuzzer with this process's arguments. SwiftPM links an executable target with
/// `--defsym main=<module>_main`, so libFuzzer's own `main` is never linked in: each target's
/// main.swift calls this instead, with the same flags and behaviour as a libFuzzer main.
public func runLibFuzzer(_ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
}

/// sendmsg with any number of fds in one SCM_RIGHTS message. VhostSystem's send caps the list at the
/// protocol's 8; a hostile front-end does not, and the receiver's truncation handling is under test.
/// The cmsg layout is spelled out by hand (x86_64/arm64 Linux: 16-byte header, 8-byte alignment)
/// because Swift cannot import the CMSG_* macros.
public func sendRaw(_ socket: Int32, _ bytes: [UInt8], fds: [Int32]) -> Bool {
    let dataLen = fds.count * MemoryLayout<Int32>.size
    let header = MemoryLayout<cmsghdr>.size
    let space = fds.isEmpty ? 0 : header + (dataLen + 7) & ~7
    var control = [UInt8](repeating: 0, count: max(space, 1))
    var bytes = bytes
    return bytes.withUnsafeMutableBytes { data in
        control.withUnsafeMutableBytes { ctl in
            if !fds.isEmpty {
                let c = ctl.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                c.pointee.cmsg_len = header + dataLen
                c.pointee.cmsg_level = SOL_SOCKET
                c.pointee.cmsg_type = Int32(SCM_RIGHTS)
                for (i, fd) in fds.enumerated() {
                    ctl.storeBytes(of: fd, toByteOffset: header + 4 * i, as: Int32.self)
                }
            }
            var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
            return withUnsafeMutablePointer(to: &iov) { iovp in
                var msg = msghdr()
                msg.msg_iov = iovp
                msg.msg_iovlen = 1
                msg.msg_control = fds.isEmpty ? nil : ctl.baseAddress
                msg.msg_controllen = space
                var sent = 0
                while sent < data.count {
                    let r = sendmsg(socket, &msg, Int32(MSG_NOSIGNAL))
                    if r < 0 { if errno == EINTR { continue }; return false }
                    sent += r
                    // fds ride with the first chunk only.
                    msg.msg_control = nil; msg.msg_controllen = 0
                    iovp.pointee.iov_base = data.baseAddress! + sent
                    iovp.pointee.iov_len = data.count - sent
                }
                return true
            }
        }
    }
}
