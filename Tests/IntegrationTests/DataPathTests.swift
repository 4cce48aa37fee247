import Synchronization
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// One combination of the data-path variables.
struct DataPathCase: Sendable, CustomTestStringConvertible {
    var engine: String
    var indirect: Bool
    var eventIdx: Bool
    var memory: MemorySetup
    var testDescription: String {
        "\(engine), \(indirect ? "indirect" : "direct"), \(eventIdx ? "EVENT_IDX" : "no EVENT_IDX"), \(memory == .memTable ? "SET_MEM_TABLE" : "ADD_MEM_REG")"
    }

    static let all: [DataPathCase] = [
        DataPathCase(engine: "memory", indirect: false, eventIdx: true, memory: .memTable),
        DataPathCase(engine: "memory", indirect: true, eventIdx: false, memory: .addMemReg),
        DataPathCase(engine: "memory", indirect: false, eventIdx: false, memory: .memTable),
        DataPathCase(engine: "aio", indirect: false, eventIdx: false, memory: .addMemReg),
        DataPathCase(engine: "aio", indirect: true, eventIdx: true, memory: .memTable),
        DataPathCase(engine: "aio", indirect: false, eventIdx: true, memory: .addMemReg),
        DataPathCase(engine: "uring", indirect: false, eventIdx: false, memory: .addMemReg),
        DataPathCase(engine: "uring", indirect: true, eventIdx: true, memory: .memTable),
        DataPathCase(engine: "uring-sqpoll", indirect: false, eventIdx: true, memory: .addMemReg),
    ]

    var options: Frontend.StartOptions {
        var o = Frontend.StartOptions()
        o.memorySetup = memory
        o.eventIdx = eventIdx
        return o
    }
}

@Suite("Data path")
struct DataPathTests {
    @Test("write, read back and compare", arguments: DataPathCase.all)
    func roundTrip(_ c: DataPathCase) throws {
        let daemon = try TestDaemon.engine(c.engine)
        let s = try daemon.session(options: c.options)
        s.driver.useIndirect = c.indirect
        try daemon.run(s.frontend) { () throws in
            #expect(s.frontend.ackedFeatures.contains(.ringEventIdx) == c.eventIdx)
            // Single sector, a page, a large multi-segment request, the disk's first and last sectors.
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 1, seed: 10) == nil)
            #expect(try writeReadVerify(s.driver, sector: 9, sectors: 8, seed: 11) == nil)
            #expect(try writeReadVerify(s.driver, sector: 1000, sectors: 256, seed: 12, segments: 7) == nil)
            #expect(try writeReadVerify(s.driver, sector: diskSectors - 1, sectors: 1, seed: 13) == nil)
            #expect(try writeReadVerify(s.driver, sector: diskSectors - 64, sectors: 64, seed: 14, segments: 3) == nil)
            // Never written: reads as zeros (memory starts zeroed; the file is sparse).
            #expect(try expectZeros(s.driver, sector: 50_000, sectors: 16) == nil)
            #expect(try s.driver.flush().isOK)
        }
    }

    @Test("guest buffers at unaligned addresses (lengths still sector multiples)", arguments: allEngines)
    func unalignedBuffers(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            for (k, misalign) in [1, 3, 8, 64, 511, 513, 4095].enumerated() {
                let sector = UInt64(k) * 64
                #expect(try writeReadVerify(s.driver, sector: sector, sectors: 9, seed: 20 + UInt64(k),
                                            segments: 1 + k % 3, misalign: misalign) == nil, "misalign \(misalign)")
            }
        }
    }

    @Test("segments of any length whose total is a sector multiple", arguments: allEngines)
    func oddSegmentLengths(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        // 100 + 412 + 1000 + 24 = 1536 bytes = 3 sectors; no segment but the second-last is aligned.
        let lengths = [100, 412, 1000, 24]
        let buffers = try lengths.map { try s.arena.allocate($0, alignment: 1) }
        let data = patternBytes(seed: 25, byteOffset: 0, count: lengths.reduce(0, +))
        var offset = 0
        for b in buffers {
            b.write(Array(data[offset..<offset + b.length]))
            offset += b.length
        }
        try daemon.run(s.frontend) { () throws in
            let w = try s.driver.perform(type: BlkRequestType.write.rawValue, sector: 77,
                                         data: buffers.map { BufferSegment($0, deviceWritable: false) })
            #expect(w.isOK, "\(w)")
            let (r, back) = try s.driver.read(sector: 77, count: 3)
            #expect(r.isOK, "\(r)")
            #expect(back == data)
            for b in buffers { b.fill(0) }
            let r2 = try s.driver.perform(type: BlkRequestType.read.rawValue, sector: 77,
                                          data: buffers.map { BufferSegment($0, deviceWritable: true) })
            #expect(r2.isOK, "\(r2)")
            #expect(buffers.flatMap { $0.read() } == data)
        }
    }

    @Test("hundreds of requests in flight; the ring wraps several times", arguments: allEngines)
    func manyInFlight(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let queueSize = 256
        let s = try daemon.session(queueSize: queueSize)
        let d = s.driver
        let requestBytes = 4096
        let buffers = try (0..<queueSize).map { _ in try s.arena.allocate(requestBytes, alignment: 512) }
        try daemon.run(s.frontend) { () throws in
            // Round 0 fills the whole ring with indirect chains (one descriptor each); the others mix
            // direct chains of 3–5 descriptors with indirect ones, as many as the table holds
            // (queueSize / 5: every chain fits even if all were direct with 3 data segments).
            for round in 0..<4 {
                let allIndirect = round == 0
                let count = allIndirect ? queueSize : queueSize / 5
                let base = UInt64(round) * UInt64(queueSize) * 8
                var tickets: [BlkTicket] = []
                for i in 0..<count {
                    let sector = base + UInt64(i) * 8
                    buffers[i].write(patternBytes(seed: 30, byteOffset: sector * 512, count: requestBytes))
                    tickets.append(try d.enqueue(.write, sector: sector, data: split(buffers[i], i % 3 + 1, writable: false),
                                                 indirect: allIndirect || i % 2 == 1))
                }
                d.kick()
                let writes = try d.wait(for: tickets)
                let failedWrites = writes.values.filter { !$0.isOK }
                #expect(failedWrites.isEmpty, "round \(round) writes: \(failedWrites)")
                tickets = []
                for i in 0..<count {
                    buffers[i].fill(0xee)
                    tickets.append(try d.enqueue(.read, sector: base + UInt64(i) * 8, data: split(buffers[i], 3 - i % 3, writable: true),
                                                 indirect: allIndirect || i % 2 == 0))
                }
                d.kick()
                let reads = try d.wait(for: tickets)
                let failedReads = reads.values.filter { !$0.isOK }
                #expect(failedReads.isEmpty, "round \(round) reads: \(failedReads)")
                for i in 0..<count {
                    let sector = base + UInt64(i) * 8
                    #expect(buffers[i].read() == patternBytes(seed: 30, byteOffset: sector * 512, count: requestBytes),
                            "round \(round) request \(i)")
                }
            }
        }
    }

    @Test("avail and used indices wrap past 65535")
    func indexWrap() throws {
        let daemon = try TestDaemon.memory()
        var options = Frontend.StartOptions()
        // Start 40 entries short of the 16-bit wrap so a few dozen requests cross it.
        options.vringBase = 65_496
        let s = try daemon.session(queueSize: 16, options: options)
        try daemon.run(s.frontend) { () throws in
            for i in 0..<40 {
                #expect(try writeReadVerify(s.driver, sector: UInt64(i) * 8, sectors: 8, seed: 40) == nil)
            }
            // 80 requests from 65496 wrap to 40.
            #expect(try s.frontend.stop() == [40])
        }
    }

    @Test("two queues driven concurrently from two threads", arguments: allEngines)
    func twoQueuesConcurrently(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine, queues: 2)
        let s = try daemon.session(queues: 2, queueSize: 64)
        let failures = FailureLog()
        try daemon.run(s.frontend) { () throws in
            var threads: [PinnedThread] = []
            for (q, driver) in s.drivers.enumerated() {
                threads.append(try PinnedThread(name: "itest-q\(q)", cpu: nil) {
                    do {
                        for i in 0..<60 {
                            // Queue q owns the sectors congruent to q modulo 2 (in 16-sector blocks).
                            let sector = UInt64(i * 2 + q) * 16
                            if let problem = try writeReadVerify(driver, sector: sector, sectors: 16, seed: 50,
                                                                 segments: 1 + i % 4, indirect: i % 3 == 0) {
                                failures.add("queue \(q): \(problem)")
                            }
                        }
                    } catch {
                        failures.add("queue \(q): \(error)")
                    }
                })
            }
            for t in threads { t.join() }
            #expect(failures.entries.isEmpty, "\(failures.entries)")
            // What one queue wrote, the other reads.
            for i in 0..<10 {
                let sector = UInt64(i * 2 + 1) * 16
                let (r, back) = try s.drivers[0].read(sector: sector, count: 16)
                #expect(r.isOK)
                #expect(back == patternBytes(seed: 50, byteOffset: sector * 512, count: 16 * 512))
            }
        }
    }

    @Test("guest memory in several regions at different offsets; rings and buffers in each",
          arguments: [MemorySetup.memTable, MemorySetup.addMemReg])
    func multiRegionMemory(_ setup: MemorySetup) throws {
        let daemon = try TestDaemon.memory()
        // Region 1 and 2 start 64 KiB and 1 MiB into their memfds (as QEMU does when one file backs
        // several regions), and sit above 4 GiB in guest-physical space.
        let arena = try GuestMemoryArena(regions: [
            .init(size: 8 << 20),
            .init(size: 8 << 20, mmapOffset: 64 << 10),
            .init(size: 8 << 20, mmapOffset: 1 << 20),
        ])
        // One data buffer per region, then region 0 is filled up so that the rings, request slots
        // and scratch land in region 1 (whose VA and GPA differ from region 0's by other amounts).
        let pieces = try (0..<3).map { try arena.allocate(4096, alignment: 512, region: $0) }
        _ = try arena.allocate(arena.regions[0].bytesFree, alignment: 1, region: 0)
        var options = Frontend.StartOptions()
        options.memorySetup = setup
        let s = try daemon.session(arena: arena, options: options)
        try daemon.run(s.frontend) { () throws in
            #expect(s.driver.queue.descriptorTable.gpa >= GuestMemoryArena.defaultGuestPhysicalStride)
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 16, seed: 60, segments: 2) == nil)
            // One request whose data segments lie in all three regions.
            let data = patternBytes(seed: 61, byteOffset: 0, count: 3 * 4096)
            for (k, p) in pieces.enumerated() { p.write(Array(data[k * 4096..<(k + 1) * 4096])) }
            let w = try s.driver.perform(type: BlkRequestType.write.rawValue, sector: 100,
                                         data: pieces.map { BufferSegment($0, deviceWritable: false) })
            #expect(w.isOK, "\(w)")
            for p in pieces { p.fill(0) }
            let r = try s.driver.perform(type: BlkRequestType.read.rawValue, sector: 100,
                                         data: pieces.reversed().map { BufferSegment($0, deviceWritable: true) })
            #expect(r.isOK, "\(r)")
            let back = pieces.reversed().flatMap { $0.read() }
            #expect(back == data)
        }
    }

    @Test("stop returns the avail index; the queue resumes from it after a restart")
    func stopAndResume() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session(queueSize: 32)
        try daemon.run(s.frontend) { () throws in
            for i in 0..<5 { #expect(try writeReadVerify(s.driver, sector: UInt64(i), sectors: 1, seed: 70) == nil) }
            let bases = try s.frontend.stop()
            #expect(bases == [10])
            // VM "cont": the same session starts the queue again at the returned base (new rings).
            var options = Frontend.StartOptions()
            options.vringBase = bases[0]
            let d = try BlkDriver(queue: try s.frontend.start(arena: s.arena, options: options)[0])
            for i in 0..<5 {
                let (r, back) = try d.read(sector: UInt64(i), count: 1)
                #expect(r.isOK)
                #expect(back == patternBytes(seed: 70, byteOffset: UInt64(i) * 512, count: 512))
            }
            #expect(try s.frontend.stop() == [15])
        }
    }

    @Test("the driver polls instead of sleeping (VRING_AVAIL_F_NO_INTERRUPT)")
    func pollingDriver() throws {
        let daemon = try TestDaemon.memory(extra: ["--poll-us", "0"])
        var options = Frontend.StartOptions()
        options.waitMode = .polling
        options.eventIdx = false
        let s = try daemon.session(options: options)
        try daemon.run(s.frontend) { () throws in
            for i in 0..<20 { #expect(try writeReadVerify(s.driver, sector: UInt64(i) * 8, sectors: 8, seed: 80) == nil) }
        }
    }
}

/// Splits `buffer` into `pieces` segments whose lengths are sector multiples (the last takes the rest).
func split(_ buffer: GuestBuffer, _ pieces: Int, writable: Bool) -> [BufferSegment] {
    let size = (buffer.length / pieces) & ~511
    return (0..<pieces).map { k in
        let len = k == pieces - 1 ? buffer.length - size * (pieces - 1) : size
        return BufferSegment(buffer.slice(offset: k * size, length: len), deviceWritable: writable)
    }
}

/// Failures collected from worker threads.
final class FailureLog: Sendable {
    private let items = Mutex<[String]>([])
    func add(_ s: String) { items.withLock { $0.append(s) } }
    var entries: [String] { items.withLock { $0 } }
}
