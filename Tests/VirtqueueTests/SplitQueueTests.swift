import GuestMemory
import Testing
import VhostSystem
import VhostUserTesting
import Virtqueue

// MARK: Ring set-up

@Test(arguments: [0, 3, 6, 100, 1023, 1025, 2048, 32768] as [UInt16])
func initRejectsSizesThatAreNotPowersOfTwoUpTo1024(size: UInt16) throws {
    let rig = try Rig(size: 8, regions: [.init(size: 1 << 20)])
    var c = Rig.config(rig.driver)
    c.size = size
    #expect(throws: QueueError.self) { _ = try SplitQueue(config: c, memory: rig.map.view, nextAvail: 0, usedIdx: 0) }
}

@Test(arguments: [1, 2, 256, 1024] as [UInt16])
func initAcceptsPowerOfTwoSizes(size: UInt16) throws {
    let rig = try Rig(size: Int(size))
    let q = try SplitQueue(config: Rig.config(rig.driver), memory: rig.map.view, nextAvail: 5, usedIdx: 7)
    #expect(q.size == size && q.nextAvail == 5 && q.usedIdx == 7)
}

struct LayoutCase: Sendable, CustomTestStringConvertible {
    var name: String
    var desc: Int64, avail: Int64, used: Int64
    var testDescription: String { name }
}

// Offsets added to the driver's (valid) ring addresses.
@Test(arguments: [
    LayoutCase(name: "descriptor table 8-aligned", desc: 8, avail: 0, used: 0),
    LayoutCase(name: "avail ring odd", desc: 0, avail: 1, used: 0),
    LayoutCase(name: "used ring 2-aligned", desc: 0, avail: 0, used: 2),
    LayoutCase(name: "descriptor table outside memory", desc: 1 << 32, avail: 0, used: 0),
    LayoutCase(name: "avail ring outside memory", desc: 0, avail: 1 << 32, used: 0),
    LayoutCase(name: "used ring outside memory", desc: 0, avail: 0, used: 1 << 32),
])
func initRejectsMisalignedOrUnmappedRings(_ c: LayoutCase) throws {
    let rig = try Rig(size: 8)
    let d = rig.driver
    let config = SplitQueueConfig(size: 8, descriptorTable: GuestAddress(UInt64(Int64(d.descriptorTable.gpa) + c.desc)),
                                  availRing: GuestAddress(UInt64(Int64(d.availRing.gpa) + c.avail)),
                                  usedRing: GuestAddress(UInt64(Int64(d.usedRing.gpa) + c.used)), eventIdx: false)
    #expect(throws: QueueError.self) { _ = try SplitQueue(config: config, memory: rig.map.view, nextAvail: 0, usedIdx: 0) }
}

@Test func initRejectsARingThatRunsPastTheEndOfItsRegion() throws {
    // The used ring of a 256-entry queue is 2054 bytes; start it 1 KiB before the region's end.
    let rig = try Rig(size: 8)
    let end = rig.arena.regions[0].guestPhysicalAddress + UInt64(rig.arena.regions[0].size)
    var c = Rig.config(rig.driver)
    c.size = 256
    c.descriptorTable = GuestAddress(rig.arena.regions[0].guestPhysicalAddress + 0x10000)
    c.availRing = GuestAddress(rig.arena.regions[0].guestPhysicalAddress + 0x20000)
    c.usedRing = GuestAddress(end - 1024)
    #expect(throws: QueueError.self) { _ = try SplitQueue(config: c, memory: rig.map.view, nextAvail: 0, usedIdx: 0) }
}

// MARK: Avail ring

@Test func pendingCountsPublishedHeadsAndRejectsAJumpBeyondTheSize() throws {
    let rig = try Rig(size: 8)
    #expect(try rig.queue.pending() == 0)
    rig.driver.setAvailIndex(8) // exactly a full ring is legal
    #expect(try rig.queue.pending() == 8)
    rig.driver.setAvailIndex(9)
    #expect(throws: QueueError.self) { _ = try rig.queue.pending() }
    // Measured from nextAvail with 16-bit wrap: 0xffff behind 0 is a jump of 65535.
    rig.driver.setAvailIndex(0xffff)
    #expect(throws: QueueError.self) { _ = try rig.queue.pending() }
}

@Test func pendingWrapsAt16Bits() throws {
    let rig = try Rig(size: 8)
    rig.queue = try SplitQueue(config: Rig.config(rig.driver), memory: rig.map.view, nextAvail: 0xfffe, usedIdx: 0xfffe)
    rig.driver.setAvailIndex(0xfffe)
    rig.driver.pushAvail(3); rig.driver.pushAvail(4); rig.driver.pushAvail(5)
    rig.driver.publish() // avail idx is now 1
    #expect(try rig.queue.pending() == 3)
    #expect(try rig.queue.popHead() == 3)
    #expect(try rig.queue.popHead() == 4)
    #expect(try rig.queue.popHead() == 5)
    #expect(rig.queue.nextAvail == 1)
    #expect(try rig.queue.pending() == 0)
}

@Test func popHeadRejectsAHeadOutsideTheTable() throws {
    let rig = try Rig(size: 8)
    rig.driver.pushAvail(8)
    rig.driver.publish()
    #expect(try rig.queue.pending() == 1)
    #expect(throws: QueueError.self) { _ = try rig.queue.popHead() }
    #expect(rig.queue.nextAvail == 0) // not consumed
}

// MARK: Used ring and notifications

@Test func pushedElementsAreVisibleToTheDriverOnlyAfterPublish() throws {
    let rig = try Rig(size: 4)
    let h = try rig.popAdded(try rig.driver.addChain([BufferSegment(try rig.arena.allocate(64), deviceWritable: true)]))
    rig.queue.pushUsed(head: h, length: 17)
    #expect(try rig.driver.collectUsed().isEmpty)
    rig.queue.publishUsed()
    #expect(try rig.driver.collectUsed() == [UsedElement(id: UInt32(h), length: 17)])
    #expect(rig.driver.deviceUsedIndex == 1 && rig.queue.usedIdx == 1)
}

@Test(arguments: [false, true])
func withoutEventIdxTheNoInterruptFlagDecides(noInterrupt: Bool) throws {
    let rig = try Rig(size: 4)
    rig.driver.waitMode = noInterrupt ? .polling : .callEventFD // polling sets VRING_AVAIL_F_NO_INTERRUPT
    rig.queue.pushUsed(head: 0, length: 0)
    rig.queue.publishUsed()
    #expect(rig.queue.needsNotification() == !noInterrupt)
}

struct EventCase: Sendable, CustomTestStringConvertible {
    var start: UInt16     // used idx when the queue starts (last notification point)
    var pushes: Int        // elements published since
    var usedEvent: UInt16
    var notify: Bool
    var testDescription: String { "used \(start)+\(pushes), used_event \(usedEvent) → \(notify)" }
}

// vring_need_event: notify iff used_event ∈ [old, new) in 16-bit arithmetic.
@Test(arguments: [
    EventCase(start: 0, pushes: 1, usedEvent: 0, notify: true),        // exactly at old: the boundary
    EventCase(start: 0, pushes: 1, usedEvent: 1, notify: false),       // exactly at new: not yet
    EventCase(start: 10, pushes: 3, usedEvent: 12, notify: true),      // last of the batch
    EventCase(start: 10, pushes: 3, usedEvent: 13, notify: false),
    EventCase(start: 10, pushes: 3, usedEvent: 9, notify: false),      // before old: already notified
    EventCase(start: 10, pushes: 3, usedEvent: 200, notify: false),    // far ahead
    EventCase(start: 0xfffe, pushes: 3, usedEvent: 0xffff, notify: true), // batch wraps 0xfffe → 1
    EventCase(start: 0xfffe, pushes: 3, usedEvent: 0, notify: true),
    EventCase(start: 0xfffe, pushes: 3, usedEvent: 1, notify: false),
    EventCase(start: 0xfffe, pushes: 3, usedEvent: 0xfffd, notify: false),
])
func eventIdxNotifiesOnlyWhenUsedEventWasPassed(_ c: EventCase) throws {
    let rig = try Rig(size: 8, eventIdx: true, usedIdx: c.start)
    rig.setUsedEvent(c.usedEvent)
    // EVENT_IDX ignores the NO_INTERRUPT flag (virtio 1.2 §2.7.10): set it to prove that.
    rig.driver.waitMode = .polling
    for i in 0..<c.pushes { rig.queue.pushUsed(head: UInt16(i), length: 0) }
    rig.queue.publishUsed()
    #expect(rig.queue.needsNotification() == c.notify)
    // Nothing new since the decision: never notify twice for the same elements.
    #expect(rig.queue.needsNotification() == false)
}

@Test func enableNotificationsWithEventIdxWritesAvailEvent() throws {
    let rig = try Rig(size: 8, eventIdx: true)
    let buf = try rig.arena.allocate(64)
    for _ in 0..<3 { _ = try rig.popAdded(try rig.driver.addChain([BufferSegment(buf, deviceWritable: true)])) }
    #expect(try rig.queue.enableNotifications() == false)
    #expect(rig.driver.deviceAvailEvent == 3) // "kick me once you publish index 3"
    // A chain that raced in before the re-check: the caller must poll again rather than sleep.
    try rig.driver.addChain([BufferSegment(buf, deviceWritable: true)])
    rig.driver.publish()
    #expect(try rig.queue.enableNotifications() == true)
}

@Test func enableNotificationsWithoutEventIdxClearsNoNotify() throws {
    let rig = try Rig(size: 8)
    rig.queue.disableNotifications()
    #expect(rig.driver.deviceUsedFlags == DriverQueue.usedFlagNoNotify)
    #expect(try rig.queue.enableNotifications() == false)
    #expect(rig.driver.deviceUsedFlags == 0)
    try rig.driver.addChain([BufferSegment(try rig.arena.allocate(64), deviceWritable: true)])
    rig.driver.publish()
    #expect(try rig.queue.enableNotifications() == true)
}

@Test func enableNotificationsReportsABrokenAvailIndex() throws {
    let rig = try Rig(size: 8)
    rig.driver.setAvailIndex(100)
    #expect(throws: QueueError.self) { _ = try rig.queue.enableNotifications() }
}
