import BlockIO
import GuestMemory
import VhostSystem
import VhostUserBackend
import VhostUserProtocol
import VirtioBlk
import Virtqueue

extension BlkQueue: QueueHandler {}

/// A virtio-blk device over a backing store, served through vhost-user. Generic over the engine so
/// each queue's processor is specialised for it; the daemon picks the engine once, at start-up.
public final class VirtioBlkDevice<E: BlockEngine>: VhostUserDevice {
    public typealias Queue = BlkQueue<E>

    public let store: BackingStore
    public let configuration: DaemonConfiguration
    let makeEngine: (Int) throws -> E
    let makePoller: (BlkQueue<E>) -> QueuePoller
    let cpus: [Int]
    public let features: VirtioFeatures
    /// INFLIGHT_SHMFD: requests are logged in a buffer the front-end keeps, so a restarted daemon
    /// resubmits what a killed one had in flight (vhost-user.rst, "Inflight I/O tracking").
    /// RESET_DEVICE: drains and resets like RESET_OWNER, without the ownership ambiguity.
    public let protocolFeatures: ProtocolFeatures = [.mq, .replyAck, .config, .configureMemSlots, .inflightSHMFD, .resetDevice]
    /// Changed only by `writeConfig` (CONFIG_WCE), on the control thread, with every queue stopped.
    public private(set) var config: BlkConfig
    let serial: String

    /// `makeEngine(depth)` builds one engine per queue start (never per request). `makePoller` returns
    /// the queue's poll pass; the default calls the generic `BlkQueue<E>.poll`, while the initialisers
    /// for the concrete engines below pass one compiled for that engine (see `QueuePoller`).
    public init(store: BackingStore, configuration: DaemonConfiguration, cpus: [Int],
                makePoller: @escaping (BlkQueue<E>) -> QueuePoller = { q in { accept throws(QueueError) in try q.poll(acceptNew: accept) } },
                makeEngine: @escaping (Int) throws -> E) {
        self.store = store
        self.configuration = configuration
        self.cpus = cpus
        self.makeEngine = makeEngine
        self.makePoller = makePoller
        var blk = BlkFeature.sizeMax | BlkFeature.segMax | BlkFeature.blkSize | BlkFeature.topology
            | BlkFeature.flush | BlkFeature.mq
        if store.readOnly { blk |= BlkFeature.readOnly }
        // The driver may switch write-back / write-through (a read-only disk has no cache to switch).
        if !store.readOnly { blk |= BlkFeature.configWCE }
        // Discard and write-zeroes change data: never offered on a read-only disk.
        if store.supportsDiscard && !store.readOnly { blk |= BlkFeature.discard }
        if store.supportsWriteZeroes && !store.readOnly { blk |= BlkFeature.writeZeroes }
        features = VirtioFeatures(rawValue: blk).union([.version1, .ringIndirectDesc, .ringEventIdx, .protocolFeatures])
        config = BlkConfig(
            capacitySectors: store.capacityBytes / BlkConfig.sectorSize,
            blockSize: store.logicalBlockSize,
            physicalBlockSize: max(store.physicalBlockSize, store.logicalBlockSize),
            numQueues: UInt16(configuration.queues),
            writeback: true,
            discard: blk & BlkFeature.discard != 0,
            writeZeroes: blk & BlkFeature.writeZeroes != 0,
            writeZeroesMayUnmap: blk & BlkFeature.writeZeroes != 0 && store.supportsDiscard)
        serial = configuration.serial ?? DaemonConfiguration.defaultSerial(for: store.path, engine: store.engineKind)
    }

    public var queueCount: Int { configuration.queues }
    public var maxQueueSize: UInt16 { configuration.maxQueueSize }

    public func readConfig(offset: Int, size: Int) -> [UInt8]? {
        // QEMU asks for at most 256 bytes (VHOST_USER_MAX_CONFIG_SIZE); fields past ours read as zero.
        guard offset >= 0, size >= 0, offset + size <= ProtocolLimits.maxConfigSize else { return nil }
        var space = config.encoded
        space += [UInt8](repeating: 0, count: ProtocolLimits.maxConfigSize - space.count)
        return Array(space[offset..<offset + size])
    }

    public func writeConfig(offset: Int, data: [UInt8]) throws {
        guard features.rawValue & BlkFeature.configWCE != 0 else {
            throw DaemonError(argument: nil, "config space is read-only (CONFIG_WCE not offered)")
        }
        guard offset == BlkConfig.writebackOffset, data.count == 1, data[0] <= 1 else {
            throw DaemonError(argument: nil, "config write of \(data.count) byte(s) at \(offset): only writeback (offset \(BlkConfig.writebackOffset), 0 or 1) is writable")
        }
        let writeback = data[0] == 1
        guard writeback != config.writeback else { return }
        if !writeback {
            // Entering write-through: writes acknowledged under write-back may still sit in a volatile
            // cache, and the driver will not send FLUSH any more. Make them durable now.
            let r = store.flushSync()
            guard r == 0 else { throw DaemonError(argument: nil, "fdatasync before switching to write-through: errno \(-r)") }
        }
        config.writeback = writeback
    }

    public func makeQueue(index: Int, ring: SplitQueue, memory: GuestMemoryMap, features acked: VirtioFeatures) throws
        -> (queue: BlkQueue<E>, poll: QueuePoller) {
        let f = acked.rawValue
        var params = BlkQueueParams(
            capacitySectors: config.capacitySectors, blockSize: config.blockSize, readOnly: store.readOnly,
            flush: f & BlkFeature.flush != 0, discard: f & BlkFeature.discard != 0,
            writeZeroes: f & BlkFeature.writeZeroes != 0, writeZeroesMayUnmap: config.writeZeroesMayUnmap,
            serial: serial)
        // Without CONFIG_WCE negotiated the mode is the device's default (write-back, announced by
        // FLUSH); with it, whatever the driver last wrote.
        params.writeThrough = !config.writeback
        // The queue's request state (slots, iovecs, the engine's control blocks) goes on the NUMA node of
        // the CPU its worker is pinned to, which by default is the backing device's node (Daemon).
        let node = workerPolicy(queue: index).cpu.flatMap(CPUTopology.numaNode(ofCPU:))
        let queue = try NUMAPolicy.withPreferredNode(node) {
            BlkQueue(ring: ring, memory: memory, engine: try makeEngine(Int(ring.size)), params: params)
        }
        return (queue, makePoller(queue))
    }

    public func workerPolicy(queue index: Int) -> WorkerPolicy {
        let window: UInt64? = configuration.pollMicroseconds == 0 ? nil : UInt64(configuration.pollMicroseconds) * 1000
        let cpu = cpus.isEmpty ? nil : cpus[index % cpus.count]
        // CPUs the operator named are taken as dedicated: their workers keep their pin and window.
        // Placement left to the daemon, or to the scheduler, adapts to a CPU found shared. A worker
        // never sleeps without a window (--poll-us 0): there is nothing to adapt.
        var sharedCore: SharedCoreResponse?
        switch configuration.cpus {
        case .pinned:
            sharedCore = nil
        case .automatic:
            // A worker floats over its own CPU and those the round robin gave no worker: moving onto
            // another worker's CPU would only trade one contention for another (guest fio with two
            // queues on two CPUs, both floating: 0.61x/0.75x qsd's IOPS, against 0.96x/0.89x pinned;
            // bench/README.md, "Shared cores"). It stays on its NUMA node, where its queue's state
            // was allocated (makeQueue); with no node known, among every CPU the daemon may place on.
            if let cpu {
                let unused = cpus.count > configuration.queues ? Array(cpus.dropFirst(configuration.queues)) : []
                let node = CPUTopology.numaNode(ofCPU: cpu)
                let near = [cpu] + unused.filter { node == nil || CPUTopology.numaNode(ofCPU: $0) == node }
                sharedCore = SharedCoreResponse(floatOver: near.count > 1 ? near.sorted() : nil)
            } else {
                sharedCore = SharedCoreResponse(floatOver: nil)
            }
        case .unpinned:
            sharedCore = SharedCoreResponse(floatOver: nil)
        }
        if window == nil { sharedCore = nil }
        return WorkerPolicy(cpu: cpu, pollWindowNanoseconds: window, sharedCore: sharedCore)
    }
}

// One initialiser per engine. Inside each, `E` is a concrete type, so the poll closure's call to the
// @inlinable `BlkQueue.poll` is specialised for that engine: every per-request engine call in it is a
// direct call, not a witness-table call.

extension VirtioBlkDevice where E == AioEngine {
    public convenience init(aio store: BackingStore, configuration: DaemonConfiguration, cpus: [Int]) {
        self.init(store: store, configuration: configuration, cpus: cpus,
                  makePoller: { q in { accept throws(QueueError) in try q.poll(acceptNew: accept) } },
                  makeEngine: { try AioEngine(store: store, depth: $0) })
    }
}

extension VirtioBlkDevice where E == UringEngine {
    public convenience init(uring store: BackingStore, configuration: DaemonConfiguration, cpus: [Int]) {
        let options = configuration.uring
        self.init(store: store, configuration: configuration, cpus: cpus,
                  makePoller: { q in { accept throws(QueueError) in try q.poll(acceptNew: accept) } },
                  makeEngine: { try UringEngine(store: store, depth: $0, options: options) })
    }
}

extension VirtioBlkDevice where E == NullEngine {
    public convenience init(null store: BackingStore, configuration: DaemonConfiguration, cpus: [Int]) {
        self.init(store: store, configuration: configuration, cpus: cpus,
                  makePoller: { q in { accept throws(QueueError) in try q.poll(acceptNew: accept) } },
                  makeEngine: { try NullEngine(depth: $0) })
    }
}

extension VirtioBlkDevice where E == MemoryEngine {
    public convenience init(memory store: BackingStore, configuration: DaemonConfiguration, cpus: [Int]) {
        self.init(store: store, configuration: configuration, cpus: cpus,
                  makePoller: { q in { accept throws(QueueError) in try q.poll(acceptNew: accept) } },
                  makeEngine: { try MemoryEngine(store: store, depth: $0) })
    }
}
