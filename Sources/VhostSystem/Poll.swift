#if canImport(Glibc)
import Glibc
#endif

/// poll(2) over a few fds: the control plane and a sleeping worker wait on fds, never on timers.
public enum Poll {
    /// Waits until one of `fds` is readable (or hung up). Returns the indices that are ready.
    /// `timeoutMs` < 0 waits forever. EINTR returns an empty list.
    public static func readable(_ fds: [Int32], timeoutMs: Int32) throws -> [Int] {
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let n = pfds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), timeoutMs) }
        if n < 0 {
            if errno == EINTR { return [] }
            throw SystemError.current("poll")
        }
        var ready: [Int] = []
        for (i, p) in pfds.enumerated() where p.revents != 0 { ready.append(i) }
        return ready
    }
}
