#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

/// Why a backing store could not be opened or an engine could not be made. Errors of individual
/// requests are never thrown: they come back as a negative errno in `BlockCompletion.result`.
public struct BlockIOError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What was being done: "open", "fallocate", "io_setup", "--block-size", …
    public var operation: String
    /// The backing path, when there is one.
    public var path: String?
    /// The errno of the failed system call; configuration mistakes use EINVAL (or EISDIR, EEXIST…
    /// where one fits), so a caller can always map an error to an exit status.
    public var errno: Int32
    /// Human-readable detail.
    public var reason: String

    public init(_ operation: String, path: String?, errno: Int32, reason: String) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.reason = reason
    }

    /// Wraps VhostSystem's error, keeping its errno and context.
    public init(_ error: SystemError, path: String?) {
        self.init(error.operation, path: path, errno: error.errno, reason: error.description)
    }

    /// A configuration mistake rather than a failed system call.
    static func invalid(_ operation: String, path: String?, _ reason: String) -> BlockIOError {
        BlockIOError(operation, path: path, errno: EINVAL, reason: reason)
    }

    public var description: String {
        let subject = path.map { "\(operation) \($0)" } ?? operation
        return "\(subject): \(reason)"
    }
}

/// Runs `body` and converts a thrown SystemError into a BlockIOError about `path`.
@inline(__always)
func withSystemErrors<T>(path: String?, _ body: () throws -> T) throws(BlockIOError) -> T {
    do {
        return try body()
    } catch let error as SystemError {
        throw BlockIOError(error, path: path)
    } catch {
        // VhostSystem throws only SystemError; anything else still reaches the user with context.
        throw BlockIOError("system call", path: path, errno: EIO, reason: "\(error)")
    }
}
