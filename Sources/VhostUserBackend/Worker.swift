#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import Logging
import VhostSystem
import Virtqueue

/// One pinned thread running one queue. Its parameters (ring, memory, fds) are fixed for its lifetime:
/// the control thread never mutates a running queue; it stops the worker (which drains every in-flight
/// request), changes what it must, and starts a new worker from the saved ring position.
final class Worker<H: QueueHandler> {
    let index: Int
    let handler: H
    private let poll: QueuePoller
    private let stopEvent: EventFD
    /// 0 = run, 1 = stop; written by the control thread, read by the worker once per pass.
    private let stopFlag: UnsafeMutablePointer<UInt32>
    /// kick, stop and (with storage in flight) completion fds for poll(2); used by the worker only.
    private let pollFDs: UnsafeMutablePointer<pollfd>
    /// [0] the poll window, [1] sleeps so far, [2] 1 while the worker finds its CPU shared: stored by
    /// the worker when they change (at most once per sleep, or per shared-CPU judgement), readable
    /// from any thread while it runs.
    private let gauges: UnsafeMutablePointer<UInt64>
    private static var gaugeCount: Int { 3 }
    private var thread: PinnedThread?
    // The fds stay owned by the session's VringSettings, which outlives this worker.
    private let kickFD: Int32
    private let callFD: Int32
    private let errFD: Int32
    private let policy: WorkerPolicy
    private let logger: Logger
    private(set) var broken = false

    /// While draining, log progress this often: storage that takes longer is worth telling the operator.
    static var drainLogIntervalNanoseconds: UInt64 { 5_000_000_000 }

    init(index: Int, handler: H, poll: @escaping QueuePoller, kickFD: Int32, callFD: Int32, errFD: Int32,
         policy: WorkerPolicy, logger: Logger) throws {
        self.index = index
        self.handler = handler
        self.poll = poll
        self.kickFD = kickFD
        self.callFD = callFD
        self.errFD = errFD
        self.policy = policy
        self.logger = logger
        stopEvent = try EventFD()
        stopFlag = .allocate(capacity: 1)
        stopFlag.initialize(to: 0)
        pollFDs = .allocate(capacity: 3)
        pollFDs.initialize(repeating: pollfd(), count: 3)
        gauges = .allocate(capacity: Self.gaugeCount)
        gauges.initialize(repeating: 0, count: Self.gaugeCount)
        if kickFD >= 0, let w = policy.pollWindowNanoseconds { gauges[0] = PollWindow(maximum: w).current }
        thread = try PinnedThread(name: "vq\(index)", cpu: policy.cpu) { [self] in run() }
    }

    deinit {
        stopFlag.deallocate()
        pollFDs.deallocate()
        gauges.deallocate()
    }

    /// Asks the worker to stop taking requests, waits until every in-flight request has completed and
    /// the used ring is published, and joins the thread.
    func stop() {
        cvh_store_release_u32(stopFlag, 1)
        stopEvent.signal()
        thread?.join()
        thread = nil
    }

    /// The poll window now, and how often the worker has slept, as it last published them.
    var pollWindowNanoseconds: UInt64 { cvh_load_acquire_u64(gauges) }
    var sleepsSoFar: UInt64 { cvh_load_acquire_u64(gauges + 1) }
    /// Whether the worker last judged its CPU shared (`SharedCoreDetector`).
    var coreShared: Bool { cvh_load_acquire_u64(gauges + 2) != 0 }

    /// CPU time the worker thread has used so far; nil once stopped.
    var cpuTimeNanoseconds: UInt64? { thread?.cpuTimeNanoseconds }
    /// The CPUs the worker thread may run on now; nil once stopped.
    var allowedCPUs: [Int]? { thread?.allowedCPUs }

    private var stopRequested: Bool { cvh_load_acquire_u32(stopFlag) != 0 }

    private func notify(_ r: PassResult) {
        if r.notify && callFD >= 0 { signalEventFD(callFD) }
    }

    private func fail(_ error: QueueError) {
        broken = true
        logger.error("queue \(index) stopped: the ring is broken (\(error)); signalling the error eventfd")
        if errFD >= 0 { signalEventFD(errFD) }
    }

    private func reportGuestErrors(_ reported: inout UInt64) {
        let n = handler.guestErrors
        guard n != reported else { return }
        logger.warning("queue \(index): \(n - reported) bad request(s) from the driver, first: \(handler.lastGuestError)")
        handler.clearGuestErrorReason()
        reported = n
    }

    /// What a worker did with its idle time: logged (debug) when it stops, and read by tests after
    /// `stop()` (which joins the thread, so the worker's last writes are visible).
    struct Statistics: Equatable {
        /// Times the worker slept on its fds.
        var sleeps: UInt64 = 0
        /// Times it armed notifications and found work on the re-check instead of sleeping.
        var sleepsAverted: UInt64 = 0
        /// Empty passes, over all idle spells.
        var idlePasses: UInt64 = 0
        /// Sleeps whose event came later than the maximum (the window halved, or stayed 0).
        var windowShrinks: UInt64 = 0
        /// The poll window as it stood when the worker stopped (nil: the queue never sleeps).
        var window: PollWindow?
        /// What the worker made of its CPU (nil: it did not look, `WorkerPolicy.sharedCore`).
        var sharedCore: SharedCoreDetector?
    }
    private(set) var statistics = Statistics()

    /// Idle passes between two clock reads. An empty pass is a ring-index load and an engine reap
    /// that finds nothing: ~6 ns on the null engine, ~10–15 ns with libaio I/O in flight (measured
    /// here from the debug statistics and the thread's CPU time); a clock read is ~25 ns (vDSO,
    /// TSC), so reading it every pass tripled the time a spinning worker took to see new work (and
    /// was a quarter of its profile, bench/README.md). Every 32nd pass costs under a tenth of that,
    /// and lets a window run over by at most 32 passes (0.2–0.5 µs).
    static var idlePassesPerClockRead: UInt32 { 32 }

    private func run() {
        var reported: UInt64 = 0
        var lastReport = monotonicNanoseconds()
        var stats = Statistics()
        var window = kickFD >= 0 ? policy.pollWindowNanoseconds.map { PollWindow(maximum: $0) } : nil
        // The current idle spell: empty passes since the last progress; when it was first timed
        // (0: not yet); how long after that the event came that ended its sleep (nil: no sleep).
        var idlePasses: UInt32 = 0
        var idleSince: UInt64 = 0
        var idleUntilEvent: UInt64?
        // Opened here, on the worker's own thread: /proc/thread-self names the opener.
        let schedStat = window == nil && policy.sharedCore == nil ? nil : ThreadSchedStat()
        // A worker that never sleeps (no window: --poll-us 0, or no kick fd) spins wherever it is put;
        // moving a full-time spinner around would only take a second core from the vCPUs.
        var core = CoreWatch(detector: policy.sharedCore == nil || schedStat == nil || window == nil ? nil : SharedCoreDetector())
        handler.stopSleeping()
        while !stopRequested {
            if broken {
                _ = try? Poll.readable([stopEvent.rawValue], timeoutMs: -1)
                continue
            }
            do {
                let r = try poll(true)
                notify(r)
                if r.progress > 0 {
                    if let idle = idleUntilEvent {
                        if window?.eventAfterSleeping(idle: idle) == .shrank { stats.windowShrinks &+= 1 }
                        cvh_store_release_u64(gauges, window?.current ?? 0)
                        idleUntilEvent = nil
                    }
                    stats.idlePasses &+= UInt64(idlePasses)
                    idlePasses = 0
                    idleSince = 0
                    continue
                }
                // Idle pass. A busy queue never gets here, so it pays nothing for what follows; an
                // idle one reads the clock every few passes, or at once when its window is 0.
                idlePasses &+= 1
                let sleepAtOnce = window?.current == 0
                if idlePasses % Self.idlePassesPerClockRead != 0 && !sleepAtOnce { continue }
                let now = monotonicNanoseconds()
                if now &- lastReport > 1_000_000_000 { // at most one guest-error line a second
                    reportGuestErrors(&reported)
                    lastReport = now
                }
                if core.detector != nil && now &- core.judgedAt >= SharedCoreDetector.intervalNanoseconds, let s = schedStat?.read() {
                    judgeCore(&core, sample: s, now: now, window: &window)
                }
                guard let w = window else { continue }
                if idleSince == 0 { idleSince = now }
                if now &- idleSince < w.current { continue }
                if try handler.prepareToSleep() {
                    stats.sleeps &+= 1
                    cvh_store_release_u64(gauges + 1, stats.sleeps)
                    let delayBefore = schedStat?.read()?.runDelay
                    sleep()
                    let slept = monotonicNanoseconds() &- idleSince
                    // Time spent woken but waiting for a CPU (another thread had ours) is not idle
                    // time: counting it would drop the window of a busy queue on a busy machine,
                    // whose every slow wake-up would then look like a long idle spell.
                    var waited: UInt64 = 0
                    if let a = delayBefore, let b = schedStat?.read()?.runDelay, b > a { waited = b - a }
                    idleUntilEvent = slept &- min(waited, slept)
                } else {
                    // Work arrived while notifications were being armed: a slightly longer poll
                    // would have caught it.
                    stats.sleepsAverted &+= 1
                    idleUntilEvent = now &- idleSince
                }
                handler.stopSleeping()
                // The spell goes on until a pass finds work (a wake-up may be spurious: a kick left
                // over from a request the re-check already took). Then the window learns from it.
            } catch {
                fail(error)
            }
        }
        drain()
        reportGuestErrors(&reported)
        stats.idlePasses &+= UInt64(idlePasses)
        stats.window = window
        stats.sharedCore = core.detector
        statistics = stats
        if let w = window {
            logger.debug("queue \(index): \(stats.sleeps) sleeps, \(stats.sleepsAverted) averted, \(stats.idlePasses) idle passes; poll window \(w.current / 1000) µs of at most \(w.maximum / 1000)")
        }
    }

    /// The shared-CPU watch of one run: the detector (nil: not watching), and the last sample.
    private struct CoreWatch {
        var detector: SharedCoreDetector?
        /// When `last` was read.
        var judgedAt: UInt64 = 0
        var last: ThreadSchedStat.Sample?
        var placement = Placement.asStarted
    }

    /// Where a worker with a pinned CPU and a `floatOver` set runs.
    private enum Placement: Equatable {
        /// On its pinned CPU.
        case asStarted
        /// Over `floatOver`, while its CPU is shared.
        case floating
        /// Someone else changed the thread's affinity (taskset -p, a management tool): theirs to keep.
        case leftAlone
    }

    /// Hands the detector the interval since the last sample and applies a change of state: while the
    /// CPU is shared, the poll window is capped and a pinned worker may float (`SharedCoreResponse`).
    /// Rare (a state change, at most once per judgement) and off the request path: it may log.
    private func judgeCore(_ core: inout CoreWatch, sample: ThreadSchedStat.Sample, now: UInt64, window: inout PollWindow?) {
        defer {
            core.last = sample
            core.judgedAt = now
        }
        // The kernel adds each run delay as the difference of two runqueue clocks, which after a
        // migration may be two CPUs' clocks: a counter can step back. Such an interval is skipped
        // (the sample becomes the new base) rather than read as a wrapped 2^64.
        guard let last = core.last, let response = policy.sharedCore,
              sample.onCPU >= last.onCPU, sample.runDelay >= last.runDelay,
              let change = core.detector?.sample(onCPU: sample.onCPU - last.onCPU, runDelay: sample.runDelay - last.runDelay,
                                                 elapsed: now &- core.judgedAt),
              let detector = core.detector else { return }
        switch change {
        case .becameShared:
            window?.limit(to: response.pollCeilingNanoseconds)
            var moved = ""
            if let cpus = response.floatOver, let pinned = policy.cpu, cpus != [pinned], core.placement == .asStarted {
                // Only a thread still where the worker put it: an affinity set from outside stays.
                let current = CPUTopology.currentThreadCPUs()
                if current != [pinned] {
                    core.placement = .leftAlone
                    moved = "; its affinity was set from outside (CPUs \(current)), so the daemon leaves its placement alone"
                } else {
                    let r = CPUTopology.setCurrentThreadCPUs(cpus)
                    if r == 0 {
                        core.placement = .floating
                        moved = "; it may now run on any of CPUs \(cpus) until a quiet spell, when it tries CPU \(pinned) again"
                    } else {
                        moved = "; moving it to CPUs \(cpus) failed (errno \(r))"
                    }
                }
            }
            let whereNow = policy.cpu.map { "its CPU \($0)" } ?? "the CPUs it runs on"
            // The first time in a worker's run at info: it explains a placement the operator did not
            // choose; later swings (at most one per quiet spell, which doubles each time) at debug.
            logger.log(level: detector.spells == 1 ? .info : .debug, "queue \(index): \(whereNow) is shared (it waited \(detector.lastWaitPercent) % of the time it wanted to run); polling at most \(response.pollCeilingNanoseconds / 1000) µs\(moved). Workers on CPUs named with --cpus LIST keep their placement and poll window.")
        case .becameDedicated:
            window?.removeLimit()
            var moved = ""
            if core.placement == .floating, let pinned = policy.cpu, let cpus = response.floatOver {
                let current = CPUTopology.currentThreadCPUs()
                if current != cpus {
                    core.placement = .leftAlone
                    moved = "; its affinity was set from outside (CPUs \(current)), so the daemon leaves its placement alone"
                } else {
                    let r = CPUTopology.setCurrentThreadCPUs([pinned])
                    if r == 0 {
                        core.placement = .asStarted
                        moved = ", pinned to CPU \(pinned) again"
                    } else {
                        moved = "; pinning it to CPU \(pinned) again failed (errno \(r)), it stays on CPUs \(cpus)"
                    }
                }
            }
            logger.debug("queue \(index): quiet again (waited \(detector.lastWaitPercent) %); polling up to \((window?.maximum ?? 0) / 1000) µs\(moved)")
        }
        cvh_store_release_u64(gauges, window?.current ?? 0)
        cvh_store_release_u64(gauges + 2, change == .becameShared ? 1 : 0)
    }

    /// Sleeps until a kick, a storage completion or a stop request, and drains what woke it. The fd
    /// list lives in `pollFDs` (allocated once): a queue whose requests come far apart sleeps once
    /// per request.
    private func sleep() {
        pollFDs[0] = pollfd(fd: kickFD, events: Int16(POLLIN), revents: 0)
        pollFDs[1] = pollfd(fd: stopEvent.rawValue, events: Int16(POLLIN), revents: 0)
        var count = 2
        if handler.inFlight > 0, let c = handler.completionEventFD {
            pollFDs[2] = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
            count = 3
        }
        // Only EINTR can fail here (workers block the daemon's signals); the loop then polls the
        // ring and, finding it empty, comes back.
        guard Glibc.poll(pollFDs, nfds_t(count), -1) > 0 else { return }
        if pollFDs[0].revents != 0 { drainEventFD(kickFD) }
        // Drained before the next reap: a completion after this point makes the fd readable again.
        if count == 3 && pollFDs[2].revents != 0 { drainEventFD(pollFDs[2].fd) }
    }

    /// Completes everything in flight without taking new requests.
    private func drain() {
        let start = monotonicNanoseconds()
        var nextLog = start + Self.drainLogIntervalNanoseconds
        // One pass even with nothing in flight: it takes the requests a previous back-end left in the
        // in-flight log (a worker stopped before its first pass has not resubmitted them yet).
        if !broken {
            do { notify(try poll(false)) } catch { fail(error) }
        }
        while handler.inFlight > 0 {
            do {
                notify(try poll(false))
            } catch {
                fail(error)
            }
            guard handler.inFlight > 0 else { break }
            if let c = handler.completionEventFD {
                // Bounded wait so the progress log below keeps coming even if storage hangs.
                if (try? Poll.readable([c], timeoutMs: 100))?.isEmpty == false { drainEventFD(c) }
            }
            let now = monotonicNanoseconds()
            if now >= nextLog {
                logger.warning("queue \(index): waiting for \(handler.inFlight) request(s) in flight for \((now - start) / 1_000_000_000) s; storage is slow")
                nextLog = now + Self.drainLogIntervalNanoseconds
            }
        }
    }
}

@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
