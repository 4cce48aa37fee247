import Testing
import VhostUserProtocol
import VhostUserTesting

/// What the daemon's contract says it offers (without --read-only).
let expectedFeatures: VirtioFeatures = [
    .version1, .ringIndirectDesc, .ringEventIdx, .protocolFeatures,
    VirtioBlkFeature.sizeMax, VirtioBlkFeature.segMax, VirtioBlkFeature.blkSize, VirtioBlkFeature.flush,
    VirtioBlkFeature.topology, VirtioBlkFeature.multiQueue, VirtioBlkFeature.discard, VirtioBlkFeature.writeZeroes,
    VirtioBlkFeature.configWCE,
]
let expectedProtocolFeatures: ProtocolFeatures = [.mq, .replyAck, .config, .configureMemSlots, .inflightSHMFD, .resetDevice]

@Suite("Handshake and device configuration")
struct HandshakeTests {
    @Test("QEMU 7.2's realize and start sequence; features, protocol features and config as promised")
    func qemuSequence() throws {
        let daemon = try TestDaemon.memory(queues: 2)
        let f = try Frontend(socketPath: daemon.socketPath)
        try daemon.run(f) { () throws in
            let hs = try f.handshake(queues: 2, queueSize: 128)
            #expect(hs.offeredFeatures == expectedFeatures, "offered \(hs.offeredFeatures), expected \(expectedFeatures)")
            #expect(hs.offeredFeaturesAgain == hs.offeredFeatures)
            #expect(hs.offeredProtocolFeatures == expectedProtocolFeatures,
                    "offered protocol features \(hs.offeredProtocolFeatures)")
            #expect(hs.queueCount == 2)
            #expect(hs.maxMemSlots == 509)
            #expect(hs.config.count == 60)
            let c = VirtioBlkConfig(hs.config)
            #expect(c.capacity == diskSectors)
            #expect(c.numQueues == 2)
            #expect(c.blkSize == 512)
            #expect((c.segMax ?? 0) > 0)
            #expect((c.sizeMax ?? 0) > 0)
            #expect((c.maxDiscardSectors ?? 0) > 0)
            #expect(c.maxDiscardSeg == 1)
            #expect((c.maxWriteZeroesSectors ?? 0) > 0)
            #expect(c.maxWriteZeroesSeg == 1)
            #expect((c.writeZeroesMayUnmap ?? 2) <= 1)

            let arena = try GuestMemoryArena(size: arenaBytes)
            let queues = try f.start(arena: arena)
            #expect(f.ackedFeatures.contains(.ringEventIdx))
            for q in queues {
                let d = try BlkDriver(queue: q)
                #expect(try writeReadVerify(d, sector: UInt64(q.index) * 8, sectors: 8, seed: 1) == nil)
            }
            // Each queue carried one write and one read: the avail index reached is 2.
            #expect(try f.stop() == [2, 2])
            let sent = f.transcript.map { String($0.prefix(while: { $0 != " " })) }
            #expect(Array(sent.prefix(14)) == [
                "GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM",
                "GET_MAX_MEM_SLOTS", "SET_OWNER", "GET_FEATURES", "SET_VRING_CALL", "SET_VRING_CALL",
                "GET_CONFIG", "SET_FEATURES", "GET_INFLIGHT_FD", "SET_INFLIGHT_FD", "SET_MEM_TABLE",
            ])
            // The daemon initialised both queues' regions of the buffer (version 1), and nothing is
            // left marked in flight after the drain that GET_VRING_BASE does.
            let buffer = try #require(f.inflight)
            #expect(buffer.description.numQueues == 2 && buffer.description.queueSize == 128)
            #expect(buffer.version(queue: 0) == 1 && buffer.version(queue: 1) == 1)
            #expect(buffer.markedHeads(queue: 0).isEmpty && buffer.markedHeads(queue: 1).isEmpty)
        }
    }

    @Test("QEMU 7.2's own call order: guest call eventfds installed after SET_VRING_ENABLE")
    func callFDAfterEnable() throws {
        let daemon = try TestDaemon.memory()
        var options = Frontend.StartOptions()
        options.callAfterEnable = true
        let s = try daemon.session(options: options)
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: 2) == nil)
        }
    }

    @Test("--block-size 4096: blk_size 4096, capacity still in 512-byte sectors")
    func blockSize4096() throws {
        let daemon = try TestDaemon.memory(extra: ["--block-size", "4096"])
        let f = try Frontend(socketPath: daemon.socketPath)
        try daemon.run(f) { () throws in
            let hs = try f.handshake(queues: 1, queueSize: 128)
            let c = VirtioBlkConfig(hs.config)
            #expect(c.blkSize == 4096)
            #expect(c.capacity == diskSectors)
            #expect(c.numQueues == 1)
            let d = try BlkDriver(queue: try f.start(arena: GuestMemoryArena(size: arenaBytes))[0])
            #expect(try writeReadVerify(d, sector: 8, sectors: 8, seed: 3) == nil)
        }
    }

    @Test("GET_CONFIG returns exactly the bytes asked for, at any offset")
    func configWindows() throws {
        let daemon = try TestDaemon.memory(queues: 3)
        let f = try Frontend(socketPath: daemon.socketPath)
        try daemon.run(f) { () throws in
            let full = try f.handshake(queues: 1, queueSize: 128).config
            #expect(VirtioBlkConfig(full).numQueues == 3)
            let c57 = try f.getConfig(offset: 0, size: 57)
            #expect(c57 == Array(full.prefix(57)))
            let c256 = try f.getConfig(offset: 0, size: 256)
            #expect(c256.count == 256)
            #expect(Array(c256.prefix(60)) == full)
            // A window in the middle: blk_size alone.
            #expect(try f.getConfig(offset: VirtioBlkConfig.Offset.blkSize, size: 4) == Array(full[20..<24]))
            #expect(try f.getConfig(offset: 252, size: 4).count == 4)
        }
    }
}
