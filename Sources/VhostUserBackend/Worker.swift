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
        thread = try PinnedThread(name: "vq\(index)", cpu: policy.cpu) { [self] in run() }
    }

    deinit { stopFlag.deallocate() }

    /// Asks the worker to stop taking requests, waits until every in-flight request has completed and
    /// the used ring is published, and joins the thread.
    func stop() {
        cvh_store_release_u32(stopFlag, 1)
        stopEvent.signal()
        thread?.join()
        thread = nil
    }

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

    private func run() {
        var reported: UInt64 = 0
        var lastReport = monotonicNanoseconds()
        var idleSince: UInt64 = 0
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
                    idleSince = 0
                    continue
                }
                // Idle pass: check the clock only now, so a busy queue pays nothing for it.
                let now = monotonicNanoseconds()
                if now - lastReport > 1_000_000_000 { // at most one guest-error line a second
                    reportGuestErrors(&reported)
                    lastReport = now
                }
                guard let window = policy.pollWindowNanoseconds, kickFD >= 0 else { continue }
                if idleSince == 0 { idleSince = now; continue }
                if now - idleSince < window { continue }
                if try handler.prepareToSleep() {
                    sleep()
                }
                handler.stopSleeping()
                idleSince = 0
            } catch {
                fail(error)
            }
        }
        drain()
        reportGuestErrors(&reported)
    }

    /// Sleeps until a kick, a storage completion or a stop request.
    private func sleep() {
        var fds = [kickFD, stopEvent.rawValue]
        let completion = handler.inFlight > 0 ? handler.completionEventFD : nil
        if let c = completion { fds.append(c) }
        _ = try? Poll.readable(fds, timeoutMs: -1)
        drainEventFD(kickFD)
        // Drain before the next reap: a completion after this point makes the fd readable again.
        if let c = completion { drainEventFD(c) }
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
