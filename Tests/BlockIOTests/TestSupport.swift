import Glibc
import Testing
import VhostSystem
@testable import BlockIO

/// A private directory for one test, removed (with the files in it) when the test drops it. Under
/// /var/tmp by default: on this machine /tmp and /var/tmp are ext4, which takes O_DIRECT, and
/// /var/tmp is meant for files that may be large.
final class TempDir {
    let path: String

    init(under parent: String = "/var/tmp") throws {
        var template = Array("\(parent)/blockio-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw SystemError.current("mkdtemp", context: parent) }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    deinit {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { unlink("\(path)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

/// Page-aligned memory standing in for guest buffers.
final class AlignedBuffer {
    let base: UnsafeMutableRawPointer
    let count: Int

    init(count: Int, alignment: Int = 4096) {
        var raw: UnsafeMutableRawPointer?
        precondition(posix_memalign(&raw, alignment, max(count, 1)) == 0)
        base = raw!
        self.count = count
        base.initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }

    deinit { free(base) }

    func fill(seed: UInt8) {
        for i in 0..<count { base.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed)), toByteOffset: i, as: UInt8.self) }
    }

    func clear(to value: UInt8 = 0) { base.initializeMemory(as: UInt8.self, repeating: value, count: count) }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: count)) }

    func bytes(_ range: Range<Int>) -> [UInt8] { Array(UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)) }
}

/// An iovec array over test buffers. It holds the buffers, and each request made from it holds the
/// list, so the memory a request points into lives as long as the request value: in an optimised
/// build an object is freed right after its last use, which would otherwise be before the engine
/// touches the pointers.
final class IovecList {
    let pointer: UnsafeMutablePointer<iovec>
    let count: Int
    let buffers: [AlignedBuffer]

    /// Segments as (buffer, byte offset into it, length).
    init(_ segments: [(AlignedBuffer, Int, Int)]) {
        count = segments.count
        buffers = segments.map { $0.0 }
        pointer = .allocate(capacity: max(count, 1))
        for (i, s) in segments.enumerated() {
            precondition(s.1 + s.2 <= s.0.count)
            (pointer + i).initialize(to: iovec(iov_base: s.0.base + s.1, iov_len: s.2))
        }
    }

    deinit { pointer.deallocate() }

    func request(tag: UInt32, _ operation: BlockOperation, offset: UInt64) -> PreparedRequest {
        let length = (0..<count).reduce(0) { $0 + UInt64(pointer[$1].iov_len) }
        return PreparedRequest(request: BlockRequest(tag: tag, operation: operation, offset: offset, length: length,
                                                     iovecs: pointer, iovecCount: Int32(count)),
                               owner: self)
    }
}

/// Something `run` can enqueue: a plain request, or one with the buffers it points into.
protocol RequestSource {
    var request: BlockRequest { get }
}

extension BlockRequest: RequestSource {
    var request: BlockRequest { self }
}

struct PreparedRequest: RequestSource {
    let request: BlockRequest
    let owner: IovecList
}

struct TimedOut: Error {}

/// Enqueues `requests`, submits them with one call and collects every completion, waiting on the
/// engine's completion eventfd (never a fixed sleep) when nothing is ready. Returns tag → result.
@discardableResult
func run<E: BlockEngine>(_ engine: E, _ requests: [any RequestSource]) throws -> [UInt32: Int32] {
    for r in requests { engine.enqueue(r.request) }
    #expect(engine.inFlight == requests.count)
    engine.submit()
    var results: [UInt32: Int32] = [:]
    var buffer = [BlockCompletion](repeating: BlockCompletion(tag: 0, result: 0), count: 8)
    var seen = 0
    while seen < requests.count {
        let n = buffer.withUnsafeMutableBufferPointer { engine.reap(into: $0) }
        for c in buffer[0..<n] { results[c.tag] = c.result }
        seen += n
        if n == 0 && seen < requests.count {
            guard let fd = engine.completionEventFD else {
                Issue.record("engine without an eventfd left requests unfinished after submit()")
                throw TimedOut()
            }
            // 10 s: a bound for a broken engine, not a delay; the wait ends as soon as the fd is ready.
            let ready = try Poll.readable([fd], timeoutMs: 10_000)
            guard !ready.isEmpty else { throw TimedOut() }
            drainEventFD(fd)
        }
    }
    #expect(engine.inFlight == 0)
    #expect(results.count == requests.count)
    return results
}

/// Runs one request and returns its result.
func runOne<E: BlockEngine>(_ engine: E, _ source: any RequestSource) throws -> Int32 {
    try run(engine, [source])[source.request.tag] ?? Int32.min
}

/// Reads `length` bytes at `offset` with plain pread (buffered, independent of the engine).
func preadBytes(_ path: String, offset: UInt64, length: Int) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0xEE, count: length)
    let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
    return n == length ? bytes : []
}

func pwriteBytes(_ path: String, _ bytes: [UInt8], offset: UInt64) {
    let fd = open(path, O_WRONLY)
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
}

func statOf(_ path: String) -> stat {
    var st = stat()
    _ = stat(path, &st)
    return st
}

/// Opens a store that must open; records the error otherwise.
func openStore(_ options: BackingOptions) throws -> BackingStore {
    try BackingStore.open(options)
}

/// The BlockIOError `body` throws, or nil.
func openError(_ options: BackingOptions) -> BlockIOError? {
    do {
        _ = try BackingStore.open(options)
        return nil
    } catch {
        return error
    }
}
