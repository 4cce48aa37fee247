/// How to open a backing store (what the command line asked for).
public struct BackingOptions: Sendable {
    /// The file or block device; nil for a null or memory store without a file.
    public var path: String?
    public var readOnly: Bool
    /// `--size`: create the file (sparse) when it is missing; the size of a null or memory store
    /// without a file. An existing file is never resized.
    public var createSize: UInt64?
    /// `--preallocate`: allocate every block when creating the file instead of leaving it sparse.
    public var preallocate: Bool
    /// `--block-size`: the logical block size the guest sees; a power of two from 512 to 4096, at
    /// least the device's own logical block size.
    public var blockSize: UInt32?
    public var engine: EngineKind
    /// Open with O_DIRECT (bypassing the host page cache) when the filesystem allows it. false asks for
    /// buffered I/O outright (cache=writeback style).
    public var preferDirectIO: Bool

    public init(path: String? = nil, readOnly: Bool = false, createSize: UInt64? = nil,
                preallocate: Bool = false, blockSize: UInt32? = nil, engine: EngineKind = .aio,
                preferDirectIO: Bool = true) {
        self.path = path
        self.readOnly = readOnly
        self.createSize = createSize
        self.preallocate = preallocate
        self.blockSize = blockSize
        self.engine = engine
        self.preferDirectIO = preferDirectIO
    }

    /// Linux guests refuse logical blocks larger than their page size (4 KiB on x86 and most arm64
    /// kernels); 512 is the smallest sector virtio knows.
    public static let blockSizeRange: ClosedRange<UInt32> = 512...4096
}
