#if canImport(Glibc)
import Glibc
#endif

// BlockIO: I/O engines and backing-store probing. Nothing here knows about virtio: the upper layer
// (VirtioBlk) turns guest requests into `BlockRequest`s whose iovecs point straight into guest memory,
// and turns `BlockCompletion`s back into virtio status bytes.

/// What a request does. Raw values are stable so the caller may store them in a byte.
public enum BlockOperation: UInt8, Sendable {
    case read, write, flush, discard, writeZeroes, writeZeroesUnmap
    /// A write that is durable when it completes (write-through caching): the data and the metadata
    /// needed to read it back are on stable storage, as if an fdatasync of that range followed.
    case writeDurable

    /// Whether the operation stores data the caller provides.
    // @inline(__always): left to itself the optimiser kept it out of line, a call per request in both
    // kernel engines (9 instructions a request for aio, 13 for io_uring: bench/HotPath).
    @inlinable @inline(__always) public var isWrite: Bool { self == .write || self == .writeDurable }
}

/// One request. Plain value, no references: nothing to retain on the hot path.
public struct BlockRequest {
    /// The caller's slot id, handed back in the completion.
    public var tag: UInt32
    public var operation: BlockOperation
    /// Bytes from the start of the store (already validated against capacity by the caller).
    public var offset: UInt64
    /// Bytes: for read/write the sum of the iovecs; for discard/write-zeroes the range.
    public var length: UInt64
    /// Read/write only: the data buffers, valid until the completion is reaped.
    public var iovecs: UnsafeMutablePointer<iovec>?
    public var iovecCount: Int32

    @inlinable
    public init(tag: UInt32, operation: BlockOperation, offset: UInt64, length: UInt64,
                iovecs: UnsafeMutablePointer<iovec>? = nil, iovecCount: Int32 = 0) {
        self.tag = tag
        self.operation = operation
        self.offset = offset
        self.length = length
        self.iovecs = iovecs
        self.iovecCount = iovecCount
    }
}

extension BlockRequest {
    /// Whether the kernel engines may hand the iovec list to the kernel (or to the bounce path): a
    /// negative count, or a count with no list, is the caller's bug, answered with -EINVAL rather than
    /// letting anything read wild memory.
    @inline(__always)
    var hasValidIovecs: Bool { iovecCount >= 0 && (iovecs != nil || iovecCount == 0) }
}

/// A finished request.
public struct BlockCompletion: Equatable {
    public var tag: UInt32
    /// 0 on success, else a negative errno.
    public var result: Int32

    @inlinable
    public init(tag: UInt32, result: Int32) {
        self.tag = tag
        self.result = result
    }
}

/// An I/O engine. One instance per virtqueue, used by exactly one thread (its worker). Callers are
/// generic over it (`Worker<E: BlockEngine>`), so calls are specialised, not dynamically dispatched.
///
/// Waiting: a worker that wants to sleep calls `reap` once more after its last `submit()`, and sleeps
/// on `completionEventFD` (beside its kick fd) only if that returned nothing. When the wait reports
/// the fd readable, the worker drains it (`VhostSystem.drainEventFD`) *before* calling `reap`: any
/// completion that arrives after the drain makes the fd readable again, so none is missed, and the
/// fd does not stay readable for completions already reaped.
public protocol BlockEngine: AnyObject {
    /// Most requests this engine holds in flight (the caller never enqueues more).
    var capacity: Int { get }
    /// Requests enqueued or submitted and not yet reaped.
    var inFlight: Int { get }
    /// Queues a request. Nothing need reach the kernel until `submit()` (one syscall per poll pass).
    func enqueue(_ request: BlockRequest)
    /// Sends everything enqueued since the last call.
    func submit()
    /// How many requests the caller should enqueue before calling `submit()` mid-pass (it also submits
    /// at the end of every pass). Engines without a system call per submission want no limit.
    var submitBatch: Int { get }
    /// Moves finished completions into `buffer` without blocking; returns how many were written.
    func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int
    /// Readable when a completion is ready (see the type's comment for the drain rule); nil when
    /// every request is completed by the time `submit()` returns.
    var completionEventFD: Int32? { get }
}

extension BlockEngine {
    /// Kernel engines (aio, io_uring): 4. One io_submit/io_uring_enter hands its whole batch to the block
    /// layer under one plug, and the device is kicked only when the last request of it is prepared; a
    /// pass that took a whole depth-32 ring's worth of requests then held the first back until the 32nd
    /// was ready, and the disk saw bursts instead of a full queue: 0.76× qsd's IOPS on randwrite and
    /// 0.92× on randread (qsd submits each request alone). Measured on this VM's virtio disk, depth 32,
    /// 3 alternating rounds: one per call 226 k / 142 k, every 4 234 k / 141 k, every 8 223 k / 142 k,
    /// the whole pass 195 k / 127 k (randwrite / randread IOPS; qsd 216 k / 138 k in the same runs).
    /// 4 keeps the disk's queue fed at a quarter of the system calls of one per request.
    @inlinable public var submitBatch: Int { 4 }
}

/// Which engine serves a store.
public enum EngineKind: String, Sendable, CaseIterable {
    /// libaio on the file or block device (O_DIRECT when the filesystem accepts it).
    case aio
    /// io_uring on the file or block device (O_DIRECT when the filesystem accepts it).
    case uring
    /// Completes everything at once without touching memory: measures the virtio path alone.
    case null
    /// A RAM disk in an anonymous mapping shared by all queues.
    case memory
}
