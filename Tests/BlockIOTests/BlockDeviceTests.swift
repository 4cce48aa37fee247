import Glibc
import Testing
@testable import BlockIO

/// A loop device over a file in a temp dir, detached when dropped. Needs root and losetup; the
/// suite is skipped where either is missing.
final class LoopDevice {
    let dir: TempDir
    let path: String

    static let losetup: String? = ["/usr/sbin/losetup", "/sbin/losetup", "/usr/bin/losetup"]
        .first { access($0, X_OK) == 0 }

    static var available: Bool {
        guard geteuid() == 0, access("/dev/loop-control", F_OK) == 0, let losetup else { return false }
        // `losetup --find` only names a free device, so this attaches nothing.
        return run([losetup, "--find"]).status == 0
    }

    init(size: Int, sectorSize: Int) throws {
        dir = try TempDir()
        let file = dir.file("backing.img")
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0 else { throw TimedOut() }
        let result = LoopDevice.run([LoopDevice.losetup!, "--find", "--show", "--sector-size", "\(sectorSize)", file])
        guard result.status == 0, result.output.hasPrefix("/dev/loop") else {
            Issue.record("losetup failed: \(result.output)")
            throw TimedOut()
        }
        path = String(result.output.prefix { $0 != "\n" })
    }

    deinit { _ = LoopDevice.run([LoopDevice.losetup!, "--detach", path]) }

    /// Runs a command, returning its exit status and standard output.
    static func run(_ arguments: [String]) -> (status: Int32, output: String) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return (-1, "") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, &argv, nil)
        close(fds[1])
        defer { close(fds[0]) }
        guard spawned == 0 else { return (-1, "") }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n > 0 { output += chunk[0..<n] } else if n == 0 || errno != EINTR { break }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WEXITSTATUS, spelled out: the exit code sits in bits 8-15 of a normal exit's status.
        let exited = status & 0x7F == 0
        return (exited ? (status >> 8) & 0xFF : -1, String(decoding: output, as: UTF8.self))
    }
}

@Suite(.enabled(if: LoopDevice.available, "needs root, losetup and a free loop device"))
struct BlockDeviceTests {
    @Test func probesA4KnBlockDevice() throws {
        let loop = try LoopDevice(size: 16 << 20, sectorSize: 4096)
        let store = try openStore(BackingOptions(path: loop.path))
        #expect(store.isBlockDevice)
        #expect(store.logicalBlockSize == 4096)
        #expect(store.physicalBlockSize >= 4096)
        #expect(store.capacityBytes == 16 << 20)
        #expect(store.directIO)
        #expect(store.supportsWriteZeroes)
        // Loop devices on a filesystem with hole punching advertise discard.
        #expect(store.supportsDiscard)
        // Loop devices have no hardware behind them, so no NUMA node.
        #expect(store.numaNode == nil)
        let small = openError(BackingOptions(path: loop.path, blockSize: 512))
        #expect(small?.errno == EINVAL)
        #expect(small?.reason.contains("smaller than the device's logical block size 4096") == true)
        // An existing device is never resized.
        let sized = try openStore(BackingOptions(path: loop.path, createSize: 1 << 20))
        #expect(sized.capacityBytes == 16 << 20)
        #expect(sized.warnings.count == 1)
    }

    @Test(arguments: FileEngine.allCases)
    func ioOnA4KnBlockDevice(_ kind: FileEngine) throws {
        let loop = try LoopDevice(size: 16 << 20, sectorSize: 4096)
        let store = try openStore(BackingOptions(path: loop.path))
        let engine = try kind.make(store, depth: 8)
        let data = AlignedBuffer(count: 64 << 10)
        data.fill(seed: 5)
        let aligned = IovecList([(data, 0, 32 << 10), (data, (32 << 10), 32 << 10)])
        #expect(try runOne(engine, aligned.request(tag: 1, .write, offset: 1 << 20)) == 0)
        let back = AlignedBuffer(count: 64 << 10)
        let sink = IovecList([(back, 0, 64 << 10)])
        #expect(try runOne(engine, sink.request(tag: 2, .read, offset: 1 << 20)) == 0)
        #expect(back.bytes == data.bytes)

        // 512-byte sectors on a 4 KiB-sector device: read-modify-write through the bounce buffer.
        let sector = IovecList([(data, 512, 512)])
        #expect(try runOne(engine, sector.request(tag: 3, .write, offset: (1 << 20) + 512)) == 0)
        #expect(try runOne(engine, sink.request(tag: 4, .read, offset: 1 << 20)) == 0)
        var expected = data.bytes
        expected.replaceSubrange(512 ..< 1024, with: data.bytes(512 ..< 1024))
        #expect(back.bytes == expected)

        for (tag, operation) in [(UInt32(5), BlockOperation.discard), (6, .writeZeroes), (7, .writeZeroesUnmap)] {
            #expect(try runOne(engine, aligned.request(tag: tag + 10, .write, offset: 4 << 20)) == 0)
            let zeroing = BlockRequest(tag: tag, operation: operation, offset: (4 << 20) + 8192, length: 16384)
            #expect(try runOne(engine, zeroing) == 0, "\(operation)")
            #expect(try runOne(engine, sink.request(tag: tag + 20, .read, offset: 4 << 20)) == 0)
            let bytes = back.bytes
            #expect(bytes[0 ..< 8192] == data.bytes(0 ..< 8192)[...], "\(operation)")
            #expect(bytes[8192 ..< 24576].allSatisfy { $0 == 0 }, "\(operation)")
            #expect(bytes[24576...] == data.bytes(24576 ..< 65536)[...], "\(operation)")
        }
        #expect(try runOne(engine, BlockRequest(tag: 8, operation: .flush, offset: 0, length: 0)) == 0)
    }
}
