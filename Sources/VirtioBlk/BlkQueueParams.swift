/// What one queue needs to know about the device and the negotiated features. A value copied into each
/// queue processor, so the hot path reads it from its own memory.
public struct BlkQueueParams: Sendable {
    public var capacitySectors: UInt64
    /// The logical block size: a power of two from 512 to 4096 (BackingOptions refuses anything else),
    /// so alignment is checked with masks. Two `div`s per request (20-40 cycles each) were the costliest
    /// instructions of the request path.
    public let blockSize: UInt32
    public var readOnly: Bool
    public var flush: Bool
    public var discard: Bool
    public var writeZeroes: Bool
    public var writeZeroesMayUnmap: Bool
    /// Write-through caching (the driver cleared `writeback` through CONFIG_WCE): every write is durable
    /// when it completes, so the driver need not send FLUSH.
    public var writeThrough: Bool = false
    /// GET_ID answer: the serial, NUL-padded or truncated to 20 bytes.
    public var serial: [UInt8]

    public init(capacitySectors: UInt64, blockSize: UInt32, readOnly: Bool, flush: Bool, discard: Bool,
                writeZeroes: Bool, writeZeroesMayUnmap: Bool, serial: String) {
        // Configuration, validated long before (BackingOptions), never guest input.
        precondition(blockSize >= 512 && blockSize & (blockSize - 1) == 0, "block size \(blockSize) is not a power of two ≥ 512")
        self.capacitySectors = capacitySectors
        self.blockSize = blockSize
        self.readOnly = readOnly
        self.flush = flush
        self.discard = discard
        self.writeZeroes = writeZeroes
        self.writeZeroesMayUnmap = writeZeroesMayUnmap
        var s = Array(serial.utf8.prefix(BlkConfig.idBytes))
        s += [UInt8](repeating: 0, count: BlkConfig.idBytes - s.count)
        self.serial = s
    }

    /// Whether [sector, sector + bytes/512) lies on the disk, aligned to the logical block size.
    @inlinable
    func rangeIsValid(sector: UInt64, bytes: UInt64) -> Bool {
        let blockMask = UInt64(blockSize) &- 1
        let sectorsPerBlockMask = blockMask >> BlkConfig.sectorShift
        guard bytes & blockMask == 0, sector & sectorsPerBlockMask == 0 else { return false }
        guard sector <= capacitySectors else { return false }
        return bytes >> BlkConfig.sectorShift <= capacitySectors - sector
    }
}
