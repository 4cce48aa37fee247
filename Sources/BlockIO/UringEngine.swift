#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import VhostSystem

/// How the io_uring engine sets up its rings (`--uring-sqpoll`, `--uring-sqpoll-cpu`).
public struct UringOptions: Sendable, Equatable {
    /// A kernel thread per ring polls the submission ring, so submitting needs no system call while
    /// it is awake (IORING_SETUP_SQPOLL). It spins on a CPU of its own: on a machine with few cores
    /// it competes with the queue workers and with the guest.
    public var sqPoll: Bool
    /// Pins the polling thread (IORING_SETUP_SQ_AFF); nil lets the scheduler place it.
    public var sqPollCPU: Int?
    /// How long the polling thread spins without work before it sleeps; the next submit then wakes
    /// it with one system call. 1 ms, the unit the kernel takes: longer than the worker's default
    /// 50 µs poll window, so a guest that keeps the worker awake keeps the thread awake too, and
    /// short enough that an idle disk gives the CPU back at once.
    public var sqPollIdleMilliseconds: UInt32

    public init(sqPoll: Bool = false, sqPollCPU: Int? = nil, sqPollIdleMilliseconds: UInt32 = 1) {
        self.sqPoll = sqPoll
        self.sqPollCPU = sqPollCPU
        self.sqPollIdleMilliseconds = sqPollIdleMilliseconds
    }
}

/// io_uring (through liburing) on the backing file or block device, beside `AioEngine` and with the
/// same results for the same requests. One ring per engine (per virtqueue), with the store
/// registered as its only fixed file and the engine's eventfd registered for completions.
///
/// - Reads and writes: READV/WRITEV of the caller's iovecs (zero copy), all enqueued in a pass
///   submitted with one io_uring_enter (none at all under SQ polling while its thread is awake).
///   A durable write (write-through) carries RWF_DSYNC.
/// - FLUSH: an asynchronous fdatasync (IORING_OP_FSYNC + IORING_FSYNC_DATASYNC). It covers every
///   write that completed before it was submitted, which is virtio's contract, so it need not wait
///   for writes still in flight (and io_uring does not order it after them).
/// - DISCARD and WRITE_ZEROES on a file: an asynchronous fallocate (punch hole, or zero range), run
///   by the kernel's worker threads instead of blocking the queue's. When the filesystem answers
///   EOPNOTSUPP to a zeroing mode, the request falls back to `SyncFileIO.writeZeroes` (the same chain
///   of fallbacks the aio engine uses, ending in writing zeros) when its completion is reaped. On a
///   block device both are done synchronously with the BLKDISCARD/BLKZEROOUT ioctls, as the aio
///   engine does: io_uring has no discard command before Linux 6.12.
/// - Reads and writes O_DIRECT cannot take (misaligned buffers, offsets or lengths): pread/pwrite
///   through the aligned bounce buffer, synchronously, exactly as the aio engine does.
///
/// Results, as `AioEngine`: a transfer of exactly the requested length is 0; a short one is -EIO; a
/// negative result is that errno (a write to a read-only store: -EBADF).
///
/// Submission: io_uring_enter may take only some of the entries, or refuse with EAGAIN (the kernel
/// is short of memory) or EBUSY (completions it could not post are waiting); whatever it did not
/// take stays in the submission ring and goes with the next `submit()`. Any other error means the
/// ring no longer works: the entries it did not take are completed with that error, and so is
/// every later request.
///
/// Registered buffers (IORING_REGISTER_BUFFERS) are not used: see ARCHITECTURE.md ("io_uring").
///
/// Every buffer is allocated in init: per request there is no allocation, lock, retain or
/// existential (the same shape as `AioEngine`).
///
/// Used by one thread at a time (its worker); `@unchecked Sendable` only so it can be handed to it.
public final class UringEngine: BlockEngine, @unchecked Sendable {
    public let capacity: Int
    public var inFlight: Int { slots.inFlight }
    public var completionEventFD: Int32? { eventFD }
    public let options: UringOptions

    /// Keeps the backing fd open for as long as this engine may use it (the ring holds its own
    /// reference to the registered file, but the bounce path and ioctls use the fd).
    private let store: BackingStore
    private let isBlockDevice: Bool
    private let eventFDOwner: EventFD
    private let eventFD: Int32
    /// liburing's ring, opaque here (see cvhost_uring.h).
    private let ring: OpaquePointer
    // @exclusivity(unchecked): an engine is used by one thread (its queue's worker), so Swift's dynamic
    // exclusivity checks on its per-request fields can never fire (bench/HotPath measured their cost).
    @exclusivity(unchecked) private var slots: SlotTable
    /// The operation (a `BlockOperation` raw value) and offset of each slot of `slots`: how to read
    /// its result, and what a write-zeroes fallback needs.
    private let slotOperations: UnsafeMutablePointer<UInt8>
    private let slotOffsets: UnsafeMutablePointer<UInt64>
    /// Completions copied out of the completion ring, one reap at a time.
    private let reapedData: UnsafeMutablePointer<UInt64>
    private let reapedResults: UnsafeMutablePointer<Int32>
    /// Entries written to the submission ring that the kernel has not taken yet.
    @exclusivity(unchecked) private var unsubmitted = 0
    /// Taken by the kernel and not yet reaped: each will post a completion (and signal the eventfd).
    @exclusivity(unchecked) private var kernelInFlight = 0
    /// Set when io_uring_enter failed in a way that will not pass: the negative errno every request
    /// gets from then on. 0 while the ring works.
    @exclusivity(unchecked) private var failure: Int32 = 0
    private let sync: SyncFileIO

    public convenience init(store: BackingStore, depth: Int) throws(BlockIOError) {
        try self.init(store: store, depth: depth, options: UringOptions())
    }

    public init(store: BackingStore, depth: Int, options: UringOptions) throws(BlockIOError) {
        try validateDepth(depth, engine: "uring")
        let sync = try SyncFileIO(store: store)
        let eventFD = try withSystemErrors(path: store.path) { try EventFD(nonBlocking: true) }
        let ring = try Self.makeRing(entries: depth, options: options, fd: sync.fd, eventFD: eventFD.rawValue, path: store.path)
        // Nothing below can fail, so the ring cannot leak.
        self.store = store
        self.sync = sync
        self.options = options
        isBlockDevice = store.isBlockDevice
        capacity = depth
        eventFDOwner = eventFD
        self.eventFD = eventFD.rawValue
        self.ring = ring
        slots = SlotTable(capacity: depth)
        slotOperations = .allocate(capacity: depth)
        slotOperations.initialize(repeating: 0, count: depth)
        slotOffsets = .allocate(capacity: depth)
        slotOffsets.initialize(repeating: 0, count: depth)
        reapedData = .allocate(capacity: depth)
        reapedData.initialize(repeating: 0, count: depth)
        reapedResults = .allocate(capacity: depth)
        reapedResults.initialize(repeating: 0, count: depth)
    }

    deinit {
        // Closing the ring does not wait for requests in flight, which would go on reading and
        // writing the caller's buffers (guest memory that is about to be unmapped): wait for them.
        // The queue's worker has drained them before it lets go of the engine, so this is for
        // callers that did not.
        while kernelInFlight > 0 && cvh_uring_wait_one(ring) == 0 { kernelInFlight -= 1 }
        cvh_uring_destroy(ring)
        slots.deallocate()
        slotOperations.deallocate()
        slotOffsets.deallocate()
        reapedData.deallocate()
        reapedResults.deallocate()
    }

    // MARK: set-up and the start-up probe

    /// Creates the ring with room for `entries` requests (the kernel rounds up to a power of two and
    /// makes the completion ring twice as large, so it cannot overflow while at most `entries` are in
    /// flight), registers `fd` as fixed file 0 and `eventFD` for completions.
    private static func makeRing(entries: Int, options: UringOptions, fd: Int32, eventFD: Int32,
                                 path: String?) throws(BlockIOError) -> OpaquePointer {
        var error: Int32 = 0
        guard let ring = cvh_uring_create(UInt32(entries), options.sqPoll ? 1 : 0, options.sqPollIdleMilliseconds,
                                          Int32(options.sqPollCPU ?? -1), &error) else {
            throw BlockIOError("io_uring_setup", path: path, errno: -error,
                               reason: setupFailureReason(errno: -error, options: options,
                                                          disabledSetting: readSysctl("kernel/io_uring_disabled")))
        }
        var step: Int32 = 0
        let r = cvh_uring_register(ring, fd, eventFD, &step)
        guard r == 0 else {
            cvh_uring_destroy(ring)
            throw BlockIOError(step == 1 ? "io_uring_register_files" : "io_uring_register_eventfd", path: path,
                               errno: -r, reason: String(cString: strerror(-r)))
        }
        return ring
    }

    /// Operations every request may need, as cvh_uring_missing_operations reports them.
    static let requiredOperations: [(bit: Int32, name: String)] = [
        (CVH_URING_OP_READV, "READV"), (CVH_URING_OP_WRITEV, "WRITEV"),
        (CVH_URING_OP_FSYNC, "FSYNC"), (CVH_URING_OP_FALLOCATE, "FALLOCATE"),
    ]

    /// Checks at start-up, as the user the queues will run as, that io_uring works here with these
    /// options: a ring can be made with the store registered, it runs a no-op, and the kernel knows
    /// every operation the engine submits (FALLOCATE, the newest, is Linux 5.6). Throws an error that
    /// says why not and what to do, so `--engine uring` fails at start rather than at the first queue.
    public static func probe(store: BackingStore, options: UringOptions) throws(BlockIOError) {
        guard let file = store.file else { throw .invalid("uring", path: store.path, "the store has no file") }
        let eventFD = try withSystemErrors(path: store.path) { try EventFD(nonBlocking: true) }
        // 2 entries: the no-op below needs one.
        let ring = try makeRing(entries: 2, options: options, fd: file.rawValue, eventFD: eventFD.rawValue, path: store.path)
        defer { cvh_uring_destroy(ring) }
        let bits = cvh_uring_missing_operations(ring)
        let missing = bits < 0 ? requiredOperations.map(\.name) : requiredOperations.filter { bits & $0.bit != 0 }.map(\.name)
        guard missing.isEmpty else {
            throw BlockIOError("io_uring", path: store.path, errno: EOPNOTSUPP,
                               reason: "this kernel lacks io_uring operation(s) \(missing.joined(separator: ", ")) (Linux 5.6 or later has them); use --engine aio")
        }
        let r = cvh_uring_nop_roundtrip(ring)
        guard r == 0 else {
            throw BlockIOError("io_uring_enter", path: store.path, errno: -r,
                               reason: "a test request failed: \(String(cString: strerror(-r))); use --engine aio")
        }
    }

    /// Why io_uring_setup failed, in words an operator can act on. `disabledSetting` is the content
    /// of /proc/sys/kernel/io_uring_disabled (Linux 6.6+; nil where it does not exist).
    static func setupFailureReason(errno e: Int32, options: UringOptions, disabledSetting: String?) -> String {
        let fallback = "; use --engine aio"
        switch e {
        case ENOSYS:
            return "this kernel has no io_uring (built without CONFIG_IO_URING)" + fallback
        case EPERM:
            switch disabledSetting {
            case "2":
                return "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2)" + fallback
            case "1":
                return "io_uring is restricted on this host (sysctl kernel.io_uring_disabled = 1): only processes "
                    + "with CAP_SYS_ADMIN or in the group kernel.io_uring_group names may use it; add the daemon's "
                    + "user (see --user) to that group" + fallback
            default:
                return "permission denied: a seccomp filter (container runtimes refuse io_uring by default) or a "
                    + "security module refuses io_uring" + fallback
            }
        case ENOMEM:
            return "out of memory for the rings (before Linux 5.12 they count against RLIMIT_MEMLOCK: raise "
                + "`ulimit -l`)" + fallback
        case EINVAL where options.sqPoll:
            return "the kernel refused the ring parameters (SQ polling: is the --uring-sqpoll-cpu online?)" + fallback
        default:
            return String(cString: strerror(e)) + fallback
        }
    }

    /// The trimmed content of /proc/sys/`name`, or nil.
    static func readSysctl(_ name: String) -> String? { DeviceProbe.readTrimmed("/proc/sys/" + name) }

    // MARK: the per-request path

    public func enqueue(_ request: BlockRequest) {
        precondition(slots.hasRoom, "UringEngine: more requests enqueued than its capacity")
        if failure != 0 {
            slots.complete(tag: request.tag, result: failure)
            return
        }
        var result: Int32
        switch request.operation {
        case .read, .write, .writeDurable:
            let isWrite = request.operation.isWrite
            guard request.hasValidIovecs else {
                result = -EINVAL
                break
            }
            if !sync.needsBounce(request) {
                let slot = takeSlot(request)
                let flags: Int32 = request.operation == .writeDurable ? CVH_RWF_DSYNC : 0
                queued(cvh_uring_prep_rw(ring, isWrite ? 1 : 0, request.iovecs, UInt32(request.iovecCount),
                                         request.offset, flags, UInt64(slot)))
                return
            }
            result = sync.transfer(request)
        case .flush:
            queued(cvh_uring_prep_fdatasync(ring, UInt64(takeSlot(request))))
            return
        case .discard:
            if isBlockDevice {
                result = sync.discard(offset: request.offset, length: request.length)
            } else {
                prepareFallocate(request, mode: CVH_FALLOC_FL_PUNCH_HOLE)
                return
            }
        case .writeZeroes, .writeZeroesUnmap:
            let unmap = request.operation == .writeZeroesUnmap
            if isBlockDevice {
                result = sync.writeZeroes(offset: request.offset, length: request.length, unmap: unmap)
            } else {
                prepareFallocate(request, mode: unmap ? CVH_FALLOC_FL_PUNCH_HOLE : CVH_FALLOC_FL_ZERO_RANGE)
                return
            }
        }
        slots.complete(tag: request.tag, result: result)
    }

    /// Takes a free slot and records what reaping its completion needs.
    @inline(__always)
    private func takeSlot(_ request: BlockRequest) -> Int {
        let slot = slots.take(tag: request.tag, length: request.length)
        slotOperations[slot] = request.operation.rawValue
        slotOffsets[slot] = request.offset
        return slot
    }

    /// Counts an entry just written to the submission ring. The ring has at least `capacity` entries
    /// and every entry in it belongs to a request in flight, so it is never full here.
    @inline(__always)
    private func queued(_ prepared: Int32) {
        precondition(prepared == 0, "UringEngine: submission ring full with fewer requests than its capacity")
        unsubmitted &+= 1
    }

    @inline(__always)
    private func prepareFallocate(_ request: BlockRequest, mode: Int32) {
        let slot = takeSlot(request)
        queued(cvh_uring_prep_fallocate(ring, mode | CVH_FALLOC_FL_KEEP_SIZE, request.offset, request.length,
                                        UInt64(slot)))
    }

    /// One io_uring_enter for everything enqueued since the last call (under SQ polling, none while
    /// the kernel's thread is awake: liburing enters only to wake it).
    ///
    /// The eventfd is signalled when immediate completions were added (so a worker about to sleep
    /// sees them), and when entries are left in the ring with nothing in the kernel to wake the
    /// worker later (so it comes back and calls `submit()` again).
    public func submit() {
        if unsubmitted > 0 && failure == 0 { submitPending() }
        slots.signalIfWanted(eventFD)
    }

    private func submitPending() {
        let r = Int(cvh_uring_submit(ring))
        if r >= 0 {
            // Under SQ polling the count is what liburing made visible to the kernel's thread, which
            // takes all of it; otherwise it is what io_uring_enter took, oldest first.
            let taken = options.sqPoll ? unsubmitted : min(r, unsubmitted)
            unsubmitted -= taken
            kernelInFlight += taken
        } else if r != -Int(EAGAIN) && r != -Int(EBUSY) && r != -Int(EINTR) {
            failRing(Int32(truncatingIfNeeded: r))
            return
        }
        if unsubmitted > 0 && kernelInFlight == 0 { slots.wantSignal() }
    }

    /// The ring refused work for good: complete what it did not take with `error`, and every later
    /// request too. Requests it took still complete through the completion ring.
    private func failRing(_ error: Int32) {
        failure = error
        let n = Int(cvh_uring_unconsumed(ring, reapedData, UInt32(capacity)))
        for i in 0..<n {
            slots.refuse(Int(truncatingIfNeeded: reapedData[i]), result: error)
        }
        unsubmitted = 0
    }

    /// Immediate completions first, then whatever the kernel has posted to the completion ring (no
    /// system call).
    public func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        var n = slots.drain(into: buffer)
        if n < buffer.count && kernelInFlight > 0, let out = buffer.baseAddress {
            let got = Int(cvh_uring_reap(ring, reapedData, reapedResults, UInt32(min(buffer.count - n, capacity))))
            if got > 0 {
                // Locals: stores through `out` might alias this object's fields as far as the compiler
                // knows, which would force every field access in the loop back to memory.
                let data = reapedData, results = reapedResults, operations = slotOperations
                var slots = self.slots
                for i in 0..<got {
                    let slot = Int(truncatingIfNeeded: data[i])
                    let res = results[i]
                    let operation = operations[slot]
                    var result = res
                    if operation == Self.opRead || operation == Self.opWrite || operation == Self.opWriteDurable {
                        result = slots.transferResult(of: slot, res: Int64(res))
                    } else if res == -EOPNOTSUPP {
                        result = fallback(slot, length: slots.length(of: slot))
                    }
                    out[n] = slots.finish(slot, result: result)
                    n &+= 1
                }
                self.slots.endReap(slots)
                kernelInFlight -= got
            }
        }
        return n
    }

    private static let opRead = BlockOperation.read.rawValue
    private static let opWrite = BlockOperation.write.rawValue
    private static let opWriteDurable = BlockOperation.writeDurable.rawValue

    /// A zeroing fallocate mode the filesystem does not have (tmpfs has no ZERO_RANGE): the aio
    /// engine's synchronous chain of fallbacks, which ends in writing zeros. Discard has no fallback.
    private func fallback(_ slot: Int, length: UInt64) -> Int32 {
        guard let operation = BlockOperation(rawValue: slotOperations[slot]),
              operation == .writeZeroes || operation == .writeZeroesUnmap else { return -EOPNOTSUPP }
        return sync.writeZeroes(offset: slotOffsets[slot], length: length, unmap: operation == .writeZeroesUnmap)
    }
}
