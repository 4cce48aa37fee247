#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A Unix stream socket: the vhost-user control channel. Carries fds as SCM_RIGHTS.
public final class UnixSocket: @unchecked Sendable {
    public let fd: FileDescriptor

    public init(adopting fd: FileDescriptor) { self.fd = fd }

    /// Creates, binds and listens on `path` with permission `mode` (0600 by default: only the owner,
    /// the user QEMU runs as, may connect) and, if given, `owner` and `group`. Refuses to replace
    /// anything that is not a stale socket, and never follows a symlink at `path`. Ownership and mode
    /// are settled before listen(), so no connection can be accepted under the wrong permissions.
    public static func listen(path: String, mode: mode_t = 0o600, owner: uid_t? = nil, group: gid_t? = nil,
                              backlog: Int32 = 1) throws -> UnixSocket {
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
        // Linux's bind creates the socket file with the mode of the socket's own inode minus the umask,
        // so an fchmod of the unbound socket gives the file `mode` (or less) from the moment it exists:
        // no window in which another user could connect. Not the umask: it is per process, and
        // changing it, even briefly, races with any other thread creating files (the test suite's
        // in-process servers made a concurrent test's mkdtemp directory 0600 that way).
        if fchmod(raw, mode & 0o777) != 0 { throw SystemError.current("fchmod", context: "socket for \(path)") }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r < 0 { throw SystemError.current("bind", context: path) }
        do {
            try setOwnerAndMode(path: path, mode: mode, owner: owner, group: group)
        } catch {
            // Leave no socket file behind with permissions other than those asked for.
            unlink(path)
            throw error
        }
        if Glibc.listen(raw, backlog) < 0 { throw SystemError.current("listen", context: path) }
        return sock
    }

    /// Applies owner, group and mode to the socket file just bound at `path` without following a
    /// symlink: whoever can write to the directory could swap the file between bind() and here, so the
    /// entry is opened O_PATH|O_NOFOLLOW, checked to be a socket, and changed through that fd (chown
    /// via fchownat(AT_EMPTY_PATH), chmod via /proc/self/fd, which names exactly the inode we checked).
    /// chmod and chown on the path would follow a symlink planted there and change its target.
    private static func setOwnerAndMode(path: String, mode: mode_t, owner: uid_t?, group: gid_t?) throws {
        let raw = cvh_open_path_nofollow(path)
        if raw < 0 {
            throw SystemError("open(O_PATH|O_NOFOLLOW)", errno: -raw, context: "\(path) (replaced after bind?)")
        }
        let entry = FileDescriptor(adopting: raw)
        var st = try entry.stat()
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw SystemError("bind", errno: EEXIST, context: "\(path) is no longer the socket we bound")
        }
        if owner != nil || group != nil {
            // (uid_t)-1 / (gid_t)-1: leave that id as it is.
            let e = cvh_fchown_fd(raw, owner ?? uid_t.max, group ?? gid_t.max)
            if e < 0 {
                throw SystemError("fchownat", errno: -e, context: "\(path) to owner \(owner.map(String.init) ?? "-") group \(group.map(String.init) ?? "-")")
            }
            st = try entry.stat()
        }
        // bind gave at most `mode`; the umask may have taken bits away (0660 under umask 022) and a
        // default ACL on the directory overrides both: set exactly `mode`.
        if st.st_mode & 0o7777 != mode & 0o7777 {
            if chmod("/proc/self/fd/\(raw)", mode) != 0 {
                throw SystemError.current("chmod", context: "\(path) to \(String(mode, radix: 8)) (through /proc/self/fd)")
            }
        }
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

/// The socket file a daemon created, to remove on stop. Holds its directory open from creation (while
/// still privileged), so that removal after a privilege drop needs write permission on that directory
/// only, not search permission on every directory above it (e.g. a socket in /run/vm0/ whose parent
/// the dropped user cannot enter).
public final class SocketFile: @unchecked Sendable {
    public let path: String
    private let directory: FileDescriptor?
    private let name: String

    public init(path: String) {
        self.path = path
        let slash = path.utf8.lastIndex(of: UInt8(ascii: "/"))
        let dir = slash.map { i in i == path.utf8.startIndex ? "/" : String(path[..<i]) } ?? "."
        name = slash.map { String(path[path.utf8.index(after: $0)...]) } ?? path
        let raw = cvh_open_directory_path(dir)
        // Without the handle, removal falls back to the path.
        directory = raw >= 0 ? FileDescriptor(adopting: raw) : nil
    }

    /// Unlinks the socket file. Throws when it cannot, e.g. EACCES after the daemon dropped
    /// privileges to a user without write permission on the directory.
    public func remove() throws(SystemError) {
        let r = directory.map { unlinkat($0.rawValue, name, 0) } ?? unlink(path)
        if r != 0 { throw .current("unlink", context: path) }
    }
}

