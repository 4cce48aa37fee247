import BlockIO
import GuestMemory
import Testing
import VhostUserTesting
import Virtqueue
import VirtioBlk

struct BadIO: Sendable, CustomTestStringConvertible {
    var name: String
    var type: UInt32
    var sector: UInt64
    var bytes: Int
    var blockSize: UInt32 = 512
    var testDescription: String { name }
}

// Disk: 2048 sectors (1 MiB).
@Test(arguments: [
    BadIO(name: "read at capacity", type: ReqType.in, sector: 2048, bytes: 512),
    BadIO(name: "read running past the end", type: ReqType.in, sector: 2047, bytes: 1024),
    BadIO(name: "write at sector 2^64-2", type: ReqType.out, sector: UInt64.max - 1, bytes: 512),
    BadIO(name: "read at sector 2^64-1", type: ReqType.in, sector: UInt64.max, bytes: 512),
    BadIO(name: "sector whose byte offset wraps", type: ReqType.in, sector: 1 << 55, bytes: 512),
    BadIO(name: "read length not a sector multiple", type: ReqType.in, sector: 0, bytes: 100),
    BadIO(name: "write length 513", type: ReqType.out, sector: 0, bytes: 513),
    BadIO(name: "4K disk, 512-aligned offset", type: ReqType.in, sector: 1, bytes: 4096, blockSize: 4096),
    BadIO(name: "4K disk, 512-byte length", type: ReqType.out, sector: 8, bytes: 512, blockSize: 4096),
])
func invalidRangesFailWithIOErr(_ c: BadIO) throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(capacitySectors: 2048, blockSize: c.blockSize))
    let data = try rig.buffer(c.bytes, fill: 0x11)
    let r = try rig.request(c.type, sector: c.sector, data: [BufferSegment(data, deviceWritable: c.type == ReqType.in)])
    #expect(r.status == Status.ioError)
    #expect(r.length == 1)
    #expect(rig.blk.guestErrors == 1)
    #expect(!rig.blk.lastGuestError.isEmpty)
    // Failed reads leave the guest's buffer alone.
    #expect(data.read() == [UInt8](repeating: 0x11, count: c.bytes))
}

@Test func aligned4KRequestsOnA4KDiskSucceed() throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(capacitySectors: 2048, blockSize: 4096))
    #expect(try rig.write(sector: 8, pattern(4096, seed: 2)) == Status.ok)
    #expect(try rig.read(sector: 8, count: 4096).data == pattern(4096, seed: 2))
    #expect(rig.blk.guestErrors == 0)
}

@Test func dataInTheWrongDirectionFails() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    // A read whose data the device would have to read, and a write with a device-writable data buffer.
    let r = try rig.request(ReqType.in, data: [BufferSegment(try rig.buffer(512), deviceWritable: false)])
    #expect(r.status == Status.ioError)
    let w = try rig.request(ReqType.out, data: [BufferSegment(try rig.buffer(512), deviceWritable: true)])
    #expect(w.status == Status.ioError)
    // A read with no data at all.
    #expect(try rig.request(ReqType.in).status == Status.ioError)
    #expect(rig.blk.guestErrors == 3)
}

@Test func writesAndDiscardsToAReadOnlyDiskFail() throws {
    let rig = try BlkRig(engine: try memoryEngine(readOnly: true), params: params(readOnly: true))
    #expect(try rig.write(sector: 0, pattern(512)) == Status.ioError)
    let range = try rig.range(sector: 0, count: 8)
    #expect(try rig.request(ReqType.discard, data: [BufferSegment(range, deviceWritable: false)]).status == Status.ioError)
    #expect(try rig.request(ReqType.writeZeroes, data: [BufferSegment(range, deviceWritable: false)]).status == Status.ioError)
    // Reads still work.
    #expect(try rig.read(sector: 0, count: 512).status == Status.ok)
}

// MARK: Discard and write zeroes

@Test func writeZeroesAndDiscardClearTheRange() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    #expect(try rig.write(sector: 0, pattern(8192, seed: 8)) == Status.ok)
    let wz = try rig.request(ReqType.writeZeroes, data: [BufferSegment(try rig.range(sector: 2, count: 2), deviceWritable: false)])
    #expect(wz.status == Status.ok && wz.length == 1)
    let unmap = try rig.request(ReqType.writeZeroes, data: [BufferSegment(try rig.range(sector: 6, count: 1, flags: 1), deviceWritable: false)])
    #expect(unmap.status == Status.ok)
    let d = try rig.request(ReqType.discard, data: [BufferSegment(try rig.range(sector: 10, count: 4), deviceWritable: false)])
    #expect(d.status == Status.ok)
    let all = try rig.read(sector: 0, count: 8192).data
    let expected = pattern(8192, seed: 8).enumerated().map { i, b in
        let s = i / 512
        return (2..<4).contains(s) || s == 6 || (10..<14).contains(s) ? 0 : b
    }
    #expect(all == expected)
}

struct RangeCase: Sendable, CustomTestStringConvertible {
    var name: String
    var type: UInt32
    var sector: UInt64
    var count: UInt32
    var flags: UInt32 = 0
    var discard = true, writeZeroes = true
    var expected: UInt8
    var testDescription: String { name }
}

@Test(arguments: [
    RangeCase(name: "discard with UNMAP", type: ReqType.discard, sector: 0, count: 8, flags: 1, expected: Status.unsupported),
    RangeCase(name: "discard with bit 1", type: ReqType.discard, sector: 0, count: 8, flags: 2, expected: Status.unsupported),
    RangeCase(name: "write zeroes with unknown flag", type: ReqType.writeZeroes, sector: 0, count: 8, flags: 2, expected: Status.unsupported),
    RangeCase(name: "write zeroes with high flag", type: ReqType.writeZeroes, sector: 0, count: 8, flags: 0x8000_0001, expected: Status.unsupported),
    RangeCase(name: "discard too long", type: ReqType.discard, sector: 0, count: BlkConfig.maxRangeSectors + 8, expected: Status.ioError),
    RangeCase(name: "write zeroes of 0 sectors", type: ReqType.writeZeroes, sector: 0, count: 0, expected: Status.ioError),
    RangeCase(name: "discard past the end", type: ReqType.discard, sector: 2040, count: 16, expected: Status.ioError),
    RangeCase(name: "discard at sector 2^64-1", type: ReqType.discard, sector: UInt64.max, count: 1, expected: Status.ioError),
    RangeCase(name: "discard not negotiated", type: ReqType.discard, sector: 0, count: 8, discard: false, expected: Status.unsupported),
    RangeCase(name: "write zeroes not negotiated", type: ReqType.writeZeroes, sector: 0, count: 8, writeZeroes: false, expected: Status.unsupported),
])
func rangeRequestChecks(_ c: RangeCase) throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(capacitySectors: 2048, discard: c.discard, writeZeroes: c.writeZeroes))
    #expect(try rig.write(sector: 0, pattern(4096)) == Status.ok)
    let r = try rig.request(c.type, data: [BufferSegment(try rig.range(sector: c.sector, count: c.count, flags: c.flags), deviceWritable: false)])
    #expect(r.status == c.expected)
    // Nothing was zeroed by a refused request.
    #expect(try rig.read(sector: 0, count: 4096).data == pattern(4096))
}

@Test(arguments: [0, 8, 32])
func rangePayloadMustBeExactlyOneSegment(bytes: Int) throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let data = bytes == 0 ? [] : [BufferSegment(try rig.buffer(bytes, fill: 0), deviceWritable: false)]
    #expect(try rig.request(ReqType.discard, data: data).status == Status.ioError)
}

// MARK: Malformed chains

@Test func aChainWithoutAWritableByteIsReturnedWithLengthZero() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let h = try rig.header(ReqType.in)
    let data = try rig.buffer(512)
    let used = try rig.run([BufferSegment(h, deviceWritable: false), BufferSegment(data, deviceWritable: false)])
    #expect(used?.length == 0)
    // Nothing to write a status into, so nothing was written at all.
    #expect(data.read() == [UInt8](repeating: 0xff, count: 512))
    #expect(rig.blk.guestErrors == 1)
}

@Test(arguments: [0, 1, 15])
func aHeaderShorterThan16BytesFails(headerBytes: Int) throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let status = try rig.buffer(1)
    var chain = [BufferSegment(status, deviceWritable: true)]
    if headerBytes > 0 { chain.insert(BufferSegment(try rig.buffer(headerBytes, fill: 0), deviceWritable: false), at: 0) }
    let used = try rig.run(chain)
    #expect(used?.length == 1)
    #expect(status.read() == [Status.ioError])
    #expect(rig.blk.guestErrors == 1)
}

@Test func aBrokenChainFailsOnlyThatRequest() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    // A buffer outside guest memory: the chain is unusable, its head comes back with length 0.
    let used = try rig.run([BufferSegment(try rig.header(ReqType.in), deviceWritable: false),
                            BufferSegment(gpa: rig.arena.unmappedGPA, length: 512, deviceWritable: true)])
    #expect(used?.length == 0)
    #expect(rig.blk.guestErrors == 1)
    #expect(rig.blk.lastGuestError.contains("outside"))
    rig.blk.clearGuestErrorReason()
    #expect(rig.blk.lastGuestError.isEmpty)
    // The queue goes on.
    #expect(try rig.write(sector: 0, pattern(512)) == Status.ok)
}

@Test func moreDataSegmentsThanASlotHoldsFails() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    // iovecsPerSlot + 1 one-sector buffers, through an indirect table (the ring has only 16 entries).
    let n = BlkQueue<MemoryEngine>.iovecsPerSlot + 1
    var chain = [BufferSegment(try rig.header(ReqType.in), deviceWritable: false)]
    for _ in 0..<n { chain.append(BufferSegment(try rig.buffer(512), deviceWritable: true)) }
    let status = try rig.buffer(1)
    chain.append(BufferSegment(status, deviceWritable: true))
    _ = try rig.run(chain, indirect: true)
    #expect(status.read() == [Status.ioError])
}

// MARK: In flight

@Test func completionsArePublishedWhenTheEngineFinishes() throws {
    let engine = HoldingEngine()
    let rig = try BlkRig(engine: engine)
    let status = try rig.buffer(1)
    let data = try rig.buffer(1024)
    let used = try rig.run([BufferSegment(try rig.header(ReqType.in, sector: 2), deviceWritable: false),
                            BufferSegment(data, deviceWritable: true), BufferSegment(status, deviceWritable: true)])
    #expect(used == nil)
    #expect(rig.blk.inFlight == 1 && engine.held.count == 1)
    let req = try #require(engine.held.first)
    #expect(req.operation == .read && req.offset == 1024 && req.length == 1024 && req.iovecCount == 1)
    #expect(status.read() == [0xff]) // not written before completion
    // A pass that takes no new requests still reaps and publishes completions (draining).
    engine.releaseAll(result: -5)
    let pass = try rig.blk.poll(acceptNew: false)
    #expect(pass.progress == 1)
    #expect(try rig.driver.collectUsed() == [UsedElement(id: UInt32(req.tag), length: 1025)])
    #expect(status.read() == [Status.ioError]) // a failed completion is IOERR
    #expect(rig.blk.inFlight == 0)
}

/// A pass hands requests to a kernel engine every `submitBatch` (4), not all at the end: one system call
/// for a whole ring's worth kept the disk from starting on the first until the last was prepared.
@Test func aPassSubmitsInChunksOfTheEnginesBatch() throws {
    let engine = HoldingEngine()
    #expect(engine.submitBatch == 4)
    let rig = try BlkRig(engine: engine, queueSize: 32)
    for _ in 0..<10 {
        try rig.driver.addChain([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                                 BufferSegment(try rig.buffer(1), deviceWritable: true)])
    }
    rig.driver.publish()
    #expect(try rig.blk.poll(acceptNew: true).progress == 10)
    #expect(engine.heldAtSubmit == [4, 8, 10], "submits after 4 and 8 requests, the rest at the end of the pass")
}

@Test func pollWithoutAcceptNewLeavesNewRequestsInTheRing() throws {
    let engine = HoldingEngine()
    let rig = try BlkRig(engine: engine)
    try rig.driver.addChain([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                             BufferSegment(try rig.buffer(1), deviceWritable: true)])
    rig.driver.publish()
    #expect(try rig.blk.poll(acceptNew: false).progress == 0)
    #expect(engine.held.isEmpty && rig.blk.ring.nextAvail == 0)
    #expect(try rig.blk.poll(acceptNew: true).progress == 1)
    #expect(engine.held.count == 1)
}

@Test func aHeadReusedWhileInFlightBreaksTheQueue() throws {
    let engine = HoldingEngine()
    let rig = try BlkRig(engine: engine)
    let head = try rig.driver.addChain([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                                        BufferSegment(try rig.buffer(1), deviceWritable: true)])
    rig.driver.publish()
    _ = try rig.blk.poll(acceptNew: true)
    #expect(rig.blk.inFlight == 1)
    // The driver publishes the same head again before it was used.
    rig.driver.pushAvail(head)
    rig.driver.publish()
    #expect(throws: QueueError.self) { _ = try rig.blk.poll(acceptNew: true) }
    #expect(engine.held.count == 1) // the duplicate was not submitted
}

@Test func guestErrorsCountEveryBadRequest() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    _ = try rig.request(ReqType.in, sector: 4096, data: [BufferSegment(try rig.buffer(512), deviceWritable: true)])
    _ = try rig.request(ReqType.out, data: [BufferSegment(try rig.buffer(100), deviceWritable: false)])
    _ = try rig.run([BufferSegment(try rig.header(ReqType.in), deviceWritable: false)])
    #expect(rig.blk.guestErrors == 3)
    // Unsupported requests are the driver's legitimate question, not its error.
    _ = try rig.request(99)
    #expect(rig.blk.guestErrors == 3)
}

@Test func completionsAskForANotificationUnlessSuppressed() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    try rig.driver.addChain([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                             BufferSegment(try rig.buffer(1), deviceWritable: true)])
    rig.driver.publish()
    #expect(try rig.blk.poll(acceptNew: true).notify == true)
    rig.driver.waitMode = .polling // VRING_AVAIL_F_NO_INTERRUPT
    try rig.driver.addChain([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                             BufferSegment(try rig.buffer(1), deviceWritable: true)])
    rig.driver.publish()
    let pass = try rig.blk.poll(acceptNew: true)
    // Progress counts the request taken and its completion reaped in the same pass.
    #expect(pass.progress == 2 && pass.notify == false)
    // An idle pass publishes nothing and asks for nothing.
    #expect(try rig.blk.poll(acceptNew: true).progress == 0)
}

@Test(arguments: [ReqType.in, ReqType.out])
func aDataBufferOutsideMemoryIsReportedInTheStatusByte(type: UInt32) throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let status = try rig.buffer(1)
    // The data buffer is unmapped, but the status byte is in memory and known: IOERR goes there.
    let used = try rig.run([BufferSegment(try rig.header(type), deviceWritable: false),
                            BufferSegment(gpa: rig.arena.unmappedGPA, length: 512, deviceWritable: type == ReqType.in),
                            BufferSegment(status, deviceWritable: true)])
    #expect(used?.length == 1)
    #expect(status.read() == [Status.ioError])
    #expect(rig.blk.guestErrors == 1)
}

@Test func aChainWithABrokenShapeWritesNothing() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let status = try rig.buffer(1)
    let h = try rig.header(ReqType.flush)
    // header → status → back to header: a loop, so no byte of it is known to be the status.
    let ids = try rig.driver.reserveDescriptors(2)
    rig.driver.writeDescriptor(ids[0], gpa: h.gpa, length: 16, flags: .next, next: ids[1])
    rig.driver.writeDescriptor(ids[1], gpa: status.gpa, length: 1, flags: [.write, .next], next: ids[0])
    rig.driver.trackRawChain(head: ids[0], ids: ids)
    rig.driver.pushAvail(ids[0])
    rig.driver.publish()
    _ = try rig.blk.poll(acceptNew: true)
    #expect(try rig.driver.collectUsed() == [UsedElement(id: UInt32(ids[0]), length: 0)])
    #expect(status.read() == [0xff])
    #expect(rig.blk.guestErrors == 1)
}
