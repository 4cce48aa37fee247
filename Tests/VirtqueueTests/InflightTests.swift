import GuestMemory
import Testing
import VhostUserTesting
import Virtqueue

/// One queue's in-flight region in zeroed memory, read back through the spec's layout (not through
/// the code under test's accessors).
final class LogRegion {
    let base: UnsafeMutableRawPointer
    let capacity: UInt16
    init(capacity: UInt16) {
        self.capacity = capacity
        let bytes = InflightLayout.queueRegionBytes(queueSize: capacity)
        base = .allocate(byteCount: bytes, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    }
    deinit { base.deallocate() }
    var region: InflightRegion { InflightRegion(base: base, capacity: capacity) }
    var version: UInt16 { base.load(fromByteOffset: 8, as: UInt16.self) }
    var descNum: UInt16 { base.load(fromByteOffset: 10, as: UInt16.self) }
    var lastBatchHead: UInt16 {
        get { base.load(fromByteOffset: 12, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 12, as: UInt16.self) }
    }
    var usedIdx: UInt16 {
        get { base.load(fromByteOffset: 14, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 14, as: UInt16.self) }
    }
    func state(_ h: Int) -> UnsafeMutableRawPointer { base + 16 + 16 * h }
    func inflight(_ h: Int) -> UInt8 { state(h).load(as: UInt8.self) }
    func setInflight(_ h: Int, _ v: UInt8) { state(h).storeBytes(of: v, as: UInt8.self) }
    func counter(_ h: Int) -> UInt64 { state(h).load(fromByteOffset: 8, as: UInt64.self) }
    func setCounter(_ h: Int, _ v: UInt64) { state(h).storeBytes(of: v, toByteOffset: 8, as: UInt64.self) }
    func next(_ h: Int) -> UInt16 { state(h).load(fromByteOffset: 6, as: UInt16.self) }
    func setNext(_ h: Int, _ v: UInt16) { state(h).storeBytes(of: v, toByteOffset: 6, as: UInt16.self) }
    var marked: [Int] { (0..<Int(capacity)).filter { inflight($0) == 1 } }
}

extension Rig {
    /// A new device-side queue over the same rings, as a restarted back-end builds it: the avail index
    /// QEMU sends after a crash (used->idx) and the used index read from the ring.
    func restartedQueue() throws -> SplitQueue {
        let used = driver.deviceUsedIndex
        return try SplitQueue(config: Self.config(driver), memory: map.view, nextAvail: used, usedIdx: used)
    }

    /// Adds `n` one-buffer chains to the avail ring and publishes them; returns their heads.
    func addChains(_ n: Int) throws -> [UInt16] {
        let heads = try (0..<n).map { _ in try driver.addChain([BufferSegment(try arena.allocate(64), deviceWritable: true)]) }
        driver.publish()
        return heads
    }
}

@Suite("In-flight log (INFLIGHT_SHMFD)")
struct InflightTests {
    @Test("a fresh region is initialised; taking a head marks it, publishing its used element unmarks it")
    func freshRegionMarksAndUnmarks() throws {
        let rig = try Rig(size: 8)
        let log = LogRegion(capacity: 8)
        log.setInflight(3, 1) // garbage in a "fresh" buffer must not survive initialisation
        let r = try rig.queue.attachInflight(log.region)
        #expect(r == InflightRecovery(fresh: true, resubmitted: 0, completedUnmarked: 0))
        #expect(log.version == 1 && log.descNum == 8 && log.usedIdx == 0 && log.marked.isEmpty)

        let heads = try rig.addChains(3)
        #expect(try rig.queue.pending() == 3)
        let popped = try (0..<3).map { _ in try rig.queue.popHead() }
        #expect(popped == heads)
        #expect(log.marked == heads.map(Int.init).sorted())
        #expect(log.counter(Int(heads[0])) < log.counter(Int(heads[1])) && log.counter(Int(heads[1])) < log.counter(Int(heads[2])))

        // Complete the last two as one batch: marks stay until the publish.
        rig.queue.pushUsed(head: heads[2], length: 1)
        rig.queue.pushUsed(head: heads[1], length: 1)
        #expect(log.marked.count == 3)
        #expect(log.lastBatchHead == heads[1] && log.next(Int(heads[1])) == heads[2])
        rig.queue.publishUsed()
        #expect(log.marked == [Int(heads[0])])
        #expect(log.usedIdx == 2)
        rig.queue.pushUsed(head: heads[0], length: 1)
        rig.queue.publishUsed()
        #expect(log.marked.isEmpty && log.usedIdx == 3)
    }

    @Test("killed before publishing: every head taken is resubmitted, oldest first, before new ones")
    func crashBeforePublishResubmitsEverythingTaken() throws {
        let rig = try Rig(size: 8)
        let log = LogRegion(capacity: 8)
        _ = try rig.queue.attachInflight(log.region)
        let heads = try rig.addChains(3)
        for _ in heads { _ = try rig.queue.popHead() }
        rig.queue.pushUsed(head: heads[1], length: 1) // pushed, never published: still in flight
        let later = try rig.addChains(1)              // the driver keeps adding meanwhile

        var q = try rig.restartedQueue()
        defer { q.discardResubmissions() }
        let r = try q.attachInflight(log.region)
        #expect(r == InflightRecovery(fresh: false, resubmitted: 3, completedUnmarked: 0))
        #expect(q.nextAvail == 3, "used->idx 0 + 3 in flight")
        #expect(q.resubmissionsPending == 3)
        var again: [UInt16] = []
        while let h = q.popResubmission() { again.append(h) }
        #expect(again == heads)
        #expect(q.resubmissionsPending == 0)
        #expect(try q.pending() == 1)
        #expect(try q.popHead() == later[0])
        // New heads are stamped after every resubmitted one, so a second crash keeps the order.
        #expect(log.counter(Int(later[0])) > heads.map { log.counter(Int($0)) }.max()!)
    }

    @Test("killed between publishing a batch and unmarking it: the batch is not resubmitted")
    func crashAfterPublishBeforeUnmark() throws {
        let rig = try Rig(size: 8)
        let log = LogRegion(capacity: 8)
        _ = try rig.queue.attachInflight(log.region)
        let heads = try rig.addChains(4)
        for _ in heads { _ = try rig.queue.popHead() }
        // Out of order: heads 3 and 1 complete in one batch.
        rig.queue.pushUsed(head: heads[3], length: 1)
        rig.queue.pushUsed(head: heads[1], length: 1)
        rig.queue.publishUsed()
        // Undo what the publish did after used->idx: the state a SIGKILL right after that store leaves.
        log.setInflight(Int(heads[3]), 1)
        log.setInflight(Int(heads[1]), 1)
        log.usedIdx = 0
        #expect(rig.driver.deviceUsedIndex == 2)

        var q = try rig.restartedQueue()
        defer { q.discardResubmissions() }
        let r = try q.attachInflight(log.region)
        #expect(r == InflightRecovery(fresh: false, resubmitted: 2, completedUnmarked: 2))
        var again: [UInt16] = []
        while let h = q.popResubmission() { again.append(h) }
        #expect(again == [heads[0], heads[2]])
        #expect(q.nextAvail == 4, "used->idx 2 + 2 in flight: nothing taken twice, nothing skipped")
        #expect(log.usedIdx == 2 && log.marked == [Int(heads[0]), Int(heads[2])].sorted())
    }

    @Test("resubmission follows the counters, not the head numbers")
    func resubmissionOrderFollowsCounters() throws {
        let rig = try Rig(size: 8)
        let log = LogRegion(capacity: 8)
        _ = try rig.queue.attachInflight(log.region) // version 1, used_idx 0
        for (h, c) in [(5, 30), (2, 10), (7, 20)] as [(Int, UInt64)] {
            log.setInflight(h, 1)
            log.setCounter(h, c)
        }
        var q = try rig.restartedQueue()
        defer { q.discardResubmissions() }
        _ = try q.attachInflight(log.region)
        var order: [UInt16] = []
        while let h = q.popResubmission() { order.append(h) }
        #expect(order == [2, 7, 5])
    }

    @Test("a corrupt log is bounded: foreign versions refused, indices masked, odd marks ignored")
    func corruptLogIsBounded() throws {
        let rig = try Rig(size: 8)
        let small = LogRegion(capacity: 4)
        #expect(throws: QueueError.self) { _ = try rig.queue.attachInflight(small.region) }

        let log = LogRegion(capacity: 8)
        log.base.storeBytes(of: UInt16(7), toByteOffset: 8, as: UInt16.self)
        var q = try rig.restartedQueue()
        defer { q.discardResubmissions() }
        #expect(throws: QueueError.self) { _ = try q.attachInflight(log.region) }

        // Version 1 with garbage everywhere: a batch "published" 60000 entries ago, `next` pointers and
        // last_batch_head far outside the ring, marks of 2 and 255.
        log.base.storeBytes(of: UInt16(1), toByteOffset: 8, as: UInt16.self)
        log.usedIdx = 5536
        log.lastBatchHead = 0xffff
        for h in 0..<8 { log.setNext(h, 0xfff0 + UInt16(h)) }
        log.setInflight(1, 2)
        log.setInflight(2, 255)
        log.setInflight(6, 1)
        q = try rig.restartedQueue()
        let r = try q.attachInflight(log.region)
        // The walk over the "batch" is bounded by the ring size and clears what it reaches.
        #expect(r.resubmitted + r.completedUnmarked <= 8)
        #expect(r.resubmitted == log.marked.count)
        #expect(log.usedIdx == 0)
        while let h = q.popResubmission() { #expect(h < 8) }
    }
}
