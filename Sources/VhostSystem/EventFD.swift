#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A Linux eventfd: the kick and call notifications of a virtqueue, and the wake-up of worker threads.
public final class EventFD: @unchecked Sendable {
    public let fd: FileDescriptor

    public init(nonBlocking: Bool = true) throws {
        let raw = cvh_eventfd(0, nonBlocking ? 1 : 0)
        if raw < 0 { throw SystemError.current("eventfd") }
        fd = FileDescriptor(adopting: raw)
    }

    /// Wraps an eventfd received from the frontend.
    public init(adopting fd: FileDescriptor) { self.fd = fd }

    public var rawValue: Int32 { fd.rawValue }

    /// Adds 1 to the counter. A full counter (EAGAIN) already means "signalled", so it is not an error.
    @inline(__always)
    public func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
    }

    /// Reads and resets the counter; returns 0 when nothing was pending (non-blocking fds).
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &value) { Glibc.read(fd.rawValue, $0.baseAddress, 8) }
        return n == 8 ? value : 0
    }
}

/// Signals an eventfd by raw number: used on the hot path where the fd's owner outlives the worker.
@inline(__always)
public func signalEventFD(_ raw: Int32) {
    var one: UInt64 = 1
    _ = withUnsafeBytes(of: &one) { Glibc.write(raw, $0.baseAddress, 8) }
}

/// Drains an eventfd by raw number (non-blocking fds only).
@inline(__always)
@discardableResult
public func drainEventFD(_ raw: Int32) -> UInt64 {
    var value: UInt64 = 0
    let n = withUnsafeMutableBytes(of: &value) { Glibc.read(raw, $0.baseAddress, 8) }
    return n == 8 ? value : 0
}
