#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// "Nothing acknowledged to the guest is lost": a daemon killed with SIGKILL (no drain, no final
/// fdatasync) right after its last acknowledgement must leave every acknowledged block on the
/// store, for the next daemon to serve. (Process death, not power loss: that is what FLUSH and
/// write-through are for, and what a process cannot simulate.)
@Suite("Acknowledged writes survive a killed daemon")
struct DurabilityTests {
    static let blocks = 64
    static let sectorsPerBlock = 8 // 4 KiB blocks

    @Test("SIGKILL right after the last acknowledgement; a new daemon reads every block back",
          arguments: fileEngines, [true, false])
    func killAfterAcknowledgedWrites(engine: String, writeBack: Bool) throws {
        let first = try TestDaemon.file(engine: engine)
        let args = first.process.arguments.filter { $0 != first.socketPath && $0 != "--socket" }
        let s = try first.session()
        try first.run(s.frontend) { () throws in
            if !writeBack {
                let access = ConfigAccess(offset: UInt32(VirtioBlkConfig.Offset.writeback), size: 1, flags: ConfigAccess.flagFrontend, data: [0])
                try s.frontend.send(.setConfig, payload: access.encoded, needReply: true)
            }
            // Many writes in flight at once (indirect: one descriptor each), so acknowledgements race
            // with the kill below.
            let buffers = try (0..<Self.blocks).map { _ in try s.arena.allocate(Self.sectorsPerBlock * 512, alignment: 4096) }
            var tickets: [BlkTicket] = []
            for (i, b) in buffers.enumerated() {
                b.write(patternBytes(seed: 700, byteOffset: UInt64(i * Self.sectorsPerBlock * 512), count: b.length))
                tickets.append(try s.driver.enqueue(.write, sector: UInt64(i * Self.sectorsPerBlock),
                                                    data: [BufferSegment(b, deviceWritable: false)], indirect: true))
            }
            s.driver.kick()
            let done = try s.driver.wait(for: tickets)
            let failed = done.values.filter { !$0.isOK }
            #expect(failed.isEmpty, "\(failed)")
        }
        first.process.signal(SIGKILL)
        #expect(first.process.waitForExit() != nil)

        // The stale socket file is replaced by the next daemon (nobody listens on it any more).
        let second = try TestDaemon(args, directory: first.directory)
        let t = try second.session()
        try second.run(t.frontend) { () throws in
            for i in 0..<Self.blocks {
                let (r, back) = try t.driver.read(sector: UInt64(i * Self.sectorsPerBlock), count: Self.sectorsPerBlock)
                #expect(r.isOK)
                #expect(back == patternBytes(seed: 700, byteOffset: UInt64(i * Self.sectorsPerBlock * 512), count: Self.sectorsPerBlock * 512),
                        "block \(i) lost after the kill")
            }
        }
    }
}
