import BlockIO
import CVhostLinux
import Glibc
import GuestMemory
import VhostSystem
@testable import VhostUserBackend
import VhostUserBlk
import VhostUserTesting
import VirtioBlk
import Virtqueue

/// One queue's worker serving a `BlkQueue` in this process, with the driver side (VhostUserTesting's
/// `DriverQueue` and `BlkDriver`) on the test's thread: a session's data path without the socket, so
/// a test can read the worker's statistics and its thread's CPU time. `stop()` must be called
/// (tests `defer` it).
final class WorkerRig<E: BlockEngine> {
    let arena: GuestMemoryArena
    let map: GuestMemoryMap
    let driver: BlkDriver
    let blk: BlkQueue<E>
    let worker: Worker<BlkQueue<E>>
    var queue: DriverQueue { driver.queue }
    private var stopped = false

    /// The worker's CPU and the one `drive` runs the driver on: different ones when there are two.
    /// A driver sharing the worker's CPU gets to run only when the worker stops polling, so every
    /// request would come *because* the worker went to sleep: a different test from the one meant.
    static var cpus: (worker: Int?, driver: Int?) {
        let allowed = CPUTopology.allowedCPUs()
        return allowed.count >= 2 ? (allowed[1], allowed[0]) : (nil, nil)
    }

    /// `pollMicroseconds` is the window's maximum (nil: the worker never sleeps); `sharedCore`, what
    /// the worker does on a shared CPU (nil: it does not look, as on a CPU named with --cpus).
    init(engine: E, eventIdx: Bool = true, pollMicroseconds: UInt64?, queueSize: Int = 128,
         sharedCore: SharedCoreResponse? = nil) throws {
        arena = try GuestMemoryArena(size: 8 << 20)
        map = try GuestMemoryMap(regions: arena.regions.map {
            try GuestRegion(guestStart: $0.guestPhysicalAddress, size: UInt64($0.size), frontendStart: $0.userAddress,
                            mmapOffset: $0.description.mmapOffset, fd: $0.fd.rawValue)
        })
        let q = try DriverQueue(index: 0, size: queueSize, arena: arena)
        q.eventIdx = eventIdx
        driver = try BlkDriver(queue: q)
        let config = SplitQueueConfig(size: q.size, descriptorTable: GuestAddress(q.descriptorTable.gpa),
                                      availRing: GuestAddress(q.availRing.gpa), usedRing: GuestAddress(q.usedRing.gpa),
                                      eventIdx: eventIdx)
        let ring = try SplitQueue(config: config, memory: map.view, nextAvail: 0, usedIdx: 0)
        let params = BlkQueueParams(capacitySectors: 2048, blockSize: 512, readOnly: false, flush: true, discard: false,
                                    writeZeroes: false, writeZeroesMayUnmap: false, serial: "rig")
        let blk = BlkQueue(ring: ring, memory: map, engine: engine, params: params)
        self.blk = blk
        worker = try Worker(index: 0, handler: blk, poll: { accept throws(QueueError) in try blk.poll(acceptNew: accept) },
                            kickFD: q.kickFD.rawValue, callFD: q.callFD.rawValue, errFD: q.errFD.rawValue,
                            policy: WorkerPolicy(cpu: Self.cpus.worker, pollWindowNanoseconds: pollMicroseconds.map { $0 * 1000 },
                                                 sharedCore: sharedCore),
                            logger: quietLogger)
    }

    /// Stops the worker (it drains first) and returns what it did with its idle time.
    @discardableResult
    func stop() -> Worker<BlkQueue<E>>.Statistics {
        if !stopped {
            stopped = true
            worker.stop()
        }
        return worker.statistics
    }

    /// The worker thread's CPU time so far.
    var workerCPUNanoseconds: UInt64 { worker.cpuTimeNanoseconds ?? 0 }

    /// Runs `body` as the driver, on a thread of its own pinned to `cpus.driver`, and waits for it.
    /// (Expectations are checked by the caller on what `body` returns: they belong to the test's
    /// task, not to a foreign thread.)
    func drive<T>(_ body: @escaping () throws -> T) throws -> T {
        let box = ResultBox<T>()
        let thread = try PinnedThread(name: "test-driver", cpu: Self.cpus.driver) { box.result = Result { try body() } }
        thread.join()
        return try box.result!.get()
    }

    /// Spins until `condition` holds; false if it did not within `timeoutMs`.
    func spin(untilMs timeoutMs: Int = 5_000, _ condition: () -> Bool) -> Bool {
        let deadline = Deadline(milliseconds: timeoutMs)
        var n = 0
        while !condition() {
            n &+= 1
            // Look at the clock only now and then: the loop must react within a few ns.
            if n % 1024 == 0 && deadline.expired { return condition() }
        }
        return true
    }

    /// Whether the worker has armed notifications since it last took a request: it is about to
    /// sleep, or asleep. With EVENT_IDX it has written avail_event = the next index it will read
    /// (everything published so far was taken); otherwise it has cleared VRING_USED_F_NO_NOTIFY.
    var workerArmed: Bool {
        queue.eventIdx ? queue.deviceAvailEvent == queue.availIndex : queue.deviceUsedFlags & DriverQueue.usedFlagNoNotify == 0
    }
}

/// A lean driver for timing-sensitive tests: `count` FLUSH chains (header, status byte) written
/// into the ring's descriptor table once, so submitting one is an avail entry, a publish and a kick
/// decision, with nothing allocated. (`BlkDriver` builds each chain anew; in a debug build that
/// takes tens of µs per request, which would blur the µs gaps these tests control.)
final class FlushChains {
    let queue: DriverQueue
    let heads: [UInt16]
    let statuses: GuestBuffer
    /// Chains free to submit (indices into `heads`), and which chain a head starts.
    private var free: [Int]
    /// Indexed by head (the table has `queue.size` entries); -1 for a descriptor that heads no chain.
    private var chainOfHead: [Int]
    /// used->idx as far as `collect` has read it.
    private(set) var lastUsed: UInt16 = 0

    init(queue: DriverQueue, arena: GuestMemoryArena, count: Int) throws {
        self.queue = queue
        let header = try arena.allocate(16)
        header.fill(0)
        header.pointer.storeBytes(of: UInt32(4).littleEndian, as: UInt32.self) // VIRTIO_BLK_T_FLUSH
        statuses = try arena.allocate(count)
        let ids = try queue.reserveDescriptors(2 * count)
        chainOfHead = Array(repeating: -1, count: Int(queue.size))
        var heads: [UInt16] = []
        for k in 0..<count {
            queue.writeDescriptor(ids[2 * k], gpa: header.gpa, length: 16, flags: .next, next: ids[2 * k + 1])
            queue.writeDescriptor(ids[2 * k + 1], gpa: statuses.gpa + UInt64(k), length: 1, flags: .write, next: 0)
            chainOfHead[Int(ids[2 * k])] = k
            heads.append(ids[2 * k])
        }
        self.heads = heads
        free = Array((0..<count).reversed())
    }

    var inFlight: Int { heads.count - free.count }

    /// Makes `count` free chains available with one publish, and kicks if the device asked for it.
    func submit(_ count: Int = 1) {
        for _ in 0..<count {
            let k = free.removeLast()
            statuses.pointer.storeBytes(of: 0xff, toByteOffset: k, as: UInt8.self)
            queue.pushAvail(heads[k])
        }
        queue.publish()
        queue.kick()
    }

    /// Takes whatever the device completed (nothing waits); returns how many, and whether every one
    /// of them carries status OK.
    func collect() -> (count: Int, allOK: Bool) {
        let used = queue.deviceUsedIndex
        guard used != lastUsed else { return (0, true) }
        var ok = true
        var n = 0
        while lastUsed != used {
            let e = queue.usedRing.pointer + 4 + DriverQueue.usedElementSize * Int(lastUsed & (queue.size &- 1))
            let id = Int(UInt32(littleEndian: e.loadUnaligned(as: UInt32.self)))
            lastUsed &+= 1
            let k = id < chainOfHead.count ? chainOfHead[id] : -1
            guard k >= 0 else {
                ok = false
                continue
            }
            if statuses.pointer.load(fromByteOffset: k, as: UInt8.self) != 0 { ok = false }
            free.append(k)
            n += 1
        }
        return (n, ok)
    }

    /// Waits for at least one completion by sleeping on the call eventfd, the way a guest takes an
    /// interrupt: used_event (or the flags) asks for a call, then the ring is checked again before
    /// sleeping. A completion that comes without its call is an error (`missingNotification`).
    func waitForCompletion(timeoutMs: Int) throws -> (count: Int, allOK: Bool) {
        let deadline = Deadline(milliseconds: timeoutMs)
        while true {
            var got = collect()
            if got.count > 0 { return got }
            if queue.eventIdx { cvh_store_release_u16(queue.availRing.pointer + 4 + 2 * Int(queue.size), lastUsed) }
            cvh_fence_seq_cst()
            got = collect()
            if got.count > 0 { return got }
            let ready = try Poll.readable([queue.callFD.rawValue], timeoutMs: deadline.remainingMilliseconds)
            if ready.isEmpty && deadline.expired {
                if queue.deviceUsedIndex != lastUsed {
                    throw DriverQueueError.missingNotification(queue: queue.index, completionsPending: Int(queue.deviceUsedIndex &- lastUsed))
                }
                throw DriverQueueError.timeout(queue: queue.index, waitingFor: 1, got: 0, timeoutMs: timeoutMs)
            }
            _ = queue.callFD.drain()
        }
    }

    /// Spins on used->idx (no sleep, no yield) until at least one completion arrived.
    func spinForCompletion(timeoutMs: Int) throws -> (count: Int, allOK: Bool) {
        let deadline = Deadline(milliseconds: timeoutMs)
        var n = 0
        while true {
            let got = collect()
            if got.count > 0 { return got }
            n &+= 1
            if n % 4096 == 0 && deadline.expired {
                throw DriverQueueError.timeout(queue: queue.index, waitingFor: 1, got: 0, timeoutMs: timeoutMs)
            }
        }
    }
}

final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, Error>?
}

/// What a driver loop found wrong (thrown from `WorkerRig.drive`).
struct DriverFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Busy-waits `nanoseconds` (a sleep would overshoot by tens of µs).
func spinDelay(nanoseconds: UInt64) {
    let end = monotonicNanoseconds() &+ nanoseconds
    while monotonicNanoseconds() < end {}
}

/// A small deterministic generator (xorshift64*), so a failing stress run can be repeated.
struct TestRandom {
    private var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next(below bound: UInt64) -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        // Vigna's xorshift64* multiplier.
        return (state &* 0x2545_F491_4F6C_DD1D) % bound
    }
}

/// Holds every request until the test completes it from its own thread, then signals an eventfd:
/// how kernel AIO completions reach a worker, with the test choosing the moment. (A pthread mutex
/// rather than Synchronization's Mutex: ThreadSanitizer sees this one.)
final class HeldEngine: BlockEngine, @unchecked Sendable {
    let capacity = 128
    let event: EventFD
    /// Enqueued and not yet reaped; the worker's own count.
    private(set) var inFlight = 0
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var held: [UInt32] = []
    private var done: [BlockCompletion] = []

    init() throws {
        event = try EventFD()
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    var completionEventFD: Int32? { event.rawValue }

    func enqueue(_ request: BlockRequest) {
        inFlight += 1
        locked { held.append(request.tag) }
    }

    func submit() {}

    func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        let n = locked { () -> Int in
            let n = min(done.count, buffer.count)
            for i in 0..<n { buffer[i] = done[i] }
            done.removeFirst(n)
            return n
        }
        inFlight -= n
        return n
    }

    /// Requests the worker has handed over and the test has not completed.
    var heldCount: Int { locked { held.count } }

    /// Completes every held request successfully (from any thread) and signals the eventfd.
    @discardableResult
    func completeHeld() -> Int {
        let n = locked { () -> Int in
            done += held.map { BlockCompletion(tag: $0, result: 0) }
            defer { held = [] }
            return held.count
        }
        if n > 0 { event.signal() }
        return n
    }
}
