import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// How far the connection is set up before the hostile message.
enum ControlSetup: Sendable {
    /// Nothing sent yet.
    case fresh
    /// Phase 1 done with REPLY_ACK negotiated, so NEED_REPLY can be set.
    case handshaken
    /// Phase 1 done without REPLY_ACK: refusals must drop the connection.
    case handshakenNoReplyAck
}

/// One malformed control message.
struct HostileMessage: Sendable, CustomTestStringConvertible {
    let name: String
    let setup: ControlSetup
    /// What must happen: a refusal (error reply or close), or specifically a close.
    let mustClose: Bool
    let send: @Sendable (Frontend) throws -> Void
    var testDescription: String { name }

    /// VERSION (1) | NEED_REPLY (8).
    static let ask: UInt32 = 0x9

    static let all: [HostileMessage] = [
        HostileMessage(name: "header truncated, then close", setup: .fresh, mustClose: false) { f in
            // 6 of the 12 header bytes of a GET_FEATURES.
            try f.sendBytes([1, 0, 0, 0, 1, 0])
            f.close()
        },
        HostileMessage(name: "payload truncated, then close", setup: .handshaken, mustClose: false) { f in
            // SET_VRING_NUM announcing 8 payload bytes, sending 3.
            try f.sendBytes([8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0])
            f.close()
        },
        HostileMessage(name: "SET_VRING_NUM with a 4-byte payload", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: ask, payload: [0, 0, 0, 0])
        },
        HostileMessage(name: "SET_VRING_NUM with a 4-byte payload, no REPLY_ACK", setup: .handshakenNoReplyAck, mustClose: true) { f in
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: 1, payload: [0, 0, 0, 0])
        },
        HostileMessage(name: "unknown request 999", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: 999, flags: ask, payload: [])
        },
        HostileMessage(name: "unknown request 999, no NEED_REPLY", setup: .handshaken, mustClose: true) { f in
            try f.sendRaw(request: 999, flags: 1, payload: PayloadEncoding.u64(0))
        },
        HostileMessage(name: "SET_VRING_NUM on queue index = queue count", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: ask, payload: VringState(index: 1, num: 64).encoded)
        },
        HostileMessage(name: "SET_VRING_ADDR on queue index 255", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringAddr.rawValue, flags: ask,
                          payload: VringAddress(index: 255, descriptorTable: 0, usedRing: 0, availRing: 0).encoded)
        },
        HostileMessage(name: "GET_VRING_BASE on queue index 7", setup: .handshaken, mustClose: true) { f in
            // GET_VRING_BASE has a reply of its own, so a refusal cannot be an ack: it must drop.
            try f.sendRaw(request: FrontendRequest.getVringBase.rawValue, flags: 1, payload: VringState(index: 7, num: 0).encoded)
        },
        HostileMessage(name: "SET_VRING_NUM not a power of two", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: ask, payload: VringState(index: 0, num: 100).encoded)
        },
        HostileMessage(name: "SET_VRING_NUM above --queue-size", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: ask, payload: VringState(index: 0, num: 2048).encoded)
        },
        HostileMessage(name: "SET_VRING_KICK without an fd", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setVringKick.rawValue, flags: ask, payload: PayloadEncoding.u64(0))
        },
        HostileMessage(name: "SET_VRING_CALL with two fds", setup: .handshaken, mustClose: false) { f in
            let a = try EventFD(), b = try EventFD()
            try f.sendRaw(request: FrontendRequest.setVringCall.rawValue, flags: ask, payload: PayloadEncoding.u64(0),
                          fds: [a.rawValue, b.rawValue])
        },
        HostileMessage(name: "SET_MEM_TABLE with fewer fds than regions", setup: .handshaken, mustClose: false) { f in
            let arena = try GuestMemoryArena(regions: [.init(size: 1 << 20), .init(size: 1 << 20)])
            try f.sendRaw(request: FrontendRequest.setMemTable.rawValue, flags: ask,
                          payload: PayloadEncoding.memTable(arena.memoryTable), fds: [arena.fileDescriptors[0]])
        },
        HostileMessage(name: "SET_MEM_TABLE with more fds than regions", setup: .handshaken, mustClose: false) { f in
            let arena = try GuestMemoryArena(regions: [.init(size: 1 << 20), .init(size: 1 << 20)])
            let extra = try EventFD()
            try f.sendRaw(request: FrontendRequest.setMemTable.rawValue, flags: ask,
                          payload: PayloadEncoding.memTable(arena.memoryTable), fds: arena.fileDescriptors + [extra.rawValue])
        },
        HostileMessage(name: "SET_MEM_TABLE claiming 9 regions", setup: .handshaken, mustClose: false) { f in
            var w = PayloadWriter()
            w.u32(9); w.u32(0)
            try f.sendRaw(request: FrontendRequest.setMemTable.rawValue, flags: ask, payload: w.bytes)
        },
        HostileMessage(name: "SET_MEM_TABLE region larger than its memfd", setup: .handshaken, mustClose: false) { f in
            let arena = try GuestMemoryArena(size: 1 << 20)
            var region = arena.memoryTable[0]
            region.size = 1 << 30
            try f.sendRaw(request: FrontendRequest.setMemTable.rawValue, flags: ask,
                          payload: PayloadEncoding.memTable([region]), fds: arena.fileDescriptors)
        },
        HostileMessage(name: "ADD_MEM_REG without an fd", setup: .handshaken, mustClose: false) { f in
            let arena = try GuestMemoryArena(size: 1 << 20)
            try f.sendRaw(request: FrontendRequest.addMemReg.rawValue, flags: ask,
                          payload: PayloadEncoding.singleRegion(arena.memoryTable[0]))
        },
        HostileMessage(name: "GET_CONFIG of 300 bytes", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.getConfig.rawValue, flags: 1,
                          payload: ConfigAccess(offset: 0, size: 300, flags: 0, data: [UInt8](repeating: 0, count: 300)).encoded)
        },
        HostileMessage(name: "GET_CONFIG with offset + size beyond 256", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.getConfig.rawValue, flags: 1,
                          payload: ConfigAccess(offset: 200, size: 100, flags: 0, data: [UInt8](repeating: 0, count: 100)).encoded)
        },
        HostileMessage(name: "GET_CONFIG whose size field disagrees with the payload", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.getConfig.rawValue, flags: 1,
                          payload: ConfigAccess(offset: 0, size: 60, flags: 0, data: [UInt8](repeating: 0, count: 20)).encoded)
        },
        HostileMessage(name: "version 2 in the header flags", setup: .fresh, mustClose: true) { f in
            try f.sendRaw(request: FrontendRequest.getFeatures.rawValue, flags: 2, payload: [])
        },
        HostileMessage(name: "version 0 in the header flags", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.setOwner.rawValue, flags: 0x8, payload: [])
        },
        HostileMessage(name: "REPLY flag on a front-end request", setup: .handshaken, mustClose: false) { f in
            try f.sendRaw(request: FrontendRequest.getFeatures.rawValue, flags: 0x5, payload: [])
        },
        HostileMessage(name: "payload size field of 1 MiB", setup: .handshaken, mustClose: true) { f in
            var w = PayloadWriter()
            w.u32(FrontendRequest.setFeatures.rawValue); w.u32(1); w.u32(1 << 20)
            try f.sendBytes(w.bytes + [UInt8](repeating: 0, count: 64))
        },
    ]
}

@Suite("Hostile control plane")
struct HostileControlTests {
    @Test("a malformed message is refused; the next connection gets a working session", arguments: HostileMessage.all)
    func hostileMessage(_ m: HostileMessage) throws {
        let daemon = try TestDaemon.memory()
        let f = try Frontend(socketPath: daemon.socketPath)
        f.timeoutMs = 5_000
        try daemon.run(f) { () throws in
            switch m.setup {
            case .fresh: break
            case .handshaken: _ = try f.handshake(queues: 1, queueSize: 64)
            case .handshakenNoReplyAck:
                _ = try f.handshake(queues: 1, queueSize: 64, protocolFeatures: Frontend.supportedProtocolFeatures.subtracting(.replyAck))
            }
            try m.send(f)
            if f.socket.fd.isOpen {
                let outcome = try f.awaitRejection(timeoutMs: 5_000)
                if m.mustClose {
                    #expect(outcome == .closed, "expected the connection to be dropped, got \(outcome)")
                } else {
                    #expect(outcome.isRefusal, "expected an error reply or a drop, got \(outcome)")
                }
                f.close()
            }
            // A new front-end gets a fresh, fully working session.
            let s = try daemon.session()
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: 300) == nil)
            #expect(try s.driver.flush().isOK)
            #expect(daemon.process.isRunning)
        }
    }

    @Test("an error reply leaves the session usable (REPLY_ACK)")
    func refusedThenContinue() throws {
        let daemon = try TestDaemon.memory()
        let f = try Frontend(socketPath: daemon.socketPath)
        try daemon.run(f) { () throws in
            _ = try f.handshake(queues: 1, queueSize: 64)
            try f.sendRaw(request: FrontendRequest.setVringNum.rawValue, flags: HostileMessage.ask,
                          payload: VringState(index: 0, num: 100).encoded)
            let outcome = try f.awaitRejection()
            #expect(outcome.isRefusal, "\(outcome)")
            if case .errorReply = outcome {
                // The connection stayed open: it must still serve this front-end.
                let d = try BlkDriver(queue: try f.start(arena: GuestMemoryArena(size: arenaBytes))[0])
                #expect(try writeReadVerify(d, sector: 0, sectors: 8, seed: 310) == nil)
            }
        }
    }
}
