import Glibc
import Testing
import VhostSystem
@testable import BlockIO

@Suite struct BackingStoreTests {
    // 8 MiB: large enough that a sparse and a preallocated file differ clearly in st_blocks.
    static let size: UInt64 = 8 << 20

    @Test func createsSparseFile() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        let store = try openStore(BackingOptions(path: path, createSize: Self.size))
        let st = statOf(path)
        #expect(st.st_size == off_t(Self.size))
        #expect(st.st_mode & 0o777 == 0o600)
        // Sparse: (almost) nothing allocated. st_blocks counts 512-byte units.
        #expect(UInt64(st.st_blocks) * 512 < Self.size / 8)
        #expect(store.capacityBytes == Self.size)
        #expect(store.logicalBlockSize == 512)
        #expect(store.physicalBlockSize >= 512)
        #expect(!store.isBlockDevice)
        #expect(!store.readOnly)
        #expect(store.directIO)
        #expect(store.supportsDiscard)
        #expect(store.supportsWriteZeroes)
        #expect(store.warnings.isEmpty)
        #expect(store.engineKind == .aio)
        #expect(store.path == path)
    }

    @Test func createsPreallocatedFile() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        _ = try openStore(BackingOptions(path: path, createSize: Self.size, preallocate: true))
        let st = statOf(path)
        #expect(st.st_size == off_t(Self.size))
        #expect(UInt64(st.st_blocks) * 512 >= Self.size)
    }

    @Test func probesExistingFileAndRoundsCapacityDown() throws {
        let dir = try TempDir()
        let path = dir.file("odd.img")
        // 1 MiB plus 100 bytes: the tail is not a whole block.
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        #expect(ftruncate(fd, off_t((1 << 20) + 100)) == 0)
        close(fd)
        let store = try openStore(BackingOptions(path: path))
        #expect(store.capacityBytes == 1 << 20)
        #expect(store.warnings.count == 1)
        #expect(store.warnings.first?.contains("100 bytes") == true)

        let big = try openStore(BackingOptions(path: path, blockSize: 4096))
        #expect(big.logicalBlockSize == 4096)
        #expect(big.physicalBlockSize >= 4096)
        #expect(big.capacityBytes == 1 << 20)
    }

    @Test func existingFileWithDifferentSizeIsKept() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        _ = try openStore(BackingOptions(path: path, createSize: 1 << 20))
        pwriteBytes(path, [1, 2, 3, 4], offset: 4096)
        let store = try openStore(BackingOptions(path: path, createSize: 2 << 20))
        #expect(store.capacityBytes == 1 << 20)
        #expect(statOf(path).st_size == 1 << 20)
        #expect(preadBytes(path, offset: 4096, length: 4) == [1, 2, 3, 4])
        #expect(store.warnings.contains { $0.contains("never resized") })
    }

    @Test func readOnlyOpen() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        _ = try openStore(BackingOptions(path: path, createSize: 1 << 20))
        let store = try openStore(BackingOptions(path: path, readOnly: true))
        #expect(store.readOnly)
        #expect(!store.supportsDiscard)
        #expect(!store.supportsWriteZeroes)
        // A read-only store is never created.
        #expect(openError(BackingOptions(path: dir.file("new.img"), readOnly: true, createSize: 1 << 20))?.errno == ENOENT)
    }

    @Test func missingFileWithoutSizeFails() throws {
        let dir = try TempDir()
        let error = openError(BackingOptions(path: dir.file("absent.img")))
        #expect(error?.errno == ENOENT)
        #expect(error?.path == dir.file("absent.img"))
        #expect(error?.description.contains("absent.img") == true)
    }

    @Test(arguments: [UInt32(256), 1000, 8192, 0])
    func badBlockSizeFails(_ size: UInt32) throws {
        let dir = try TempDir()
        let error = openError(BackingOptions(path: dir.file("d.img"), createSize: 1 << 20, blockSize: size))
        #expect(error?.errno == EINVAL)
        #expect(error?.operation == "--block-size")
    }

    @Test func directoryFails() throws {
        let dir = try TempDir()
        #expect(openError(BackingOptions(path: dir.path))?.errno == EISDIR)
        #expect(openError(BackingOptions(path: dir.path, readOnly: true))?.errno == EISDIR)
    }

    @Test func otherFileTypesFail() throws {
        let dir = try TempDir()
        let fifo = dir.file("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(openError(BackingOptions(path: fifo))?.errno == EINVAL)
    }

    @Test func tooSmallFails() throws {
        let dir = try TempDir()
        let path = dir.file("tiny.img")
        close(open(path, O_RDWR | O_CREAT, 0o600))
        #expect(openError(BackingOptions(path: path))?.errno == EINVAL)
    }

    @Test func nullAndMemoryStores() throws {
        let null = try openStore(BackingOptions(createSize: 1 << 30, engine: .null))
        #expect(null.capacityBytes == 1 << 30)
        #expect(null.path == nil)
        #expect(null.flushSync() == 0)
        let memory = try openStore(BackingOptions(createSize: (1 << 20) + 5, blockSize: 4096, engine: .memory))
        #expect(memory.capacityBytes == 1 << 20)
        #expect(memory.logicalBlockSize == 4096)
        #expect(memory.warnings.count == 1)
        #expect(openError(BackingOptions(engine: .null))?.errno == EINVAL)
        #expect(openError(BackingOptions(engine: .memory))?.errno == EINVAL)
        #expect(openError(BackingOptions(path: "/var/tmp/x", createSize: 1 << 20, engine: .memory))?.errno == EINVAL)
        #expect(openError(BackingOptions(engine: .aio))?.errno == EINVAL)
        #expect(openError(BackingOptions(engine: .uring))?.errno == EINVAL)
    }

    @Test func nullEngineOverAFileTakesItsGeometry() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        _ = try openStore(BackingOptions(path: path, createSize: 3 << 20))
        let store = try openStore(BackingOptions(path: path, engine: .null))
        #expect(store.capacityBytes == 3 << 20)
        #expect(try store.makeEngine(depth: 4) is NullEngine)
    }

    @Test func makeEngineMatchesKind() throws {
        let dir = try TempDir()
        let aio = try openStore(BackingOptions(path: dir.file("a.img"), createSize: 1 << 20))
        #expect(try aio.makeEngine(depth: 8) is AioEngine)
        let uring = try openStore(BackingOptions(path: dir.file("a.img"), engine: .uring))
        #expect(try uring.makeEngine(depth: 8) is UringEngine)
        #expect(throws: BlockIOError.self) { try uring.makeEngine(depth: 0) }
        let memory = try openStore(BackingOptions(createSize: 1 << 20, engine: .memory))
        #expect(try memory.makeEngine(depth: 8) is MemoryEngine)
        #expect(throws: BlockIOError.self) { try aio.makeEngine(depth: 0) }
        #expect(throws: BlockIOError.self) { try MemoryEngine(store: aio, depth: 8) }
        #expect(throws: BlockIOError.self) { try AioEngine(store: memory, depth: 8) }
        #expect(throws: BlockIOError.self) { try UringEngine(store: memory, depth: 8) }
    }

    @Test func flushSyncOnFile() throws {
        let dir = try TempDir()
        let store = try openStore(BackingOptions(path: dir.file("a.img"), createSize: 1 << 20))
        #expect(store.flushSync() == 0)
    }

    @Test func numaProbeIsBestEffort() throws {
        let dir = try TempDir()
        let store = try openStore(BackingOptions(path: dir.file("a.img"), createSize: 1 << 20))
        // Either unknown or a real node; this VM reports -1 ("no node"), which must come back as nil.
        if let node = store.numaNode { #expect(node >= 0) }
        #expect(DeviceProbe.numaNode(major: 0, minor: 0) == nil)
        #expect(DeviceProbe.discardSupported(major: 0, minor: 0) == false)
    }

    @Test func bufferedFallbackWhenODirectIsRefused() throws {
        let dir = try TempDir()
        let path = dir.file("disk.img")
        _ = try openStore(BackingOptions(path: path, createSize: 1 << 20))
        // Plays a filesystem that refuses O_DIRECT (tmpfs before Linux 6.6, ramfs, many FUSE ones).
        var attempts: [Int32] = []
        let opened = try BackingStore.openWithDirectFallback(path, flags: O_RDWR, preferDirect: true) { p, flags in
            attempts.append(flags)
            if flags & BackingStore.directFlag != 0 { throw SystemError("open", errno: EINVAL, context: p) }
            return try FileDescriptor.open(p, flags: flags)
        }
        #expect(attempts.count == 2)
        #expect(!opened.directIO)
        #expect(opened.warning?.contains("O_DIRECT refused by ext4") == true)
        // Other errors are not retried.
        #expect(throws: BlockIOError.self) {
            try BackingStore.openWithDirectFallback(path, flags: O_RDWR, preferDirect: true) { p, _ in
                throw SystemError("open", errno: EACCES, context: p)
            }
        }
    }

    @Test func bufferedStoreOnDevShm() throws {
        let dir = try TempDir(under: "/dev/shm")
        let path = dir.file("disk.img")
        // tmpfs takes O_DIRECT since Linux 6.6; older kernels refuse it with EINVAL.
        let probe = open(dir.path + "/probe", O_RDWR | O_CREAT | BackingStore.directFlag, 0o600)
        let refusesDirect = probe < 0 && errno == EINVAL
        if probe >= 0 { close(probe) }
        let store = try openStore(BackingOptions(path: path, createSize: 1 << 20))
        #expect(store.directIO == !refusesDirect)
        #expect(store.warnings.contains { $0.contains("O_DIRECT refused by tmpfs") } == refusesDirect)
        try roundTrip(store)

        let buffered = try openStore(BackingOptions(path: path, preferDirectIO: false))
        #expect(!buffered.directIO)
        #expect(buffered.warnings.isEmpty)
        try roundTrip(buffered)
    }

    private func roundTrip(_ store: BackingStore) throws {
        let engine = try AioEngine(store: store, depth: 4)
        let data = AlignedBuffer(count: 8192)
        data.fill(seed: 9)
        let out = IovecList([(data, 0, 8192)])
        #expect(try runOne(engine, out.request(tag: 1, .write, offset: 4096)) == 0)
        let back = AlignedBuffer(count: 8192)
        let inp = IovecList([(back, 0, 8192)])
        #expect(try runOne(engine, inp.request(tag: 2, .read, offset: 4096)) == 0)
        #expect(back.bytes == data.bytes)
    }
}
