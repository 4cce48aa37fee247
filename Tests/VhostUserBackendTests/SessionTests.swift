import BlockIO
import Glibc
import Testing
import VhostSystem
import VhostUserBackend
import VhostUserBlk
import VhostUserProtocol
import VhostUserTesting

@Test func handshakeThenIO() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let f = try s.connect()
    let driver = try #require(try f.connectDevice(arena: arena).first)
    let hs = try #require(f.handshakeResult)
    #expect(hs.offeredFeatures == hs.offeredFeaturesAgain)
    #expect(hs.queueCount == 1)
    #expect(hs.maxMemSlots == ProtocolLimits.maxMemSlots)
    #expect(VirtioBlkConfig(hs.config).capacity == ServerUnderTest.diskBytes / 512)

    let data = patternBytes(seed: 1, byteOffset: 4096, count: 8192)
    #expect(try driver.write(sector: 8, data: data, segments: 3).status == .ok)
    let (c, back) = try driver.read(sector: 8, count: 16, segments: 2)
    #expect(c.status == .ok && c.usedLength == 8192 + 1)
    #expect(back == data)
    let (idc, id) = try driver.getID()
    #expect(idc.status == .ok)
    #expect(id == Array(ServerUnderTest.serial.utf8) + [UInt8](repeating: 0, count: 20 - ServerUnderTest.serial.utf8.count))
    #expect(try driver.flush().status == .ok)
}

@Test func getVringBaseReturnsTheAvailIndexAndStopsTheQueue() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let f = try s.connect()
    let driver = try #require(try f.connectDevice(arena: arena).first)
    for i in 0..<5 { #expect(try driver.write(sector: UInt64(i), data: patternBytes(seed: 2, byteOffset: 0, count: 512)).status == .ok) }
    #expect(try f.stop() == [5])
    // The queue is stopped: a request published now is not taken.
    let t = try driver.enqueue(.flush)
    // Publish, and kick even if the device asked not to be kicked.
    driver.queue.publish()
    driver.queue.kick(force: true)
    _ = try f.getU64(.getFeatures) // the control thread has handled everything sent before
    #expect(!completes(driver, t, withinMs: 300))
    #expect(driver.queue.deviceUsedIndex == 5)
}

@Test func disabledQueueDoesNotProcessUntilReEnabled() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let f = try s.connect()
    let driver = try #require(try f.connectDevice(arena: arena).first)
    #expect(try driver.flush().status == .ok)
    try f.enable(queue: 0, false)
    let t = try driver.enqueue(.flush)
    // Publish, and kick even if the device asked not to be kicked.
    driver.queue.publish()
    driver.queue.kick(force: true)
    #expect(!completes(driver, t, withinMs: 300))
    try f.enable(queue: 0, true)
    #expect(try driver.wait(t).status == .ok)
    #expect(try driver.flush().status == .ok)
}

/// A started session (REPLY_ACK negotiated) for the rejection tests.
func startedSession(_ s: ServerUnderTest, arena: GuestMemoryArena) throws -> (Frontend, BlkDriver) {
    let f = try s.connect()
    let driver = try #require(try f.connectDevice(arena: arena).first)
    #expect(f.protocolFeatures.contains(.replyAck))
    return (f, driver)
}

struct FailingRequest: Sendable, CustomTestStringConvertible {
    var name: String
    var request: FrontendRequest
    var payload: [UInt8]
    var testDescription: String { name }
}

@Test(arguments: [
    FailingRequest(name: "SET_VRING_NUM 1000", request: .setVringNum, payload: VringState(index: 0, num: 1000).encoded),
    FailingRequest(name: "SET_VRING_NUM 2048", request: .setVringNum, payload: VringState(index: 0, num: 2048).encoded),
    FailingRequest(name: "queue index out of range", request: .setVringNum, payload: VringState(index: 1, num: 128).encoded),
    FailingRequest(name: "queue index 255 in SET_VRING_ENABLE", request: .setVringEnable, payload: VringState(index: 255, num: 1).encoded),
    FailingRequest(name: "SET_FEATURES with unoffered bits", request: .setFeatures, payload: PayloadEncoding.u64(1 << 34 | 1 << 32 | 1 << 30)),
    FailingRequest(name: "SET_VRING_BASE above 16 bits", request: .setVringBase, payload: VringState(index: 0, num: 0x10000).encoded),
    // Only the writeback byte (offset 32) is writable, and only with 0 or 1 (CONFIG_WCE).
    FailingRequest(name: "SET_CONFIG of the capacity", request: .setConfig, payload: ConfigAccess(offset: 0, size: 1, flags: 0, data: [0]).encoded),
    FailingRequest(name: "SET_CONFIG writeback = 2", request: .setConfig, payload: ConfigAccess(offset: 32, size: 1, flags: 0, data: [2]).encoded),
    FailingRequest(name: "REM_MEM_REG of an unknown region", request: .remMemReg,
                   payload: PayloadEncoding.singleRegion(MemoryRegionDescription(guestPhysicalAddress: 0x7000_0000, size: 4096, userAddress: 1, mmapOffset: 0))),
])
func failedRequestsAreAcknowledgedWithAnErrorWhenAsked(_ c: FailingRequest) throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, driver) = try startedSession(s, arena: arena)
    try f.sendRaw(request: c.request.rawValue, flags: 0x9, payload: c.payload)
    let outcome = try f.awaitRejection()
    guard case .errorReply(let status) = outcome else {
        Issue.record("\(c.name): \(outcome)")
        return
    }
    #expect(status != 0)
    // The session goes on: control and data plane both still answer.
    #expect(try f.getU64(.getFeatures) != 0)
    #expect(try driver.flush().status == .ok)
}

@Test(arguments: [
    FailingRequest(name: "queue index out of range", request: .setVringNum, payload: VringState(index: 1, num: 128).encoded),
    FailingRequest(name: "SET_FEATURES with unoffered bits", request: .setFeatures, payload: PayloadEncoding.u64(1 << 34 | 1 << 32 | 1 << 30)),
])
func failedRequestsWithoutNeedReplyDropTheConnection(_ c: FailingRequest) throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, _) = try startedSession(s, arena: arena)
    try f.sendRaw(request: c.request.rawValue, flags: 0x1, payload: c.payload)
    #expect(try f.waitForClose())
    // The daemon survived and serves the next front-end.
    #expect(try s.connect().getU64(.getFeatures) != 0)
}

@Test func malformedMessagesDropTheConnectionEvenWithNeedReply() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, _) = try startedSession(s, arena: arena)
    // A wrong payload size is a protocol error: never acknowledged, always a disconnect.
    try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: 0x9, payload: [0, 0, 0, 0])
    #expect(try f.awaitRejection() == .closed)
    #expect(try s.connect().getU64(.getFeatures) != 0)
}

@Test func replacingTheMemoryTableKeepsIOWorking() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, driver) = try startedSession(s, arena: arena)
    #expect(try driver.write(sector: 0, data: patternBytes(seed: 3, byteOffset: 0, count: 4096)).status == .ok)
    // The same table again (QEMU re-sends it on memory hot-plug): the queue is stopped and restarted.
    try f.send(.setMemTable, payload: PayloadEncoding.memTable(arena.memoryTable), fds: arena.fileDescriptors, needReply: true)
    let (c, data) = try driver.read(sector: 0, count: 8)
    #expect(c.status == .ok && data == patternBytes(seed: 3, byteOffset: 0, count: 4096))
}

@Test func addingARegionKeepsIOWorkingAndMakesItUsable() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, driver) = try startedSession(s, arena: arena)
    // A second, separate memfd at an address the first arena does not use.
    let extra = try GuestMemoryArena(regions: [.init(size: 1 << 20, guestPhysicalAddress: 0x40_0000_0000, userAddress: 0x7f80_0000_0000)])
    try f.send(.addMemReg, payload: PayloadEncoding.singleRegion(extra.memoryTable[0]), fds: extra.fileDescriptors, needReply: true)
    let buf = try extra.allocate(4096)
    buf.write(patternBytes(seed: 4, byteOffset: 0, count: 4096))
    // Data from the new region is written, and read back into the old one.
    let w = try driver.perform(type: VhostUserTesting.BlkRequestType.write.rawValue, sector: 64, data: [BufferSegment(buf, deviceWritable: false)])
    #expect(w.status == .ok)
    let (c, data) = try driver.read(sector: 64, count: 8)
    #expect(c.status == .ok && data == patternBytes(seed: 4, byteOffset: 0, count: 4096))
}

@Test func removingTheRingsRegionFailsTheRestartButNotTheDaemon() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena(regions: 2)
    let (f, driver) = try startedSession(s, arena: arena)
    #expect(try driver.flush().status == .ok)
    // Rings live in region 0 (DriverQueue allocates from the first region with room).
    #expect(arena.buffer(gpa: driver.queue.descriptorTable.gpa, length: 1) != nil)
    #expect(driver.queue.descriptorTable.gpa < arena.regions[0].guestPhysicalAddress + UInt64(arena.regions[0].size))
    try f.sendRaw(request: FrontendRequest.remMemReg.rawValue, flags: 0x9, payload: PayloadEncoding.singleRegion(arena.memoryTable[0]))
    // The table change itself is applied, but restarting the queue fails (its rings are no longer
    // in guest memory): with REPLY_ACK that is a failure reply, and the session stays up.
    let outcome = try f.awaitRejection()
    guard case .errorReply = outcome else {
        Issue.record("REM_MEM_REG of the rings' region: \(outcome)")
        return
    }
    // The queue cannot run without its rings: nothing is processed (and nothing crashed).
    let t = try driver.enqueue(.flush)
    // Publish, and kick even if the device asked not to be kicked.
    driver.queue.publish()
    driver.queue.kick(force: true)
    #expect(!completes(driver, t, withinMs: 300))
    #expect(try f.getU64(.getFeatures) != 0)
}

@Test func aSecondConnectionIsRefusedAndTheNextOneServed() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (first, driver) = try startedSession(s, arena: arena)
    let second = try Frontend(socketPath: s.path)
    #expect(try second.waitForClose())
    // The first session was not disturbed.
    #expect(try driver.flush().status == .ok)
    first.close()
    let third = try s.connect()
    let arena3 = try makeArena()
    let d3 = try #require(try third.connectDevice(arena: arena3).first)
    #expect(try d3.flush().status == .ok)
}

@Test func requestStopEndsRunWithASessionActive() throws {
    let s = try ServerUnderTest()
    let arena = try makeArena()
    let (f, driver) = try startedSession(s, arena: arena)
    #expect(try driver.flush().status == .ok)
    s.stop() // fails the test if run() does not return within its bound
    #expect(try f.waitForClose())
}

/// RESET_OWNER (and RESET_DEVICE, its successor) resets the device, not the connection: a front-end
/// that starts the device again right after it, still asking for REPLY_ACK acknowledgements, must get
/// them and working queues.
@Test(arguments: [FrontendRequest.resetOwner, .resetDevice])
func resetKeepsProtocolFeaturesAndTheDeviceRestarts(_ reset: FrontendRequest) throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let f = try s.connect()
    let first = try #require(try f.connectDevice(arena: arena).first)
    let data = patternBytes(seed: 40, byteOffset: 0, count: 4096)
    #expect(try first.write(sector: 16, data: data).status == .ok)
    #expect(f.protocolFeatures.contains(.replyAck))

    try f.send(reset, needReply: true)
    // Whatever the worker had taken was completed before the acknowledgement: nothing stays marked
    // in the in-flight log. (Requests it had not taken yet are dropped with the ring, as a reset says.)
    let log = try #require(f.inflight)
    #expect(log.markedHeads(queue: 0).isEmpty)
    // Every NEED_REPLY below must be answered: a reply that never comes fails at the front-end's
    // usual 10 s bound. (A 3 s bound here was the shortest reply wait in the suite, for a start
    // that a sanitized daemon on a loaded machine does slowest.)
    let driver = try BlkDriver(queue: try #require(try f.start(arena: arena).first))
    let (r, back) = try driver.read(sector: 16, count: 8)
    #expect(r.status == .ok)
    #expect(back == data)
}
