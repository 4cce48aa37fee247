#if canImport(Glibc)
import Glibc
#endif

/// Owns a file descriptor and closes it exactly once. Every fd the daemon receives from a peer is
/// wrapped in one of these the moment recvmsg returns, so every error path closes it.
public final class FileDescriptor: @unchecked Sendable, CustomStringConvertible {
    // `rawValue` is read by other threads (workers poll kick fds), but only changed by `close()`,
    // which the owner calls after those threads have stopped using it.
    public private(set) var rawValue: Int32

    public init(adopting raw: Int32) {
        precondition(raw >= 0, "FileDescriptor(adopting:) needs a valid fd")
        rawValue = raw
    }

    public var isOpen: Bool { rawValue >= 0 }

    public func close() {
        if rawValue >= 0 {
            // Linux closes the fd even when close() reports EINTR; never retry.
            _ = Glibc.close(rawValue)
            rawValue = -1
        }
    }

    /// Gives up ownership without closing (e.g. to hand it to another owner).
    public func release() -> Int32 {
        let r = rawValue
        rawValue = -1
        return r
    }

    deinit { close() }

    public var description: String { "fd(\(rawValue))" }

    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o600) throws -> FileDescriptor {
        let fd = try retryingEINTR("open", context: path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(adopting: fd)
    }

    public func stat() throws -> Glibc.stat {
        var st = Glibc.stat()
        _ = try retryingEINTR("fstat", context: description) { fstat(rawValue, &st) }
        return st
    }

    public func setNonBlocking(_ on: Bool) throws {
        let flags = try retryingEINTR("fcntl(F_GETFL)") { fcntl(rawValue, F_GETFL) }
        let newFlags = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        _ = try retryingEINTR("fcntl(F_SETFL)") { fcntl(rawValue, F_SETFL, newFlags) }
    }
}
