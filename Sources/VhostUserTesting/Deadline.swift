#if canImport(Glibc)
import Glibc
#endif

/// A point on the monotonic clock that bounded waits count down to. Every wait in this module is
/// bounded by one, so a back-end that never answers fails a test instead of hanging it.
public struct Deadline: Sendable {
    private let end: UInt64 // CLOCK_MONOTONIC nanoseconds

    public init(milliseconds: Int) {
        end = Self.now() &+ UInt64(max(milliseconds, 0)) &* 1_000_000
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    public var expired: Bool { Self.now() >= end }

    /// Milliseconds left, rounded up so that a poll(2) with this timeout does not wake just before
    /// the deadline and spin; 0 once expired.
    public var remainingMilliseconds: Int32 {
        let n = Self.now()
        guard n < end else { return 0 }
        return Int32(min((end - n + 999_999) / 1_000_000, UInt64(Int32.max)))
    }

    /// The absolute time as a timespec on CLOCK_MONOTONIC (for pthread_cond_timedwait with a
    /// monotonic condition variable).
    var timespecValue: timespec {
        timespec(tv_sec: Int(end / 1_000_000_000), tv_nsec: Int(end % 1_000_000_000))
    }
}
