#if canImport(Glibc)
import Glibc
#endif
import VhostSystem
import VhostUserProtocol
import Virtqueue

/// The in-flight log the front-end keeps for us across back-end restarts (INFLIGHT_SHMFD): one region
/// per queue, laid out by `InflightLayout`. We allocate it when asked (GET_INFLIGHT_FD) and map
/// whatever the front-end hands back (SET_INFLIGHT_FD), which after a restart is the buffer a previous
/// process of ours filled.
final class InflightBuffer {
    let mapping: MemoryMapping
    let queues: Int
    let queueSize: UInt16

    /// Validates a SET_INFLIGHT_FD and maps the part of the buffer the queues use.
    init(_ d: InflightDescription, fd: FileDescriptor, maxQueues: Int, maxQueueSize: UInt16) throws {
        let regionBytes = try Self.validate(queues: d.numQueues, queueSize: d.queueSize,
                                            maxQueues: maxQueues, maxQueueSize: maxQueueSize)
        let needed = Int(d.numQueues) * regionBytes
        guard d.mmapSize >= UInt64(needed) else {
            throw SessionError("SET_INFLIGHT_FD: \(d.mmapSize) bytes cannot hold \(d.numQueues) queue(s) of \(d.queueSize) (\(needed) bytes)")
        }
        // mmap needs a page-aligned offset; and touching a mapping beyond the end of its file raises
        // SIGBUS, so the file must really be as large as the front-end says.
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        guard d.mmapOffset % page == 0 else {
            throw SessionError("SET_INFLIGHT_FD: offset \(d.mmapOffset) is not page-aligned")
        }
        let (end, overflow) = d.mmapOffset.addingReportingOverflow(UInt64(needed))
        let fileSize = UInt64(max(0, try fd.stat().st_size))
        guard !overflow, end <= fileSize else {
            throw SessionError("SET_INFLIGHT_FD: the buffer needs bytes up to \(end), the file has \(fileSize)")
        }
        mapping = try MemoryMapping(fd: fd.rawValue, offset: d.mmapOffset, length: needed)
        queues = Int(d.numQueues)
        queueSize = d.queueSize
    }

    /// The region of queue `index`, or nil when the buffer has none for it.
    func region(queue index: Int) -> InflightRegion? {
        guard index < queues else { return nil }
        let bytes = InflightLayout.queueRegionBytes(queueSize: queueSize)
        return InflightRegion(base: mapping.base + index * bytes, capacity: queueSize)
    }

    /// Checks a front-end's queue geometry and returns the bytes of one queue's region.
    static func validate(queues: UInt16, queueSize: UInt16, maxQueues: Int, maxQueueSize: UInt16) throws -> Int {
        guard queues >= 1, Int(queues) <= maxQueues else {
            throw SessionError("in-flight buffer for \(queues) queue(s); the device has \(maxQueues)")
        }
        guard SplitQueueConfig.isValidSize(UInt32(queueSize)), queueSize <= maxQueueSize else {
            throw SessionError("in-flight buffer for queues of \(queueSize): not a power of two in 1...\(maxQueueSize)")
        }
        return InflightLayout.queueRegionBytes(queueSize: queueSize)
    }

    /// GET_INFLIGHT_FD: a new zeroed memfd (version 0 in every region: nothing in flight) sized for
    /// the front-end's queues. The front-end maps it too and keeps it; we map it on SET_INFLIGHT_FD.
    static func allocate(queues: UInt16, queueSize: UInt16, maxQueues: Int, maxQueueSize: UInt16) throws
        -> (FileDescriptor, InflightDescription) {
        let regionBytes = try validate(queues: queues, queueSize: queueSize, maxQueues: maxQueues, maxQueueSize: maxQueueSize)
        let size = Int(queues) * regionBytes
        let fd = try makeMemFD(name: "vhost-user-blk-inflight", size: size)
        return (fd, InflightDescription(mmapSize: UInt64(size), mmapOffset: 0, numQueues: queues, queueSize: queueSize))
    }
}
