/// Tells a worker whether the CPU it runs on is shared with other busy threads, from its own
/// scheduler statistics: of the time it wanted a CPU (ran, or was runnable and waited), how much it
/// waited. On a core of its own that share stays near 0; where vCPU threads run on the same cores it
/// is large. Measured here (bench/README.md, "Shared cores"): 1–3 % for a worker pinned to a core of
/// its own under 130 k file IOPS (kernel threads, the block completion path), 30–73 % per second for
/// a worker pinned to one of the two cores that also ran a TCG guest's two vCPUs.
///
/// A polling worker on a shared core takes the core from whoever waits for it, often the vCPU that
/// would send its next request; pinned, it also waits for that vCPU while another core may be free.
/// So while shared, the worker polls briefly (`PollWindow.limit`) and, when the operator left the
/// placement to the daemon, lets the scheduler move it (`SharedCoreResponse`).
///
/// The worker samples every `intervalNanoseconds`; samples add up until they hold enough time to
/// judge (`minimumWantedNanoseconds` wanted), which for a busy worker is one sample. A worker that
/// wants little (it sleeps at once, and its requests are light) is judged once a second on what it
/// has, and can never be found shared that way (only quiet, or not quiet): a capped window must
/// not stay capped just because the queue it serves is light, and a few unlucky wake-ups are no
/// evidence of a shared CPU.
///
/// Hysteresis: the worker becomes shared on one judgement at or above `sharedPercent`, and dedicated
/// again only after `quietIntervals` judgements in a row under `quietPercent`. Each return to shared
/// doubles that count (up to `maximumQuietIntervals`): once floating or polling less, the contention
/// it reacted to may no longer show, and a worker that keeps finding it again should stop testing
/// its old placement every second.
///
/// Plain value logic, owned by one worker thread; times are nanoseconds.
public struct SharedCoreDetector: Sendable, Equatable {
    /// How often the worker samples: long enough to hold many scheduling events (the scheduler's
    /// slices are a few ms), short enough that a guest's run is adapted to within its first second.
    public static let intervalNanoseconds: UInt64 = 100_000_000
    /// Samples add up until the worker wanted a CPU for this long (5 % of an interval): with less, one
    /// preemption by a kernel thread (a few hundred µs) reaches the shared threshold.
    public static let minimumWantedNanoseconds: UInt64 = 5_000_000
    /// Samples that still hold less than that are judged after this long anyway, but can then only
    /// count as quiet (one second: ten samples).
    public static let longestJudgementNanoseconds: UInt64 = 1_000_000_000
    /// Waiting for 20 % or more of the time wanted: another thread had a fifth of the core or more;
    /// well above the 1–3 % a dedicated core shows.
    public static let sharedPercent: UInt64 = 20
    /// Under 5 % counts as quiet (a dedicated core's 1–3 % with a margin).
    public static let quietPercent: UInt64 = 5
    /// Quiet judgements before the first return to dedicated: 10 (one second for a busy worker, ten
    /// for one that wants little).
    public static let initialQuietIntervals = 10
    /// The most quiet judgements ever asked for: 640 (64 s for a busy worker), after six doublings.
    public static let maximumQuietIntervals = 640

    public enum State: Sendable, Equatable { case dedicated, shared }
    public enum Change: Sendable, Equatable { case becameShared, becameDedicated }

    public private(set) var state: State = .dedicated
    /// The run delay's share of the time wanted in the last judgement, in percent.
    public private(set) var lastWaitPercent: UInt64 = 0
    /// Quiet judgements in a row while shared.
    private var quiet = 0
    /// Quiet judgements needed to leave the shared state.
    public private(set) var quietIntervals = SharedCoreDetector.initialQuietIntervals
    /// Times the worker became shared.
    public private(set) var spells: UInt64 = 0
    /// Samples not judged yet, added up.
    private var pendingOnCPU: UInt64 = 0
    private var pendingRunDelay: UInt64 = 0
    private var pendingElapsed: UInt64 = 0

    public init() {}

    /// One sample: the time on a CPU and run delay (deltas of `ThreadSchedStat`) over `elapsed` ns of
    /// wall time; a state change, if any.
    public mutating func sample(onCPU: UInt64, runDelay: UInt64, elapsed: UInt64) -> Change? {
        pendingOnCPU &+= onCPU
        pendingRunDelay &+= runDelay
        pendingElapsed &+= elapsed
        let delay = pendingRunDelay
        let wanted = pendingOnCPU &+ delay
        let enough = wanted >= Self.minimumWantedNanoseconds
        guard enough || pendingElapsed >= Self.longestJudgementNanoseconds else { return nil }
        (pendingOnCPU, pendingRunDelay, pendingElapsed) = (0, 0, 0)
        let percent = wanted == 0 ? 0 : delay &* 100 / wanted
        lastWaitPercent = percent
        switch state {
        case .dedicated:
            guard enough, percent >= Self.sharedPercent else { return nil }
            state = .shared
            quiet = 0
            if spells > 0 { quietIntervals = min(quietIntervals * 2, Self.maximumQuietIntervals) }
            spells &+= 1
            return .becameShared
        case .shared:
            guard percent < Self.quietPercent else {
                quiet = 0
                return nil
            }
            quiet += 1
            guard quiet >= quietIntervals else { return nil }
            state = .dedicated
            return .becameDedicated
        }
    }
}

/// What a worker does while its CPU is shared (`SharedCoreDetector`).
public struct SharedCoreResponse: Sendable, Equatable {
    /// The CPUs a pinned worker may run on while shared (nil: it stays where it is). It is pinned back
    /// after a quiet spell; since the quiet was measured wherever the scheduler ran it, that is a
    /// probe of its old CPU, and finding that CPU still busy doubles the next spell. A worker whose
    /// affinity someone else changed is neither floated nor pinned back.
    public var floatOver: [Int]?
    /// The poll window's ceiling while shared.
    public var pollCeilingNanoseconds: UInt64

    /// A poll no longer than the window's first step (4 µs) costs less than the sleep it may save
    /// (`PollWindow.firstStepNanoseconds`), so it cannot take more from a waiting vCPU than sleeping
    /// at once would. (Guest runs on shared cores with `--poll-us 5` beat 50 µs on IOPS and CPU per
    /// I/O, bench/README.md, "Pinned or floating workers".)
    public static let defaultPollCeilingNanoseconds = PollWindow.firstStepNanoseconds

    public init(floatOver: [Int]?, pollCeilingNanoseconds: UInt64 = SharedCoreResponse.defaultPollCeilingNanoseconds) {
        self.floatOver = floatOver
        self.pollCeilingNanoseconds = pollCeilingNanoseconds
    }
}
