/// How long a worker keeps polling an empty queue before it arms notifications and sleeps, adapted
/// to what the queue's traffic showed (the idea behind QEMU's AioContext poll-max-ns / poll-grow /
/// poll-shrink).
///
/// Polling pays only when the next event (a request, or a storage completion) comes while the worker
/// spins: it is then taken without a wake-up, so without the driver's kick (a system call, or a VM
/// exit in a real guest) and the context switch. It costs a core for as long as it finds nothing. So
/// the window follows what each sleep would have needed:
/// - the event came while polling: the window was long enough; unchanged;
/// - the worker slept, and the event came within `maximum` of the queue going idle: a longer poll
///   would have caught it without the wake-up; the window doubles (up to `maximum`);
/// - the worker slept, and the event came later than `maximum`: no poll allowed would have caught
///   it; the window halves, and below `firstStepNanoseconds` becomes 0 (sleep at once).
///
/// A queue whose requests arrive closer together than `maximum` therefore ends up polling through
/// its gaps and never sleeping; one that is idle, or whose requests come further apart than
/// `maximum` (a slow guest), stops polling after a few sleeps (from 50 µs: 25, 12.5, 6.25, then 0).
/// Halving rather than dropping to 0 at once (QEMU's default) is what keeps a busy queue busy: an
/// occasional long gap (its driver was preempted, say) costs half the window, and the half still
/// covers the short gaps, where a window dropped to 0 would take several sleeps to grow back.
///
/// A worker that finds its CPU shared (`SharedCoreDetector`) lowers the window's `ceiling` below
/// `maximum` for as long as that lasts: polling then takes the core from whoever waits for it (a
/// vCPU, often the very one that would send the next request), so the rules above apply with the
/// ceiling in place of the maximum.
///
/// Plain value logic, owned by one worker thread; times are nanoseconds.
public struct PollWindow: Sendable, Equatable {
    /// The longest window (`--poll-us`); 0 makes every idle pass sleep.
    public let maximum: UInt64
    /// The longest window for now: `maximum`, or less while the worker's CPU is shared.
    public private(set) var ceiling: UInt64
    /// How long the worker polls after the queue went idle before it sleeps.
    public private(set) var current: UInt64

    /// The smallest non-zero window. A sleep costs the worker ~8 µs of CPU here (poll(2), the
    /// wake-up, the eventfd read, notifications armed and suppressed again) and the request that
    /// ends it ~8 µs of latency (bench/README.md, "Adaptive polling"). A 4 µs poll costs less than
    /// that even when it catches nothing; the next doubling reaches the cost of the sleep.
    public static let firstStepNanoseconds: UInt64 = 4_000

    /// Starts at `maximum`: a queue whose traffic is not known yet gets the configured poll, and a few
    /// sleeps longer than it are enough to learn otherwise.
    public init(maximum: UInt64) {
        self.maximum = maximum
        ceiling = maximum
        current = maximum
    }

    /// Caps the window at `limit` (at most `maximum`); the window shrinks to it at once.
    public mutating func limit(to limit: UInt64) {
        ceiling = min(limit, maximum)
        current = min(current, ceiling)
    }

    /// Lifts a cap set by `limit(to:)`: the window grows back to `maximum` as sleeps show it would
    /// pay, not at once.
    public mutating func removeLimit() {
        ceiling = maximum
    }

    public enum Change: Equatable { case grew, kept, shrank }

    /// The worker slept (or armed notifications and found work at once), and the event that ended
    /// the idle spell came `idle` ns after the queue went idle.
    @discardableResult
    public mutating func eventAfterSleeping(idle: UInt64) -> Change {
        if idle > ceiling {
            current = current / 2 < Self.firstStepNanoseconds ? 0 : current / 2
            return .shrank
        }
        guard current < ceiling else { return .kept }
        current = current == 0 ? Self.firstStepNanoseconds : current &* 2
        if current > ceiling { current = ceiling }
        return .grew
    }
}
