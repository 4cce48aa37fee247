import GuestMemory
import VhostUserProtocol
import Virtqueue

/// One poll pass of a queue: take new chains when `acceptNew`, submit, reap, publish. Throws when the
/// ring is broken. A closure rather than a protocol requirement so that the device can hand over a
/// pass compiled for its concrete types: a generic queue type's protocol witness is compiled once for
/// every type argument, and every per-request call inside it would go through witness tables. The
/// worker calls it once per pass, never per request.
public typealias QueuePoller = (_ acceptNew: Bool) throws(QueueError) -> PassResult

/// One virtqueue's request processor, driven by a worker thread. Implemented by the device (e.g.
/// virtio-blk); knows nothing of vhost-user.
public protocol QueueHandler: AnyObject {
    /// Arms driver notifications and re-checks the ring; true when the worker may sleep.
    func prepareToSleep() throws(QueueError) -> Bool
    /// Suppresses driver notifications again after waking.
    func stopSleeping()
    /// Requests handed to storage and not yet completed.
    var inFlight: Int { get }
    /// Readable when storage completes a request (nil: storage completes synchronously).
    var completionEventFD: Int32? { get }
    /// The ring's position, read after the worker stopped (GET_VRING_BASE).
    var ring: SplitQueue { get }
    /// Driver mistakes seen so far and the first reason since the last `clearGuestErrorReason()`.
    var guestErrors: UInt64 { get }
    var lastGuestError: String { get }
    func clearGuestErrorReason()
}

/// A virtio device served over vhost-user: what it offers and how it makes queue processors.
public protocol VhostUserDevice: AnyObject {
    associatedtype Queue: QueueHandler

    /// Virtio feature bits offered in GET_FEATURES (device, ring and VERSION_1 bits).
    var features: VirtioFeatures { get }
    /// vhost-user protocol features offered in GET_PROTOCOL_FEATURES.
    var protocolFeatures: ProtocolFeatures { get }
    /// Queues offered in GET_QUEUE_NUM; queue indices from the front-end must be below it.
    var queueCount: Int { get }
    /// The largest ring the device accepts in SET_VRING_NUM.
    var maxQueueSize: UInt16 { get }
    /// Config space bytes [offset, offset+size), or nil when the window is outside the config space.
    func readConfig(offset: Int, size: Int) -> [UInt8]?
    /// A driver's write to the config space (SET_CONFIG), made while every queue is stopped and drained;
    /// queues restart afterwards from `makeQueue`, so they see the new configuration. Throws (with the
    /// reason) for a field that is not writable or a value that is not allowed.
    func writeConfig(offset: Int, data: [UInt8]) throws
    /// A processor for queue `index` over a mapped ring, with the features the driver acknowledged,
    /// and its poll pass.
    func makeQueue(index: Int, ring: SplitQueue, memory: GuestMemoryMap, features: VirtioFeatures) throws
        -> (queue: Queue, poll: QueuePoller)
    /// How the worker of queue `index` runs: its CPU (nil = unpinned), longest idle poll before sleeping,
    /// and what it does on a shared CPU.
    func workerPolicy(queue index: Int) -> WorkerPolicy
}

public struct WorkerPolicy: Sendable {
    public var cpu: Int?
    /// The longest a worker busy-polls an idle queue before arming notifications and sleeping; the
    /// window itself adapts between 0 and this to the queue's traffic (`PollWindow`). nil never sleeps.
    public var pollWindowNanoseconds: UInt64?
    /// What the worker does when it finds its CPU shared with other busy threads; nil: it does not
    /// look (the operator dedicated the CPU to it).
    public var sharedCore: SharedCoreResponse?
    public init(cpu: Int?, pollWindowNanoseconds: UInt64?, sharedCore: SharedCoreResponse? = nil) {
        self.cpu = cpu
        self.pollWindowNanoseconds = pollWindowNanoseconds
        self.sharedCore = sharedCore
    }
}
