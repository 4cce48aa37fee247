import VhostUserProtocol

/// virtio-blk device feature bits (virtio 1.2 §5.2.3), as `VirtioFeatures` values.
public enum VirtioBlkFeature {
    public static let sizeMax = VirtioFeatures(rawValue: 1 << 1)
    public static let segMax = VirtioFeatures(rawValue: 1 << 2)
    public static let geometry = VirtioFeatures(rawValue: 1 << 4)
    public static let readOnly = VirtioFeatures(rawValue: 1 << 5)
    public static let blkSize = VirtioFeatures(rawValue: 1 << 6)
    public static let flush = VirtioFeatures(rawValue: 1 << 9)
    public static let topology = VirtioFeatures(rawValue: 1 << 10)
    public static let configWCE = VirtioFeatures(rawValue: 1 << 11)
    public static let multiQueue = VirtioFeatures(rawValue: 1 << 12)
    public static let discard = VirtioFeatures(rawValue: 1 << 13)
    public static let writeZeroes = VirtioFeatures(rawValue: 1 << 14)
}

/// `struct virtio_blk_config` (virtio 1.2 §5.2.4), decoded from GET_CONFIG bytes. Fields beyond the
/// bytes given decode as nil.
public struct VirtioBlkConfig: Sendable, Equatable {
    public var capacity: UInt64?
    public var sizeMax: UInt32?
    public var segMax: UInt32?
    public var blkSize: UInt32?
    public var physicalBlockExp: UInt8?
    public var alignmentOffset: UInt8?
    public var minIOSize: UInt16?
    public var optIOSize: UInt32?
    public var writeback: UInt8?
    public var numQueues: UInt16?
    public var maxDiscardSectors: UInt32?
    public var maxDiscardSeg: UInt32?
    public var discardSectorAlignment: UInt32?
    public var maxWriteZeroesSectors: UInt32?
    public var maxWriteZeroesSeg: UInt32?
    public var writeZeroesMayUnmap: UInt8?

    /// Byte offsets of the fields (the spec's layout, little-endian).
    public enum Offset {
        public static let capacity = 0, sizeMax = 8, segMax = 12, geometry = 16, blkSize = 20
        public static let physicalBlockExp = 24, alignmentOffset = 25, minIOSize = 26, optIOSize = 28
        public static let writeback = 32, numQueues = 34, maxDiscardSectors = 36, maxDiscardSeg = 40
        public static let discardSectorAlignment = 44, maxWriteZeroesSectors = 48, maxWriteZeroesSeg = 52
        public static let writeZeroesMayUnmap = 56
    }

    public init(_ bytes: [UInt8]) {
        func le(_ offset: Int, _ width: Int) -> UInt64? {
            guard offset + width <= bytes.count else { return nil }
            var v: UInt64 = 0
            for i in 0..<width { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
            return v
        }
        capacity = le(Offset.capacity, 8)
        sizeMax = le(Offset.sizeMax, 4).map { UInt32($0) }
        segMax = le(Offset.segMax, 4).map { UInt32($0) }
        blkSize = le(Offset.blkSize, 4).map { UInt32($0) }
        physicalBlockExp = le(Offset.physicalBlockExp, 1).map { UInt8($0) }
        alignmentOffset = le(Offset.alignmentOffset, 1).map { UInt8($0) }
        minIOSize = le(Offset.minIOSize, 2).map { UInt16($0) }
        optIOSize = le(Offset.optIOSize, 4).map { UInt32($0) }
        writeback = le(Offset.writeback, 1).map { UInt8($0) }
        numQueues = le(Offset.numQueues, 2).map { UInt16($0) }
        maxDiscardSectors = le(Offset.maxDiscardSectors, 4).map { UInt32($0) }
        maxDiscardSeg = le(Offset.maxDiscardSeg, 4).map { UInt32($0) }
        discardSectorAlignment = le(Offset.discardSectorAlignment, 4).map { UInt32($0) }
        maxWriteZeroesSectors = le(Offset.maxWriteZeroesSectors, 4).map { UInt32($0) }
        maxWriteZeroesSeg = le(Offset.maxWriteZeroesSeg, 4).map { UInt32($0) }
        writeZeroesMayUnmap = le(Offset.writeZeroesMayUnmap, 1).map { UInt8($0) }
    }
}
