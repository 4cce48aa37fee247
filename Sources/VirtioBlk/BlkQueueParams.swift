/// What one queue needs to know about the device and the negotiated features. A value copied into each
/// queue processor, so the hot path reads it from its own memory.
public struct BlkQueueParams: Sendable {
    public var capacitySectors: UInt64
    public var blockSize: UInt32
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
        let sectorsPerBlock = UInt64(blockSize) / BlkConfig.sectorSize
        guard bytes % UInt64(blockSize) == 0, sector % sectorsPerBlock == 0 else { return false }
        guard sector <= capacitySectors else { return false }
        return bytes / BlkConfig.sectorSize <= capacitySectors - sector
    }
}
