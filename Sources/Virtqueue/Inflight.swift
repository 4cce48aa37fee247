import CVhostLinux

/// The shared in-flight log of one split virtqueue (vhost-user.rst, "Inflight I/O tracking"): a region
/// of the buffer exchanged with GET/SET_INFLIGHT_FD, which the front-end keeps across back-end
/// restarts. Every head we take is marked in it before any work starts on it, and unmarked only after
/// its used element is published, so a back-end started after a crash knows exactly which requests
/// the driver is still waiting for.
///
/// Layout, in the spec's words (all little-endian):
///
///     struct QueueRegionSplit { u64 features; u16 version; u16 desc_num;
///                               u16 last_batch_head; u16 used_idx; DescStateSplit desc[desc_num]; }
///     struct DescStateSplit   { u8 inflight; u8 padding[5]; u16 next; u64 counter; }
///
/// The buffer is written by us and kept by the front-end; nothing else writes it, but a restarted
/// back-end reads what a previous process (or a hostile front-end) left there, so every index read from
/// it is bounded before use.
public enum InflightLayout {
    @inlinable public static var headerBytes: Int { 16 }
    @inlinable public static var descriptorStateBytes: Int { 16 }
    /// Each queue's region starts on a cache line (64 bytes), as libvhost-user lays it out, so that a
    /// buffer written by one back-end reads the same in another.
    public static let regionAlignment = 64
    /// `version` 0 marks a buffer the front-end just allocated (or re-allocated after a device reset):
    /// nothing in it is in flight. We write 1, the only version the spec defines.
    public static let version: UInt16 = 1

    public static func queueRegionBytes(queueSize: UInt16) -> Int {
        let raw = headerBytes + descriptorStateBytes * Int(queueSize)
        return (raw + regionAlignment - 1) / regionAlignment * regionAlignment
    }

    public static func bufferBytes(queues: Int, queueSize: UInt16) -> Int {
        queues * queueRegionBytes(queueSize: queueSize)
    }

    // Field offsets inside a region and inside one DescStateSplit; computed, not stored, so the
    // inlined hot path reads constants rather than lazily initialised globals.
    @inlinable static var versionOffset: Int { 8 }
    @inlinable static var descNumOffset: Int { 10 }
    @inlinable static var lastBatchHeadOffset: Int { 12 }
    @inlinable static var usedIdxOffset: Int { 14 }
    @inlinable static var stateInflightOffset: Int { 0 }
    @inlinable static var stateNextOffset: Int { 6 }
    @inlinable static var stateCounterOffset: Int { 8 }
}

/// Where one queue's in-flight region lives, and how many descriptor states it has room for.
public struct InflightRegion {
    public let base: UnsafeMutableRawPointer
    public let capacity: UInt16
    public init(base: UnsafeMutableRawPointer, capacity: UInt16) {
        self.base = base
        self.capacity = capacity
    }
}

/// What the log said when a queue started on it.
public struct InflightRecovery: Equatable, CustomStringConvertible {
    /// The region was fresh (version 0): nothing could be in flight.
    public var fresh: Bool
    /// Heads a previous back-end took and never completed; resubmitted before anything new, oldest first.
    public var resubmitted: Int
    /// Heads of a batch whose used elements were published but not yet unmarked when the previous
    /// back-end stopped: already completed, so not resubmitted.
    public var completedUnmarked: Int
    public init(fresh: Bool, resubmitted: Int, completedUnmarked: Int) {
        self.fresh = fresh
        self.resubmitted = resubmitted
        self.completedUnmarked = completedUnmarked
    }
    public var description: String {
        fresh ? "fresh in-flight log" : "\(resubmitted) request(s) to resubmit, \(completedUnmarked) completed but unmarked"
    }
}
