import BlockIO
import GuestMemory
import Testing
import VhostSystem
import VhostUserTesting
import Virtqueue
import VirtioBlk

typealias Status = VirtioBlk.BlkStatus
typealias ReqType = VirtioBlk.BlkRequestType

/// The back-end's mapping of an arena's memfds, as a session builds it from SET_MEM_TABLE.
func backendMap(of arena: GuestMemoryArena) throws -> GuestMemoryMap {
    try GuestMemoryMap(regions: arena.regions.map {
        try GuestRegion(guestStart: $0.guestPhysicalAddress, size: UInt64($0.size), frontendStart: $0.userAddress,
                        mmapOffset: $0.description.mmapOffset, fd: $0.fd.rawValue)
    })
}

func params(capacitySectors: UInt64 = 2048, blockSize: UInt32 = 512, readOnly: Bool = false, flush: Bool = true,
            discard: Bool = true, writeZeroes: Bool = true, serial: String = "unit-serial") -> BlkQueueParams {
    BlkQueueParams(capacitySectors: capacitySectors, blockSize: blockSize, readOnly: readOnly, flush: flush, discard: discard,
                   writeZeroes: writeZeroes, writeZeroesMayUnmap: true, serial: serial)
}

func memoryEngine(bytes: UInt64 = 2048 * 512, readOnly: Bool = false) throws -> MemoryEngine {
    let store = try BackingStore.open(BackingOptions(readOnly: readOnly, createSize: bytes, engine: .memory))
    return try MemoryEngine(store: store, depth: 64)
}

/// Completes nothing until the test says so: lets tests hold requests in flight.
final class HoldingEngine: BlockEngine {
    let capacity = 64
    private(set) var held: [BlockRequest] = []
    private var done: [BlockCompletion] = []
    var inFlight: Int { held.count + done.count }
    var completionEventFD: Int32? { nil }
    /// How many requests were held at each `submit()` call.
    private(set) var heldAtSubmit: [Int] = []
    func enqueue(_ request: BlockRequest) { held.append(request) }
    func submit() { heldAtSubmit.append(held.count) }
    func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        let n = min(done.count, buffer.count)
        for i in 0..<n { buffer[i] = done[i] }
        done.removeFirst(n)
        return n
    }
    /// Finishes every held request with `result` (0 or a negative errno).
    func releaseAll(result: Int32 = 0) {
        done += held.map { BlockCompletion(tag: $0.tag, result: result) }
        held = []
    }
}

/// A driver-side ring in an arena and a BlkQueue over the back-end's mapping of it, driven on the
/// test's own thread: `run` publishes a chain, polls the queue once and returns the used element.
final class BlkRig<E: BlockEngine> {
    let arena: GuestMemoryArena
    let map: GuestMemoryMap
    let driver: DriverQueue
    let blk: BlkQueue<E>

    init(engine: E, params p: BlkQueueParams = params(), queueSize: Int = 16) throws {
        arena = try GuestMemoryArena(size: 8 << 20)
        map = try backendMap(of: arena)
        driver = try DriverQueue(index: 0, size: queueSize, arena: arena)
        let config = SplitQueueConfig(size: driver.size, descriptorTable: GuestAddress(driver.descriptorTable.gpa),
                                      availRing: GuestAddress(driver.availRing.gpa), usedRing: GuestAddress(driver.usedRing.gpa),
                                      eventIdx: false)
        let ring = try SplitQueue(config: config, memory: map.view, nextAvail: 0, usedIdx: 0)
        blk = BlkQueue(ring: ring, memory: map, engine: engine, params: p)
    }

    /// A 16-byte request header {le32 type, le32 reserved, le64 sector}.
    func header(_ type: UInt32, sector: UInt64 = 0) throws -> GuestBuffer {
        let h = try arena.allocate(16)
        h.pointer.storeBytes(of: type.littleEndian, toByteOffset: 0, as: UInt32.self)
        h.pointer.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        h.pointer.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        return h
    }

    /// A buffer pre-filled with `fill` (0xff is no valid status, so an unwritten status shows).
    func buffer(_ n: Int, fill: UInt8 = 0xff) throws -> GuestBuffer {
        let b = try arena.allocate(n)
        b.fill(fill)
        return b
    }

    /// A 16-byte discard / write-zeroes range {le64 sector, le32 num_sectors, le32 flags}.
    func range(sector: UInt64, count: UInt32, flags: UInt32 = 0) throws -> GuestBuffer {
        let r = try arena.allocate(16)
        r.pointer.storeBytes(of: sector.littleEndian, toByteOffset: 0, as: UInt64.self)
        r.pointer.storeBytes(of: count.littleEndian, toByteOffset: 8, as: UInt32.self)
        r.pointer.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt32.self)
        return r
    }

    /// Adds `segments` as one chain, publishes it, polls once, and returns what was used (nil when the
    /// request is still in flight).
    @discardableResult
    func run(_ segments: [BufferSegment], indirect: Bool = false) throws -> UsedElement? {
        try driver.addChain(segments, indirect: indirect)
        driver.publish()
        _ = try blk.poll(acceptNew: true)
        let used = try driver.collectUsed()
        #expect(used.count <= 1)
        return used.first
    }

    /// header + data + status, the classic layout; returns (used length, status byte).
    func request(_ type: UInt32, sector: UInt64 = 0, data: [BufferSegment] = []) throws -> (length: UInt32?, status: UInt8) {
        let status = try buffer(1)
        let used = try run([BufferSegment(try header(type, sector: sector), deviceWritable: false)] + data
            + [BufferSegment(status, deviceWritable: true)])
        return (used?.length, status.pointer.load(as: UInt8.self))
    }

    func write(sector: UInt64, _ bytes: [UInt8]) throws -> UInt8 {
        let b = try arena.allocate(bytes.count)
        b.write(bytes)
        return try request(ReqType.out, sector: sector, data: [BufferSegment(b, deviceWritable: false)]).status
    }

    func read(sector: UInt64, count: Int) throws -> (status: UInt8, data: [UInt8]) {
        let b = try buffer(count, fill: 0xa5)
        let r = try request(ReqType.in, sector: sector, data: [BufferSegment(b, deviceWritable: true)])
        return (r.status, b.read())
    }
}

func pattern(_ n: Int, seed: UInt8 = 1) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) } }
