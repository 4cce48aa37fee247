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
        return head
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
    }

    /// Makes every pushed element visible: release so the elements are seen before the index.
    @inlinable
    public func publishUsed() {
        cvh_store_release_u16(used + 2, usedIdx)
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
