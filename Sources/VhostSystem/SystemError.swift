#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which operation, on what, and the errno it returned.
/// VhostSystem is the only module that reads `errno`; everything above sees this type.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public var operation: String
    public var errno: Int32
    public var context: String

    public init(_ operation: String, errno: Int32, context: String = "") {
        self.operation = operation
        self.errno = errno
        self.context = context
    }

    /// Captures the calling thread's current errno.
    public static func current(_ operation: String, context: String = "") -> SystemError {
        SystemError(operation, errno: Glibc.errno, context: context)
    }

    public var description: String {
        let reason = String(cString: strerror(errno))
        return context.isEmpty ? "\(operation): \(reason) (errno \(errno))"
            : "\(operation) \(context): \(reason) (errno \(errno))"
    }
}

/// Retries a system call interrupted by a signal; returns its result or throws with errno.
@inline(__always)
public func retryingEINTR<T: BinaryInteger>(_ operation: String, context: String = "", _ body: () -> T) throws -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SystemError(operation, errno: e, context: context)
    }
}
