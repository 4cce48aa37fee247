import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

@Suite("Front-end sessions")
struct SessionTests {
    @Test("disconnect and reconnect: a fresh session sees the data the first one wrote")
    func reconnectKeepsData() throws {
        let daemon = try TestDaemon.memory(queues: 2)
        let first = try daemon.session(queues: 2)
        try daemon.run(first.frontend) { () throws in
            for (q, d) in first.drivers.enumerated() {
                #expect(try d.write(sector: UInt64(q) * 64, data: patternBytes(seed: 400, byteOffset: UInt64(q) * 64 * 512, count: 32 * 512)).isOK)
            }
            #expect(try first.frontend.stop() == [1, 1])
        }
        first.frontend.close()

        // The second session uses different guest memory and a different queue count and size.
        let second = try daemon.session(queues: 1, queueSize: 32, arena: GuestMemoryArena(regions: [.init(size: 16 << 20), .init(size: 16 << 20)]))
        try daemon.run(second.frontend) { () throws in
            for q in 0..<2 {
                let (r, back) = try second.driver.read(sector: UInt64(q) * 64, count: 32)
                #expect(r.isOK)
                #expect(back == patternBytes(seed: 400, byteOffset: UInt64(q) * 64 * 512, count: 32 * 512), "queue \(q)'s data")
            }
            #expect(try writeReadVerify(second.driver, sector: 5000, sectors: 8, seed: 401) == nil)
        }
    }

    @Test("a front-end that vanishes with requests in flight; the next one is served", arguments: allEngines)
    func vanishWithRequestsInFlight(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let first = try daemon.session(queueSize: 128)
        try daemon.run(first.frontend) { () throws in
            let buffers = try (0..<100).map { _ in try first.arena.allocate(64 << 10, alignment: 4096) }
            for (i, b) in buffers.enumerated() {
                _ = try first.driver.enqueue(i % 2 == 0 ? .write : .read, sector: UInt64(i) * 128,
                                             data: [BufferSegment(b, deviceWritable: i % 2 == 1)], indirect: true)
            }
            first.driver.kick()
            // No stop, no waiting: the socket closes while the daemon works on the requests (QEMU
            // killed). The guest memory stays mapped in this process, so the daemon may finish them.
            first.frontend.close()
            let second = try daemon.session()
            #expect(try writeReadVerify(second.driver, sector: 20_000, sectors: 16, seed: 410) == nil)
            #expect(daemon.process.isRunning)
        }
    }

    @Test("a second connection while one is active is closed; the first keeps working")
    func secondConnectionRejected() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: 420) == nil)
            let intruder = try Frontend(socketPath: daemon.socketPath)
            #expect(try intruder.waitForClose(timeoutMs: 5_000), "the second connection was not closed")
            // Even one that talks first.
            let talker = try Frontend(socketPath: daemon.socketPath)
            talker.timeoutMs = 5_000
            _ = try? talker.sendRaw(request: FrontendRequest.getFeatures.rawValue, flags: 1, payload: [])
            #expect(try talker.awaitRejection(timeoutMs: 5_000) == .closed)
            for i in 0..<10 {
                #expect(try writeReadVerify(s.driver, sector: UInt64(i) * 8, sectors: 8, seed: 421) == nil)
            }
            // Control messages still work on the first connection too.
            #expect(try s.frontend.getU64(.getFeatures) == expectedFeatures.rawValue)
        }
    }

    @Test("many sequential sessions, each doing I/O")
    func manySessions() throws {
        let daemon = try TestDaemon.memory()
        for i in 0..<8 {
            let s = try daemon.session(options: {
                var o = Frontend.StartOptions()
                o.memorySetup = i % 2 == 0 ? .memTable : .addMemReg
                return o
            }())
            try daemon.run(s.frontend) { () throws in
                #expect(try writeReadVerify(s.driver, sector: UInt64(i) * 8, sectors: 8, seed: 430) == nil)
                // Half the sessions stop cleanly, half just disconnect.
                if i % 2 == 0 { _ = try s.frontend.stop() }
            }
            s.frontend.close()
        }
    }
}
