#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A Unix stream socket: the vhost-user control channel. Carries fds as SCM_RIGHTS.
public final class UnixSocket: @unchecked Sendable {
    public let fd: FileDescriptor

    public init(adopting fd: FileDescriptor) { self.fd = fd }

    /// Creates, binds and listens on `path` with permission `mode` (0600 by default: only the owner,
    /// the user QEMU runs as, may connect). Refuses to replace anything that is not a stale socket,
    /// and never follows a symlink at `path`.
    public static func listen(path: String, mode: mode_t = 0o600, backlog: Int32 = 1) throws -> UnixSocket {
        var st = Glibc.stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw SystemError("bind", errno: EEXIST, context: "\(path) exists and is not a socket")
            }
            // A socket file left by a previous run: remove it if nobody listens on it any more.
            if let probe = try? UnixSocket.connect(path: path) {
                probe.fd.close()
                throw SystemError("bind", errno: EADDRINUSE, context: "\(path): another process is listening")
            }
            unlink(path)
        }
        let raw = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if raw < 0 { throw SystemError.current("socket") }
        let sock = UnixSocket(adopting: FileDescriptor(adopting: raw))
        var addr = try makeAddress(path)
        // The umask makes the socket file 0600 from the moment it exists, leaving no window in which
        // another user could connect; chmod afterwards applies modes wider than 0600 if asked.
        let old = umask(~mode & 0o777)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        umask(old)
        if r < 0 { throw SystemError.current("bind", context: path) }
        _ = chmod(path, mode)
        if Glibc.listen(raw, backlog) < 0 { throw SystemError.current("listen", context: path) }
        return sock
    }

    public static func connect(path: String) throws -> UnixSocket {
        let raw = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if raw < 0 { throw SystemError.current("socket") }
        let sock = UnixSocket(adopting: FileDescriptor(adopting: raw))
        var addr = try makeAddress(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r < 0 { throw SystemError.current("connect", context: path) }
        return sock
    }

    /// A connected pair (tests, in-process frontends).
    public static func pair() throws -> (UnixSocket, UnixSocket) {
        var fds: [Int32] = [0, 0]
        if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) < 0 {
            throw SystemError.current("socketpair")
        }
        return (UnixSocket(adopting: FileDescriptor(adopting: fds[0])),
                UnixSocket(adopting: FileDescriptor(adopting: fds[1])))
    }

    /// Whether an inherited fd is a listening Unix stream socket (for --listen-fd / LISTEN_FDS).
    public static func isListeningSocket(_ raw: Int32) -> Bool {
        var accepting: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(raw, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) == 0 else { return false }
        var type: Int32 = 0
        len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(raw, SOL_SOCKET, SO_TYPE, &type, &len) == 0 else { return false }
        return accepting != 0 && type == Int32(SOCK_STREAM.rawValue)
    }

    /// Bounds every blocking send and receive: a peer that stops mid-message (or stops reading our
    /// replies) makes the call fail with EAGAIN after `seconds` instead of blocking the caller forever.
    public func setTimeouts(seconds: Int) throws {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        let len = socklen_t(MemoryLayout<timeval>.size)
        if setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, len) < 0 { throw SystemError.current("setsockopt(SO_RCVTIMEO)") }
        if setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, len) < 0 { throw SystemError.current("setsockopt(SO_SNDTIMEO)") }
    }

    public func accept() throws -> UnixSocket {
        let raw = cvh_accept_cloexec(fd.rawValue)
        if raw < 0 { throw SystemError("accept", errno: -raw) }
        return UnixSocket(adopting: FileDescriptor(adopting: raw))
    }

    /// Sends all of `bytes` with `fds` attached to the first chunk.
    public func send(_ bytes: UnsafeRawBufferPointer, fds: [Int32] = []) throws {
        var sent = 0
        var first = true
        while sent < bytes.count || (first && bytes.isEmpty) {
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[sent...])
            let n = fds.withUnsafeBufferPointer { f in
                cvh_send_with_fds(fd.rawValue, chunk.baseAddress, chunk.count,
                                  first ? f.baseAddress : nil, first ? Int32(f.count) : 0)
            }
            if n < 0 { throw SystemError("sendmsg", errno: Int32(-n)) }
            sent += n
            first = false
            if bytes.isEmpty { break }
        }
    }

    public func send(_ bytes: [UInt8], fds: [Int32] = []) throws {
        try bytes.withUnsafeBytes { try send($0, fds: fds) }
    }

    /// One recvmsg: up to `buffer.count` bytes and up to `maxFDs` fds (extra fds are closed and
    /// reported through `fdsTruncated`). Returns 0 bytes at EOF.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, maxFDs: Int)
        throws -> (bytes: Int, fds: [FileDescriptor], fdsTruncated: Bool)
    {
        var raw = [Int32](repeating: -1, count: max(maxFDs, 1))
        var count: Int32 = 0
        var truncated: Int32 = 0
        let n = raw.withUnsafeMutableBufferPointer { f in
            cvh_recv_with_fds(fd.rawValue, buffer.baseAddress, buffer.count, f.baseAddress,
                              Int32(maxFDs), &count, &truncated)
        }
        if n < 0 { throw SystemError("recvmsg", errno: Int32(-n)) }
        let owned = raw.prefix(Int(count)).map { FileDescriptor(adopting: $0) }
        return (n, owned, truncated != 0)
    }

    /// Reads exactly `buffer.count` bytes with no fds expected; fds that arrive anyway are returned
    /// so the caller can treat them as a protocol violation. Returns false on EOF before any byte.
    public func receiveExactly(into buffer: UnsafeMutableRawBufferPointer) throws -> (complete: Bool, strayFDs: [FileDescriptor]) {
        var got = 0
        var stray: [FileDescriptor] = []
        while got < buffer.count {
            let r = try receive(into: UnsafeMutableRawBufferPointer(rebasing: buffer[got...]), maxFDs: 8)
            stray += r.fds
            if r.bytes == 0 {
                if got == 0 { return (false, stray) }
                throw SystemError("recvmsg", errno: ECONNRESET, context: "peer closed mid-message")
            }
            got += r.bytes
        }
        return (true, stray)
    }

    private static func makeAddress(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw SystemError("bind", errno: ENAMETOOLONG, context: "socket path must be 1...\(capacity - 1) bytes: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            dst.copyBytes(from: bytes)
            dst[bytes.count] = 0
        }
        return addr
    }
}
