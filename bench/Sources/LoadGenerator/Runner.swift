#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// Where the requests go.
public enum Target: Sendable {
    /// A vhost-user-blk back-end listening on this Unix socket (ours, qemu-storage-daemon, …).
    case socket(String)
    /// The in-process `InstantDevice`: the generator's own capacity. `deviceBytes` is the size it
    /// pretends to have; `cpus` pins its threads.
    case instant(deviceBytes: UInt64, cpus: [Int])
}

public struct RunOptions: Sendable {
    public var target: Target
    public var workload = WorkloadSpec()
    public var queues = 1
    /// Ring size; nil = the smallest power of two ≥ 3 × depth (three descriptors per request), at least 128.
    public var queueSize: Int?
    public var waitMode: WaitMode = .poll
    /// CPUs for the queue threads (queue i on cpus[i % count]); empty = not pinned.
    public var cpus: [Int] = []
    /// Back the guest memory with 2 MiB hugetlb pages when the system has them (falls back otherwise).
    public var hugePages = true
    public var backendPID: Int32?
    /// Print a progress line on stderr every second (the CLI turns it on only for a terminal).
    public var progress = false
    /// Abandon the run when no request completes for this long.
    public var stallTimeoutSeconds: Double = 10
    /// After the run, keep the queues started with nothing in flight for this long and report the
    /// back-end's CPU over it (needs `backendPID`): what an idle but connected disk costs.
    public var idleSeconds: Double = 0

    public init(target: Target) { self.target = target }
}

public enum RunError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self {
        case .setup(let why): why
        }
    }
}

/// The result of `runLoad`: the report, and what went wrong if the run was cut short.
public struct RunOutcome: Sendable {
    public var report: RunReport
    /// Workers that stopped early and why (a stalled or misbehaving device); empty when all went well.
    public var failures: [String]
}

/// QEMU's and our back-end's ring size limit (VIRTQUEUE_MAX_SIZE).
public let maxQueueSize = 1024
/// 2 MiB: the x86-64 hugetlb page size QEMU uses for memory-backend-memfd,hugetlb=on.
let hugePageBytes = 2 << 20

public func defaultQueueSize(depth: Int) -> Int {
    var size = 128 // QEMU's vhost-user-blk default queue-size
    while size < Virtio.descriptorsPerRequest * depth { size <<= 1 }
    return size
}

/// Sets up guest memory and the queues (through a vhost-user handshake for a socket target), drives
/// them from one pinned thread per queue, and collects the numbers.
public func runLoad(_ o: RunOptions) throws -> RunOutcome {
    let w = o.workload
    try w.validate()
    guard o.queues >= 1 && o.queues <= 64 else { throw RunError.setup("queues must be 1...64") }
    let queueSize = o.queueSize ?? defaultQueueSize(depth: w.queueDepth)
    guard queueSize >= 2, queueSize <= maxQueueSize, queueSize & (queueSize - 1) == 0 else {
        throw RunError.setup("queue size \(queueSize) must be a power of two ≤ \(maxQueueSize)")
    }
    guard Virtio.descriptorsPerRequest * w.queueDepth <= queueSize else {
        throw RunError.setup("depth \(w.queueDepth) needs \(3 * w.queueDepth) descriptors, the ring has \(queueSize) (depth ≤ \(maxQueueSize / 3))")
    }

    // Guest memory: rings, headers, statuses and data buffers for every queue, plus alignment slack.
    let perQueue = Virtio.descriptorSize * queueSize + 4096 + (6 + 2 * queueSize + 8) + (6 + 8 * queueSize + 8)
        + Virtio.requestHeaderSize * w.queueDepth + 16 + w.queueDepth + w.blockSize * w.queueDepth + 4096
    let wanted = GuestMemoryArena.reservedPrefix + o.queues * perQueue + (64 << 10)
    let arenaSize = (wanted + hugePageBytes - 1) / hugePageBytes * hugePageBytes
    var arena: GuestMemoryArena
    var huge = false
    if o.hugePages, let a = try? GuestMemoryArena(regions: [.init(size: arenaSize, hugePageSize: hugePageBytes)]) {
        arena = a
        huge = true
    } else {
        arena = try GuestMemoryArena(regions: [.init(size: arenaSize)])
    }
    // Touch every page now: first-touch faults (a fault per 4 KiB of data buffer) would otherwise
    // land in the measured interval of whoever touches the page first.
    let region = arena.regions[0]
    memset(region.base, 0, region.size)

    var frontend: Frontend?
    var rings: [DriverQueue] = []
    var deviceBytes: UInt64
    var eventIdx = false
    var features: UInt64 = 0
    let targetName: String
    switch o.target {
    case .socket(let path):
        targetName = path
        let f = try Frontend.connectServing(socketPath: path)
        frontend = f
        let hs = try f.handshake(queues: o.queues, queueSize: queueSize)
        guard let capacity = VirtioBlkConfig(hs.config).capacity, capacity > 0 else {
            throw RunError.setup("the back-end reports no capacity in its config space")
        }
        deviceBytes = capacity &* 512
        var startOptions = Frontend.StartOptions()
        startOptions.waitMode = o.waitMode == .poll ? .polling : .callEventFD
        // Only the ring and its eventfds are used; our chains are direct, so INDIRECT_DESC is moot.
        rings = try f.start(arena: arena, options: startOptions)
        eventIdx = f.ackedFeatures.contains(.ringEventIdx)
        features = f.ackedFeatures.rawValue
    case .instant(let bytes, _):
        targetName = "in-process instant device"
        deviceBytes = bytes
        for q in 0..<o.queues { rings.append(try DriverQueue(index: UInt32(q), size: queueSize, arena: arena)) }
    }
    if let limit = w.limitBytes { deviceBytes = min(deviceBytes, limit) }
    let regions = try QueueRegion.split(deviceBytes: deviceBytes, queues: o.queues, blockSize: w.blockSize)

    var memories: [QueueMemory] = []
    for q in 0..<o.queues {
        let headers = try arena.allocate(Virtio.requestHeaderSize * w.queueDepth, alignment: 16)
        let statuses = try arena.allocate(w.queueDepth, alignment: 8)
        let data = try arena.allocate(w.blockSize * w.queueDepth, alignment: 4096)
        let r = rings[q]
        memories.append(QueueMemory(desc: r.descriptorTable.pointer, avail: r.availRing.pointer, used: r.usedRing.pointer,
                                    queueSize: queueSize, kickFD: r.kickFD.rawValue, callFD: r.callFD.rawValue,
                                    headers: headers.pointer, headersGPA: headers.gpa, statuses: statuses.pointer,
                                    statusesGPA: statuses.gpa, data: data.pointer, dataGPA: data.gpa))
    }

    // One 64-byte line of counters per worker and per instant device, so they share no cache line.
    let lineWords = 8
    let control = UnsafeMutablePointer<UInt64>.allocate(capacity: lineWords * 2 * o.queues)
    control.initialize(repeating: 0, count: lineWords * 2 * o.queues)
    defer { control.deallocate() }
    func workerControl(_ q: Int) -> UnsafeMutablePointer<UInt64> { control + lineWords * q }
    func deviceControl(_ q: Int) -> UnsafeMutablePointer<UInt64> { control + lineWords * (o.queues + q) }

    // The instant devices start first so that the first kick-less request is served at once.
    var deviceThreads: [PinnedThread] = []
    if case .instant(_, let cpus) = o.target {
        for q in 0..<o.queues {
            let dev = InstantDevice(memory: memories[q], regionBase: region.base, regionGPA: region.guestPhysicalAddress,
                                    regionSize: UInt64(region.size), control: deviceControl(q))
            deviceThreads.append(try PinnedThread(name: "instant-dev\(q)", cpu: cpus.isEmpty ? nil : cpus[q % cpus.count]) {
                _ = dev.run()
            })
        }
    }

    let start = monotonicNanoseconds()
    let rampEnd = w.verify || w.rampSeconds == 0 ? 0 : start &+ UInt64(w.rampSeconds * 1e9)
    let timeLimited = w.requestLimit == nil && !w.verify
    let end = timeLimited ? max(start, rampEnd) &+ UInt64(w.seconds * 1e9) : UInt64.max
    // Split the request limit over the queues; the first `extra` queues take one more.
    let total = w.requestLimit ?? UInt64.max
    let baseShare = total == UInt64.max ? UInt64.max : total / UInt64(o.queues)
    let extra = total == UInt64.max ? 0 : Int(total % UInt64(o.queues))
    // The pattern seed differs per run, so data left on the device by an earlier run never passes.
    let verifySeed = w.seed ^ start ^ UInt64(UInt32(bitPattern: getpid()))

    final class ResultBox: @unchecked Sendable { var result = WorkerResult() }
    let boxes = (0..<o.queues).map { _ in ResultBox() }
    var workers: [PinnedThread] = []
    for q in 0..<o.queues {
        let c = WorkerConfig(
            memory: memories[q], depth: w.queueDepth, blockSize: w.blockSize,
            planner: RequestPlanner(region: regions[q], blockSize: w.blockSize, pattern: w.pattern, readMix: w.readMix,
                                    seed: w.seed &+ UInt64(q) &* 0x9E37_79B9_7F4A_7C15),
            eventIdx: eventIdx, waitMode: o.waitMode,
            requestLimit: baseShare == UInt64.max ? UInt64.max : baseShare + (q < extra ? 1 : 0),
            rampEndNs: rampEnd, endNs: end, verify: w.verify,
            verifyBlocks: min(UInt64(w.verifyBlocks), regions[q].length / UInt64(w.blockSize)), seed: verifySeed,
            stallTimeoutNs: UInt64(o.stallTimeoutSeconds * 1e9), thinkNs: w.thinkMicroseconds &* 1000,
            control: workerControl(q))
        let box = boxes[q]
        workers.append(try PinnedThread(name: "lg-q\(q)", cpu: o.cpus.isEmpty ? nil : o.cpus[q % o.cpus.count]) {
            box.result = runQueueWorker(c)
        })
    }

    // The main thread sleeps, samples CPU times at the start and end of the measured interval and
    // prints progress; it never touches the rings.
    var backendCPUStart = o.backendPID.flatMap { ProcessCPU.seconds(pid: $0) }
    var ownCPUStart = ProcessCPU.ownSeconds()
    var sampledStart = rampEnd == 0
    var backendCPUEnd: Double?
    var ownCPUEnd: Double?
    var nextProgress = start &+ 1_000_000_000
    var lastCount: UInt64 = 0
    func allDone() -> Bool { (0..<o.queues).allSatisfy { cvh_load_acquire_u64(workerControl($0) + 1) != 0 } }
    while !allDone() {
        let now = monotonicNanoseconds()
        if !sampledStart && now >= rampEnd {
            backendCPUStart = o.backendPID.flatMap { ProcessCPU.seconds(pid: $0) }
            ownCPUStart = ProcessCPU.ownSeconds()
            sampledStart = true
        }
        if ownCPUEnd == nil && now >= end {
            backendCPUEnd = o.backendPID.flatMap { ProcessCPU.seconds(pid: $0) }
            ownCPUEnd = ProcessCPU.ownSeconds()
        }
        if o.progress && now >= nextProgress {
            let count = (0..<o.queues).reduce(UInt64(0)) { $0 &+ cvh_load_acquire_u64(workerControl($1)) }
            let phase = now < rampEnd ? "ramp" : "run"
            let line = "\r\(phase) \((now - start) / 1_000_000_000) s: \(fixed(Double(count &- min(count, lastCount)) / 1e3, 1)) k IOPS   "
            _ = line.withCString { fputs($0, stderr) }
            lastCount = count
            nextProgress &+= 1_000_000_000
        }
        // Sleep until the next event the loop cares about, at most 20 ms (how late the end of a
        // request-limited run is noticed; the workers themselves are not delayed by it).
        // (nextProgress only counts when progress is printed: otherwise it never advances, and once
        // it lay in the past this loop would spin on the back-end's core for the rest of the run.)
        var wake = now &+ 20_000_000
        if o.progress { wake = min(wake, nextProgress) }
        if !sampledStart { wake = min(wake, rampEnd) }
        if ownCPUEnd == nil { wake = min(wake, end) }
        if wake > now { usleep(UInt32(min((wake - now) / 1000, 20_000))) }
    }
    if ownCPUEnd == nil {
        backendCPUEnd = o.backendPID.flatMap { ProcessCPU.seconds(pid: $0) }
        ownCPUEnd = ProcessCPU.ownSeconds()
    }
    if o.progress { _ = fputs("\r\u{1B}[K", stderr) }
    for t in workers { t.join() }
    for q in 0..<o.queues { cvh_store_release_u64(deviceControl(q), 1) }
    for t in deviceThreads { t.join() }

    // Idle: the rings stay started (the back-end's workers are running) with nothing in flight.
    var idleCPU: (seconds: Double, cpu: Double)?
    if o.idleSeconds > 0, let pid = o.backendPID, let a = ProcessCPU.seconds(pid: pid) {
        let t0 = monotonicNanoseconds()
        var left = UInt64(o.idleSeconds * 1e6)
        // usleep takes at most a second's worth on some libcs; sleep in pieces.
        while left > 0 {
            let piece = min(left, 500_000)
            usleep(UInt32(piece))
            left -= piece
        }
        if let b = ProcessCPU.seconds(pid: pid) { idleCPU = (Double(monotonicNanoseconds() - t0) / 1e9, b - a) }
    }

    var failures: [String] = []
    if let f = frontend {
        do { _ = try f.stop() } catch { failures.append("stopping the rings: \(error)") }
        f.close()
    }

    var merged = LatencyRecorder()
    var report = RunReport(target: targetName, workload: w, queues: o.queues, queueSize: queueSize, waitMode: o.waitMode,
                           negotiatedFeatures: features, hugePages: huge, elapsedSeconds: 0, completed: 0, reads: 0, writes: 0,
                           bytes: 0, ioErrors: 0, verifyErrors: 0, firstVerifyError: nil, verifiedBlocks: 0,
                           latency: LatencySummary(), kicks: 0, callWaits: 0, backendCPUSeconds: nil, generatorCPUSeconds: 0)
    var first = UInt64.max, last: UInt64 = 0
    for (q, box) in boxes.enumerated() {
        let r = box.result
        merged.merge(r.latency)
        report.completed += r.completed
        report.reads += r.reads
        report.writes += r.writes
        report.ioErrors += r.ioErrors
        report.verifyErrors += r.verifyErrors
        report.verifiedBlocks += r.verifiedBlocks
        if report.firstVerifyError == nil, let e = r.firstVerifyError { report.firstVerifyError = "queue \(q): \(e)" }
        report.kicks += r.kicks
        report.callWaits += r.callWaits
        first = min(first, r.measureStartNs)
        last = max(last, r.measureEndNs)
        if let f = r.failure { failures.append("queue \(q): \(f)") }
    }
    report.bytes = report.completed * UInt64(w.blockSize)
    report.elapsedSeconds = last > first ? Double(last - first) / 1e9 : 0
    report.latency = merged.summary
    if let a = backendCPUStart, let b = backendCPUEnd { report.backendCPUSeconds = b - a }
    report.generatorCPUSeconds = (ownCPUEnd ?? ownCPUStart) - ownCPUStart
    if let idleCPU {
        report.idleSeconds = idleCPU.seconds
        report.backendIdleCPUSeconds = idleCPU.cpu
    }
    _ = arena // the rings live in it until every thread has been joined
    return RunOutcome(report: report, failures: failures)
}
