import GuestMemory
import Testing
import VhostSystem
import VhostUserTesting
import Virtqueue

@Test(arguments: [false, true])
func walkTranslatesAChainInOrder(indirect: Bool) throws {
    let rig = try Rig(size: 8)
    let a = try rig.arena.allocate(16), b = try rig.arena.allocate(512), c = try rig.arena.allocate(1)
    let head = try rig.driver.addChain([BufferSegment(a, deviceWritable: false), BufferSegment(b, deviceWritable: true),
                                        BufferSegment(c, deviceWritable: true)], indirect: indirect)
    let segs = try rig.walk(try rig.popAdded(head)).get()
    #expect(segs == [Seg(host: try #require(rig.host(a)), length: 16, writable: false),
                     Seg(host: try #require(rig.host(b)), length: 512, writable: true),
                     Seg(host: try #require(rig.host(c)), length: 1, writable: true)])
    #expect(rig.segments.firstWritable == 1)
}

@Test func walkSkipsZeroLengthBuffersWithoutTranslatingThem() throws {
    let rig = try Rig(size: 8)
    let a = try rig.arena.allocate(16)
    // A zero-length buffer at an address outside memory carries nothing and is not an error.
    let head = try rig.driver.addChain([BufferSegment(a, deviceWritable: false),
                                        BufferSegment(gpa: rig.arena.unmappedGPA, length: 0, deviceWritable: true)])
    let segs = try rig.walk(try rig.popAdded(head)).get()
    #expect(segs.count == 1)
    #expect(rig.segments.firstWritable == 1)
}

@Test func aChainThatLoopsIsCaught() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let ids = try rig.driver.reserveDescriptors(2)
    rig.driver.writeDescriptor(ids[0], gpa: buf.gpa, length: 16, flags: .next, next: ids[1])
    rig.driver.writeDescriptor(ids[1], gpa: buf.gpa, length: 16, flags: .next, next: ids[0])
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .loop)
}

@Test func aChainUsingEveryDescriptorOnceIsNotALoop() throws {
    let rig = try Rig(size: 4)
    let buf = try rig.arena.allocate(16)
    let head = try rig.driver.addChain(Array(repeating: BufferSegment(buf, deviceWritable: false), count: 4))
    #expect(try rig.walk(try rig.popAdded(head)).get().count == 4)
}

@Test func anIndirectTableThatLoopsIsCaught() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let table = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, .next, 1), (buf.gpa, 16, .next, 0)])
    let ids = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(ids[0], gpa: table.gpa, length: 32, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .loop)
}

@Test func nextOutsideTheTableIsRejected() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let ids = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(ids[0], gpa: buf.gpa, length: 16, flags: .next, next: 8)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .nextOutOfRange(8))
    // Inside an indirect table the bound is the table's own length, not the queue size.
    let table = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, .next, 2), (buf.gpa, 16, [], 0)])
    let more = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(more[0], gpa: table.gpa, length: 32, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(more[0])) == .nextOutOfRange(2))
}

@Test func indirectInsideAnIndirectTableIsRejected() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let inner = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, [], 0)])
    let outer = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, .next, 1), (inner.gpa, 16, .indirect, 0)])
    let ids = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(ids[0], gpa: outer.gpa, length: 32, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .nestedIndirect)
}

@Test func indirectWithNextIsRejected() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let table = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, [], 0)])
    let ids = try rig.driver.reserveDescriptors(2)
    rig.driver.writeDescriptor(ids[0], gpa: table.gpa, length: 16, flags: [.indirect, .next], next: ids[1])
    rig.driver.writeDescriptor(ids[1], gpa: buf.gpa, length: 16, flags: [], next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .indirectWithNext)
}

@Test(arguments: [0, 8, 24, 33] as [UInt32])
func indirectTableLengthMustBeANonZeroMultipleOf16(length: UInt32) throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let table = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, [], 0), (buf.gpa, 16, [], 0), (buf.gpa, 16, [], 0)])
    let ids = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(ids[0], gpa: table.gpa, length: length, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .indirectTableLength(length))
}

@Test func indirectAfterTheHeadIsRejected() throws {
    let rig = try Rig(size: 8)
    let buf = try rig.arena.allocate(16)
    let table = try rig.driver.makeRawIndirectTable([(buf.gpa, 16, [], 0)])
    let ids = try rig.driver.reserveDescriptors(2)
    rig.driver.writeDescriptor(ids[0], gpa: buf.gpa, length: 16, flags: .next, next: ids[1])
    rig.driver.writeDescriptor(ids[1], gpa: table.gpa, length: 16, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .indirectNotAtHead)
}

@Test(arguments: [false, true])
func readableAfterWritableIsRejected(indirect: Bool) throws {
    let rig = try Rig(size: 8)
    let w = try rig.arena.allocate(16), r = try rig.arena.allocate(16)
    let head = try rig.driver.addChain([BufferSegment(w, deviceWritable: true), BufferSegment(r, deviceWritable: false)],
                                       indirect: indirect)
    #expect(rig.walkError(try rig.popAdded(head)) == .readableAfterWritable)
}

@Test func aBufferOutsideGuestMemoryIsRejected() throws {
    let rig = try Rig(size: 8)
    let gpa = rig.arena.unmappedGPA
    let head = try rig.driver.addChain([BufferSegment(gpa: gpa, length: 512, deviceWritable: true)])
    #expect(rig.walkError(try rig.popAdded(head)) == .addressOutsideMemory(GuestAddress(gpa), 512))
    // Starting inside memory but running past the last region's end is just as bad.
    let end = rig.arena.regions[0].guestPhysicalAddress + UInt64(rig.arena.regions[0].size)
    let h2 = try rig.driver.addChain([BufferSegment(gpa: end - 256, length: 512, deviceWritable: true)])
    #expect(rig.walkError(try rig.popAdded(h2)) == .addressOutsideMemory(GuestAddress(end - 256), 512))
}

@Test func anIndirectTableOutsideGuestMemoryIsRejected() throws {
    let rig = try Rig(size: 8)
    let ids = try rig.driver.reserveDescriptors(1)
    rig.driver.writeDescriptor(ids[0], gpa: rig.arena.unmappedGPA, length: 32, flags: .indirect, next: 0)
    #expect(rig.walkError(try rig.publishAndPop(ids[0])) == .addressOutsideMemory(GuestAddress(rig.arena.unmappedGPA), 32))
}

@Test func aBufferWrappingPast2To64IsRejected() throws {
    // A region right below the top of the address space, so the walk gets as close to wrapping as a
    // region allows: its last byte is 2^64 - 0x1001.
    let top: UInt64 = 0xffff_ffff_ffff_d000
    let rig = try Rig(size: 8, regions: [.init(size: 1 << 20), .init(size: 0x2000, guestPhysicalAddress: top)])
    let crossing = try rig.driver.addChain([BufferSegment(gpa: top + 0x1000, length: 0x2000, deviceWritable: true)])
    #expect(rig.walkError(try rig.popAdded(crossing)) == .addressOutsideMemory(GuestAddress(top + 0x1000), 0x2000))
    let wrapping = try rig.driver.addChain([BufferSegment(gpa: UInt64.max - 0xff, length: 0x1000, deviceWritable: true)])
    #expect(rig.walkError(try rig.popAdded(wrapping)) == .addressOutsideMemory(GuestAddress(UInt64.max - 0xff), 0x1000))
}

@Test func aBufferCrossingAdjacentRegionsBecomesTwoSegments() throws {
    let rig = try Rig(size: 8, regions: [.init(size: 1 << 20, guestPhysicalAddress: 0),
                                         .init(size: 1 << 16, guestPhysicalAddress: 1 << 20)])
    let start: UInt64 = (1 << 20) - 0x100
    let head = try rig.driver.addChain([BufferSegment(gpa: start, length: 0x300, deviceWritable: true)])
    let segs = try rig.walk(try rig.popAdded(head)).get()
    #expect(segs == [Seg(host: try #require(rig.map.view.translate(GuestAddress(start), length: 0x100)), length: 0x100, writable: true),
                     Seg(host: try #require(rig.map.view.translate(GuestAddress(1 << 20), length: 1)), length: 0x200, writable: true)])
    // The status byte of such a chain is the last byte of the second piece.
    #expect(rig.segments.lastWritableByte == (segs[1].host + 0x1ff).assumingMemoryBound(to: UInt8.self))
    // The device's mapping of the second region is the same memory as the driver's.
    segs[1].host.storeBytes(of: 0x99 as UInt8, as: UInt8.self)
    #expect(rig.arena.regions[1].base.load(as: UInt8.self) == 0x99)
}

@Test func moreSegmentsThanTheBufferHoldsIsRejected() throws {
    let rig = try Rig(size: 8, segmentCapacity: 2)
    let buf = try rig.arena.allocate(16)
    let two = try rig.driver.addChain([BufferSegment(buf, deviceWritable: false), BufferSegment(buf, deviceWritable: true)])
    #expect(try rig.walk(try rig.popAdded(two)).get().count == 2)
    let three = try rig.driver.addChain(Array(repeating: BufferSegment(buf, deviceWritable: true), count: 3))
    #expect(rig.walkError(try rig.popAdded(three)) == .tooManySegments)
}

@Test func aBadBufferStillLetsTheWalkFindTheLastWritableByte() throws {
    let rig = try Rig(size: 8)
    let h = try rig.arena.allocate(16), status = try rig.arena.allocate(4)
    let head = try rig.driver.addChain([BufferSegment(h, deviceWritable: false),
                                        BufferSegment(gpa: rig.arena.unmappedGPA, length: 512, deviceWritable: true),
                                        BufferSegment(status, deviceWritable: true)])
    #expect(rig.walkError(try rig.popAdded(head)) == .addressOutsideMemory(GuestAddress(rig.arena.unmappedGPA), 512))
    let last = try #require(rig.host(status)).advanced(by: 3).assumingMemoryBound(to: UInt8.self)
    #expect(rig.segments.lastWritableByte == last)
    // When the bad buffer is the last writable one, there is no status byte to report into.
    let head2 = try rig.driver.addChain([BufferSegment(h, deviceWritable: false),
                                         BufferSegment(gpa: rig.arena.unmappedGPA, length: 1, deviceWritable: true)])
    _ = rig.walkError(try rig.popAdded(head2))
    #expect(rig.segments.lastWritableByte == nil)
}
