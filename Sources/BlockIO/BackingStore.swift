#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

/// The opened store, shared by all queues. Every property is fixed at open, so the store is safe to
/// share between threads (hence the unchecked Sendable: `FileDescriptor` and `MemoryMapping` are
/// classes, but neither is changed after open).
public final class BackingStore: @unchecked Sendable {
    public let path: String?
    /// Rounded down to a multiple of `logicalBlockSize`.
    public let capacityBytes: UInt64
    /// What the guest sees as blk_size.
    public let logicalBlockSize: UInt32
    public let physicalBlockSize: UInt32
    public let isBlockDevice: Bool
    public let readOnly: Bool
    /// O_DIRECT accepted; false means buffered I/O (a fallback is listed in `warnings`).
    public let directIO: Bool
    public let supportsDiscard: Bool
    public let supportsWriteZeroes: Bool
    /// NUMA node of the device behind the store, nil if unknown.
    public let numaNode: Int?
    /// Human-readable warnings collected during open, for the caller to log.
    public let warnings: [String]
    public let engineKind: EngineKind

    /// The open file or block device; nil for null and memory stores without a file.
    let file: FileDescriptor?
    /// The RAM disk of a memory store.
    let memory: MemoryMapping?
    /// What O_DIRECT needs of buffer addresses, and of file offsets and segment lengths (1 and 1 for
    /// buffered I/O). Requests that do not meet them go through an engine's bounce buffer.
    let directMemoryAlignment: UInt32
    let directOffsetAlignment: UInt32

    /// The raw descriptor of the backing file, for callers that need one (e.g. to report it).
    public var fileDescriptor: Int32? { file?.rawValue }

    init(_ s: Setup) {
        path = s.path
        capacityBytes = s.capacityBytes
        logicalBlockSize = s.logicalBlockSize
        physicalBlockSize = s.physicalBlockSize
        isBlockDevice = s.isBlockDevice
        readOnly = s.readOnly
        directIO = s.directIO
        supportsDiscard = s.supportsDiscard
        supportsWriteZeroes = s.supportsWriteZeroes
        numaNode = s.numaNode
        warnings = s.warnings
        engineKind = s.engineKind
        file = s.file
        memory = s.memory
        directMemoryAlignment = s.directMemoryAlignment
        directOffsetAlignment = s.directOffsetAlignment
    }

    /// Everything `open` works out, gathered before the immutable store is built.
    struct Setup {
        var path: String?
        var capacityBytes: UInt64 = 0
        var logicalBlockSize: UInt32 = 512
        var physicalBlockSize: UInt32 = 512
        var isBlockDevice = false
        var readOnly: Bool
        var directIO = false
        var supportsDiscard = false
        var supportsWriteZeroes = false
        var numaNode: Int?
        var warnings: [String] = []
        var engineKind: EngineKind
        var file: FileDescriptor?
        var memory: MemoryMapping?
        var directMemoryAlignment: UInt32 = 1
        var directOffsetAlignment: UInt32 = 1
    }

    /// Opens (or creates) the store `options` describe and probes its geometry.
    public static func open(_ options: BackingOptions) throws(BlockIOError) -> BackingStore {
        if let size = options.blockSize {
            guard BackingOptions.blockSizeRange.contains(size), size & (size - 1) == 0 else {
                throw .invalid("--block-size", path: options.path,
                               "\(size) is not a power of two from \(BackingOptions.blockSizeRange.lowerBound) to \(BackingOptions.blockSizeRange.upperBound)")
            }
        }
        var setup = Setup(path: options.path, readOnly: options.readOnly, engineKind: options.engine)
        switch (options.engine, options.path) {
        case (.memory, .some(let path)):
            throw .invalid("open", path: path,
                           "the memory engine keeps data in RAM only: give a size without a path")
        case (.memory, nil), (.null, nil):
            try setUpWithoutFile(options, &setup)
        case (.aio, nil), (.uring, nil):
            throw .invalid("open", path: nil, "the \(options.engine.rawValue) engine needs a file or block device path")
        case (.aio, .some(let path)), (.uring, .some(let path)), (.null, .some(let path)):
            try openFile(path, options, &setup)
        }
        return BackingStore(setup)
    }

    /// Null and memory stores: the size comes from the options alone.
    private static func setUpWithoutFile(_ options: BackingOptions, _ s: inout Setup) throws(BlockIOError) {
        guard let size = options.createSize else {
            throw .invalid("open", path: nil, "the \(options.engine.rawValue) engine needs a size")
        }
        s.logicalBlockSize = options.blockSize ?? 512
        s.physicalBlockSize = s.logicalBlockSize
        try setCapacity(size, &s)
        s.supportsDiscard = !options.readOnly
        s.supportsWriteZeroes = !options.readOnly
        if options.engine == .memory {
            guard s.capacityBytes <= UInt64(Int.max) else {
                throw .invalid("mmap", path: nil, "\(s.capacityBytes) bytes do not fit in the address space")
            }
            // Anonymous memory is zero-filled by the kernel on first touch, so an untouched RAM disk
            // costs nothing; all queues share this one mapping.
            s.memory = try withSystemErrors(path: nil) { try MemoryMapping(anonymous: Int(s.capacityBytes)) }
        }
    }

    /// Rounds `size` down to whole logical blocks, warning about the bytes dropped.
    static func setCapacity(_ size: UInt64, _ s: inout Setup) throws(BlockIOError) {
        let block = UInt64(s.logicalBlockSize)
        let capacity = size & ~(block - 1)
        guard capacity > 0 else {
            throw .invalid("open", path: s.path, "\(size) bytes is less than one \(block)-byte block")
        }
        if capacity != size {
            s.warnings.append("size \(size) is not a multiple of the \(block)-byte block size: "
                + "the last \(size - capacity) bytes are not used")
        }
        s.capacityBytes = capacity
    }

    /// Makes an engine of this store's kind with room for `depth` requests in flight. Called once
    /// per queue at start; callers that want specialised hot paths switch over `engineKind` and call
    /// the concrete initialisers instead.
    public func makeEngine(depth: Int) throws(BlockIOError) -> any BlockEngine {
        switch engineKind {
        case .aio: return try AioEngine(store: self, depth: depth)
        case .uring: return try UringEngine(store: self, depth: depth)
        case .null: return try NullEngine(depth: depth)
        case .memory: return try MemoryEngine(store: self, depth: depth)
        }
    }

    /// fdatasync on the backing file (used at shutdown): 0, or a negative errno.
    public func flushSync() -> Int32 {
        guard let file else { return 0 }
        return SyncFileIO.flush(fd: file.rawValue)
    }
}

/// Checks an engine depth: a virtqueue holds at most 32768 descriptors (virtio 1.2 §2.7), and so
/// never has more requests in flight than that.
func validateDepth(_ depth: Int, engine: String) throws(BlockIOError) {
    guard (1...32768).contains(depth) else {
        throw .invalid(engine, path: nil, "depth \(depth) is outside 1...32768")
    }
}
