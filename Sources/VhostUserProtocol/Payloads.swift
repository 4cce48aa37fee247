/// Little-endian field access on a received payload; all vhost-user fields are little-endian and
/// naturally aligned, but a received buffer may not be, so fields are assembled byte by byte.
public struct PayloadReader {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func u32(at offset: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    public func u64(at offset: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }
}

/// Builds a payload field by field.
public struct PayloadWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func raw(_ b: [UInt8]) { bytes += b }
}

/// `struct vhost_vring_state`: SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE.
public struct VringState: Sendable, Equatable {
    public var index: UInt32
    public var num: UInt32
    public init(index: UInt32, num: UInt32) {
        self.index = index
        self.num = num
    }
    public static let size = 8
    init(_ r: PayloadReader) { self.init(index: r.u32(at: 0), num: r.u32(at: 4)) }
    public var encoded: [UInt8] { var w = PayloadWriter(); w.u32(index); w.u32(num); return w.bytes }
}

/// `struct vhost_vring_addr`: ring addresses in the front-end's virtual address space.
public struct VringAddress: Sendable, Equatable {
    public var index: UInt32
    public var flags: UInt32
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availRing: UInt64
    public var log: UInt64
    public init(index: UInt32, flags: UInt32 = 0, descriptorTable: UInt64, usedRing: UInt64, availRing: UInt64, log: UInt64 = 0) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availRing = availRing
        self.log = log
    }
    public static let size = 40
    /// VHOST_VRING_F_LOG: used-ring writes must be logged (migration); we do not offer LOG_ALL.
    public static let flagLog: UInt32 = 1
    init(_ r: PayloadReader) {
        self.init(index: r.u32(at: 0), flags: r.u32(at: 4), descriptorTable: r.u64(at: 8),
                  usedRing: r.u64(at: 16), availRing: r.u64(at: 24), log: r.u64(at: 32))
    }
    public var encoded: [UInt8] {
        var w = PayloadWriter()
        w.u32(index); w.u32(flags); w.u64(descriptorTable); w.u64(usedRing); w.u64(availRing); w.u64(log)
        return w.bytes
    }
}

/// `VhostUserMemoryRegion`: one guest RAM region and where it sits in the fd it arrives with.
public struct MemoryRegionDescription: Sendable, Equatable {
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64
    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }
    public static let size = 32
    init(_ r: PayloadReader, at o: Int) {
        self.init(guestPhysicalAddress: r.u64(at: o), size: r.u64(at: o + 8),
                  userAddress: r.u64(at: o + 16), mmapOffset: r.u64(at: o + 24))
    }
    func write(_ w: inout PayloadWriter) {
        w.u64(guestPhysicalAddress); w.u64(size); w.u64(userAddress); w.u64(mmapOffset)
    }
}

/// GET_CONFIG/SET_CONFIG header: offset and size into the device config space, then the bytes.
public struct ConfigAccess: Sendable, Equatable {
    public var offset: UInt32
    public var size: UInt32
    public var flags: UInt32
    public var data: [UInt8]
    public init(offset: UInt32, size: UInt32, flags: UInt32, data: [UInt8]) {
        self.offset = offset
        self.size = size
        self.flags = flags
        self.data = data
    }
    public static let headerSize = 12
    /// VHOST_SET_CONFIG_TYPE_FRONTEND (0): a guest-initiated write; 1 is migration.
    public static let flagFrontend: UInt32 = 0
    public static let flagMigration: UInt32 = 1
    public var encoded: [UInt8] {
        var w = PayloadWriter()
        w.u32(offset); w.u32(size); w.u32(flags); w.raw(data)
        return w.bytes
    }
}

/// `VhostUserInflight`: GET_INFLIGHT_FD's request and reply, and SET_INFLIGHT_FD's payload.
/// QEMU sends and expects the C struct with its tail padding (24 bytes); the spec lists the fields
/// unpadded (20 bytes), as some front-ends send them. Both are accepted, and a reply mirrors the size
/// of the request it answers.
public struct InflightDescription: Sendable, Equatable {
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public var numQueues: UInt16
    public var queueSize: UInt16
    public init(mmapSize: UInt64, mmapOffset: UInt64, numQueues: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize
        self.mmapOffset = mmapOffset
        self.numQueues = numQueues
        self.queueSize = queueSize
    }
    public static let size = 24
    public static let unpaddedSize = 20
    init(_ r: PayloadReader) {
        let tail = r.u32(at: 16)
        self.init(mmapSize: r.u64(at: 0), mmapOffset: r.u64(at: 8),
                  numQueues: UInt16(truncatingIfNeeded: tail), queueSize: UInt16(truncatingIfNeeded: tail >> 16))
    }
    public func encoded(size: Int = InflightDescription.size) -> [UInt8] {
        var w = PayloadWriter()
        w.u64(mmapSize); w.u64(mmapOffset); w.u32(UInt32(numQueues) | UInt32(queueSize) << 16)
        if size > Self.unpaddedSize { w.u32(0) }
        return w.bytes
    }
}

public enum PayloadEncoding {
    public static func u64(_ v: UInt64) -> [UInt8] { var w = PayloadWriter(); w.u64(v); return w.bytes }

    public static func memTable(_ regions: [MemoryRegionDescription]) -> [UInt8] {
        var w = PayloadWriter()
        w.u32(UInt32(regions.count)); w.u32(0)
        for r in regions { r.write(&w) }
        return w.bytes
    }

    /// ADD_MEM_REG / REM_MEM_REG payload: u64 padding, then one region.
    public static func singleRegion(_ region: MemoryRegionDescription) -> [UInt8] {
        var w = PayloadWriter()
        w.u64(0)
        region.write(&w)
        return w.bytes
    }
}
