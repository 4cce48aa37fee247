import Glibc
import Testing
import VhostSystem
@testable import BlockIO

/// The engines that do real I/O on a file or block device, each test run on every one of them: they
/// must give the same results for the same requests.
enum FileEngine: String, CaseIterable, CustomTestStringConvertible {
    case aio, uring
    /// io_uring with a kernel thread polling the submission ring.
    case uringSQPoll = "uring-sqpoll"

    var testDescription: String { rawValue }

    func make(_ store: BackingStore, depth: Int) throws -> any BlockEngine {
        switch self {
        case .aio: return try AioEngine(store: store, depth: depth)
        case .uring: return try UringEngine(store: store, depth: depth)
        case .uringSQPoll: return try UringEngine(store: store, depth: depth, options: UringOptions(sqPoll: true))
        }
    }
}

@Suite struct FileEngineTests {
    /// A fresh 8 MiB store in its own directory (kept alive with the store).
    struct Fixture {
        let dir: TempDir
        let path: String
        let store: BackingStore

        init(size: UInt64 = 8 << 20, under parent: String = "/var/tmp", readOnly: Bool = false) throws {
            dir = try TempDir(under: parent)
            path = dir.file("disk.img")
            _ = try openStore(BackingOptions(path: path, createSize: size))
            store = try openStore(BackingOptions(path: path, readOnly: readOnly))
        }
    }

    @Test(arguments: FileEngine.allCases)
    func batchedWritesThenReadsRoundTrip(_ kind: FileEngine) throws {
        let f = try Fixture()
        #expect(f.store.directIO)
        let engine = try kind.make(f.store, depth: 16)
        #expect(engine.capacity == 16)
        #expect(engine.completionEventFD != nil)
        // 12 requests of 3 segments each (4 KiB, 8 KiB, 4 KiB), more than the 8 completions the
        // helper reaps per call, all in one submit.
        let count = 12
        let sources = (0..<count).map { i -> AlignedBuffer in
            let b = AlignedBuffer(count: 16384)
            b.fill(seed: UInt8(i))
            return b
        }
        let writes = sources.map { IovecList([($0, 0, 4096), ($0, 4096, 8192), ($0, 12288, 4096)]) }
        let writeRequests = (0..<count).map { writes[$0].request(tag: UInt32(100 + $0), .write, offset: UInt64($0) * 65536) }
        let written = try run(engine, writeRequests)
        #expect(written.values.allSatisfy { $0 == 0 })
        #expect(Set(written.keys) == Set((0..<count).map { UInt32(100 + $0) }))

        let sinks = (0..<count).map { _ in AlignedBuffer(count: 16384) }
        let reads = sinks.map { IovecList([($0, 0, 8192), ($0, 8192, 4096), ($0, 12288, 4096)]) }
        let readRequests = (0..<count).map { reads[$0].request(tag: UInt32($0), .read, offset: UInt64($0) * 65536) }
        #expect(try run(engine, readRequests).values.allSatisfy { $0 == 0 })
        for i in 0..<count {
            #expect(sinks[i].bytes == sources[i].bytes)
            // And the bytes really are in the file, seen by an independent reader.
            #expect(preadBytes(f.path, offset: UInt64(i) * 65536, length: 16384) == sources[i].bytes)
        }
    }

    @Test(arguments: FileEngine.allCases)
    func manySmallAlignedSegments(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 2)
        let data = AlignedBuffer(count: 64 * 512)
        data.fill(seed: 3)
        // 64 segments of one 512-byte sector each, in reverse memory order.
        let list = IovecList((0..<64).map { (data, (63 - $0) * 512, 512) })
        #expect(try runOne(engine, list.request(tag: 1, .write, offset: 1 << 20)) == 0)
        var expected: [UInt8] = []
        for i in 0..<64 { expected += data.bytes((63 - i) * 512 ..< (64 - i) * 512) }
        #expect(preadBytes(f.path, offset: 1 << 20, length: 64 * 512) == expected)
    }

    @Test(arguments: FileEngine.allCases)
    func misalignedBuffersGoThroughTheBounceBuffer(_ kind: FileEngine) throws {
        let f = try Fixture()
        let sync = try SyncFileIO(store: f.store)
        let engine = try kind.make(f.store, depth: 4)
        // Buffers 1 and 8 bytes off alignment, and a segment length that is not a sector multiple.
        let raw = AlignedBuffer(count: 3 << 20)
        raw.fill(seed: 77)
        let odd = IovecList([(raw, 1, 1000), (raw, 4096 + 8, 3096)])
        let request = odd.request(tag: 5, .write, offset: 8192)
        let bounced = sync.needsBounce(request.request)
        #expect(bounced)
        let aligned = IovecList([(raw, 0, 4096)])
        let direct = sync.needsBounce(aligned.request(tag: 6, .write, offset: 8192).request)
        #expect(!direct)
        #expect(try runOne(engine, request) == 0)
        let expected = raw.bytes(1 ..< 1001) + raw.bytes(4104 ..< 7200)
        #expect(preadBytes(f.path, offset: 8192, length: 4096) == expected)

        let back = AlignedBuffer(count: 8192)
        let sink = IovecList([(back, 3, 4096)])
        #expect(try runOne(engine, sink.request(tag: 7, .read, offset: 8192)) == 0)
        #expect(back.bytes(3 ..< 4099) == expected)

        // Larger than the 1 MiB bounce buffer: several chunks.
        let big = IovecList([(raw, 16, (3 << 20) - 512)])
        #expect(try runOne(engine, big.request(tag: 8, .write, offset: 1 << 20)) == 0)
        let bigBack = AlignedBuffer(count: 3 << 20)
        let bigSink = IovecList([(bigBack, 8, (3 << 20) - 512)])
        #expect(try runOne(engine, bigSink.request(tag: 9, .read, offset: 1 << 20)) == 0)
        #expect(bigBack.bytes(8 ..< (3 << 20) - 504) == raw.bytes(16 ..< (3 << 20) - 496))
    }

    @Test(arguments: FileEngine.allCases)
    func unalignedOffsetsReadModifyWrite(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 4)
        let background = [UInt8](repeating: 0xAB, count: 16384)
        pwriteBytes(f.path, background, offset: 0)
        let data = AlignedBuffer(count: 8192)
        data.fill(seed: 1)
        // Inside one block, then across several blocks with partial first and last blocks.
        let small = IovecList([(data, 0, 100)])
        #expect(try runOne(engine, small.request(tag: 1, .write, offset: 1000)) == 0)
        let wide = IovecList([(data, 100, 5000)])
        #expect(try runOne(engine, wide.request(tag: 2, .write, offset: 6000)) == 0)
        var expected = background
        expected.replaceSubrange(1000 ..< 1100, with: data.bytes(0 ..< 100))
        expected.replaceSubrange(6000 ..< 11000, with: data.bytes(100 ..< 5100))
        #expect(preadBytes(f.path, offset: 0, length: 16384) == expected)

        let back = AlignedBuffer(count: 5000)
        let sink = IovecList([(back, 0, 5000)])
        #expect(try runOne(engine, sink.request(tag: 3, .read, offset: 6000)) == 0)
        #expect(back.bytes == data.bytes(100 ..< 5100))
    }

    @Test(arguments: FileEngine.allCases)
    func flushSucceedsAndSignalsTheEventFD(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 4)
        engine.enqueue(BlockRequest(tag: 9, operation: .flush, offset: 0, length: 0))
        engine.submit()
        // Whether the flush was done at enqueue (aio) or by the kernel afterwards (uring), its
        // completion wakes a worker sleeping on the eventfd. 10 s: a bound for a broken engine.
        #expect(try Poll.readable([engine.completionEventFD!], timeoutMs: 10_000) == [0])
        drainEventFD(engine.completionEventFD!)
        var out = [BlockCompletion](repeating: BlockCompletion(tag: 0, result: 1), count: 4)
        let n = out.withUnsafeMutableBufferPointer { engine.reap(into: $0) }
        #expect(n == 1)
        #expect(out[0] == BlockCompletion(tag: 9, result: 0))
        #expect(engine.inFlight == 0)
        #expect(try Poll.readable([engine.completionEventFD!], timeoutMs: 0).isEmpty)
    }

    @Test(arguments: FileEngine.allCases, ["/var/tmp", "/dev/shm"])
    func zeroingOperationsZeroTheRange(_ kind: FileEngine, _ parent: String) throws {
        // /dev/shm is tmpfs, which has no FALLOC_FL_ZERO_RANGE: write zeroes falls back to writing
        // (for uring, after the asynchronous fallocate came back with EOPNOTSUPP).
        for operation in [BlockOperation.discard, .writeZeroes, .writeZeroesUnmap] {
            let f = try Fixture(under: parent)
            let pattern = [UInt8](repeating: 0x5A, count: 256 << 10)
            pwriteBytes(f.path, pattern, offset: 0)
            let engine = try kind.make(f.store, depth: 4)
            let request = BlockRequest(tag: 4, operation: operation, offset: 64 << 10, length: 128 << 10)
            #expect(try runOne(engine, request) == 0, "\(operation)")
            let back = preadBytes(f.path, offset: 0, length: 256 << 10)
            #expect(back[0 ..< 64 << 10].allSatisfy { $0 == 0x5A }, "\(operation)")
            #expect(back[64 << 10 ..< 192 << 10].allSatisfy { $0 == 0 }, "\(operation)")
            #expect(back[192 << 10 ..< 256 << 10].allSatisfy { $0 == 0x5A }, "\(operation)")
            #expect(statOf(f.path).st_size == 8 << 20, "\(operation)")
        }
    }

    @Test(arguments: FileEngine.allCases)
    func durableWritesRoundTrip(_ kind: FileEngine) throws {
        // Write-through: a write durable on completion (RWF_DSYNC, or pwrite + fdatasync on the
        // bounce path) gives the same result and data as a plain one. That the data is on stable
        // storage is the kernel's promise; a process cannot observe it short of a power cut.
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 4)
        let data = AlignedBuffer(count: 16384)
        data.fill(seed: 9)
        let aligned = IovecList([(data, 0, 8192)])
        let misaligned = IovecList([(data, 1, 4096)])
        let results = try run(engine, [
            aligned.request(tag: 1, .writeDurable, offset: 0),
            misaligned.request(tag: 2, .writeDurable, offset: 65536),
        ])
        #expect(results == [1: 0, 2: 0])
        #expect(preadBytes(f.path, offset: 0, length: 8192) == data.bytes(0 ..< 8192))
        #expect(preadBytes(f.path, offset: 65536, length: 4096) == data.bytes(1 ..< 4097))
    }

    @Test func zeroWritingFallbackHandlesUnalignedRanges() throws {
        let f = try Fixture()
        let sync = try SyncFileIO(store: f.store)
        pwriteBytes(f.path, [UInt8](repeating: 0x11, count: 8192), offset: 0)
        var zeros: IovecCursor? = nil
        let result = sync.write(offset: 300, length: 5000, source: &zeros)
        #expect(result == 0)
        let back = preadBytes(f.path, offset: 0, length: 8192)
        #expect(back[0 ..< 300].allSatisfy { $0 == 0x11 })
        #expect(back[300 ..< 5300].allSatisfy { $0 == 0 })
        #expect(back[5300...].allSatisfy { $0 == 0x11 })
    }

    @Test(arguments: FileEngine.allCases)
    func readOnlyStoreRejectsWrites(_ kind: FileEngine) throws {
        let f = try Fixture(readOnly: true)
        let engine = try kind.make(f.store, depth: 8)
        let data = AlignedBuffer(count: 4096)
        let list = IovecList([(data, 0, 4096)])
        let misaligned = IovecList([(data, 1, 512)])
        let results = try run(engine, [
            list.request(tag: 1, .write, offset: 0),
            misaligned.request(tag: 2, .write, offset: 0),
            BlockRequest(tag: 3, operation: .discard, offset: 0, length: 4096),
            BlockRequest(tag: 4, operation: .writeZeroes, offset: 0, length: 4096),
            BlockRequest(tag: 5, operation: .writeZeroesUnmap, offset: 0, length: 4096),
            list.request(tag: 6, .read, offset: 0),
            BlockRequest(tag: 7, operation: .flush, offset: 0, length: 0),
        ])
        // The fd is O_RDONLY: the kernel answers EBADF to every kind of write.
        for tag in UInt32(1)...5 { #expect(results[tag] == -EBADF, "tag \(tag)") }
        #expect(results[6] == 0)
        #expect(results[7] == 0)
    }

    @Test(arguments: FileEngine.allCases)
    func shortTransferIsAnIOError(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 2)
        // The file shrinks under the open store: a read the capacity allows finds end of file.
        #expect(truncate(f.path, 4096) == 0)
        let data = AlignedBuffer(count: 8192)
        let list = IovecList([(data, 0, 8192)])
        #expect(try runOne(engine, list.request(tag: 1, .read, offset: 0)) == -EIO)
        let odd = IovecList([(data, 1, 8192 - 1)])
        #expect(try runOne(engine, odd.request(tag: 2, .read, offset: 0)) == -EIO)
    }

    @Test(arguments: FileEngine.allCases)
    func invalidIovecsFailWithoutCrashing(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 2)
        let results = try run(engine, [
            BlockRequest(tag: 1, operation: .read, offset: 0, length: 4096, iovecs: nil, iovecCount: 1),
            BlockRequest(tag: 2, operation: .write, offset: 0, length: 0, iovecs: nil, iovecCount: 0),
        ])
        #expect(results[1] == -EINVAL)
        #expect(results[2] == 0)
    }

    @Test(arguments: FileEngine.allCases)
    func slotsAreReusedAcrossManyPasses(_ kind: FileEngine) throws {
        let f = try Fixture()
        let engine = try kind.make(f.store, depth: 2)
        let data = AlignedBuffer(count: 4096)
        let list = IovecList([(data, 0, 4096)])
        for pass in 0..<50 {
            data.fill(seed: UInt8(pass))
            let results = try run(engine, [
                list.request(tag: UInt32(pass), .write, offset: UInt64(pass % 8) * 4096),
                BlockRequest(tag: 1000, operation: .flush, offset: 0, length: 0),
            ])
            #expect(results.values.allSatisfy { $0 == 0 })
        }
        #expect(engine.inFlight == 0)
    }
}
