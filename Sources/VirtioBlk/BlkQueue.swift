#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import GuestMemory
import Virtqueue

/// Turns one virtqueue's descriptor chains into block requests on an engine, and completions back into
/// status bytes and used-ring entries. Knows nothing of vhost-user or eventfds: it is handed a ring in
/// mapped memory and an engine, and is driven by a worker calling `poll`.
///
/// Generic over the engine so every per-request call is specialised (no existential dispatch). All
/// per-request state lives in buffers allocated once in `init`: one slot per descriptor head (a head
/// cannot be in flight twice), with room for its iovecs.
public final class BlkQueue<E: BlockEngine> {
    /// Mutated only by the queue's worker (through `poll`); public so the specialised hot path can be
    /// inlined into the module that picks the engine.
    ///
    /// `@exclusivity(unchecked)` on the per-request state: one thread owns a queue (ARCHITECTURE.md,
    /// "Threads"), so the dynamic exclusivity checks Swift would otherwise make on every access of a
    /// class's `var` can never fire; bench/HotPath measured them at a third of the instructions per
    /// request (1110 → 757).
    @exclusivity(unchecked) public var ring: SplitQueue
    public let engine: E
    public let params: BlkQueueParams
    /// Keeps the mapping alive while requests point into it; `view` is the ARC-free handle.
    private let memoryMap: GuestMemoryMap
    @usableFromInline let memory: GuestMemoryView

    /// Data iovecs one request may use: seg_max plus two for buffers split at a region boundary.
    public static var iovecsPerSlot: Int { Int(BlkConfig.segMax) + 2 }

    @usableFromInline struct Slot {
        @usableFromInline var status: UnsafeMutablePointer<UInt8>?
        @usableFromInline var usedLength: UInt32
        @usableFromInline var busy: Bool
        @usableFromInline init(status: UnsafeMutablePointer<UInt8>?, usedLength: UInt32, busy: Bool) {
            self.status = status
            self.usedLength = usedLength
            self.busy = busy
        }
    }

    @usableFromInline let slots: UnsafeMutablePointer<Slot>
    @usableFromInline let iovecs: UnsafeMutablePointer<iovec>
    @exclusivity(unchecked) @usableFromInline var segments: SegmentBuffer
    @usableFromInline let completions: UnsafeMutableBufferPointer<BlockCompletion>
    @exclusivity(unchecked) public var inFlight = 0

    /// Requests that failed because of the driver (bad chain or bad request), and the last reason.
    /// Read by the worker for rate-limited logging; written only here.
    @exclusivity(unchecked) public var guestErrors: UInt64 = 0
    public var lastGuestError: String = ""

    public init(ring: SplitQueue, memory: GuestMemoryMap, engine: E, params: BlkQueueParams) {
        self.ring = ring
        self.engine = engine
        self.params = params
        memoryMap = memory
        self.memory = memory.view
        let n = Int(ring.size)
        slots = .allocate(capacity: n)
        slots.initialize(repeating: Slot(status: nil, usedLength: 0, busy: false), count: n)
        // Every buffer is written once here so its pages are placed now, under the NUMA policy the
        // caller chose for this queue, rather than wherever the first request happens to touch them.
        iovecs = .allocate(capacity: n * Self.iovecsPerSlot)
        iovecs.initialize(repeating: iovec(), count: n * Self.iovecsPerSlot)
        // A chain can name at most `size` descriptors directly or 65535 through an indirect table;
        // segments beyond what one request may carry fail the request anyway, so keep a bounded buffer:
        // header + data + status + region splits.
        segments = SegmentBuffer(capacity: Self.iovecsPerSlot + 8)
        completions = .allocate(capacity: max(n, engine.capacity))
        completions.initialize(repeating: BlockCompletion(tag: 0, result: 0))
    }

    deinit {
        ring.discardResubmissions()
        slots.deallocate()
        iovecs.deallocate()
        segments.deallocate()
        completions.deallocate()
    }

    public var completionEventFD: Int32? { engine.completionEventFD }

    /// One pass: take new chains (unless draining), submit them in one batch, reap completions, and
    /// publish the used ring once. Throws when the ring itself is broken.
    @inlinable
    public func poll(acceptNew: Bool) throws(QueueError) -> PassResult {
        var progress = 0
        var pushed = false
        // Requests a previous back-end took and never completed (INFLIGHT_SHMFD) go first, and also
        // while draining: they were accepted long ago, and the driver is still waiting for them.
        if ring.resubmissionsPending > 0 {
            while let head = ring.popResubmission() {
                guard !slots[Int(head)].busy else {
                    throw QueueError("in-flight log names head \(head) twice")
                }
                if case .completed = start(head: head) { pushed = true }
                progress += 1
            }
        }
        if acceptNew {
            var n = try ring.pending()
            // Requests are handed to the engine in chunks of its `submitBatch` (see there: a whole
            // pass in one system call starves the disk), the rest at the end of the pass.
            let batch = engine.submitBatch
            var unsubmitted = 0
            while n > 0 {
                n -= 1
                let head = try ring.popHead()
                guard !slots[Int(head)].busy else {
                    throw QueueError("driver reused head \(head) while it is still in flight")
                }
                switch start(head: head) {
                case .submitted:
                    unsubmitted &+= 1
                    if unsubmitted == batch {
                        engine.submit()
                        unsubmitted = 0
                    }
                case .completed: pushed = true
                }
                progress += 1
            }
        }
        // A submit at the end of every pass for what is left. While anything is in flight it also
        // retries requests an engine could not hand to the kernel yet (io_submit's EAGAIN), so they
        // do not wait for the guest's next request.
        if inFlight > 0 { engine.submit() }
        let done = engine.reap(into: completions)
        var i = 0
        while i < done {
            let c = completions[i]
            finish(head: UInt16(truncatingIfNeeded: c.tag), status: c.result == 0 ? BlkStatus.ok : BlkStatus.ioError)
            i += 1
        }
        if done > 0 { pushed = true }
        progress += done
        guard pushed else { return PassResult(progress: progress, notify: false) }
        ring.publishUsed()
        return PassResult(progress: progress, notify: ring.needsNotification())
    }

    /// Arms notifications and re-checks; true when the worker may sleep (nothing arrived meanwhile).
    public func prepareToSleep() throws(QueueError) -> Bool {
        try !ring.enableNotifications()
    }

    public func stopSleeping() { ring.disableNotifications() }

    @usableFromInline enum StartOutcome { case submitted, completed }

    /// Completes `head` now with `status` and the given used length.
    @inlinable
    func completeNow(head: UInt16, status: UInt8, statusPointer: UnsafeMutablePointer<UInt8>?, usedLength: UInt32) -> StartOutcome {
        statusPointer?.pointee = status
        ring.pushUsed(head: head, length: statusPointer == nil ? 0 : usedLength)
        return .completed
    }

    @inlinable
    func finish(head: UInt16, status: UInt8) {
        let s = slots[Int(head)]
        s.status?.pointee = status
        ring.pushUsed(head: head, length: s.usedLength)
        slots[Int(head)].busy = false
        inFlight -= 1
    }

    @usableFromInline
    func noteGuestError(_ reason: @autoclosure () -> String) {
        guestErrors &+= 1
        // Keep only the first reason per reporting window: formatting costs an allocation, so do it
        // once, not for every request of a misbehaving guest.
        if lastGuestError.isEmpty { lastGuestError = reason() }
    }

    /// Called by the worker after logging `lastGuestError`.
    public func clearGuestErrorReason() { lastGuestError = "" }
}
