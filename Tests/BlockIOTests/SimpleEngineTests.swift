import Glibc
import Testing
@testable import BlockIO

@Suite struct SimpleEngineTests {
    @Test func memoryEngineRoundTrip() throws {
        let store = try openStore(BackingOptions(createSize: 4 << 20, engine: .memory))
        let writer = try MemoryEngine(store: store, depth: 8)
        // A second queue's engine sees the same memory.
        let reader = try MemoryEngine(store: store, depth: 8)
        #expect(writer.completionEventFD == nil)
        let data = AlignedBuffer(count: 10000)
        data.fill(seed: 42)
        let out = IovecList([(data, 1, 3000), (data, 3001, 6999)])
        #expect(try runOne(writer, out.request(tag: 1, .write, offset: 12345)) == 0)
        let back = AlignedBuffer(count: 9999)
        let inp = IovecList([(back, 0, 5000), (back, 5000, 4999)])
        #expect(try runOne(reader, inp.request(tag: 2, .read, offset: 12345)) == 0)
        #expect(back.bytes == data.bytes(1 ..< 10000))
        #expect(try runOne(reader, BlockRequest(tag: 3, operation: .flush, offset: 0, length: 0)) == 0)
    }

    @Test(arguments: [BlockOperation.discard, .writeZeroes, .writeZeroesUnmap])
    func memoryEngineZeroes(_ operation: BlockOperation) throws {
        let store = try openStore(BackingOptions(createSize: 1 << 20, engine: .memory))
        let engine = try MemoryEngine(store: store, depth: 4)
        let data = AlignedBuffer(count: 64 << 10)
        data.clear(to: 0x77)
        let list = IovecList([(data, 0, 64 << 10)])
        #expect(try runOne(engine, list.request(tag: 1, .write, offset: 0)) == 0)
        // Unaligned to pages at both ends: whole pages are released, the edges cleared.
        #expect(try runOne(engine, BlockRequest(tag: 2, operation: operation, offset: 1000, length: 20000)) == 0)
        data.clear(to: 0xEE)
        #expect(try runOne(engine, list.request(tag: 3, .read, offset: 0)) == 0)
        let back = data.bytes
        #expect(back[0 ..< 1000].allSatisfy { $0 == 0x77 })
        #expect(back[1000 ..< 21000].allSatisfy { $0 == 0 })
        #expect(back[21000...].allSatisfy { $0 == 0x77 })
    }

    @Test func memoryEngineChecksRangesAndReadOnly() throws {
        let store = try openStore(BackingOptions(createSize: 1 << 20, engine: .memory))
        let engine = try MemoryEngine(store: store, depth: 4)
        let data = AlignedBuffer(count: 4096)
        let list = IovecList([(data, 0, 4096)])
        let results = try run(engine, [
            list.request(tag: 1, .read, offset: (1 << 20) - 512),
            list.request(tag: 2, .write, offset: UInt64.max - 100),
            BlockRequest(tag: 3, operation: .read, offset: 0, length: 4096, iovecs: nil, iovecCount: 1),
        ])
        #expect(results == [1: -EINVAL, 2: -EINVAL, 3: -EINVAL])

        let readOnly = try openStore(BackingOptions(readOnly: true, createSize: 1 << 20, engine: .memory))
        let roEngine = try MemoryEngine(store: readOnly, depth: 4)
        let roResults = try run(roEngine, [
            list.request(tag: 1, .write, offset: 0),
            BlockRequest(tag: 2, operation: .discard, offset: 0, length: 4096),
            BlockRequest(tag: 3, operation: .writeZeroes, offset: 0, length: 4096),
            list.request(tag: 4, .read, offset: 0),
        ])
        #expect(roResults == [1: -EBADF, 2: -EBADF, 3: -EBADF, 4: 0])
        #expect(!readOnly.supportsDiscard)
    }

    @Test func nullEngineCompletesImmediatelyWithoutTouchingMemory() throws {
        let engine = try NullEngine(depth: 4)
        #expect(engine.capacity == 4)
        #expect(engine.completionEventFD == nil)
        let data = AlignedBuffer(count: 4096)
        data.clear(to: 0x3C)
        let list = IovecList([(data, 0, 4096)])
        for tag in UInt32(0)..<4 { engine.enqueue(list.request(tag: tag, tag % 2 == 0 ? .read : .write, offset: 0).request) }
        #expect(engine.inFlight == 4)
        engine.submit()
        var out = [BlockCompletion](repeating: BlockCompletion(tag: 99, result: 99), count: 3)
        var n = out.withUnsafeMutableBufferPointer { engine.reap(into: $0) }
        #expect(n == 3)
        #expect(out == (0..<3).map { BlockCompletion(tag: $0, result: 0) })
        n = out.withUnsafeMutableBufferPointer { engine.reap(into: $0) }
        #expect(n == 1)
        #expect(out[0] == BlockCompletion(tag: 3, result: 0))
        #expect(engine.inFlight == 0)
        #expect(data.bytes.allSatisfy { $0 == 0x3C })
    }

    @Test func completionRingWrapsAround() {
        var ring = CompletionRing(capacity: 3)
        defer { ring.deallocate() }
        var out = [BlockCompletion](repeating: BlockCompletion(tag: 0, result: 0), count: 2)
        var next: UInt32 = 0
        var expected: UInt32 = 0
        for _ in 0..<10 {
            while ring.count < 3 {
                ring.push(BlockCompletion(tag: next, result: -Int32(next)))
                next += 1
            }
            let n = out.withUnsafeMutableBufferPointer { ring.drain(into: $0, from: 0) }
            #expect(n == 2)
            for c in out[0..<n] {
                #expect(c == BlockCompletion(tag: expected, result: -Int32(expected)))
                expected += 1
            }
        }
        #expect(ring.count == 1)
    }
}
