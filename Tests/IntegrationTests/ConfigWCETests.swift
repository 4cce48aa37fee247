import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// CONFIG_WCE (virtio 1.2 §5.2.4/§5.2.6.2): the driver switches the device between write-back and
/// write-through by writing the config space's `writeback` byte, which QEMU forwards as SET_CONFIG.
@Suite("Write cache control (CONFIG_WCE)")
struct ConfigWCETests {
    static func setConfig(_ f: Frontend, offset: UInt32, bytes: [UInt8], flags: UInt32 = ConfigAccess.flagFrontend) throws {
        let access = ConfigAccess(offset: offset, size: UInt32(bytes.count), flags: flags, data: bytes)
        try f.send(.setConfig, payload: access.encoded, needReply: true)
    }

    @Test("offered, write-back by default, switched to write-through and back; I/O works in both", arguments: allEngines)
    func switchModes(engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let hs = try #require(s.frontend.handshakeResult)
            #expect(hs.offeredFeatures.contains(VirtioBlkFeature.configWCE))
            #expect(VirtioBlkConfig(try s.frontend.getConfig(offset: 0, size: 60)).writeback == 1)

            try Self.setConfig(s.frontend, offset: UInt32(VirtioBlkConfig.Offset.writeback), bytes: [0])
            #expect(VirtioBlkConfig(try s.frontend.getConfig(offset: 0, size: 60)).writeback == 0)
            #expect(try writeReadVerify(s.driver, sector: 64, sectors: 16, seed: 600, segments: 2) == nil)
            if engine != "memory" { // the bounce path (misaligned buffers) in write-through too
                #expect(try writeReadVerify(s.driver, sector: 128, sectors: 8, seed: 601, misalign: 8) == nil)
            }

            try Self.setConfig(s.frontend, offset: UInt32(VirtioBlkConfig.Offset.writeback), bytes: [1])
            #expect(VirtioBlkConfig(try s.frontend.getConfig(offset: 0, size: 60)).writeback == 1)
            #expect(try writeReadVerify(s.driver, sector: 256, sectors: 16, seed: 602) == nil)
            #expect(try s.driver.flush().isOK)
        }
    }

    @Test("refused writes get a failure reply and leave the session and the mode unchanged")
    func refusedWrites() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let wb = UInt32(VirtioBlkConfig.Offset.writeback)
            let cases: [(String, UInt32, [UInt8], UInt32)] = [
                ("capacity is not writable", 0, [0, 0, 0, 0, 0, 0, 0, 0], ConfigAccess.flagFrontend),
                ("writeback must be 0 or 1", wb, [2], ConfigAccess.flagFrontend),
                ("one byte only", wb, [0, 0], ConfigAccess.flagFrontend),
                ("migration writes are not supported", wb, [0], ConfigAccess.flagMigration),
            ]
            for (why, offset, bytes, flags) in cases {
                #expect(throws: (any Error).self, "\(why)") { try Self.setConfig(s.frontend, offset: offset, bytes: bytes, flags: flags) }
                #expect(VirtioBlkConfig(try s.frontend.getConfig(offset: 0, size: 60)).writeback == 1, "\(why)")
            }
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: 610) == nil)
        }
    }

    @Test("a read-only disk offers no write cache control")
    func readOnlyHasNoWCE() throws {
        let daemon = try TestDaemon.memory(extra: ["--read-only"])
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let hs = try #require(s.frontend.handshakeResult)
            #expect(!hs.offeredFeatures.contains(VirtioBlkFeature.configWCE))
            #expect(throws: (any Error).self) {
                try Self.setConfig(s.frontend, offset: UInt32(VirtioBlkConfig.Offset.writeback), bytes: [0])
            }
        }
    }
}
