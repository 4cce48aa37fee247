import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// What the contract allows as the answer to a malformed chain.
enum ChainExpectation: Sendable {
    /// The status byte can be found and written: the request completes with IOERR.
    case ioError
    /// The status byte cannot be written safely: the element comes back with len 0 and the status
    /// byte (if there is one) is untouched.
    case discarded
    /// Whether the status byte is reachable depends on how far the parser walks: either of the above.
    case ioErrorOrDiscarded
}

/// Builds hand-written chains in one queue's memory.
final class ChainKit {
    let queue: DriverQueue
    let arena: GuestMemoryArena
    /// The status byte of the chain being built (checked after completion).
    var status: GuestBuffer?
    /// Buffers the device must not modify, with their contents before submission.
    var guarded: [(GuestBuffer, [UInt8])] = []

    init(queue: DriverQueue, arena: GuestMemoryArena) {
        self.queue = queue
        self.arena = arena
    }

    func header(_ type: BlkRequestType, sector: UInt64 = 0) throws -> GuestBuffer {
        let h = try arena.allocate(16, alignment: 16)
        h.pointer.storeBytes(of: type.rawValue.littleEndian, toByteOffset: 0, as: UInt32.self)
        h.pointer.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        h.pointer.storeBytes(of: sector.littleEndian, toByteOffset: 8, as: UInt64.self)
        return h
    }

    /// A data buffer filled with `fill`; `guard` records it as one the device must leave alone.
    func data(_ length: Int, fill: UInt8 = 0x3c, guarded isGuarded: Bool = false) throws -> GuestBuffer {
        let d = try arena.allocate(length, alignment: 512)
        d.fill(fill)
        if isGuarded { guarded.append((d, d.read())) }
        return d
    }

    func statusByte() throws -> GuestBuffer {
        let s = try arena.allocate(8, alignment: 8).slice(offset: 0, length: 1)
        s.pointer.storeBytes(of: BlkDriver.statusSentinel, as: UInt8.self)
        status = s
        return s
    }

    enum Next { case end, entry(Int), raw(UInt16) }
    struct Desc {
        var gpa: UInt64
        var length: UInt32
        var flags: DescriptorFlags
        var next: Next
        init(_ gpa: UInt64, _ length: UInt32, _ flags: DescriptorFlags = [], next: Next = .end) {
            self.gpa = gpa
            self.length = length
            self.flags = flags
            self.next = next
        }
        init(_ b: GuestBuffer, _ flags: DescriptorFlags = [], next: Next = .end) {
            self.init(b.gpa, UInt32(b.length), flags, next: next)
        }
    }

    /// Writes `descs` into freshly reserved ring descriptors (entry k's `.entry(j)` becomes the id of
    /// entry j) and makes entry 0 available. Returns the head.
    func ring(_ descs: [Desc]) throws -> UInt16 {
        let ids = try queue.reserveDescriptors(descs.count)
        for (k, d) in descs.enumerated() {
            var flags = d.flags
            let next: UInt16
            switch d.next {
            case .end: next = 0
            case .entry(let j): next = ids[j]; flags.insert(.next)
            case .raw(let n): next = n; flags.insert(.next)
            }
            queue.writeDescriptor(ids[k], gpa: d.gpa, length: d.length, flags: flags, next: next)
        }
        queue.trackRawChain(head: ids[0], ids: ids)
        queue.pushAvail(ids[0])
        return ids[0]
    }

    /// An indirect table holding `descs` (`.entry(j)` is the table index j).
    func table(_ descs: [Desc]) throws -> GuestBuffer {
        try queue.makeRawIndirectTable(descs.map { d in
            var flags = d.flags
            var next: UInt16 = 0
            switch d.next {
            case .end: break
            case .entry(let j): next = UInt16(j); flags.insert(.next)
            case .raw(let n): next = n; flags.insert(.next)
            }
            return (d.gpa, d.length, flags, next)
        })
    }
}

/// One malformed chain: how to build it, and what the device must answer.
struct HostileChain: Sendable, CustomTestStringConvertible {
    let name: String
    let expectation: ChainExpectation
    /// Builds and makes the chain available; returns its head, or nil when the head is bogus.
    let build: @Sendable (ChainKit) throws -> UInt16?
    var testDescription: String { name }

    static let all: [HostileChain] = [
        HostileChain(name: "descriptor loop (data points back to the header)", expectation: .ioErrorOrDiscarded) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(0))])
        },
        HostileChain(name: "descriptor that is its own successor", expectation: .ioErrorOrDiscarded) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(1))])
        },
        HostileChain(name: "next index ≥ queue size", expectation: .ioErrorOrDiscarded) { k in
            try k.ring([.init(try k.header(.read), next: .raw(k.queue.size + 1))])
        },
        HostileChain(name: "indirect table inside an indirect table", expectation: .ioErrorOrDiscarded) { k in
            let inner = try k.table([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                                     .init(try k.statusByte(), .write)])
            let outer = try k.table([.init(inner, .indirect)])
            return try k.ring([.init(outer, .indirect)])
        },
        HostileChain(name: "indirect descriptor inside an indirect table, after the header", expectation: .ioErrorOrDiscarded) { k in
            let inner = try k.table([.init(try k.data(512), .write, next: .entry(1)), .init(try k.statusByte(), .write)])
            let outer = try k.table([.init(try k.header(.read), next: .entry(1)), .init(inner, .indirect)])
            return try k.ring([.init(outer, .indirect)])
        },
        HostileChain(name: "loop inside an indirect table", expectation: .ioErrorOrDiscarded) { k in
            let t = try k.table([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(0))])
            return try k.ring([.init(t, .indirect)])
        },
        HostileChain(name: "indirect table length not a multiple of 16", expectation: .ioErrorOrDiscarded) { k in
            let t = try k.table([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                                 .init(try k.statusByte(), .write)])
            return try k.ring([.init(t.gpa, 40, .indirect)])
        },
        HostileChain(name: "empty indirect table", expectation: .ioErrorOrDiscarded) { k in
            let t = try k.table([])
            return try k.ring([.init(t.gpa, 0, .indirect)])
        },
        HostileChain(name: "indirect table outside guest memory", expectation: .ioErrorOrDiscarded) { k in
            try k.ring([.init(k.arena.unmappedGPA, 48, .indirect)])
        },
        HostileChain(name: "status descriptor not device-writable", expectation: .discarded) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                        .init(try k.statusByte())])
        },
        HostileChain(name: "status descriptor of length 0", expectation: .ioErrorOrDiscarded) { k in
            let s = try k.statusByte()
            // A zero-length last descriptor adds no byte, so a device that takes the status to be the
            // last device-writable byte (any layout, virtio 1.2 §2.6.4) finds it at the data's end:
            // a 511-byte read, which fails. Either that IOERR or a len-0 element is acceptable; the
            // data's last byte starts as the sentinel so both outcomes are recognised.
            let d = try k.data(512)
            d.slice(offset: 511, length: 1).fill(BlkDriver.statusSentinel)
            k.status = d.slice(offset: 511, length: 1)
            return try k.ring([.init(try k.header(.read), next: .entry(1)), .init(d, .write, next: .entry(2)),
                               .init(s.gpa, 0, .write)])
        },
        HostileChain(name: "status byte outside guest memory", expectation: .discarded) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                        .init(k.arena.unmappedGPA, 1, .write)])
        },
        HostileChain(name: "IN whose data buffer is device-readable", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(try k.data(512, guarded: true), next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "OUT whose data buffer is device-writable", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.write), next: .entry(1)), .init(try k.data(512, guarded: true), .write, next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "GET_ID whose id buffer is device-readable", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.getID), next: .entry(1)), .init(try k.data(20, guarded: true), next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "DISCARD whose segment is device-writable", expectation: .ioError) { k in
            let seg = try k.data(16, fill: 0, guarded: true)
            seg.pointer.storeBytes(of: UInt32(8).littleEndian, toByteOffset: 8, as: UInt32.self)
            k.guarded = [(seg, seg.read())]
            return try k.ring([.init(try k.header(.discard), next: .entry(1)), .init(seg, .write, next: .entry(2)),
                               .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "header shorter than 16 bytes", expectation: .ioError) { k in
            let h = try k.header(.read)
            return try k.ring([.init(h.gpa, 8, [], next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                               .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "header only, no status descriptor", expectation: .discarded) { k in
            try k.ring([.init(try k.header(.flush))])
        },
        HostileChain(name: "header outside guest memory", expectation: .ioError) { k in
            try k.ring([.init(k.arena.unmappedGPA, 16, [], next: .entry(1)), .init(try k.data(512), .write, next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "IN data outside guest memory", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.read), next: .entry(1)), .init(k.arena.unmappedGPA, 512, .write, next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "OUT data outside guest memory", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.write), next: .entry(1)), .init(k.arena.unmappedGPA, 512, [], next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "data crossing the end of the region", expectation: .ioError) { k in
            let r = k.arena.regions[0]
            let end = r.guestPhysicalAddress + UInt64(r.size)
            return try k.ring([.init(try k.header(.read), next: .entry(1)), .init(end - 256, 512, .write, next: .entry(2)),
                               .init(try k.statusByte(), .write)])
        },
        HostileChain(name: "data address + length wraps around 2^64", expectation: .ioError) { k in
            try k.ring([.init(try k.header(.write), next: .entry(1)), .init(UInt64.max - 100, 512, [], next: .entry(2)),
                        .init(try k.statusByte(), .write)])
        },
    ]
}

@Suite("Hostile descriptor chains")
struct HostileChainTests {
    /// Sectors 0–7 hold this pattern before each hostile request; every hostile request targets
    /// sector 0 and must leave it unchanged.
    static let seed: UInt64 = 200

    @Test("a malformed chain fails alone; the same queue then serves correct requests", arguments: HostileChain.all)
    func hostileChain(_ c: HostileChain) throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session(queueSize: 64)
        let q = s.driver.queue
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: Self.seed) == nil)
            let kit = ChainKit(queue: q, arena: s.arena)
            let head = try c.build(kit)
            q.submit()
            let used: [UsedElement]
            do {
                used = try q.waitForUsed(count: 1, timeoutMs: 10_000)
            } catch {
                let stopped = try q.waitForError(timeoutMs: 0)
                Issue.record("no used element (\(error)); err eventfd signalled: \(stopped)\n\(daemon.context(s.frontend))")
                return
            }
            try #require(used.count == 1, "\(used)")
            let e = used[0]
            if let head { #expect(e.id == UInt32(head), "used id \(e.id), head \(head)") }
            let status = kit.status?.pointer.load(as: UInt8.self)
            let ioError = status == BlkStatus.ioError.rawValue && e.length >= 1
            let discarded = e.length == 0 && (status == nil || status == BlkDriver.statusSentinel)
            switch c.expectation {
            case .ioError: #expect(ioError, "\(e), status \(status.map { String($0) } ?? "none")")
            case .discarded: #expect(discarded, "\(e), status \(status.map { String($0) } ?? "none")")
            case .ioErrorOrDiscarded: #expect(ioError || discarded, "\(e), status \(status.map { String($0) } ?? "none")")
            }
            for (buffer, before) in kit.guarded {
                #expect(buffer.read() == before, "the device wrote into a device-readable buffer")
            }
            // The disk is unchanged and the same queue still works.
            let (r, back) = try s.driver.read(sector: 0, count: 8)
            #expect(r.isOK, "\(r)")
            #expect(back == patternBytes(seed: Self.seed, byteOffset: 0, count: 8 * 512), "a failed request changed the disk")
            #expect(try writeReadVerify(s.driver, sector: 100, sectors: 8, seed: Self.seed + 1, indirect: true) == nil)
            #expect(try writeReadVerify(s.driver, sector: 200, sectors: 8, seed: Self.seed + 2, segments: 2) == nil)
        }
    }

    @Test("avail idx jumping by more than the queue size: err eventfd signalled, other queue unaffected")
    func availIndexJump() throws {
        let daemon = try TestDaemon.memory(queues: 2)
        let s = try daemon.session(queues: 2, queueSize: 64)
        try daemon.run(s.frontend) { () throws in
            let broken = s.drivers[0].queue
            #expect(try writeReadVerify(s.drivers[0], sector: 0, sectors: 8, seed: 210) == nil)
            // Claim 65 new entries in a 64-entry ring.
            broken.setAvailIndex(broken.availIndex &+ broken.size &+ 1)
            broken.kick(force: true)
            #expect(try broken.waitForError(timeoutMs: 10_000), "no write to queue 0's err eventfd")
            // Nothing completed on the broken queue.
            #expect(broken.deviceUsedIndex == 2)
            // Queue 1 keeps working, many times over.
            for i in 0..<20 {
                #expect(try writeReadVerify(s.drivers[1], sector: 1000 + UInt64(i) * 8, sectors: 8, seed: 211, indirect: i % 2 == 0) == nil)
            }
            #expect(daemon.process.isRunning)
        }
    }

    /// A head the ring cannot name is not one bad request: it cannot even be returned in the used ring
    /// (its id would be out of range for the driver too), so the ring is broken — as QEMU's virtio core
    /// treats it (virtio_error, DEVICE_NEEDS_RESET). The queue stops and says so on its err eventfd;
    /// the other queue is unaffected.
    @Test("avail ring naming a head ≥ queue size: err eventfd signalled, other queue unaffected")
    func headOutOfRange() throws {
        let daemon = try TestDaemon.memory(queues: 2)
        let s = try daemon.session(queues: 2, queueSize: 64)
        try daemon.run(s.frontend) { () throws in
            let broken = s.drivers[0].queue
            #expect(try writeReadVerify(s.drivers[0], sector: 0, sectors: 8, seed: 220) == nil)
            broken.pushAvail(broken.size &+ 3)
            broken.publish()
            broken.kick(force: true)
            #expect(try broken.waitForError(timeoutMs: 10_000), "no write to queue 0's err eventfd")
            #expect(broken.deviceUsedIndex == 2, "the out-of-range head must not be completed")
            for i in 0..<10 {
                #expect(try writeReadVerify(s.drivers[1], sector: 2000 + UInt64(i) * 8, sectors: 8, seed: 221) == nil)
            }
            #expect(daemon.process.isRunning)
        }
    }

    @Test("any descriptor layout (virtio 1.2 §2.6.4): split header, data and status sharing a descriptor")
    func anyLayout() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session(queueSize: 64)
        let q = s.driver.queue
        try daemon.run(s.frontend) { () throws in
            let kit = ChainKit(queue: q, arena: s.arena)
            let data = patternBytes(seed: 220, byteOffset: 8 * 512, count: 1024)
            // OUT: header and data in one device-readable buffer; status alone.
            let hd = try s.arena.allocate(16 + 1024, alignment: 16)
            let h = try kit.header(.write, sector: 8)
            hd.write(h.read())
            hd.write(data, at: 16)
            let head1 = try kit.ring([.init(hd, next: .entry(1)), .init(try kit.statusByte(), .write)])
            q.submit()
            let u1 = try q.waitForUsed(count: 1, timeoutMs: 10_000)
            #expect(u1.first?.id == UInt32(head1))
            #expect(kit.status?.pointer.load(as: UInt8.self) == BlkStatus.ok.rawValue, "header+data in one descriptor")

            // IN: header split 4 + 12 bytes; data and status in one 1025-byte device-writable buffer.
            let h2 = try kit.header(.read, sector: 8)
            let ds = try s.arena.allocate(1025, alignment: 512)
            ds.fill(0xee)
            let head2 = try kit.ring([.init(h2.gpa, 4, [], next: .entry(1)), .init(h2.gpa + 4, 12, [], next: .entry(2)),
                                      .init(ds, .write)])
            q.submit()
            let u2 = try q.waitForUsed(count: 1, timeoutMs: 10_000)
            #expect(u2.first?.id == UInt32(head2))
            let back = ds.read()
            #expect(back[1024] == BlkStatus.ok.rawValue, "status as the last byte of the data descriptor")
            #expect(Array(back[0..<1024]) == data)
        }
    }
}
