#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux
import VhostSystem

/// Linux native AIO (libaio) on the backing file or block device. Reads and writes go to the kernel
/// with the caller's iovecs (zero copy), one io_submit per `submit()`; everything else is done
/// synchronously at enqueue and completed through a ring of immediate completions:
/// - FLUSH: fdatasync, which commits every write that completed before it: exactly virtio's contract
///   (writes completed before the flush was submitted), so writes still in flight need not wait.
/// - DISCARD, WRITE_ZEROES: fallocate or the block-device ioctls (see `SyncFileIO`).
/// - reads and writes O_DIRECT cannot take (misaligned buffers, offsets or lengths): pread/pwrite
///   through an aligned bounce buffer.
///
/// Results: a transfer of exactly the requested length is 0; a short one is -EIO (inside the
/// capacity it can only mean the file shrank or the device filled up mid-request, and the guest
/// sees an I/O error either way, so resubmitting the remainder would only delay the same answer);
/// a negative result is that errno. A write to a read-only store fails with -EBADF from the
/// kernel (the fd is O_RDONLY).
///
/// On a buffered store (no O_DIRECT) the kernel does libaio reads and writes inside io_submit, so
/// `submit()` blocks for them; their completions are still reaped (and signalled) as usual.
///
/// Every buffer is allocated in init: per request there is no allocation, lock, retain or
/// existential. The class is `final` and its per-request methods are plain (not `@inlinable`):
/// a caller specialised on `AioEngine` calls them directly, and one function call is noise beside the
/// system calls each request needs; keeping them opaque keeps the libaio details private.
///
/// Used by one thread at a time (its worker); `@unchecked Sendable` only so it can be handed to it.
public final class AioEngine: BlockEngine, @unchecked Sendable {
    public let capacity: Int
    public var inFlight: Int { slots.inFlight }
    public var completionEventFD: Int32? { eventFD }

    /// Keeps the backing fd open for as long as this engine may use it.
    private let store: BackingStore
    private let fd: Int32
    private let eventFDOwner: EventFD
    private let eventFD: Int32
    private let context: io_context_t
    // @exclusivity(unchecked): an engine is used by one thread (its queue's worker), so Swift's dynamic
    // exclusivity checks on its per-request fields can never fire (bench/HotPath measured their cost).
    @exclusivity(unchecked) private var slots: SlotTable
    /// `capacity` control blocks, one per slot of `slots`.
    private let iocbs: UnsafeMutablePointer<iocb>
    /// Prepared but not yet accepted by io_submit, in enqueue order.
    private let pending: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    @exclusivity(unchecked) private var pendingCount = 0
    private let events: UnsafeMutablePointer<io_event>
    /// Accepted by the kernel and not yet reaped.
    @exclusivity(unchecked) private var kernelInFlight = 0
    private let sync: SyncFileIO

    public init(store: BackingStore, depth: Int) throws(BlockIOError) {
        try validateDepth(depth, engine: "aio")
        let sync = try SyncFileIO(store: store)
        let eventFD = try withSystemErrors(path: store.path) { try EventFD(nonBlocking: true) }
        var context: io_context_t?
        let r = io_setup(Int32(depth), &context)
        guard r == 0, let context else {
            let hint = -r == EAGAIN ? " (the system-wide limit /proc/sys/fs/aio-max-nr is reached)" : ""
            throw BlockIOError("io_setup", path: store.path, errno: -r,
                               reason: "depth \(depth): \(String(cString: strerror(-r)))\(hint)")
        }
        // Nothing below can fail, so the context cannot leak.
        self.store = store
        self.fd = sync.fd
        self.sync = sync
        self.capacity = depth
        self.eventFDOwner = eventFD
        self.eventFD = eventFD.rawValue
        self.context = context
        slots = SlotTable(capacity: depth)
        iocbs = .allocate(capacity: depth)
        iocbs.initialize(repeating: iocb(), count: depth)
        pending = .allocate(capacity: depth)
        pending.initialize(repeating: nil, count: depth)
        events = .allocate(capacity: depth)
        events.initialize(repeating: io_event(), count: depth)
    }

    deinit {
        // io_destroy waits for the requests still in flight, so the kernel is done with the iocbs
        // (and the caller's buffers) before they are freed.
        _ = io_destroy(context)
        slots.deallocate()
        iocbs.deallocate()
        pending.deallocate()
        events.deallocate()
    }

    public func enqueue(_ request: BlockRequest) {
        precondition(slots.hasRoom, "AioEngine: more requests enqueued than its capacity")
        var result: Int32
        switch request.operation {
        case .read, .write, .writeDurable:
            guard request.hasValidIovecs else {
                result = -EINVAL
                break
            }
            if !sync.needsBounce(request) {
                prepare(request)
                return
            }
            result = sync.transfer(request)
        case .flush:
            result = SyncFileIO.flush(fd: fd)
        case .discard:
            result = sync.discard(offset: request.offset, length: request.length)
        case .writeZeroes:
            result = sync.writeZeroes(offset: request.offset, length: request.length, unmap: false)
        case .writeZeroesUnmap:
            result = sync.writeZeroes(offset: request.offset, length: request.length, unmap: true)
        }
        slots.complete(tag: request.tag, result: result)
    }

    /// Fills a free slot's iocb and queues it for the next io_submit.
    @inline(__always)
    private func prepare(_ request: BlockRequest) {
        let slot = slots.take(tag: request.tag, length: request.length)
        cvh_bio_prep_rw(iocbs + slot, request.operation.isWrite ? 1 : 0, fd, request.iovecs,
                        request.iovecCount, request.offset, eventFD, UInt64(slot))
        if request.operation == .writeDurable { cvh_bio_set_dsync(iocbs + slot) }
        pending[pendingCount] = iocbs + slot
        pendingCount &+= 1
    }

    /// One io_submit for everything prepared since the last call. io_submit may take only a prefix:
    /// the rest is retried at once, except after EAGAIN (the kernel is short of resources), when it
    /// stays queued for the next `submit()`. An error io_submit reports belongs to the first iocb it
    /// did not take; that request is completed with the error and the rest are retried.
    ///
    /// The eventfd is signalled when immediate completions were added (so a worker about to sleep
    /// sees them), and when requests are left queued with nothing in the kernel to wake the worker
    /// later (so it comes back and calls `submit()` again).
    public func submit() {
        if pendingCount > 0 { submitPending() }
        slots.signalIfWanted(eventFD)
    }

    private func submitPending() {
        let count = pendingCount
        var start = 0
        while start < count {
            let n = Int(io_submit(context, count - start, pending + start))
            if n > 0 {
                start += n
                kernelInFlight += n
                continue
            }
            if n == 0 || n == -Int(EAGAIN) || n == -Int(EINTR) { break }
            let slot = pending[start]! - iocbs
            start += 1
            slots.refuse(slot, result: Int32(truncatingIfNeeded: n))
        }
        if start < count {
            // Keep the refused tail, in order, at the front of the queue.
            for i in 0..<(count - start) { pending[i] = pending[start + i] }
            if kernelInFlight == 0 { slots.wantSignal() }
        }
        pendingCount = count - start
    }

    /// Immediate completions first, then whatever the kernel has finished: io_getevents with a zero
    /// timeout, which libaio answers from the shared completion ring without a system call when
    /// the ring is empty.
    public func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        var n = slots.drain(into: buffer)
        if n < buffer.count && kernelInFlight > 0, let out = buffer.baseAddress {
            var noWait = timespec(tv_sec: 0, tv_nsec: 0)
            let got = Int(io_getevents(context, 0, min(buffer.count - n, capacity), events, &noWait))
            // got < 0 is EINTR (or a bug such as EFAULT): the completions stay in the kernel's ring
            // for the next call.
            if got > 0 {
                // Locals: stores through `out` might alias this object's fields as far as the compiler
                // knows, which would force every field access in the loop back to memory.
                let events = self.events
                var slots = self.slots
                for i in 0..<got {
                    let event = events + i
                    let slot = Int(truncatingIfNeeded: cvh_bio_event_data(event))
                    let result = slots.transferResult(of: slot, res: cvh_bio_event_res(event))
                    out[n] = slots.finish(slot, result: result)
                    n &+= 1
                }
                self.slots.endReap(slots)
                kernelInFlight -= got
            }
        }
        return n
    }
}
