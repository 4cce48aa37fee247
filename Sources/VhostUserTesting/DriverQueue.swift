#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import VhostSystem

/// One buffer of a descriptor chain, as the driver describes it.
public struct BufferSegment: Sendable, Equatable {
    public var gpa: UInt64
    public var length: UInt32
    /// VIRTQ_DESC_F_WRITE: the device writes this buffer (otherwise it only reads it).
    public var deviceWritable: Bool

    public init(gpa: UInt64, length: UInt32, deviceWritable: Bool) {
        self.gpa = gpa
        self.length = length
        self.deviceWritable = deviceWritable
    }

    public init(_ buffer: GuestBuffer, deviceWritable: Bool) {
        self.init(gpa: buffer.gpa, length: UInt32(buffer.length), deviceWritable: deviceWritable)
    }
}

/// An element of the used ring (virtio 1.2 §2.7.8 `struct virtq_used_elem`).
public struct UsedElement: Sendable, Equatable, CustomStringConvertible {
    public var id: UInt32
    public var length: UInt32
    public init(id: UInt32, length: UInt32) {
        self.id = id
        self.length = length
    }
    public var description: String { "used{id \(id), len \(length)}" }
}

/// `struct virtq_desc` flags (virtio 1.2 §2.7.5).
public struct DescriptorFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let next = DescriptorFlags(rawValue: 1)
    public static let write = DescriptorFlags(rawValue: 2)
    public static let indirect = DescriptorFlags(rawValue: 4)
}

public enum DriverQueueError: Error, CustomStringConvertible, Equatable {
    case noFreeDescriptors(needed: Int, free: Int)
    case emptyChain
    case timeout(queue: UInt32, waitingFor: Int, got: Int, timeoutMs: Int)
    /// Completions arrived but the call eventfd never fired although the driver asked for it.
    case missingNotification(queue: UInt32, completionsPending: Int)
    /// The device moved used->idx by more than the queue size: its used ring is corrupt.
    case usedIndexJump(queue: UInt32, from: UInt16, to: UInt16)

    public var description: String {
        switch self {
        case .noFreeDescriptors(let n, let f): "need \(n) descriptors, \(f) free"
        case .emptyChain: "a descriptor chain needs at least one buffer"
        case .timeout(let q, let w, let g, let t): "queue \(q): \(g) of \(w) completions after \(t) ms"
        case .missingNotification(let q, let n):
            "queue \(q): \(n) completions in the used ring but no call notification within the timeout"
        case .usedIndexJump(let q, let a, let b): "queue \(q): used idx jumped from \(a) to \(b)"
        }
    }
}

/// The driver side of a split virtqueue (virtio 1.2 §2.7) living in a `GuestMemoryArena`: what a guest
/// kernel's virtio_ring does, written independently so it can check a back-end. Not thread-safe: one
/// thread drives a queue at a time (it may be a different thread from the one that created it).
public final class DriverQueue: @unchecked Sendable {
    public static let descriptorSize = 16
    public static let usedElementSize = 8
    /// VRING_AVAIL_F_NO_INTERRUPT / VRING_USED_F_NO_NOTIFY (virtio 1.2 §2.7.7, §2.7.10).
    public static let availFlagNoInterrupt: UInt16 = 1
    public static let usedFlagNoNotify: UInt16 = 1

    /// How `waitForUsed` learns about completions.
    public enum WaitMode: Sendable {
        /// Sleep in poll(2) on the call eventfd; completions without a notification are an error.
        case callEventFD
        /// Re-read the used ring until enough arrive (and tell the device no interrupts are needed).
        case polling
    }

    public let index: UInt32
    public let size: UInt16
    public let arena: GuestMemoryArena
    public let descriptorTable: GuestBuffer
    public let availRing: GuestBuffer
    public let usedRing: GuestBuffer
    public let kickFD: EventFD
    public let callFD: EventFD
    /// Handed to the back-end with SET_VRING_ERR; it writes here when it finds the ring broken.
    public let errFD: EventFD

    /// VIRTIO_F_RING_EVENT_IDX was negotiated: use used_event/avail_event instead of the flags.
    public var eventIdx = false
    public var waitMode: WaitMode = .callEventFD {
        didSet { writeAvailFlags() }
    }

    /// Shadow of avail->idx: the next free avail slot (free-running, wraps at 2^16).
    public private(set) var availIndex: UInt16 = 0
    /// avail->idx as it was at the last notification decision (EVENT_IDX needs the old value).
    private var availIndexAtLastKick: UInt16 = 0
    /// How far the driver has consumed the used ring (free-running).
    public private(set) var lastUsedIndex: UInt16 = 0
    /// Kicks actually sent, and call notifications seen (for suppression tests).
    public private(set) var kicksSent = 0
    public private(set) var notificationsSeen = 0

    private var freeDescriptors: [UInt16]
    /// Descriptor ids each in-flight head owns; the driver's own record, never read back from the ring.
    private var chains: [UInt16: [UInt16]] = [:]
    /// Indirect tables kept per head so repeated submissions reuse arena memory.
    private var indirectTables: [UInt16: GuestBuffer] = [:]

    public var inFlight: Int { chains.count }
    public var freeDescriptorCount: Int { freeDescriptors.count }

    /// Lays out the three rings in `arena` (descriptor table 16-aligned, avail 2-aligned, used
    /// 4-aligned: virtio 1.2 §2.7 "Virtqueue Alignment") and creates the kick, call and err eventfds.
    public init(index: UInt32, size: Int, arena: GuestMemoryArena, region: Int? = nil) throws {
        // Split rings need a power-of-two size because slots are `idx & (size - 1)`; 32768 is the spec's maximum.
        precondition(size > 0 && size <= 32768 && size & (size - 1) == 0, "queue size must be a power of two ≤ 32768")
        self.index = index
        self.size = UInt16(size)
        self.arena = arena
        // The descriptor table gets a page of alignment (guest kernels allocate rings page aligned);
        // avail and used follow with only the spec's minimum alignment, so the back-end sees the
        // least aligned layout a driver may legally use.
        descriptorTable = try arena.allocate(Self.descriptorSize * size, alignment: 4096, region: region)
        availRing = try arena.allocate(6 + 2 * size, alignment: 2, region: region)
        usedRing = try arena.allocate(6 + Self.usedElementSize * size, alignment: 4, region: region)
        descriptorTable.fill(0)
        availRing.fill(0)
        usedRing.fill(0)
        kickFD = try EventFD()
        callFD = try EventFD()
        errFD = try EventFD()
        freeDescriptors = (0..<UInt16(size)).reversed().map { $0 }
    }

    /// SET_VRING_ADDR's payload fields: the rings' addresses in the front-end's VA space.
    public var ringUserAddresses: (descriptorTable: UInt64, usedRing: UInt64, availRing: UInt64) {
        (arena.userAddress(ofGPA: descriptorTable.gpa)!, arena.userAddress(ofGPA: usedRing.gpa)!,
         arena.userAddress(ofGPA: availRing.gpa)!)
    }

    // MARK: Ring field offsets (virtio 1.2 §2.7.6 and §2.7.8)

    private var availFlagsPointer: UnsafeMutableRawPointer { availRing.pointer }
    private var availIdxPointer: UnsafeMutableRawPointer { availRing.pointer + 2 }
    private func availSlotPointer(_ slot: Int) -> UnsafeMutableRawPointer { availRing.pointer + 4 + 2 * slot }
    private var usedEventPointer: UnsafeMutableRawPointer { availRing.pointer + 4 + 2 * Int(size) }
    private var usedFlagsPointer: UnsafeMutableRawPointer { usedRing.pointer }
    private var usedIdxPointer: UnsafeMutableRawPointer { usedRing.pointer + 2 }
    private func usedElementPointer(_ slot: Int) -> UnsafeMutableRawPointer { usedRing.pointer + 4 + Self.usedElementSize * slot }
    private var availEventPointer: UnsafeMutableRawPointer { usedRing.pointer + 4 + Self.usedElementSize * Int(size) }

    private func writeAvailFlags() {
        // Without EVENT_IDX the only way to say "no interrupts please" is the avail flag; with it, the
        // flag is ignored by the device and used_event governs (virtio 1.2 §2.7.10).
        let flags = waitMode == .polling ? Self.availFlagNoInterrupt : 0
        cvh_store_release_u16(availFlagsPointer, flags)
    }

    // MARK: Adding buffers

    /// Writes descriptor `i` of the ring's table: le64 addr, le32 len, le16 flags, le16 next.
    public func writeDescriptor(_ i: UInt16, gpa: UInt64, length: UInt32, flags: DescriptorFlags, next: UInt16) {
        precondition(i < size, "descriptor index outside the table")
        Self.writeDescriptor(into: descriptorTable.pointer + Self.descriptorSize * Int(i),
                             gpa: gpa, length: length, flags: flags.rawValue, next: next)
    }

    /// Writes one 16-byte descriptor at `p` (a ring's table or an indirect table).
    public static func writeDescriptor(into p: UnsafeMutableRawPointer, gpa: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        p.storeBytes(of: gpa.littleEndian, toByteOffset: 0, as: UInt64.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Adds a chain and makes it available (not yet visible: call `publish()`), returning its head.
    /// `indirect` puts the buffers in one indirect table referenced by a single ring descriptor
    /// (VIRTIO_F_RING_INDIRECT_DESC, virtio 1.2 §2.7.5.3).
    @discardableResult
    public func addChain(_ segments: [BufferSegment], indirect: Bool = false) throws -> UInt16 {
        guard !segments.isEmpty else { throw DriverQueueError.emptyChain }
        let needed = indirect ? 1 : segments.count
        guard freeDescriptors.count >= needed else {
            throw DriverQueueError.noFreeDescriptors(needed: needed, free: freeDescriptors.count)
        }
        var ids: [UInt16] = []
        for _ in 0..<needed { ids.append(freeDescriptors.removeLast()) }
        let head = ids[0]
        if indirect {
            let table = try indirectTable(for: head, entries: segments.count)
            for (k, s) in segments.enumerated() {
                var flags: DescriptorFlags = s.deviceWritable ? .write : []
                if k + 1 < segments.count { flags.insert(.next) }
                Self.writeDescriptor(into: table.pointer + Self.descriptorSize * k, gpa: s.gpa, length: s.length,
                                     flags: flags.rawValue, next: UInt16(k + 1))
            }
            writeDescriptor(head, gpa: table.gpa, length: UInt32(Self.descriptorSize * segments.count),
                            flags: .indirect, next: 0)
        } else {
            for (k, s) in segments.enumerated() {
                var flags: DescriptorFlags = s.deviceWritable ? .write : []
                let next = k + 1 < segments.count ? ids[k + 1] : 0
                if k + 1 < segments.count { flags.insert(.next) }
                writeDescriptor(ids[k], gpa: s.gpa, length: s.length, flags: flags, next: next)
            }
        }
        chains[head] = ids
        pushAvail(head)
        return head
    }

    private func indirectTable(for head: UInt16, entries: Int) throws -> GuestBuffer {
        if let t = indirectTables[head], t.length >= Self.descriptorSize * entries {
            return t.slice(offset: 0, length: Self.descriptorSize * entries)
        }
        // Round the capacity up so that a head that alternates between sizes does not allocate anew.
        let capacity = max(entries, 16).nextPowerOf2
        let t = try arena.allocate(Self.descriptorSize * capacity, alignment: 16)
        indirectTables[head] = t
        return t.slice(offset: 0, length: Self.descriptorSize * entries)
    }

    /// Writes `head` into the next avail slot (visible to the device only after `publish()`).
    public func pushAvail(_ head: UInt16) {
        let slot = Int(availIndex & (size &- 1))
        availSlotPointer(slot).storeBytes(of: head.littleEndian, as: UInt16.self)
        availIndex &+= 1
    }

    /// Makes every pushed entry visible: the release store orders the descriptor and ring-slot writes
    /// before the index the device acquires (virtio 1.2 §2.7.13.2 "the driver MUST perform a suitable
    /// memory barrier before the idx update").
    public func publish() {
        cvh_store_release_u16(availIdxPointer, availIndex)
    }

    /// Notifies the device if it asked to be notified (virtio 1.2 §2.7.13.4), or always with `force`.
    /// Returns whether a kick was sent.
    @discardableResult
    public func kick(force: Bool = false) -> Bool {
        // Full fence: the avail idx store must be visible before we read the device's suppression
        // state, or both sides could decide the other will act (the classic lost-wakeup race).
        cvh_fence_seq_cst()
        let old = availIndexAtLastKick
        let new = availIndex
        availIndexAtLastKick = new
        var wanted: Bool
        if eventIdx {
            let event = cvh_load_acquire_u16(availEventPointer)
            wanted = Self.needEvent(event: event, new: new, old: old)
        } else {
            wanted = cvh_load_acquire_u16(usedFlagsPointer) & Self.usedFlagNoNotify == 0
        }
        if force { wanted = true }
        if wanted {
            kickFD.signal()
            kicksSent += 1
        }
        return wanted
    }

    /// vring_need_event (virtio 1.2 §2.7.10): notify iff `event` lies in [old, new).
    public static func needEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        new &- event &- 1 < new &- old
    }

    /// `publish()` then `kick()`.
    public func submit() {
        publish()
        kick()
    }

    // MARK: Completions

    /// Reads every new used element (acquire load of used->idx before reading the elements) and
    /// returns their descriptors to the free list. Elements whose id is no head in flight (a hostile
    /// chain's bogus head, or a device bug) are returned too; the caller decides.
    public func collectUsed() throws -> [UsedElement] {
        let usedIdx = cvh_load_acquire_u16(usedIdxPointer)
        let count = usedIdx &- lastUsedIndex
        guard count <= size else {
            throw DriverQueueError.usedIndexJump(queue: index, from: lastUsedIndex, to: usedIdx)
        }
        var out: [UsedElement] = []
        out.reserveCapacity(Int(count))
        while lastUsedIndex != usedIdx {
            let p = usedElementPointer(Int(lastUsedIndex & (size &- 1)))
            let e = UsedElement(id: UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)),
                                length: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            lastUsedIndex &+= 1
            if e.id < UInt32(size), let ids = chains.removeValue(forKey: UInt16(e.id)) {
                freeDescriptors.append(contentsOf: ids.reversed())
            }
            out.append(e)
        }
        return out
    }

    /// Whether `id` is a head this driver has in flight.
    public func isInFlight(_ head: UInt16) -> Bool { chains[head] != nil }

    /// Waits until at least `count` more used elements arrived, at most `timeoutMs`.
    /// In `.callEventFD` mode it sleeps on the call eventfd (after asking for a notification through
    /// used_event when EVENT_IDX is on) and treats completions that arrive without a notification
    /// as an error; in `.polling` mode it re-reads the ring.
    public func waitForUsed(count: Int, timeoutMs: Int) throws -> [UsedElement] {
        let deadline = Deadline(milliseconds: timeoutMs)
        var got = try collectUsed()
        while got.count < count {
            switch waitMode {
            case .polling:
                if deadline.expired {
                    throw DriverQueueError.timeout(queue: index, waitingFor: count, got: got.count, timeoutMs: timeoutMs)
                }
                // Give the back-end's threads the CPU: this machine may have fewer cores than threads.
                sched_yield()
                got += try collectUsed()
            case .callEventFD:
                if eventIdx {
                    // "Interrupt me once used->idx passes what I have consumed", then re-check: a
                    // completion published before the device saw the new used_event got no call.
                    cvh_store_release_u16(usedEventPointer, lastUsedIndex)
                    cvh_fence_seq_cst()
                    let more = try collectUsed()
                    if !more.isEmpty {
                        got += more
                        continue
                    }
                }
                let ready = try Poll.readable([callFD.rawValue], timeoutMs: deadline.remainingMilliseconds)
                if ready.isEmpty {
                    guard deadline.expired else { continue } // EINTR
                    let pending = Int(cvh_load_acquire_u16(usedIdxPointer) &- lastUsedIndex)
                    if pending > 0 {
                        throw DriverQueueError.missingNotification(queue: index, completionsPending: pending)
                    }
                    throw DriverQueueError.timeout(queue: index, waitingFor: count, got: got.count, timeoutMs: timeoutMs)
                }
                if callFD.drain() > 0 { notificationsSeen += 1 }
                got += try collectUsed()
            }
        }
        return got
    }

    // MARK: Raw access for hostile tests

    /// Takes `count` descriptor ids out of the free list for hand-written chains.
    public func reserveDescriptors(_ count: Int) throws -> [UInt16] {
        guard freeDescriptors.count >= count else {
            throw DriverQueueError.noFreeDescriptors(needed: count, free: freeDescriptors.count)
        }
        var ids: [UInt16] = []
        for _ in 0..<count { ids.append(freeDescriptors.removeLast()) }
        return ids
    }

    /// Records hand-written descriptors `ids` as the in-flight chain of `head`, so that its used
    /// element returns them to the free list.
    public func trackRawChain(head: UInt16, ids: [UInt16]) {
        chains[head] = ids
    }

    /// Writes `entries` as an indirect table in fresh arena memory, exactly as given (the `next`
    /// fields and flags are not checked: hostile tests use this for nested or looping tables).
    public func makeRawIndirectTable(_ entries: [(gpa: UInt64, length: UInt32, flags: DescriptorFlags, next: UInt16)]) throws -> GuestBuffer {
        let t = try arena.allocate(Self.descriptorSize * max(entries.count, 1), alignment: 16)
        for (k, e) in entries.enumerated() {
            Self.writeDescriptor(into: t.pointer + Self.descriptorSize * k, gpa: e.gpa, length: e.length,
                                 flags: e.flags.rawValue, next: e.next)
        }
        return t
    }

    /// Stores an arbitrary avail->idx (release), e.g. one that runs ahead of the ring by more than its
    /// size. The shadow index follows so later pushes continue from there.
    public func setAvailIndex(_ value: UInt16) {
        availIndex = value
        cvh_store_release_u16(availIdxPointer, value)
    }

    /// Starts the used ring at `value` (a ring resumed at SET_VRING_BASE `value` with nothing in flight
    /// has used->idx == avail->idx == value). Only before the device owns the ring.
    public func resetUsedIndex(to value: UInt16) {
        lastUsedIndex = value
        cvh_store_release_u16(usedIdxPointer, value)
    }

    /// The device's used->idx right now (acquire).
    public var deviceUsedIndex: UInt16 { cvh_load_acquire_u16(usedIdxPointer) }
    /// The device's avail_event (meaningful with EVENT_IDX).
    public var deviceAvailEvent: UInt16 { cvh_load_acquire_u16(availEventPointer) }
    /// The device's used->flags.
    public var deviceUsedFlags: UInt16 { cvh_load_acquire_u16(usedFlagsPointer) }

    /// Waits for the back-end to signal the err eventfd; returns whether it did within `timeoutMs`.
    public func waitForError(timeoutMs: Int) throws -> Bool {
        let deadline = Deadline(milliseconds: timeoutMs)
        while true {
            let ready = try Poll.readable([errFD.rawValue], timeoutMs: deadline.remainingMilliseconds)
            if !ready.isEmpty { return errFD.drain() > 0 }
            if deadline.expired { return false }
        }
    }
}

extension Int {
    /// Smallest power of two ≥ self (self ≥ 1).
    var nextPowerOf2: Int {
        var p = 1
        while p < self { p <<= 1 }
        return p
    }
}
