import CVhostLinux
import GuestMemory

/// Why a queue cannot be used at all (as opposed to one bad request). The device stops the queue and
/// reports it (vhost-user: the err eventfd; virtio 1.2 §2.1.2: DEVICE_NEEDS_RESET).
public struct QueueError: Error, CustomStringConvertible, Equatable {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Where a split ring lives and how big it is, as the front-end configured it.
public struct SplitQueueConfig: Equatable, Sendable {
    public var size: UInt16
    public var descriptorTable: GuestAddress
    public var availRing: GuestAddress
    public var usedRing: GuestAddress
    public var eventIdx: Bool
    public init(size: UInt16, descriptorTable: GuestAddress, availRing: GuestAddress, usedRing: GuestAddress, eventIdx: Bool) {
        self.size = size
        self.descriptorTable = descriptorTable
        self.availRing = availRing
        self.usedRing = usedRing
        self.eventIdx = eventIdx
    }

    /// Largest queue the virtio PCI transport allows (virtio 1.2 §2.7: Queue Size ≤ 32768) is more than
    /// QEMU uses; QEMU's VIRTQUEUE_MAX_SIZE is 1024, and so is ours.
    public static let maxSize: UInt16 = 1024

    /// virtio 1.2 §2.7: "Queue Size ... MUST be a power of 2" for split rings.
    public static func isValidSize(_ n: UInt32) -> Bool { n >= 1 && n <= UInt32(maxSize) && n & (n - 1) == 0 }
}

/// A split virtqueue seen from the device (virtio 1.2 §2.7). A plain struct held by one worker thread;
/// the ring memory is shared with the driver and accessed only through explicit-order atomics where
/// the driver may be writing concurrently.
public struct SplitQueue {
    public let size: UInt16
    @usableFromInline let mask: UInt16
    @usableFromInline let desc: UnsafeMutableRawPointer
    @usableFromInline let avail: UnsafeMutableRawPointer
    @usableFromInline let used: UnsafeMutableRawPointer
    public let eventIdx: Bool
    /// Next avail ring slot we will read ("last_avail_idx").
    public var nextAvail: UInt16
    /// Our copy of used->idx: the driver never writes it.
    public var usedIdx: UInt16
    /// used->idx when we last decided whether to notify (EVENT_IDX's "old" index).
    @usableFromInline var signalledUsed: UInt16

    /// This queue's region of the shared in-flight log (INFLIGHT_SHMFD), nil when there is none.
    @usableFromInline var inflight: UnsafeMutableRawPointer?
    /// Stamps heads in the order they were taken, so a restarted back-end resubmits oldest first.
    @usableFromInline var inflightCounter: UInt64 = 1
    /// Our copy of the log's last_batch_head, and how many heads were pushed since the last publish.
    @usableFromInline var inflightLastBatchHead: UInt16 = 0
    @usableFromInline var inflightBatch: UInt16 = 0
    /// Heads a previous back-end left in flight, oldest first, and how many are still to be taken. A raw
    /// buffer, not an Array, so that SplitQueue stays a trivial type: with a reference inside, every
    /// access to the ring stored in BlkQueue would retain and release it (bench/HotPath measured
    /// +138 instructions per request). Allocated only when there is something to resubmit; freed when
    /// the last one is taken, or by `discardResubmissions`.
    @usableFromInline var resubmissions: UnsafeMutablePointer<UInt16>?
    @usableFromInline var resubmitNext = 0
    /// Resubmissions still to take; a plain counter so the per-pass check touches no array.
    public var resubmissionsPending: Int { resubmitPending }
    @usableFromInline var resubmitPending = 0

    // Ring layouts (virtio 1.2 §2.7.6, §2.7.8): avail = flags u16, idx u16, ring[size] u16, used_event u16;
    // used = flags u16, idx u16, ring[size] {u32 id, u32 len}, avail_event u16. Descriptors 16 bytes.
    public static func descriptorTableBytes(_ size: UInt16) -> UInt64 { 16 * UInt64(size) }
    public static func availRingBytes(_ size: UInt16) -> UInt64 { 6 + 2 * UInt64(size) }
    public static func usedRingBytes(_ size: UInt16) -> UInt64 { 6 + 8 * UInt64(size) }

    /// Maps the three ring areas, each entirely inside guest memory, with the alignment virtio 1.2
    /// §2.7 requires (descriptor table 16, avail 2, used 4), and starts from the given indices.
    public init(config: SplitQueueConfig, memory: GuestMemoryView, nextAvail: UInt16, usedIdx: UInt16) throws(QueueError) {
        guard SplitQueueConfig.isValidSize(UInt32(config.size)) else { throw QueueError("queue size \(config.size) is not a power of two in 1...1024") }
        guard config.descriptorTable.rawValue % 16 == 0, config.availRing.rawValue % 2 == 0, config.usedRing.rawValue % 4 == 0 else {
            throw QueueError("ring addresses misaligned (desc \(config.descriptorTable), avail \(config.availRing), used \(config.usedRing))")
        }
        guard let d = memory.translate(config.descriptorTable, length: Self.descriptorTableBytes(config.size)) else {
            throw QueueError("descriptor table at \(config.descriptorTable) is outside guest memory")
        }
        guard let a = memory.translate(config.availRing, length: Self.availRingBytes(config.size)) else {
            throw QueueError("avail ring at \(config.availRing) is outside guest memory")
        }
        guard let u = memory.translate(config.usedRing, length: Self.usedRingBytes(config.size)) else {
            throw QueueError("used ring at \(config.usedRing) is outside guest memory")
        }
        size = config.size
        mask = config.size &- 1
        desc = d
        avail = a
        used = u
        eventIdx = config.eventIdx
        self.nextAvail = nextAvail
        self.usedIdx = usedIdx
        signalledUsed = usedIdx
    }

    /// How many new heads the driver has published. An index that moved by more than the queue size
    /// cannot come from a correct driver (virtio 1.2 §2.7.6) and breaks the queue.
    @inlinable
    public func pending() throws(QueueError) -> UInt16 {
        // Acquire: the avail ring entries and the descriptors they name were written before idx.
        let idx = cvh_load_acquire_u16(avail + 2)
        let n = idx &- nextAvail
        guard n <= size else { throw QueueError("avail idx \(idx) is \(n) ahead of \(nextAvail), more than the queue size \(size)") }
        return n
    }

    /// Takes the next head. Call only after `pending()` reported one.
    @inlinable
    public mutating func popHead() throws(QueueError) -> UInt16 {
        let slot = Int(nextAvail & mask)
        let head = (avail + 4 + 2 * slot).loadUnaligned(as: UInt16.self)
        guard head < size else { throw QueueError("avail ring names head \(head), queue size is \(size)") }
        nextAvail &+= 1
        if let log = inflight { markInFlight(log, head) }
        return head
    }

    /// vhost-user.rst "Inflight I/O tracking", taking a head: stamp it with the global counter, then
    /// mark it in flight. Done before any work on the request, so a crash from here on resubmits it.
    @inlinable
    mutating func markInFlight(_ log: UnsafeMutableRawPointer, _ head: UInt16) {
        let state = log + InflightLayout.headerBytes + InflightLayout.descriptorStateBytes * Int(head)
        state.storeBytes(of: inflightCounter, toByteOffset: InflightLayout.stateCounterOffset, as: UInt64.self)
        state.storeBytes(of: 1, toByteOffset: InflightLayout.stateInflightOffset, as: UInt8.self)
        inflightCounter &+= 1
    }

    /// The next head a previous back-end took and never completed (see `attachInflight`), or nil.
    /// Its in-flight mark and counter stay as they are: it is still the same request.
    @inlinable
    public mutating func popResubmission() -> UInt16? {
        guard resubmitPending > 0, let list = resubmissions else { return nil }
        let head = list[resubmitNext]
        resubmitNext += 1
        resubmitPending -= 1
        if resubmitPending == 0 { discardResubmissions() }
        return head
    }

    /// Frees the resubmission list (the owner of the ring calls this when it goes away; the requests
    /// stay marked in the log, so a later start resubmits them).
    public mutating func discardResubmissions() {
        resubmissions?.deallocate()
        resubmissions = nil
        resubmitNext = 0
        resubmitPending = 0
    }

    /// Raw descriptor i of the main table (i < size, checked by the caller).
    @inlinable
    func descriptor(_ i: UInt16) -> Descriptor {
        Descriptor(at: desc + 16 * Int(i))
    }

    /// Writes a used element; visible to the driver only after `publishUsed()`.
    @inlinable
    public mutating func pushUsed(head: UInt16, length: UInt32) {
        let slot = Int(usedIdx & mask)
        let e = used + 4 + 8 * slot
        e.storeBytes(of: UInt32(head), as: UInt32.self)
        (e + 4).storeBytes(of: length, as: UInt32.self)
        usedIdx &+= 1
        if let log = inflight {
            // Spec, supplying used buffers, steps 2-3: chain the head into the current batch.
            let state = log + InflightLayout.headerBytes + InflightLayout.descriptorStateBytes * Int(head)
            state.storeBytes(of: inflightLastBatchHead, toByteOffset: InflightLayout.stateNextOffset, as: UInt16.self)
            log.storeBytes(of: head, toByteOffset: InflightLayout.lastBatchHeadOffset, as: UInt16.self)
            inflightLastBatchHead = head
            inflightBatch &+= 1
        }
    }

    /// Makes every pushed element visible: release so the elements are seen before the index.
    @inlinable
    public mutating func publishUsed() {
        cvh_store_release_u16(used + 2, usedIdx)
        if let log = inflight, inflightBatch > 0 { unmarkBatch(log) }
    }

    /// Spec, supplying used buffers, steps 5-6: with used->idx published, unmark the batch, then record
    /// the index the log is now consistent with. A crash between the two is what `attachInflight`'s
    /// used_idx comparison repairs.
    @inlinable
    mutating func unmarkBatch(_ log: UnsafeMutableRawPointer) {
        // Store-store ordering (free on x86): the unmarks must not become visible before used->idx.
        cvh_fence_release()
        var head = inflightLastBatchHead
        var n = inflightBatch
        while n > 0 {
            let state = log + InflightLayout.headerBytes + InflightLayout.descriptorStateBytes * Int(head)
            state.storeBytes(of: 0, toByteOffset: InflightLayout.stateInflightOffset, as: UInt8.self)
            // `next` is our own write, but the buffer is shared with the front-end: mask it into the ring.
            head = state.load(fromByteOffset: InflightLayout.stateNextOffset, as: UInt16.self) & mask
            n &-= 1
        }
        cvh_store_release_u16(log + InflightLayout.usedIdxOffset, usedIdx)
        inflightBatch = 0
    }

    /// Starts logging this queue's requests in `region`, and recovers what a previous back-end left
    /// there (vhost-user.rst, "Inflight I/O tracking", "When reconnecting"):
    /// - a fresh region (version 0) is initialised: nothing is in flight, the ring resumes where
    ///   SET_VRING_BASE put it;
    /// - otherwise a batch published but not yet unmarked is unmarked, the heads still marked are queued
    ///   for resubmission oldest first, and the next avail index becomes used->idx plus their number:
    ///   every head taken from the ring is either used or still marked, whatever SET_VRING_BASE said
    ///   (QEMU sends used->idx after a back-end crash, since it could not ask the dead one).
    /// Call before the first poll, with `usedIdx` read from the ring. Every value read from the log is
    /// bounded by the ring size, so a corrupt log can only produce requests that are validated like
    /// any other.
    public mutating func attachInflight(_ region: InflightRegion) throws(QueueError) -> InflightRecovery {
        guard region.capacity >= size else {
            throw QueueError("the in-flight log has room for \(region.capacity) descriptors, the ring has \(size)")
        }
        let log = region.base
        let version = log.load(fromByteOffset: InflightLayout.versionOffset, as: UInt16.self)
        func state(_ h: UInt16) -> UnsafeMutableRawPointer {
            log + InflightLayout.headerBytes + InflightLayout.descriptorStateBytes * Int(h)
        }
        func isMarked(_ h: UInt16) -> Bool {
            state(h).load(fromByteOffset: InflightLayout.stateInflightOffset, as: UInt8.self) == 1
        }
        inflight = log
        inflightBatch = 0
        discardResubmissions()
        if version == 0 {
            // The front-end allocates the buffer zeroed, but a reused one could hold anything: clear
            // this ring's states so a later restart cannot mistake garbage for requests.
            (log + InflightLayout.headerBytes).initializeMemory(
                as: UInt8.self, repeating: 0, count: InflightLayout.descriptorStateBytes * Int(size))
            log.storeBytes(of: 0, toByteOffset: 0, as: UInt64.self) // features: none defined
            log.storeBytes(of: size, toByteOffset: InflightLayout.descNumOffset, as: UInt16.self)
            log.storeBytes(of: 0, toByteOffset: InflightLayout.lastBatchHeadOffset, as: UInt16.self)
            log.storeBytes(of: usedIdx, toByteOffset: InflightLayout.usedIdxOffset, as: UInt16.self)
            cvh_fence_release()
            log.storeBytes(of: InflightLayout.version, toByteOffset: InflightLayout.versionOffset, as: UInt16.self)
            inflightLastBatchHead = 0
            inflightCounter = 1
            return InflightRecovery(fresh: true, resubmitted: 0, completedUnmarked: 0)
        }
        guard version == InflightLayout.version else {
            throw QueueError("the in-flight log has version \(version); only \(InflightLayout.version) is defined")
        }
        var completedUnmarked = 0
        let loggedUsed = log.load(fromByteOffset: InflightLayout.usedIdxOffset, as: UInt16.self)
        if loggedUsed != usedIdx {
            // Steps 1a-1c: the last batch reached the used ring but its marks were not cleared.
            var n = min(Int(usedIdx &- loggedUsed), Int(size))
            var head = log.load(fromByteOffset: InflightLayout.lastBatchHeadOffset, as: UInt16.self) & mask
            while n > 0 {
                if isMarked(head) { completedUnmarked += 1 }
                state(head).storeBytes(of: 0, toByteOffset: InflightLayout.stateInflightOffset, as: UInt8.self)
                head = state(head).load(fromByteOffset: InflightLayout.stateNextOffset, as: UInt16.self) & mask
                n -= 1
            }
            cvh_fence_release()
            log.storeBytes(of: usedIdx, toByteOffset: InflightLayout.usedIdxOffset, as: UInt16.self)
        }
        // Step 2: what is still marked was taken and never completed; oldest first.
        var pending: [(counter: UInt64, head: UInt16)] = []
        for h in 0..<size where isMarked(h) {
            pending.append((state(h).load(fromByteOffset: InflightLayout.stateCounterOffset, as: UInt64.self), h))
        }
        pending.sort { $0.counter < $1.counter }
        if !pending.isEmpty {
            let list = UnsafeMutablePointer<UInt16>.allocate(capacity: pending.count)
            for (i, p) in pending.enumerated() { list[i] = p.head }
            resubmissions = list
            resubmitPending = pending.count
        }
        inflightCounter = (pending.last?.counter ?? 0) &+ 1
        inflightLastBatchHead = log.load(fromByteOffset: InflightLayout.lastBatchHeadOffset, as: UInt16.self) & mask
        log.storeBytes(of: size, toByteOffset: InflightLayout.descNumOffset, as: UInt16.self)
        nextAvail = usedIdx &+ UInt16(pending.count)
        return InflightRecovery(fresh: false, resubmitted: pending.count, completedUnmarked: completedUnmarked)
    }

    /// Whether the driver wants an interrupt for what was published since the last call
    /// (virtio 1.2 §2.7.10: EVENT_IDX's used_event, otherwise avail->flags NO_INTERRUPT).
    @inlinable
    public mutating func needsNotification() -> Bool {
        // Full fence: our used idx store must be visible before we read the driver's used_event /
        // flags, or both sides can miss each other (the classic lost-wakeup race).
        cvh_fence_seq_cst()
        let old = signalledUsed
        let new = usedIdx
        signalledUsed = new
        if eventIdx {
            let event = cvh_load_relaxed_u16(avail + 4 + 2 * Int(size))
            // vring_need_event: notify when `event` lies in (old, new].
            return new &- event &- 1 < new &- old
        }
        let flags = cvh_load_relaxed_u16(avail)
        return flags & 1 == 0 // VIRTQ_AVAIL_F_NO_INTERRUPT
    }

    /// Asks the driver to kick us for new buffers; returns true if buffers arrived meanwhile (then the
    /// caller must poll again instead of sleeping).
    @inlinable
    public func enableNotifications() throws(QueueError) -> Bool {
        if eventIdx {
            // avail_event = next index we will read: the driver kicks once it publishes past it.
            cvh_store_relaxed_u16(used + 4 + 8 * Int(size), nextAvail)
        } else {
            cvh_store_relaxed_u16(used, 0) // clear VIRTQ_USED_F_NO_NOTIFY
        }
        // Full fence between publishing our wish and re-checking the ring (same race as above).
        cvh_fence_seq_cst()
        return try pending() > 0
    }

    /// While polling, kicks are wasted work for the driver: suppress them where the driver lets us.
    @inlinable
    public func disableNotifications() {
        if !eventIdx {
            cvh_store_relaxed_u16(used, 1) // VIRTQ_USED_F_NO_NOTIFY
        }
        // With EVENT_IDX, leaving avail_event behind the driver's index suppresses further kicks.
    }
}

/// One 16-byte descriptor (virtio 1.2 §2.7.5): le64 addr, le32 len, le16 flags, le16 next.
public struct Descriptor {
    public var address: UInt64
    public var length: UInt32
    public var flags: UInt16
    public var next: UInt16

    public static let flagNext: UInt16 = 1
    public static let flagWrite: UInt16 = 2
    public static let flagIndirect: UInt16 = 4

    @inlinable
    init(at p: UnsafeRawPointer) {
        address = p.loadUnaligned(as: UInt64.self)
        length = (p + 8).loadUnaligned(as: UInt32.self)
        flags = (p + 12).loadUnaligned(as: UInt16.self)
        next = (p + 14).loadUnaligned(as: UInt16.self)
    }
}

/// What one poll pass of a queue processor did.
public struct PassResult {
    /// Requests taken from the ring plus completions returned to it: 0 means the pass was idle.
    public var progress: Int
    /// The driver asked to be notified of what this pass published.
    public var notify: Bool
    @inlinable public init(progress: Int, notify: Bool) {
        self.progress = progress
        self.notify = notify
    }
}
