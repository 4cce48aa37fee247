#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import GuestMemory
import Synchronization
import VhostSystem
import VirtioBlk
import Virtqueue

/// What one benchmark variant puts on the ring, and the engine that serves it.
public struct Scenario: Sendable {
    public enum Shape: Sendable { case direct, indirect }
    /// `null` completes at enqueue without touching memory: the virtio path alone. `uring` and
    /// `aio` read a small file whose pages are all in the page cache, so the kernel completes every
    /// read inside the submitting system call and each pass still sees its whole batch done: the
    /// path plus the engine and its system calls, without a disk.
    public enum Engine: Sendable { case null, uring, aio }
    public var shape: Shape
    /// VIRTIO_BLK_T_OUT (data device-readable) instead of VIRTIO_BLK_T_IN.
    public var write: Bool
    public var eventIdx: Bool
    /// Chains the driver publishes before each `poll` (one release store of avail->idx per batch).
    public var batch: Int
    /// Log every request in an in-flight region (INFLIGHT_SHMFD), as it runs under QEMU, which always
    /// negotiates it with us.
    public var inflight: Bool
    public var engine: Engine

    public init(shape: Shape, write: Bool, eventIdx: Bool, batch: Int, inflight: Bool = false, engine: Engine = .null) {
        self.shape = shape
        self.write = write
        self.eventIdx = eventIdx
        self.batch = batch
        self.inflight = inflight
        self.engine = engine
    }

    /// The variants, by name; shared by the benchmark and the callgrind driver so both measure the
    /// same thing. 40 = a batch a busy guest queue typically hands over in one kick, and divides 1000;
    /// 1 shows the fixed cost of a pass (acquire load, release store, seq_cst fence, notify decision).
    public static let all: [(name: String, scenario: Scenario)] = [
        ("read-direct-b40", Scenario(shape: .direct, write: false, eventIdx: false, batch: 40)),
        ("read-indirect-b40", Scenario(shape: .indirect, write: false, eventIdx: false, batch: 40)),
        ("read-direct-eventidx-b40", Scenario(shape: .direct, write: false, eventIdx: true, batch: 40)),
        ("write-direct-b40", Scenario(shape: .direct, write: true, eventIdx: false, batch: 40)),
        ("read-direct-b1", Scenario(shape: .direct, write: false, eventIdx: false, batch: 1)),
        ("read-direct-eventidx-inflight-b40", Scenario(shape: .direct, write: false, eventIdx: true, batch: 40, inflight: true)),
        // Reads only: a buffered write may be handed to a kernel worker thread instead of completing
        // inside the system call (it depends on the filesystem), and a pass would then not see its
        // batch done.
        ("uring-read-direct-b40", Scenario(shape: .direct, write: false, eventIdx: false, batch: 40, engine: .uring)),
        ("aio-read-direct-b40", Scenario(shape: .direct, write: false, eventIdx: false, batch: 40, engine: .aio)),
    ]
}

/// Sizes and the guest-physical layout (one region at GPA 0), outside the generic fixture (a generic
/// type cannot have static stored properties). Separate pages for the three ring areas as a driver
/// would allocate them; headers, status bytes and data each in their own array.
@usableFromInline enum Layout {
    @usableFromInline static var queueSize: UInt16 { 256 }
    static let dataBytes = 4096
    static let sectorsPerRequest: UInt64 = 8 // 4 KiB
    static let descGPA: UInt64 = 0x0000
    @usableFromInline static var availGPA: UInt64 { 0x1000 }
    @usableFromInline static var usedGPA: UInt64 { 0x2000 }
    static let indirectGPA: UInt64 = 0x3000 // 48-byte tables, one per chain
    static let headerGPA: UInt64 = 0x7000 // 16 bytes per chain
    static let statusGPA: UInt64 = 0x8000 // 1 byte per chain
    static let dataGPA: UInt64 = 0x10000 // 4 KiB per chain
    static let memoryBytes = 2 << 20
}

/// Guest memory, a split ring of 256 laid out in it, the driver side of that ring, and the device side
/// under test (`BlkQueue<E>`), all built once outside the measurement.
///
/// The driver side is written here rather than borrowed from VhostUserTesting.DriverQueue: that one
/// allocates a chain per request (arrays of segments, a free list), which is right for tests and would
/// be counted against the device here. This one only rewrites avail-ring entries of pre-built chains.
///
/// Generic over the engine, with `run` `@inlinable`: the caller, which names the engine, compiles
/// `run` and the `@inlinable` `BlkQueue.poll` specialised for it, as the daemon does.
public final class HotPathFixture<E: BlockEngine> {
    public let scenario: Scenario
    private let fd: FileDescriptor
    private let map: GuestMemoryMap
    @usableFromInline let host: UnsafeMutableRawPointer // host address of GPA 0
    public let queue: BlkQueue<E>
    /// The in-flight region the queue logs into when the scenario asks for it.
    private let inflightLog: MemoryMapping

    /// Heads of the pre-built chains, in the order the driver publishes them.
    @usableFromInline let heads: UnsafeMutablePointer<UInt16>
    public let chainCount: Int
    // Driver-side state; a class's fields are read into locals in `run` (the hot loop touches memory
    // only for the ring itself).
    @usableFromInline var availIdx: UInt16 = 0
    @usableFromInline var usedSeen: UInt16 = 0
    @usableFromInline var cursor = 0
    /// Passes after which the device asked for an interrupt: kept so the notification check cannot be
    /// optimised away, and reported by the teardown.
    public var notifications: Int { notificationCount }
    @usableFromInline var notificationCount = 0

    /// `makeEngine(depth)` builds the queue's engine.
    public init(_ scenario: Scenario, makeEngine: (Int) throws -> E) throws {
        precondition(scenario.batch >= 1 && scenario.batch <= Int(Layout.queueSize))
        self.scenario = scenario
        fd = try makeMemFD(name: "hotpath-guest", size: Layout.memoryBytes)
        let region = try GuestRegion(guestStart: 0, size: UInt64(Layout.memoryBytes), frontendStart: 0x7f00_0000_0000,
                                     mmapOffset: 0, fd: fd.rawValue)
        map = try GuestMemoryMap(regions: [region])
        host = region.host

        // A direct chain takes 3 of the 256 descriptors, so at most 85 fit; an indirect one takes 1.
        // Use a multiple of the batch so every batch is the same set of chains in steady state.
        let fit = scenario.shape == .direct ? Int(Layout.queueSize) / 3 : Int(Layout.queueSize)
        chainCount = fit / scenario.batch * scenario.batch
        precondition(chainCount >= scenario.batch, "batch \(scenario.batch) does not fit in the table")
        heads = .allocate(capacity: chainCount)

        let config = SplitQueueConfig(size: Layout.queueSize, descriptorTable: GuestAddress(Layout.descGPA),
                                      availRing: GuestAddress(Layout.availGPA), usedRing: GuestAddress(Layout.usedGPA),
                                      eventIdx: scenario.eventIdx)
        var ring = try SplitQueue(config: config, memory: map.view, nextAvail: 0, usedIdx: 0)
        inflightLog = try MemoryMapping(anonymous: InflightLayout.queueRegionBytes(queueSize: Layout.queueSize))
        if scenario.inflight {
            _ = try ring.attachInflight(InflightRegion(base: inflightLog.base, capacity: Layout.queueSize))
        }
        let params = BlkQueueParams(capacitySectors: 1 << 21, blockSize: 512, readOnly: false, flush: true,
                                    discard: false, writeZeroes: false, writeZeroesMayUnmap: false, serial: "hotpath")
        queue = BlkQueue(ring: ring, memory: map, engine: try makeEngine(Int(Layout.queueSize)), params: params)
        // The chains go in once everything is initialised; the device reads nothing before the first poll.
        for i in 0..<chainCount { heads[i] = buildChain(i) }
    }

    deinit { heads.deallocate() }

    @usableFromInline func gpaHost(_ gpa: UInt64) -> UnsafeMutableRawPointer { host + Int(gpa) }

    private func writeDescriptor(at p: UnsafeMutableRawPointer, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        p.storeBytes(of: address, as: UInt64.self)
        (p + 8).storeBytes(of: length, as: UInt32.self)
        (p + 12).storeBytes(of: flags, as: UInt16.self)
        (p + 14).storeBytes(of: next, as: UInt16.self)
    }

    /// Builds chain i (header, 4 KiB data, status) and returns its head. virtio-blk's usual framing:
    /// three descriptors, data device-writable for a read and device-readable for a write.
    private func buildChain(_ i: Int) -> UInt16 {
        let header = Layout.headerGPA + 16 * UInt64(i)
        let status = Layout.statusGPA + UInt64(i)
        let data = Layout.dataGPA + UInt64(Layout.dataBytes * i)
        gpaHost(header).storeBytes(of: scenario.write ? BlkRequestType.out : BlkRequestType.in, as: UInt32.self)
        (gpaHost(header) + 4).storeBytes(of: 0, as: UInt32.self)
        (gpaHost(header) + 8).storeBytes(of: UInt64(i) * Layout.sectorsPerRequest, as: UInt64.self)
        gpaHost(status).storeBytes(of: 0xff, as: UInt8.self)

        let next = Descriptor.flagNext, write = Descriptor.flagWrite
        let dataFlags = scenario.write ? next : next | write
        switch scenario.shape {
        case .direct:
            let h = UInt16(3 * i)
            let table = gpaHost(Layout.descGPA)
            writeDescriptor(at: table + 16 * Int(h), address: header, length: 16, flags: next, next: h + 1)
            writeDescriptor(at: table + 16 * Int(h + 1), address: data, length: UInt32(Layout.dataBytes), flags: dataFlags, next: h + 2)
            writeDescriptor(at: table + 16 * Int(h + 2), address: status, length: 1, flags: write, next: 0)
            return h
        case .indirect:
            let tableGPA = Layout.indirectGPA + 48 * UInt64(i)
            let table = gpaHost(tableGPA)
            writeDescriptor(at: table, address: header, length: 16, flags: next, next: 1)
            writeDescriptor(at: table + 16, address: data, length: UInt32(Layout.dataBytes), flags: dataFlags, next: 2)
            writeDescriptor(at: table + 32, address: status, length: 1, flags: write, next: 0)
            let h = UInt16(i)
            writeDescriptor(at: gpaHost(Layout.descGPA) + 16 * Int(h), address: tableGPA, length: 48,
                            flags: Descriptor.flagIndirect, next: 0)
            return h
        }
    }

    /// Runs `passes` driver→device→driver round trips of one batch each. This is the measured code:
    /// per batch the driver writes `batch` avail entries and publishes avail->idx, the device pops,
    /// walks and parses every chain, enqueues, submits, reaps, writes status and used elements and
    /// publishes used->idx, and the driver checks used->idx moved by exactly the batch.
    @inlinable @inline(never)
    public func run(passes: Int) {
        let mask = Layout.queueSize &- 1
        let batch = scenario.batch
        let eventIdx = scenario.eventIdx
        let availRing = gpaHost(Layout.availGPA) + 4
        let usedEvent = gpaHost(Layout.availGPA) + 4 + 2 * Int(Layout.queueSize)
        // The indices are shared with the "device"; they go through atomics with the orders a real
        // driver uses (release to publish, acquire to consume), bound once here.
        let availIdxAtomic = (gpaHost(Layout.availGPA) + 2).assumingMemoryBound(to: Atomic<UInt16>.self)
        let usedIdxAtomic = (gpaHost(Layout.usedGPA) + 2).assumingMemoryBound(to: Atomic<UInt16>.self)
        var availIdx = self.availIdx, usedSeen = self.usedSeen, cursor = self.cursor
        var notifications = 0
        let queue = self.queue
        for _ in 0..<passes {
            for _ in 0..<batch {
                (availRing + 2 * Int(availIdx & mask)).storeBytes(of: heads[cursor], as: UInt16.self)
                availIdx &+= 1
                cursor += 1
                if cursor == chainCount { cursor = 0 }
            }
            // EVENT_IDX: ask for an interrupt as soon as anything of this batch is used (what a guest
            // driver that re-enables callbacks after each drain does).
            if eventIdx { usedEvent.storeBytes(of: usedSeen, as: UInt16.self) }
            availIdxAtomic.pointee.store(availIdx, ordering: .releasing)

            let result: PassResult
            do {
                result = try queue.poll(acceptNew: true)
            } catch {
                fatalError("queue broke: \(error)")
            }
            if result.notify { notifications += 1 }

            let used = usedIdxAtomic.pointee.load(ordering: .acquiring)
            guard used == usedSeen &+ UInt16(truncatingIfNeeded: batch) else {
                fatalError("used idx \(used), expected \(usedSeen &+ UInt16(truncatingIfNeeded: batch))")
            }
            usedSeen = used
        }
        self.availIdx = availIdx
        self.usedSeen = usedSeen
        self.cursor = cursor
        self.notificationCount += notifications
    }

    /// Outside the measurement: one batch, then every used element, length and status byte checked, so
    /// the benchmark is known to time requests that succeed, not a fast error path.
    public func verifyOnePass() throws {
        let firstUsed = usedSeen
        let firstChain = cursor
        for k in 0..<scenario.batch {
            gpaHost(Layout.statusGPA + UInt64((firstChain + k) % chainCount)).storeBytes(of: 0xff, as: UInt8.self)
        }
        run(passes: 1)
        let usedRing = gpaHost(Layout.usedGPA) + 4
        for k in 0..<scenario.batch {
            let chain = (firstChain + k) % chainCount
            let slot = Int((firstUsed &+ UInt16(k)) & (Layout.queueSize - 1))
            let id = (usedRing + 8 * slot).load(as: UInt32.self)
            let len = (usedRing + 8 * slot + 4).load(as: UInt32.self)
            let status = gpaHost(Layout.statusGPA + UInt64(chain)).load(as: UInt8.self)
            // Used length: bytes the device wrote, i.e. data + status for a read, the status for a write.
            let wantLen = UInt32(scenario.write ? 1 : Layout.dataBytes + 1)
            guard id == UInt32(heads[chain]), len == wantLen, status == BlkStatus.ok else {
                throw VerifyError("used[\(slot)] = {id \(id), len \(len)} status \(status); want id \(heads[chain]), len \(wantLen), status 0")
            }
        }
        guard queue.guestErrors == 0 else { throw VerifyError("guest errors: \(queue.lastGuestError)") }
    }

    /// Cheap enough to call after every measured iteration (loads only; a string is built only when
    /// something is wrong), so a run that went off the fast path cannot report a number.
    public func failure() -> String? {
        if queue.guestErrors != 0 { return "guest errors: \(queue.lastGuestError)" }
        if queue.inFlight != 0 { return "\(queue.inFlight) requests still in flight" }
        if scenario.eventIdx && notifications == 0 { return "EVENT_IDX: the device never asked to notify" }
        return nil
    }
}

extension HotPathFixture where E == NullEngine {
    public convenience init(null scenario: Scenario) throws {
        try self.init(scenario) { try NullEngine(depth: $0) }
    }
}

extension HotPathFixture where E == UringEngine {
    public convenience init(uring scenario: Scenario) throws {
        let store = try cachedStore(engine: .uring)
        try self.init(scenario) { try UringEngine(store: store, depth: $0) }
    }
}

extension HotPathFixture where E == AioEngine {
    public convenience init(aio scenario: Scenario) throws {
        let store = try cachedStore(engine: .aio)
        try self.init(scenario) { try AioEngine(store: store, depth: $0) }
    }
}

/// A 1 MiB file (more than the 85 chains × 4 KiB the reads touch) opened without O_DIRECT, written in
/// full so that every page is in the page cache, and unlinked at once (the store's fd keeps it). Under
/// /var/tmp: a disk filesystem, whose cached reads the kernel completes without blocking (tmpfs
/// may not offer io_uring's non-blocking attempt and would hand every read to a worker thread).
func cachedStore(engine: EngineKind) throws -> BackingStore {
    let path = "/var/tmp/hotpath-\(getpid())-\(engine.rawValue).img"
    let size = 1 << 20
    unlink(path)
    let store = try BackingStore.open(BackingOptions(path: path, createSize: UInt64(size), engine: engine, preferDirectIO: false))
    unlink(path)
    guard let fd = store.fileDescriptor else { throw VerifyError("no file behind the store") }
    let fill = [UInt8](repeating: 0x5A, count: size)
    guard fill.withUnsafeBytes({ pwrite(fd, $0.baseAddress, size, 0) }) == size else { throw VerifyError("cannot fill \(path)") }
    return store
}

public struct VerifyError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}
