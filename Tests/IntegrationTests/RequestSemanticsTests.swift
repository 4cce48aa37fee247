#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

@Suite("virtio-blk request semantics")
struct RequestSemanticsTests {
    @Test("FLUSH completes OK", arguments: allEngines)
    func flush(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 3, sectors: 8, seed: 100) == nil)
            let f = try s.driver.flush()
            #expect(f.isOK, "\(f)")
        }
    }

    @Test("data written and flushed is in the backing file", arguments: fileEngines)
    func dataReachesFile(_ engine: String) throws {
        let daemon = try TestDaemon.file(engine: engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let data = patternBytes(seed: 101, byteOffset: 4096 * 512, count: 64 * 512)
            #expect(try s.driver.write(sector: 4096, data: data, segments: 4).isOK)
            #expect(try s.driver.flush().isOK)
            let onDisk = try daemon.directory.readFile(daemon.directory.file("disk.img"), offset: 4096 * 512, count: data.count)
            #expect(onDisk == data)
        }
    }

    @Test("DISCARD, then the range reads as zeros", arguments: allEngines)
    func discardReadsZeros(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            // 4 MiB of data, then discard 1 MiB in the middle (2048 sectors from sector 2048).
            for chunk in 0..<4 {
                let sector = UInt64(chunk) * 2048
                #expect(try s.driver.write(sector: sector, data: patternBytes(seed: 110, byteOffset: sector * 512, count: 1 << 20)).isOK)
            }
            let c = try s.driver.discard(sector: 2048, count: 2048)
            #expect(c.isOK, "\(c)")
            #expect(try expectZeros(s.driver, sector: 2048, sectors: 2048) == nil)
            // Neighbours untouched.
            let (r, before) = try s.driver.read(sector: 2040, count: 8)
            #expect(r.isOK)
            #expect(before == patternBytes(seed: 110, byteOffset: 2040 * 512, count: 8 * 512))
            let (r2, after) = try s.driver.read(sector: 4096, count: 8)
            #expect(r2.isOK)
            #expect(after == patternBytes(seed: 110, byteOffset: 4096 * 512, count: 8 * 512))
        }
    }

    @Test("WRITE_ZEROES with and without UNMAP, then zeros", arguments: allEngines)
    func writeZeroes(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            for (k, unmap) in [false, true].enumerated() {
                let sector = UInt64(k) * 4096 + 100
                let data = patternBytes(seed: 120, byteOffset: sector * 512, count: 300 * 512)
                #expect(try s.driver.write(sector: sector, data: data).isOK)
                // Zero 200 sectors from 50 sectors in: both ends of the written range survive.
                let c = try s.driver.writeZeroes(sector: sector + 50, count: 200, unmap: unmap)
                #expect(c.isOK, "unmap \(unmap): \(c)")
                let (r, back) = try s.driver.read(sector: sector, count: 300)
                #expect(r.isOK)
                let zeroStart = 50 * 512, zeroEnd = 250 * 512
                let zeroed: ArraySlice<UInt8> = back[zeroStart..<zeroEnd]
                #expect(back[..<zeroStart] == data[..<zeroStart], "unmap \(unmap): head")
                #expect(zeroed.allSatisfy { $0 == 0 }, "unmap \(unmap): zeroed range")
                #expect(back[zeroEnd...] == data[zeroEnd...], "unmap \(unmap): tail")
            }
        }
    }

    @Test("DISCARD and WRITE_ZEROES beyond capacity fail with IOERR")
    func rangeCommandsOutOfRange() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            #expect(try s.driver.discard(sector: diskSectors - 4, count: 8).status == .ioError)
            #expect(try s.driver.writeZeroes(sector: diskSectors, count: 1, unmap: false).status == .ioError)
            #expect(try s.driver.writeZeroes(sector: UInt64.max - 1, count: 4, unmap: true).status == .ioError)
            // The last sectors themselves are fine.
            #expect(try s.driver.discard(sector: diskSectors - 8, count: 8).isOK)
            #expect(try s.driver.writeZeroes(sector: diskSectors - 1, count: 1, unmap: false).isOK)
        }
    }

    @Test("GET_ID returns --serial, NUL-padded to 20 bytes")
    func getIDSerial() throws {
        let serial = "itest-serial-42"
        let daemon = try TestDaemon.memory(extra: ["--serial", serial])
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let (c, id) = try s.driver.getID()
            #expect(c.isOK, "\(c)")
            #expect(id == Array(serial.utf8) + [UInt8](repeating: 0, count: 20 - serial.utf8.count))
        }
    }

    @Test("the default serial is derived from the backing path: the same on every start")
    func defaultSerialStable() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.makeFile("disk.img", size: diskBytes)
        var ids: [[UInt8]] = []
        for _ in 0..<2 {
            let daemon = try TestDaemon(["--engine", "aio", "--backing", file], directory: dir)
            let s = try daemon.session()
            try daemon.run(s.frontend) { () throws in
                let (c, id) = try s.driver.getID()
                #expect(c.isOK)
                ids.append(id)
            }
            daemon.process.signal(SIGTERM)
            #expect(daemon.process.waitForExit() == .exited(0))
        }
        #expect(ids[0] == ids[1])
        #expect(ids[0].contains { $0 != 0 }, "the default serial is empty")
    }

    @Test("unknown request types fail with UNSUPP")
    func unknownType() throws {
        let daemon = try TestDaemon.memory()
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            // 2 (legacy SCSI command), 99 (nothing), and 0xffff_ffff.
            for type: UInt32 in [2, 99, 0xffff_ffff] {
                let c = try s.driver.perform(type: type, sector: 0, data: [])
                #expect(c.status == .unsupported, "type \(type): \(c)")
            }
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 1, seed: 130) == nil)
        }
    }

    @Test("reads and writes beyond capacity, with overflowing sectors, or of partial sectors fail with IOERR",
          arguments: allEngines)
    func outOfRange(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        let d = s.driver
        try daemon.run(s.frontend) { () throws in
            let sector = [UInt8](repeating: 0x5a, count: 512)
            #expect(try d.read(sector: diskSectors - 1, count: 2).0.status == .ioError, "read crossing the end")
            #expect(try d.read(sector: diskSectors, count: 1).0.status == .ioError, "read at capacity")
            #expect(try d.write(sector: diskSectors, data: sector).status == .ioError, "write at capacity")
            #expect(try d.write(sector: diskSectors - 1, data: sector + sector).status == .ioError, "write crossing the end")
            // sector × 512 overflows 64 bits.
            #expect(try d.read(sector: UInt64.max, count: 1).0.status == .ioError)
            #expect(try d.read(sector: UInt64.max / 512 + 1, count: 1).0.status == .ioError)
            #expect(try d.write(sector: UInt64.max - 7, data: sector).status == .ioError)
            // sector × 512 fits but + length overflows.
            #expect(try d.read(sector: UInt64.max / 512, count: 1).0.status == .ioError)
            // Data that is not a whole number of sectors.
            #expect(try d.write(sector: 0, data: [UInt8](repeating: 1, count: 100)).status == .ioError)
            let odd = try s.arena.allocate(700, alignment: 512)
            #expect(try d.perform(type: BlkRequestType.read.rawValue, sector: 0,
                                  data: [BufferSegment(odd, deviceWritable: true)]).status == .ioError)
            // The last sector itself works, and the queue is fine.
            #expect(try writeReadVerify(d, sector: diskSectors - 1, sectors: 1, seed: 140) == nil)
        }
    }

    @Test("--read-only: RO offered, writes fail with IOERR, reads work")
    func readOnly() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.makeFile("disk.img", size: diskBytes)
        // Put known data in the file first, through the page cache.
        let fd = try FileDescriptor.open(file, flags: O_WRONLY)
        let data = patternBytes(seed: 150, byteOffset: 0, count: 8192)
        _ = data.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }
        fd.close()
        let daemon = try TestDaemon(["--engine", "aio", "--backing", file, "--read-only"], directory: dir)
        let f = try daemon.connect()
        try daemon.run(f) { () throws in
            let hs = try f.handshake(queues: 1, queueSize: 64)
            // The contract adds RO to the usual set. Withholding DISCARD, WRITE_ZEROES and CONFIG_WCE
            // from a read-only disk is also accepted: a guest could not use them anyway.
            let rangeCommands = VirtioBlkFeature.discard.union(VirtioBlkFeature.writeZeroes).union(VirtioBlkFeature.configWCE)
            #expect(hs.offeredFeatures.contains(VirtioBlkFeature.readOnly), "\(hs.offeredFeatures)")
            #expect(hs.offeredFeatures.subtracting(rangeCommands) == expectedFeatures.union(VirtioBlkFeature.readOnly).subtracting(rangeCommands),
                    "\(hs.offeredFeatures)")
            let d = try BlkDriver(queue: try f.start(arena: GuestMemoryArena(size: arenaBytes))[0])
            #expect(f.ackedFeatures.contains(VirtioBlkFeature.readOnly))
            let (r, back) = try d.read(sector: 0, count: 16)
            #expect(r.isOK)
            #expect(back == data)
            #expect(try d.write(sector: 0, data: [UInt8](repeating: 0, count: 512)).status == .ioError)
            let (r2, again) = try d.read(sector: 0, count: 16)
            #expect(r2.isOK)
            #expect(again == data, "a refused write changed the disk")
        }
    }
}
