/// What the generator asks the device to do: the fio-like part of a run.

/// The I/O direction pattern of a run (fio's `rw=` names).
public enum AccessPattern: String, Sendable, CaseIterable {
    case read, write, randread, randwrite, readwrite, randrw

    public var isRandom: Bool { self == .randread || self == .randwrite || self == .randrw }

    /// Share of reads in percent: 100 for pure reads, 0 for pure writes, the given mix otherwise.
    public func readPercent(mix: Int) -> Int {
        switch self {
        case .read, .randread: 100
        case .write, .randwrite: 0
        case .readwrite, .randrw: mix
        }
    }
}

public enum WorkloadError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    public var description: String {
        switch self {
        case .invalid(let why): why
        }
    }
}

/// Parses "4k", "1m", "512", "1g" (binary units, as fio does).
public func parseSize(_ text: String) -> UInt64? {
    var digits = Substring(text.lowercased())
    var unit: UInt64 = 1
    if let last = digits.last, let shift = ["k": 10, "m": 20, "g": 30, "t": 40][String(last)] {
        unit = 1 << UInt64(shift)
        digits = digits.dropLast()
    }
    guard let n = UInt64(digits), n <= UInt64.max / unit else { return nil }
    return n * unit
}

/// One queue's share of the device and how to walk it. Each queue gets a disjoint, block-aligned
/// slice, so sequential streams of different queues never overlap and verify writes of different
/// queues never race.
public struct QueueRegion: Sendable, Equatable {
    /// First byte of the slice and its length, both multiples of the block size.
    public var start: UInt64
    public var length: UInt64

    public init(start: UInt64, length: UInt64) {
        self.start = start
        self.length = length
    }

    /// Splits `deviceBytes` into `queues` equal slices aligned to `blockSize`. Throws when a slice
    /// would hold no block.
    public static func split(deviceBytes: UInt64, queues: Int, blockSize: Int) throws -> [QueueRegion] {
        let bs = UInt64(blockSize)
        let blocksPerQueue = deviceBytes / bs / UInt64(queues)
        guard blocksPerQueue >= 1 else {
            throw WorkloadError.invalid("a device of \(deviceBytes) bytes has no \(blockSize)-byte block for each of \(queues) queues")
        }
        return (0..<queues).map { QueueRegion(start: UInt64($0) * blocksPerQueue * bs, length: blocksPerQueue * bs) }
    }
}

/// xorshift64*: a few cycles per number, no allocation, deterministic per seed (runs repeat). Not
/// cryptographic; only offsets and the read/write coin come from it.
public struct FastRandom: Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        // Zero is xorshift's one fixed point; any other constant would do.
        state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        // The multiplier of Vigna's xorshift64* (its low bits are what the shifts leave weakest).
        return state &* 0x2545_F491_4F6C_DD1D
    }

    /// Uniform in 0..<bound (bound > 0) by the multiply-high method: no division on the hot path;
    /// the bias is below bound / 2^64, nothing next to a device's block count.
    @inline(__always)
    public mutating func below(_ bound: UInt64) -> UInt64 {
        bound.multipliedFullWidth(by: next()).high
    }
}

/// Chooses each request's direction and offset. A plain struct kept in the worker's locals.
public struct RequestPlanner: Sendable {
    public let region: QueueRegion
    public let blockSize: UInt64
    public let random: Bool
    /// Reads per 100 requests (0 = all writes, 100 = all reads).
    public let readPercent: UInt64
    private let blocks: UInt64
    private var nextSequential: UInt64 = 0
    private var rng: FastRandom

    public init(region: QueueRegion, blockSize: Int, pattern: AccessPattern, readMix: Int, seed: UInt64) {
        self.region = region
        self.blockSize = UInt64(blockSize)
        random = pattern.isRandom
        readPercent = UInt64(pattern.readPercent(mix: readMix))
        blocks = region.length / UInt64(blockSize)
        rng = FastRandom(seed: seed)
    }

    /// Byte offset of the next request: a uniformly random block of the region, or the next one in
    /// order (wrapping at the region's end).
    @inline(__always)
    public mutating func nextOffset() -> UInt64 {
        let block: UInt64
        if random {
            block = rng.below(blocks)
        } else {
            block = nextSequential
            nextSequential = nextSequential &+ 1 == blocks ? 0 : nextSequential &+ 1
        }
        return region.start &+ block &* blockSize
    }

    /// True when the next request should be a read.
    @inline(__always)
    public mutating func nextIsRead() -> Bool {
        if readPercent >= 100 { return true }
        if readPercent == 0 { return false }
        return rng.below(100) < readPercent
    }
}

/// Everything a run needs to know about the I/O, independent of where it goes.
public struct WorkloadSpec: Sendable {
    public var pattern: AccessPattern = .randread
    public var blockSize = 4096
    /// Reads in percent for readwrite/randrw.
    public var readMix = 50
    /// Requests in flight per queue.
    public var queueDepth = 32
    /// Measured seconds (after `rampSeconds`); ignored when `requestLimit` is set.
    public var seconds: Double = 5
    /// Seconds run before measuring starts (counters and histogram reset at its end).
    public var rampSeconds: Double = 0
    /// Total requests over all queues; nil = time-limited.
    public var requestLimit: UInt64?
    /// Writes a pattern over each queue's first `verifyBlocks` blocks, then reads them back and checks.
    public var verify = false
    /// Blocks per queue in verify mode.
    public var verifyBlocks = 1024
    /// Use only the first `limitBytes` of the device (nil = all of it).
    public var limitBytes: UInt64?
    public var seed: UInt64 = 1
    /// Pause this long after each batch of completions before submitting again (0 = none). With
    /// depth 1 the back-end then sees one request every `thinkMicroseconds` plus its own service
    /// time: the arrival pattern of a slow guest (a TCG guest issues one about every 60 µs), where
    /// how a back-end spends the gaps (spinning or sleeping) decides its CPU cost per request.
    public var thinkMicroseconds: UInt64 = 0

    public init() {}

    /// The largest request the virtio-blk path takes here: 1 MiB (the range) so that one data
    /// descriptor per request suffices and per-slot buffers stay bounded (depth × block size of
    /// guest memory per queue).
    public static let maxBlockSize = 1 << 20
    /// virtio-blk addresses in 512-byte sectors, and O_DIRECT back-ends need 4 KiB alignment on
    /// most disks: 4 KiB is the smallest block this generator issues.
    public static let minBlockSize = 4096

    public func validate() throws {
        guard blockSize >= Self.minBlockSize, blockSize <= Self.maxBlockSize, blockSize % Self.minBlockSize == 0 else {
            throw WorkloadError.invalid("block size \(blockSize) must be a multiple of 4096 between 4 KiB and 1 MiB")
        }
        guard (0...100).contains(readMix) else { throw WorkloadError.invalid("read mix \(readMix) must be 0...100") }
        guard queueDepth >= 1 else { throw WorkloadError.invalid("queue depth must be at least 1") }
        guard seconds > 0 || requestLimit != nil else { throw WorkloadError.invalid("need a time or a request limit") }
        guard rampSeconds >= 0 else { throw WorkloadError.invalid("ramp time must not be negative") }
        guard verifyBlocks >= 1 else { throw WorkloadError.invalid("verify needs at least one block per queue") }
    }
}
