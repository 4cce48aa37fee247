/// virtio-blk request types (virtio 1.2 §5.2.6 `VIRTIO_BLK_T_*`).
public enum BlkRequestType: UInt32, Sendable, CustomStringConvertible {
    case read = 0 // VIRTIO_BLK_T_IN
    case write = 1 // VIRTIO_BLK_T_OUT
    case flush = 4
    case getID = 8
    case discard = 11
    case writeZeroes = 13

    public var description: String {
        switch self {
        case .read: "IN"
        case .write: "OUT"
        case .flush: "FLUSH"
        case .getID: "GET_ID"
        case .discard: "DISCARD"
        case .writeZeroes: "WRITE_ZEROES"
        }
    }
}

/// virtio-blk status byte values (virtio 1.2 §5.2.6).
public enum BlkStatus: UInt8, Sendable, CustomStringConvertible {
    case ok = 0
    case ioError = 1
    case unsupported = 2

    public var description: String {
        switch self {
        case .ok: "OK"
        case .ioError: "IOERR"
        case .unsupported: "UNSUPP"
        }
    }
}

/// One `struct virtio_blk_discard_write_zeroes` segment: le64 sector, le32 num_sectors, le32 flags.
public struct BlkRangeSegment: Sendable, Equatable {
    public static let size = 16
    /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
    public static let flagUnmap: UInt32 = 1
    public var sector: UInt64
    public var sectorCount: UInt32
    public var flags: UInt32
    public init(sector: UInt64, sectorCount: UInt32, flags: UInt32 = 0) {
        self.sector = sector
        self.sectorCount = sectorCount
        self.flags = flags
    }
}

/// The outcome of one request as the driver sees it.
public struct BlkCompletion: Sendable, Equatable, CustomStringConvertible {
    /// The status byte as the device left it (`BlkDriver.statusSentinel` if it never wrote one).
    public var rawStatus: UInt8
    /// The used element's len: bytes the device says it wrote into the chain.
    public var usedLength: UInt32
    public var status: BlkStatus? { BlkStatus(rawValue: rawStatus) }
    public var description: String {
        "status \(status.map { "\($0)" } ?? "raw 0x\(String(rawStatus, radix: 16))"), used len \(usedLength)"
    }
}

/// A request in flight: the queue head its chain got.
public struct BlkTicket: Hashable, Sendable, CustomStringConvertible {
    public let head: UInt16
    public var description: String { "request@head\(head)" }
}

public enum BlkDriverError: Error, CustomStringConvertible {
    case unexpectedUsedElement(UsedElement)
    case notInFlight(BlkTicket)
    case dataTooLarge(Int, capacity: Int)
    public var description: String {
        switch self {
        case .unexpectedUsedElement(let e): "the device returned \(e), which is no request in flight"
        case .notInFlight(let t): "\(t) is not in flight"
        case .dataTooLarge(let n, let c): "\(n) bytes do not fit the \(c)-byte scratch buffer"
        }
    }
}

/// A virtio-blk driver over one `DriverQueue`: builds request chains (header, data, status byte),
/// submits many at once, and matches completions to requests. Not thread-safe (one thread per queue).
public final class BlkDriver: @unchecked Sendable {
    public static let sectorSize = 512
    public static let headerSize = 16
    /// GET_ID writes at most 20 bytes (VIRTIO_BLK_ID_BYTES).
    public static let idLength = 20
    /// Written into every status byte before submission: no valid status has this value, so a device
    /// that completes a request without writing its status is caught.
    public static let statusSentinel: UInt8 = 0xff

    public let queue: DriverQueue
    public let arena: GuestMemoryArena
    /// Build chains with one indirect table instead of direct descriptors.
    public var useIndirect = false
    /// Bound on every wait; a back-end that loses a request fails the test after this long.
    public var timeoutMs = 10_000

    /// Header (16 bytes), status byte and range-segment area of one request. One per queue slot, so a
    /// full queue of requests needs no further allocation.
    private struct Slot {
        let header: GuestBuffer
        let status: GuestBuffer
        let ranges: GuestBuffer
    }
    private var freeSlots: [Int]
    private var slots: [Slot] = []
    private var slotOfHead: [UInt16: Int] = [:]
    private var finished: [UInt16: BlkCompletion] = [:]
    /// Reused by the synchronous helpers (one request at a time).
    private var scratch: GuestBuffer
    public static let scratchSize = 1 << 20

    public init(queue: DriverQueue) throws {
        self.queue = queue
        arena = queue.arena
        let n = Int(queue.size)
        for _ in 0..<n {
            // The status byte gets its own 8-byte cell so that a device writing past it would corrupt
            // no neighbouring request's status (and we could tell).
            let area = try arena.allocate(Self.headerSize + 8 + BlkRangeSegment.size, alignment: 16)
            slots.append(Slot(header: area.slice(offset: 0, length: Self.headerSize),
                              status: area.slice(offset: Self.headerSize, length: 1),
                              ranges: area.slice(offset: Self.headerSize + 8, length: BlkRangeSegment.size)))
        }
        freeSlots = Array((0..<n).reversed())
        scratch = try arena.allocate(Self.scratchSize, alignment: 4096)
    }

    /// Requests submitted and not yet waited for.
    public var outstanding: Int { slotOfHead.count }

    // MARK: Asynchronous API

    /// Adds a request to the avail ring (not yet published: call `kick()` after a batch).
    /// `data` are the buffers between header and status; their direction is the caller's choice
    /// (hostile tests pass the wrong one on purpose). `type` is a raw value so unknown types can be sent.
    public func enqueue(type: UInt32, sector: UInt64, data: [BufferSegment], indirect: Bool? = nil) throws -> BlkTicket {
        guard let slotIndex = freeSlots.popLast() else {
            throw DriverQueueError.noFreeDescriptors(needed: 1, free: 0)
        }
        let slot = slots[slotIndex]
        slot.header.pointer.storeBytes(of: type.littleEndian, toByteOffset: 0, as: UInt32.self)
        slot.header.pointer.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        slot.header.pointer.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        slot.status.pointer.storeBytes(of: Self.statusSentinel, as: UInt8.self)
        let chain = [BufferSegment(slot.header, deviceWritable: false)] + data + [BufferSegment(slot.status, deviceWritable: true)]
        let head: UInt16
        do {
            head = try queue.addChain(chain, indirect: indirect ?? useIndirect)
        } catch {
            freeSlots.append(slotIndex)
            throw error
        }
        slotOfHead[head] = slotIndex
        return BlkTicket(head: head)
    }

    /// Typed convenience for `enqueue(type:sector:data:)`.
    public func enqueue(_ type: BlkRequestType, sector: UInt64 = 0, data: [BufferSegment] = [], indirect: Bool? = nil) throws -> BlkTicket {
        try enqueue(type: type.rawValue, sector: sector, data: data, indirect: indirect)
    }

    /// DISCARD / WRITE_ZEROES with the given segments (written into the request's own slot when there
    /// is one segment, otherwise into fresh arena memory).
    public func enqueueRanges(_ type: BlkRequestType, _ segments: [BlkRangeSegment], indirect: Bool? = nil) throws -> BlkTicket {
        let area = try segments.count == 1 ? nil : arena.allocate(max(1, segments.count) * BlkRangeSegment.size, alignment: 16)
        // The slot is chosen inside enqueue; write the segments into the area the chain will carry.
        let target: GuestBuffer
        if let area {
            target = area
        } else {
            guard let next = freeSlots.last else { throw DriverQueueError.noFreeDescriptors(needed: 1, free: 0) }
            target = slots[next].ranges
        }
        for (k, s) in segments.enumerated() {
            let p = target.pointer + k * BlkRangeSegment.size
            p.storeBytes(of: s.sector.littleEndian, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: s.sectorCount.littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: s.flags.littleEndian, toByteOffset: 12, as: UInt32.self)
        }
        let data = segments.isEmpty ? [] : [BufferSegment(gpa: target.gpa, length: UInt32(segments.count * BlkRangeSegment.size), deviceWritable: false)]
        return try enqueue(type: type.rawValue, sector: 0, data: data, indirect: indirect)
    }

    /// Publishes everything enqueued and notifies the device if it wants a notification.
    public func kick() { queue.submit() }

    /// Waits until `ticket` completed and returns its outcome.
    public func wait(_ ticket: BlkTicket) throws -> BlkCompletion {
        try wait(for: [ticket])[ticket]!
    }

    /// Waits until every ticket in `tickets` completed.
    public func wait(for tickets: [BlkTicket]) throws -> [BlkTicket: BlkCompletion] {
        for t in tickets where finished[t.head] == nil && slotOfHead[t.head] == nil {
            throw BlkDriverError.notInFlight(t)
        }
        let deadline = Deadline(milliseconds: timeoutMs)
        while tickets.contains(where: { finished[$0.head] == nil }) {
            let elements = try queue.waitForUsed(count: 1, timeoutMs: Int(deadline.remainingMilliseconds))
            try absorb(elements)
        }
        var out: [BlkTicket: BlkCompletion] = [:]
        for t in tickets { out[t] = finished.removeValue(forKey: t.head) }
        return out
    }

    /// Waits until every outstanding request completed.
    public func waitAll() throws -> [BlkTicket: BlkCompletion] {
        let pending = slotOfHead.keys.map { BlkTicket(head: $0) } + finished.keys.map { BlkTicket(head: $0) }
        return try wait(for: pending)
    }

    private func absorb(_ elements: [UsedElement]) throws {
        for e in elements {
            guard e.id < UInt32(queue.size), let slotIndex = slotOfHead.removeValue(forKey: UInt16(e.id)) else {
                throw BlkDriverError.unexpectedUsedElement(e)
            }
            let status = slots[slotIndex].status.pointer.load(as: UInt8.self)
            finished[UInt16(e.id)] = BlkCompletion(rawStatus: status, usedLength: e.length)
            freeSlots.append(slotIndex)
        }
    }

    // MARK: Synchronous helpers (one request, scratch memory)

    /// Submits one request and waits for it.
    public func perform(type: UInt32, sector: UInt64, data: [BufferSegment], indirect: Bool? = nil) throws -> BlkCompletion {
        let t = try enqueue(type: type, sector: sector, data: data, indirect: indirect)
        kick()
        return try wait(t)
    }

    /// Splits `length` bytes of scratch into `segments` buffers whose lengths are sector multiples
    /// where possible (the last takes the remainder), each starting `misalign` bytes past a 4 KiB
    /// boundary so buffers need not be aligned.
    private func scratchSegments(length: Int, segments: Int, misalign: Int, deviceWritable: Bool) throws -> [BufferSegment] {
        let pieces = max(1, segments)
        let sectorMultiple = (length / pieces) & ~(Self.sectorSize - 1)
        let base = sectorMultiple > 0 ? sectorMultiple : length / pieces
        // Each piece starts on its own page (+ misalign), so pieces are not contiguous in memory.
        var out: [BufferSegment] = []
        var offset = 0
        for k in 0..<pieces {
            let len = k == pieces - 1 ? length - base * (pieces - 1) : base
            let start = offset + misalign
            guard start + len <= scratch.length else { throw BlkDriverError.dataTooLarge(length, capacity: scratch.length) }
            out.append(BufferSegment(scratch.slice(offset: start, length: len), deviceWritable: deviceWritable))
            offset = (start + len + 4095) & ~4095
        }
        return out
    }

    /// Reads `count` sectors; `segments` splits the data into that many buffers, `misalign` offsets
    /// each buffer from a 4 KiB boundary (an unaligned guest buffer).
    public func read(sector: UInt64, count: Int, segments: Int = 1, misalign: Int = 0, indirect: Bool? = nil) throws -> (BlkCompletion, [UInt8]) {
        let segs = try scratchSegments(length: count * Self.sectorSize, segments: segments, misalign: misalign, deviceWritable: true)
        for s in segs { arena.buffer(gpa: s.gpa, length: Int(s.length))!.fill(0xa5) }
        let c = try perform(type: BlkRequestType.read.rawValue, sector: sector, data: segs, indirect: indirect)
        var data: [UInt8] = []
        for s in segs { data += arena.buffer(gpa: s.gpa, length: Int(s.length))!.read() }
        return (c, data)
    }

    /// Writes `data` (a multiple of the sector size, unless a test wants otherwise) at `sector`.
    public func write(sector: UInt64, data: [UInt8], segments: Int = 1, misalign: Int = 0, indirect: Bool? = nil) throws -> BlkCompletion {
        let segs = try scratchSegments(length: data.count, segments: segments, misalign: misalign, deviceWritable: false)
        var offset = 0
        for s in segs {
            arena.buffer(gpa: s.gpa, length: Int(s.length))!.write(Array(data[offset..<offset + Int(s.length)]))
            offset += Int(s.length)
        }
        return try perform(type: BlkRequestType.write.rawValue, sector: sector, data: segs, indirect: indirect)
    }

    public func flush() throws -> BlkCompletion {
        try perform(type: BlkRequestType.flush.rawValue, sector: 0, data: [])
    }

    /// GET_ID: the serial as the device wrote it into a 20-byte buffer.
    public func getID() throws -> (BlkCompletion, [UInt8]) {
        let buf = scratch.slice(offset: 0, length: Self.idLength)
        buf.fill(0xa5)
        let c = try perform(type: BlkRequestType.getID.rawValue, sector: 0, data: [BufferSegment(buf, deviceWritable: true)])
        return (c, buf.read())
    }

    public func discard(sector: UInt64, count: UInt32) throws -> BlkCompletion {
        let t = try enqueueRanges(.discard, [BlkRangeSegment(sector: sector, sectorCount: count)])
        kick()
        return try wait(t)
    }

    public func writeZeroes(sector: UInt64, count: UInt32, unmap: Bool) throws -> BlkCompletion {
        let t = try enqueueRanges(.writeZeroes, [BlkRangeSegment(sector: sector, sectorCount: count,
                                                                 flags: unmap ? BlkRangeSegment.flagUnmap : 0)])
        kick()
        return try wait(t)
    }
}

/// Deterministic test data: bytes derived from a seed and the absolute byte position, so any range
/// of a disk can be checked without keeping a copy.
public func patternBytes(seed: UInt64, byteOffset: UInt64, count: Int) -> [UInt8] {
    (0..<count).map { i in
        // A 64-bit mix (splitmix64's finaliser) of the position and seed, so neighbouring sectors and
        // different seeds differ in every byte position.
        var z = (byteOffset &+ UInt64(i)) / 8 &+ seed &* 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        z ^= z >> 31
        return UInt8(truncatingIfNeeded: z >> (8 * ((byteOffset &+ UInt64(i)) % 8)))
    }
}
