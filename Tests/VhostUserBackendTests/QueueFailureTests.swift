import BlockIO
import Testing
import VhostSystem
import VhostUserBackend
import VhostUserBlk
import VhostUserProtocol
import VhostUserTesting

@Test func aBrokenRingSignalsTheErrFDAndTheSessionSurvives() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, driver) = try startedSession(s, arena: arena)
    #expect(try driver.flush().status == .ok)
    // avail idx runs 200 ahead of a 128-entry ring: no correct driver does that.
    driver.queue.setAvailIndex(driver.queue.availIndex &+ 200)
    driver.queue.kick(force: true)
    #expect(try driver.queue.waitForError(timeoutMs: 10_000))
    // The control plane still answers, and the broken queue can still be stopped.
    #expect(try f.getU64(.getFeatures) != 0)
    _ = try f.stop()
}

@Test func getConfigOutsideTheConfigSpaceIsAnsweredEmpty() throws {
    let s = try ServerUnderTest()
    defer { s.stop() }
    let arena = try makeArena()
    let (f, _) = try startedSession(s, arena: arena)
    let reply = try f.call(.getConfig, payload: ConfigAccess(offset: 250, size: 10, flags: 0, data: [UInt8](repeating: 0, count: 10)).encoded,
                           replySize: nil)
    #expect(reply.flags == 0x5)
    #expect(PayloadReader(reply.payload).u32(at: 4) == 0) // size 0: QEMU reports the failure
    #expect(reply.payload.count == ConfigAccess.headerSize)
    #expect(try f.getConfig(offset: 20, size: 4) == [0, 2, 0, 0]) // blk_size 512, still served
}

@Test func losingOneQueuesRingsDoesNotStopTheOtherQueue() throws {
    let s = try ServerUnderTest(queues: 2)
    defer { s.stop() }
    // Region 0 has room for exactly one 128-entry ring set (after the arena's reserved first page), so
    // queue 0's rings land in region 0 and queue 1's, and every data buffer, in region 1.
    let arena = try GuestMemoryArena(regions: [.init(size: 8192), .init(size: 4 << 20)])
    let f = try s.connect()
    let drivers = try f.connectDevice(queues: 2, queueSize: 128, arena: arena)
    try #require(drivers.count == 2)
    let regionEnd0 = arena.regions[0].guestPhysicalAddress + UInt64(arena.regions[0].size)
    try #require(drivers[0].queue.usedRing.gpa < regionEnd0)
    try #require(drivers[1].queue.descriptorTable.gpa >= arena.regions[1].guestPhysicalAddress)
    #expect(try drivers[1].flush().status == .ok)

    try f.sendRaw(request: FrontendRequest.remMemReg.rawValue, flags: 0x9, payload: PayloadEncoding.singleRegion(arena.memoryTable[0]))
    guard case .errorReply = try f.awaitRejection() else {
        Issue.record("REM_MEM_REG of queue 0's rings was not refused with a failure reply")
        return
    }
    // Queue 1's rings and buffers are all still mapped: it must keep serving.
    // BUG (Sources/VhostUserBackend/Session.swift, replaceMemory): the restart loop
    // `for i in workers.indices { try startWorkerIfReady(i) }` stops at queue 0's failure, so queue 1
    // (stopped just before) is never restarted and this request is never completed.
    let t = try drivers[1].enqueue(.flush)
    drivers[1].kick()
    drivers[1].queue.kick(force: true)
    #expect(completes(drivers[1], t, withinMs: 5_000), "queue 1 was left stopped after queue 0 failed to restart")
}

@Test func deviceOffersMatchTheStore() throws {
    func device(readOnly: Bool, queues: Int = 3) throws -> VirtioBlkDevice<MemoryEngine> {
        let backing = BackingOptions(readOnly: readOnly, createSize: 1 << 20, engine: .memory)
        var c = DaemonConfiguration(listen: .path("/unused"), backing: backing)
        c.queues = queues
        let store = try BackingStore.open(backing)
        return VirtioBlkDevice(store: store, configuration: c, cpus: [1, 0]) { try MemoryEngine(store: store, depth: $0) }
    }
    let rw = try device(readOnly: false)
    let ro = try device(readOnly: true)
    let discard = VirtioFeatures(rawValue: 1 << 13), writeZeroes = VirtioFeatures(rawValue: 1 << 14)
    let readOnlyBit = VirtioFeatures(rawValue: 1 << 5)
    #expect(rw.features.isSuperset(of: [.version1, .protocolFeatures, .ringEventIdx, .ringIndirectDesc, discard, writeZeroes]))
    #expect(!rw.features.contains(readOnlyBit))
    // A read-only disk says so and never offers requests that change data.
    #expect(ro.features.contains(readOnlyBit))
    #expect(!ro.features.contains(discard) && !ro.features.contains(writeZeroes))
    #expect(rw.queueCount == 3)
    // Config space reads: inside the 256 bytes (zero past the 60 defined), nil outside.
    #expect(rw.readConfig(offset: 34, size: 2) == [3, 0])
    #expect(rw.readConfig(offset: 200, size: 56) == [UInt8](repeating: 0, count: 56))
    #expect(rw.readConfig(offset: 250, size: 7) == nil)
    #expect(rw.readConfig(offset: -1, size: 2) == nil)
    // Workers go round robin over the CPUs given.
    #expect(rw.workerPolicy(queue: 0).cpu == 1 && rw.workerPolicy(queue: 1).cpu == 0 && rw.workerPolicy(queue: 2).cpu == 1)
}

/// Who watches for a shared CPU, and where a worker may float: only placement the operator left to the
/// daemon or the scheduler adapts, only a worker that sleeps, and floating goes only to CPUs the daemon
/// placed no other worker on.
@Test func workerPoliciesAdaptOnlyWherePlacementWasLeftToTheDaemon() throws {
    func policy(_ cpus: WorkerCPUs, placed: [Int], queues: Int = 2, pollMicroseconds: Int = 50, queue: Int = 0) throws -> WorkerPolicy {
        let backing = BackingOptions(createSize: 1 << 20, engine: .memory)
        var c = DaemonConfiguration(listen: .path("/unused"), backing: backing)
        c.cpus = cpus
        c.queues = queues
        c.pollMicroseconds = pollMicroseconds
        let store = try BackingStore.open(backing)
        return VirtioBlkDevice(store: store, configuration: c, cpus: placed) { try MemoryEngine(store: store, depth: $0) }
            .workerPolicy(queue: queue)
    }
    let named = try policy(.pinned([1, 0]), placed: [1, 0], queue: 1)
    #expect(named.cpu == 0)
    #expect(named.sharedCore == nil)

    // Two queues on two CPUs: each CPU has its worker, so neither floats; the poll is still capped.
    for q in 0..<2 {
        let both = try policy(.automatic, placed: [0, 1], queues: 2, queue: q)
        #expect(both.cpu == q)
        #expect(both.sharedCore?.floatOver == nil)
        #expect(both.sharedCore?.pollCeilingNanoseconds == SharedCoreResponse.defaultPollCeilingNanoseconds)
    }
    // One queue on two CPUs: its worker may also use the CPU no worker was placed on, if that is on
    // its NUMA node (libnuma unavailable counts as one node).
    let one = try policy(.automatic, placed: [0, 1], queues: 1)
    #expect(one.cpu == 0)
    let sameNode = CPUTopology.numaNode(ofCPU: 0) == nil || CPUTopology.numaNode(ofCPU: 0) == CPUTopology.numaNode(ofCPU: 1)
    #expect(one.sharedCore?.floatOver == (sameNode ? [0, 1] : nil))
    // One CPU to place on: nowhere to float, the poll is still capped.
    let single = try policy(.automatic, placed: [0])
    #expect(single.sharedCore != nil && single.sharedCore?.floatOver == nil)

    let unpinned = try policy(.unpinned, placed: [])
    #expect(unpinned.cpu == nil)
    #expect(unpinned.sharedCore != nil && unpinned.sharedCore?.floatOver == nil)

    // A worker that never sleeps has no window to cap and is not moved.
    #expect(try policy(.automatic, placed: [0, 1], pollMicroseconds: 0).sharedCore == nil)
    #expect(try policy(.unpinned, placed: [], pollMicroseconds: 0).sharedCore == nil)
}
