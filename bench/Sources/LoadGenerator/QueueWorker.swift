#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// How a worker learns that requests completed.
public enum WaitMode: String, Sendable, CaseIterable {
    /// Re-read used->idx in a loop; the device is asked for no interrupts.
    case poll
    /// Sleep in poll(2) on the call eventfd when nothing has completed.
    case event
}

/// Split-ring layout (virtio 1.2 §2.7.5–2.7.8) as byte offsets, and virtio-blk request constants.
enum Virtio {
    static let descriptorSize = 16
    static let descNext: UInt16 = 1
    static let descWrite: UInt16 = 2
    /// VRING_AVAIL_F_NO_INTERRUPT and VRING_USED_F_NO_NOTIFY.
    static let availNoInterrupt: UInt16 = 1
    static let usedNoNotify: UInt16 = 1
    /// struct virtio_blk_outhdr: le32 type, le32 reserved (ioprio), le64 sector.
    static let requestHeaderSize = 16
    static let typeIn: UInt32 = 0
    static let typeOut: UInt32 = 1
    static let statusOK: UInt8 = 0
    /// A status value the device never writes (OK 0, IOERR 1, UNSUPP 2): a completion that still
    /// carries it was never really completed.
    static let statusUnwritten: UInt8 = 0xFF
    /// Descriptors per request: header, data, status (no indirect tables: one fixed chain per slot).
    static let descriptorsPerRequest = 3
}

/// The addresses a worker drives: one virtqueue's rings, the per-slot buffers in guest memory, and
/// its notification fds. Raw pointers into the shared mapping; the arena outlives every worker.
public struct QueueMemory: @unchecked Sendable {
    public var desc: UnsafeMutableRawPointer
    public var avail: UnsafeMutableRawPointer
    public var used: UnsafeMutableRawPointer
    public var queueSize: Int
    public var kickFD: Int32
    public var callFD: Int32
    /// `depth` request headers of 16 bytes, `depth` status bytes, `depth` data buffers of `blockSize`.
    public var headers: UnsafeMutableRawPointer
    public var headersGPA: UInt64
    public var statuses: UnsafeMutableRawPointer
    public var statusesGPA: UInt64
    public var data: UnsafeMutableRawPointer
    public var dataGPA: UInt64
}

/// Everything a worker needs, fixed before it starts.
public struct WorkerConfig: @unchecked Sendable {
    public var memory: QueueMemory
    public var depth: Int
    public var blockSize: Int
    public var planner: RequestPlanner
    public var eventIdx: Bool
    public var waitMode: WaitMode
    /// Requests this queue submits at most (UInt64.max = until `endNs`).
    public var requestLimit: UInt64
    /// CLOCK_MONOTONIC times: measuring starts at `rampEndNs`, submitting stops at `endNs`.
    public var rampEndNs: UInt64
    public var endNs: UInt64
    /// Verify: write `verifyBlocks` blocks from the region's start, wait for all, read them back.
    public var verify: Bool
    public var verifyBlocks: UInt64
    public var seed: UInt64
    /// Abandon the run when nothing completes for this long while requests are outstanding.
    public var stallTimeoutNs: UInt64
    /// Wait this long after each batch of completions before submitting again (0 = never wait).
    public var thinkNs: UInt64 = 0
    /// Cache-line of shared counters: [0] completed (worker → main, for progress), [1] done flag.
    public var control: UnsafeMutablePointer<UInt64>
}

public struct WorkerResult: Sendable {
    public var completed: UInt64 = 0
    public var reads: UInt64 = 0
    public var writes: UInt64 = 0
    public var ioErrors: UInt64 = 0
    public var verifyErrors: UInt64 = 0
    public var verifiedBlocks: UInt64 = 0
    public var firstVerifyError: String?
    public var latency = LatencyRecorder()
    public var kicks: UInt64 = 0
    public var callWaits: UInt64 = 0
    public var measureStartNs: UInt64 = 0
    public var measureEndNs: UInt64 = 0
    /// Why the run was cut short (a stalled or misbehaving device), nil when it ended normally.
    public var failure: String?
}

/// `vring_need_event` (virtio 1.2 §2.7.10): true when moving an index from `old` to `new` passes
/// `event`, i.e. the other side asked to be notified at `event`.
@inline(__always)
func needEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
    (new &- event &- 1) < (new &- old)
}

/// The driver loop of one queue. Runs on its own pinned thread; all state lives in locals and raw
/// buffers allocated once here, so no request allocates, retains or calls through an existential.
public func runQueueWorker(_ c: WorkerConfig) -> WorkerResult {
    let m = c.memory
    let desc = m.desc, availRing = m.avail, usedRing = m.used
    let qsize = m.queueSize
    let mask = UInt16(truncatingIfNeeded: qsize - 1)
    let depth = c.depth
    let bs = c.blockSize
    let availIdxP = availRing + 2
    let usedEventP = availRing + 4 + 2 * qsize
    let usedIdxP = usedRing + 2
    let availEventP = usedRing + 4 + 8 * qsize
    let eventIdx = c.eventIdx
    let polling = c.waitMode == .poll
    let verify = c.verify
    var planner = c.planner

    let freeSlots = UnsafeMutablePointer<UInt16>.allocate(capacity: depth)
    let submitTime = UnsafeMutablePointer<UInt64>.allocate(capacity: depth)
    let slotOffset = UnsafeMutablePointer<UInt64>.allocate(capacity: depth)
    let slotIsRead = UnsafeMutablePointer<Bool>.allocate(capacity: depth)
    defer {
        freeSlots.deallocate()
        submitTime.deallocate()
        slotOffset.deallocate()
        slotIsRead.deallocate()
    }
    // Slot s owns descriptors 3s (header), 3s+1 (data), 3s+2 (status); only the data descriptor's
    // direction changes per request, so the rest is written once here.
    for s in 0..<depth {
        freeSlots[s] = UInt16(depth - 1 - s)
        let d = desc + Virtio.descriptorSize * Virtio.descriptorsPerRequest * s
        writeDescriptor(d, gpa: m.headersGPA + UInt64(Virtio.requestHeaderSize * s), length: UInt32(Virtio.requestHeaderSize),
                        flags: Virtio.descNext, next: UInt16(3 * s + 1))
        writeDescriptor(d + 16, gpa: m.dataGPA + UInt64(bs * s), length: UInt32(bs),
                        flags: Virtio.descNext | Virtio.descWrite, next: UInt16(3 * s + 2))
        writeDescriptor(d + 32, gpa: m.statusesGPA + UInt64(s), length: 1, flags: Virtio.descWrite, next: 0)
        // Reserved/ioprio field of the header stays 0.
        (m.headers + Virtio.requestHeaderSize * s).storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
    }
    var freeCount = depth

    // Poll mode: tell the device not to interrupt (the flag without EVENT_IDX; with it, a used_event
    // half the index space ahead, which the device cannot reach with ≤ 1024 requests in flight).
    cvh_store_release_u16(availRing, polling ? Virtio.availNoInterrupt : 0)
    var availIdx = cvh_load_acquire_u16(availIdxP)
    var lastUsed = cvh_load_acquire_u16(usedIdxP)
    if eventIdx { cvh_store_release_u16(usedEventP, polling ? lastUsed &+ 0x8000 : lastUsed) }

    var r = WorkerResult()
    var measuring = c.rampEndNs == 0
    var submitted: UInt64 = 0
    var completed: UInt64 = 0, reads: UInt64 = 0, writes: UInt64 = 0, ioErrors: UInt64 = 0
    var kicks: UInt64 = 0, callWaits: UInt64 = 0
    var latency = LatencyRecorder()
    let limit = verify ? 2 * c.verifyBlocks : c.requestLimit
    var now = monotonicNanoseconds()
    r.measureStartNs = now
    var lastProgress = now
    var submitting = true
    // With a think time: no submission before this time (set after each batch of completions).
    var resumeAt: UInt64 = 0
    let thinkNs = c.thinkNs
    var pfd = pollfd(fd: m.callFD, events: Int16(POLLIN), revents: 0)

    while true {
        if submitting && (submitted >= limit || (!verify && now >= c.endNs)) { submitting = false }
        // Verify: every write must have completed before the first read is issued.
        let barrier = verify && submitted == c.verifyBlocks && freeCount < depth
        if submitting && freeCount > 0 && !barrier && (thinkNs == 0 || now >= resumeAt) {
            let oldAvail = availIdx
            while freeCount > 0 && submitted < limit {
                if verify && submitted == c.verifyBlocks && freeCount < depth { break }
                freeCount -= 1
                let s = Int(freeSlots[freeCount])
                let isRead: Bool
                let offset: UInt64
                if verify {
                    isRead = submitted >= c.verifyBlocks
                    offset = planner.region.start &+ (submitted % c.verifyBlocks) &* UInt64(bs)
                    if isRead {
                        // Poison the buffer: a read the device "completes" without writing data
                        // must not pass by finding the pattern an earlier write left in this slot.
                        memset(m.data + bs * s, 0xA5, bs)
                    } else {
                        VerifyPattern.fill(m.data + bs * s, length: bs, deviceOffset: offset, seed: c.seed)
                    }
                } else {
                    isRead = planner.nextIsRead()
                    offset = planner.nextOffset()
                }
                let h = m.headers + Virtio.requestHeaderSize * s
                h.storeBytes(of: (isRead ? Virtio.typeIn : Virtio.typeOut).littleEndian, as: UInt32.self)
                h.storeBytes(of: (offset >> 9).littleEndian, toByteOffset: 8, as: UInt64.self)
                (desc + Virtio.descriptorSize * (3 * s + 1)).storeBytes(
                    of: (isRead ? Virtio.descNext | Virtio.descWrite : Virtio.descNext).littleEndian, toByteOffset: 12, as: UInt16.self)
                m.statuses.storeBytes(of: Virtio.statusUnwritten, toByteOffset: s, as: UInt8.self)
                submitTime[s] = now
                slotOffset[s] = offset
                slotIsRead[s] = isRead
                (availRing + 4 + 2 * Int(availIdx & mask)).storeBytes(of: UInt16(3 * s).littleEndian, as: UInt16.self)
                availIdx &+= 1
                submitted &+= 1
            }
            // The release store orders the descriptors, headers and ring slots before the index;
            // the full fence then orders that store before reading the device's suppression state,
            // or the device could go to sleep after we read "no kick needed" (§2.7.13.3).
            cvh_store_release_u16(availIdxP, availIdx)
            cvh_fence_seq_cst()
            let kick: Bool
            if eventIdx {
                kick = needEvent(event: cvh_load_acquire_u16(availEventP), new: availIdx, old: oldAvail)
            } else {
                kick = cvh_load_acquire_u16(usedRing) & Virtio.usedNoNotify == 0
            }
            if kick {
                var one: UInt64 = 1
                _ = write(m.kickFD, &one, 8)
                kicks &+= 1
            }
        }
        if !submitting && freeCount == depth { break }

        var used = cvh_load_acquire_u16(usedIdxP)
        if used == lastUsed {
            if !polling {
                // Arm the notification, then look again: a completion between the first look and
                // the arming would otherwise never be signalled (the device read the old used_event).
                if eventIdx { cvh_store_release_u16(usedEventP, lastUsed) }
                cvh_fence_seq_cst()
                used = cvh_load_acquire_u16(usedIdxP)
                if used == lastUsed {
                    // 10 ms: short enough to notice the end of the run and a stall promptly.
                    _ = poll(&pfd, 1, 10)
                    var value: UInt64 = 0
                    _ = read(m.callFD, &value, 8)
                    callWaits &+= 1
                }
            }
            now = monotonicNanoseconds()
            if used == lastUsed {
                if freeCount < depth && now &- lastProgress > c.stallTimeoutNs {
                    r.failure = "no completion for \(c.stallTimeoutNs / 1_000_000) ms with \(depth - freeCount) requests in flight"
                    break
                }
                continue
            }
        } else {
            now = monotonicNanoseconds()
        }
        let reaped = used &- lastUsed
        if Int(reaped) > depth - freeCount {
            r.failure = "used idx moved by \(reaped) with only \(depth - freeCount) requests in flight"
            break
        }
        while lastUsed != used {
            let e = usedRing + 4 + 8 * Int(lastUsed & mask)
            let id = Int(UInt32(littleEndian: e.load(as: UInt32.self)))
            lastUsed &+= 1
            let s = id / 3
            guard id % 3 == 0, s < depth else {
                r.failure = "device returned descriptor id \(id), which heads no chain"
                break
            }
            let isRead = slotIsRead[s]
            if measuring { latency.record(nanoseconds: now &- submitTime[s]) }
            completed &+= 1
            if isRead { reads &+= 1 } else { writes &+= 1 }
            if m.statuses.load(fromByteOffset: s, as: UInt8.self) != Virtio.statusOK {
                ioErrors &+= 1
            } else if verify && isRead {
                r.verifiedBlocks &+= 1
                if let bad = VerifyPattern.firstMismatch(m.data + bs * s, length: bs, deviceOffset: slotOffset[s], seed: c.seed) {
                    r.verifyErrors &+= 1
                    if r.firstVerifyError == nil {
                        r.firstVerifyError = "device offset \(slotOffset[s] + UInt64(bad)): byte \(bad) of the block at \(slotOffset[s]) differs"
                    }
                }
            }
            freeSlots[freeCount] = UInt16(s)
            freeCount += 1
        }
        if r.failure != nil { break }
        lastProgress = now
        if thinkNs > 0 { resumeAt = now &+ thinkNs }
        if polling && eventIdx { cvh_store_relaxed_u16(usedEventP, lastUsed &+ 0x8000) }
        if !measuring && now >= c.rampEndNs {
            measuring = true
            latency.reset()
            completed = 0; reads = 0; writes = 0; ioErrors = 0; kicks = 0; callWaits = 0
            r.measureStartNs = now
        }
        cvh_store_release_u64(c.control, completed)
    }
    r.measureEndNs = now
    r.completed = completed
    r.reads = reads
    r.writes = writes
    r.ioErrors = ioErrors
    r.kicks = kicks
    r.callWaits = callWaits
    r.latency = latency
    cvh_store_release_u64(c.control, completed)
    cvh_store_release_u64(c.control + 1, 1)
    return r
}

@inline(__always)
func writeDescriptor(_ p: UnsafeMutableRawPointer, gpa: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
    p.storeBytes(of: gpa.littleEndian, as: UInt64.self)
    p.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
    p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
    p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
}
