/// virtio-blk feature bits (virtio 1.2 §5.2.3).
public enum BlkFeature {
    public static let sizeMax: UInt64 = 1 << 1
    public static let segMax: UInt64 = 1 << 2
    public static let geometry: UInt64 = 1 << 4
    public static let readOnly: UInt64 = 1 << 5
    public static let blkSize: UInt64 = 1 << 6
    public static let flush: UInt64 = 1 << 9
    public static let topology: UInt64 = 1 << 10
    public static let configWCE: UInt64 = 1 << 11
    public static let mq: UInt64 = 1 << 12
    public static let discard: UInt64 = 1 << 13
    public static let writeZeroes: UInt64 = 1 << 14
}

/// Request types (virtio 1.2 §5.2.6) and status codes.
public enum BlkRequestType {
    public static let `in`: UInt32 = 0
    public static let out: UInt32 = 1
    public static let flush: UInt32 = 4
    public static let getID: UInt32 = 8
    public static let discard: UInt32 = 11
    public static let writeZeroes: UInt32 = 13
}

public enum BlkStatus {
    public static let ok: UInt8 = 0
    public static let ioError: UInt8 = 1
    public static let unsupported: UInt8 = 2
}

/// The device's limits and geometry, and their encoding as `struct virtio_blk_config`.
public struct BlkConfig: Equatable, Sendable {
    /// virtio-blk counts in 512-byte sectors whatever the block size (virtio 1.2 §5.2.4).
    public static let sectorSize: UInt64 = 512
    /// log2(sectorSize), for shifts on the request path.
    public static let sectorShift: UInt64 = 9
    /// GET_ID answers exactly 20 bytes (VIRTIO_BLK_ID_BYTES).
    public static let idBytes = 20
    /// Data segments one request may carry. Linux sizes its scatterlists from seg_max; 126 = a
    /// 128-entry descriptor budget minus the header and status descriptors, as QEMU and SPDK do.
    public static let segMax: UInt32 = 126
    /// Largest single segment: 1 MiB keeps a request's footprint bounded while letting the guest merge
    /// contiguous pages freely (Linux's default max_sectors_kb is 1280).
    public static let sizeMax: UInt32 = 1 << 20
    /// One discard / write-zeroes range per request (max_*_seg = 1): each range is one storage call, and
    /// Linux then splits multi-range discards itself.
    public static let maxRangeSegments: UInt32 = 1
    /// 4 GiB - 512 in sectors... the u32 field's largest sector-aligned value that still fits in a
    /// fallocate/ioctl length without surprises: 2^22 sectors = 2 GiB per range keeps one synchronous
    /// discard short enough not to stall the queue for long.
    public static let maxRangeSectors: UInt32 = 1 << 22

    public var capacitySectors: UInt64
    public var blockSize: UInt32
    public var physicalBlockSize: UInt32
    public var numQueues: UInt16
    public var writeback: Bool
    public var discard: Bool
    public var writeZeroes: Bool
    public var writeZeroesMayUnmap: Bool

    public init(capacitySectors: UInt64, blockSize: UInt32, physicalBlockSize: UInt32, numQueues: UInt16,
                writeback: Bool, discard: Bool, writeZeroes: Bool, writeZeroesMayUnmap: Bool) {
        self.capacitySectors = capacitySectors
        self.blockSize = blockSize
        self.physicalBlockSize = physicalBlockSize
        self.numQueues = numQueues
        self.writeback = writeback
        self.discard = discard
        self.writeZeroes = writeZeroes
        self.writeZeroesMayUnmap = writeZeroesMayUnmap
    }

    /// Layout of `struct virtio_blk_config` up to write_zeroes_may_unmap and its padding (60 bytes).
    public static let encodedSize = 60
    /// Offset of the `writeback` byte: the only field a driver may write (VIRTIO_BLK_F_CONFIG_WCE,
    /// virtio 1.2 §5.2.4).
    public static let writebackOffset = 32

    public var encoded: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.encodedSize)
        func put<T: FixedWidthInteger>(_ v: T, at o: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[o + i] = x } }
        }
        let sectorsPerBlock = UInt32(UInt64(blockSize) / Self.sectorSize)
        put(capacitySectors, at: 0)
        put(Self.sizeMax, at: 8)
        put(Self.segMax, at: 12)
        // geometry (16..19) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        put(blockSize, at: 20)
        // Topology: physical_block_exp = log2(physical / logical); min_io_size in logical blocks.
        let ratio = max(physicalBlockSize / max(blockSize, 1), 1)
        put(UInt8(ratio.trailingZeroBitCount), at: 24)
        put(UInt8(0), at: 25)
        put(UInt16(1), at: 26)
        put(UInt32(0), at: 28) // opt_io_size: no preferred size
        put(UInt8(writeback ? 1 : 0), at: Self.writebackOffset)
        put(numQueues, at: 34)
        if discard {
            put(Self.maxRangeSectors, at: 36)
            put(Self.maxRangeSegments, at: 40)
            put(sectorsPerBlock, at: 44)
        }
        if writeZeroes {
            put(Self.maxRangeSectors, at: 48)
            put(Self.maxRangeSegments, at: 52)
            put(UInt8(writeZeroesMayUnmap ? 1 : 0), at: 56)
        }
        return b
    }
}
