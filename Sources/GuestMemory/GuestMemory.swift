#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

/// A guest-physical address: what descriptors carry.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ v: UInt64) { rawValue = v }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "gpa 0x" + String(rawValue, radix: 16) }
}

/// An address in the front-end's (QEMU's) virtual address space: what SET_VRING_ADDR carries.
public struct FrontendAddress: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ v: UInt64) { rawValue = v }
    public var description: String { "va 0x" + String(rawValue, radix: 16) }
}

public struct GuestMemoryError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Equatable, Sendable {
        case emptyRegion
        case wraps(String)
        case overlaps(String)
        case fileTooSmall(fileSize: UInt64, needed: UInt64)
        case tooManyRegions(Int)
        case noSuchRegion
        case mapFailed(String)
    }
    public var kind: Kind
    public var region: String
    public init(_ kind: Kind, region: String) {
        self.kind = kind
        self.region = region
    }
    public var description: String {
        switch kind {
        case .emptyRegion: "region \(region): size 0"
        case .wraps(let what): "region \(region): \(what) + size overflows 64 bits"
        case .overlaps(let other): "region \(region) overlaps \(other)"
        case .fileTooSmall(let size, let needed):
            "region \(region): its fd holds \(size) bytes but the region needs \(needed) (access would fault)"
        case .tooManyRegions(let n): "more than \(n) memory regions"
        case .noSuchRegion: "no region matches \(region)"
        case .mapFailed(let e): "region \(region): \(e)"
        }
    }
}

/// One guest RAM region, mapped from the fd the front-end sent. Shared by every snapshot that contains
/// it; the mapping is removed when the last snapshot holding it is released.
public final class GuestRegion: @unchecked Sendable, CustomStringConvertible {
    public let guestStart: UInt64
    public let size: UInt64
    public let frontendStart: UInt64
    public let mmapOffset: UInt64
    /// Host pointer to the region's first byte (inside `mapping`).
    public let host: UnsafeMutableRawPointer
    private let mapping: MemoryMapping

    /// Inaccessible bytes mapped on each side of every region: a translation bug that lets a request
    /// run past a region's end then faults at once instead of touching the daemon's own memory (and a
    /// fuzzer sees it). 2 MiB is twice the largest segment virtio-blk advertises (size_max, 1 MiB), so
    /// one segment's worth of overrun from either end lands in a guard; it costs address space only.
    public static let guardBytes = 2 << 20

    /// Validates the description and maps it. The fd is only borrowed: the mapping keeps the memory.
    public init(guestStart: UInt64, size: UInt64, frontendStart: UInt64, mmapOffset: UInt64, fd: Int32) throws(GuestMemoryError) {
        let name = "gpa 0x\(String(guestStart, radix: 16))+0x\(String(size, radix: 16))"
        guard size > 0 else { throw GuestMemoryError(.emptyRegion, region: name) }
        guard guestStart.addingReportingOverflow(size).overflow == false else { throw GuestMemoryError(.wraps("guest address"), region: name) }
        guard frontendStart.addingReportingOverflow(size).overflow == false else { throw GuestMemoryError(.wraps("front-end address"), region: name) }
        let (end, o) = mmapOffset.addingReportingOverflow(size)
        guard !o else { throw GuestMemoryError(.wraps("mmap offset"), region: name) }
        guard size <= UInt64(Int.max) else { throw GuestMemoryError(.wraps("size"), region: name) }

        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw GuestMemoryError(.mapFailed("fstat: errno \(errno)"), region: name) }
        // Touching a page past the end of the file raises SIGBUS, so the file must cover the region.
        // (A memfd or hugetlbfs file is sized by QEMU before it is sent; st_size is exact for both.)
        if (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_size) < end {
            throw GuestMemoryError(.fileTooSmall(fileSize: UInt64(st.st_size), needed: end), region: name)
        }
        // mmap offsets must be multiples of the fd's page size: 4 KiB for memfd, the huge page size
        // (2 MiB or 1 GiB) for hugetlbfs, which st_blksize reports. Map from the page boundary below.
        let pageSize = UInt64(max(Int(st.st_blksize), Int(sysconf(Int32(_SC_PAGESIZE)))))
        let alignedOffset = pageSize & (pageSize - 1) == 0 ? mmapOffset & ~(pageSize - 1) : mmapOffset
        let lead = mmapOffset - alignedOffset
        var length = size + lead
        if pageSize & (pageSize - 1) == 0 { length = (length + pageSize - 1) & ~(pageSize - 1) }
        do {
            mapping = try MemoryMapping(fd: fd, offset: alignedOffset, length: Int(length),
                                        guardBytes: Self.guardBytes, alignment: Int(pageSize))
        } catch {
            throw GuestMemoryError(.mapFailed("\(error)"), region: name)
        }
        self.guestStart = guestStart
        self.size = size
        self.frontendStart = frontendStart
        self.mmapOffset = mmapOffset
        host = mapping.base + Int(lead)
    }

    public var description: String {
        "gpa 0x\(String(guestStart, radix: 16))..0x\(String(guestStart + size, radix: 16)) va 0x\(String(frontendStart, radix: 16))"
    }

    func overlaps(_ other: GuestRegion) -> Bool {
        guestStart < other.guestStart + other.size && other.guestStart < guestStart + size
    }
}

/// A lookup entry kept in plain memory so the per-request translation touches no reference counts.
public struct RegionEntry {
    public var guestStart: UInt64
    public var guestEnd: UInt64 // exclusive; guestStart + size cannot overflow (checked at creation)
    public var host: UnsafeMutableRawPointer
}

/// An immutable snapshot of the guest's memory table. The control thread builds a new snapshot for every
/// SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG, and a queue's worker is restarted with it only after the
/// worker has drained (no request in flight points into the old one). Regions shared by both snapshots
/// stay mapped; regions only the old snapshot held are unmapped when it is released.
public final class GuestMemoryMap: @unchecked Sendable {
    /// Most regions: GET_MAX_MEM_SLOTS answers 509 (see VhostUserProtocol.ProtocolLimits.maxMemSlots).
    public static let maxRegions = 509

    public let regions: [GuestRegion]
    /// Sorted by guestStart; allocated once, freed in deinit. Read by workers without ARC.
    @usableFromInline let table: UnsafeMutableBufferPointer<RegionEntry>

    public init(regions: [GuestRegion]) throws(GuestMemoryError) {
        guard regions.count <= Self.maxRegions else { throw GuestMemoryError(.tooManyRegions(Self.maxRegions), region: "table") }
        let sorted = regions.sorted { $0.guestStart < $1.guestStart }
        for i in sorted.indices.dropFirst() where sorted[i - 1].overlaps(sorted[i]) {
            throw GuestMemoryError(.overlaps("\(sorted[i - 1])"), region: "\(sorted[i])")
        }
        self.regions = sorted
        table = .allocate(capacity: max(sorted.count, 1))
        for (i, r) in sorted.enumerated() {
            table[i] = RegionEntry(guestStart: r.guestStart, guestEnd: r.guestStart + r.size, host: r.host)
        }
    }

    public static let empty: GuestMemoryMap = try! GuestMemoryMap(regions: [])

    deinit { table.deallocate() }

    /// A non-owning view for the hot path; valid while this map is alive.
    @inlinable public var view: GuestMemoryView { GuestMemoryView(entries: table.baseAddress!, count: regions.count) }

    /// The same table plus `region`, refusing overlaps.
    public func adding(_ region: GuestRegion) throws(GuestMemoryError) -> GuestMemoryMap {
        try GuestMemoryMap(regions: regions + [region])
    }

    /// The table minus the region matching `guestStart`, `size` and `frontendStart` (REM_MEM_REG).
    public func removing(guestStart: UInt64, size: UInt64, frontendStart: UInt64) throws(GuestMemoryError) -> GuestMemoryMap {
        guard let i = regions.firstIndex(where: {
            $0.guestStart == guestStart && $0.size == size && $0.frontendStart == frontendStart
        }) else {
            throw GuestMemoryError(.noSuchRegion, region: "gpa 0x\(String(guestStart, radix: 16)) size 0x\(String(size, radix: 16))")
        }
        var rest = regions
        rest.remove(at: i)
        return try GuestMemoryMap(regions: rest)
    }

    /// Front-end virtual address → guest-physical address, for a range that must lie in one region.
    public func guestAddress(ofFrontend va: FrontendAddress, length: UInt64) -> GuestAddress? {
        for r in regions where va.rawValue >= r.frontendStart && va.rawValue - r.frontendStart < r.size {
            let offset = va.rawValue - r.frontendStart
            guard length <= r.size - offset else { return nil }
            return GuestAddress(r.guestStart + offset)
        }
        return nil
    }
}

/// Bounds-checked guest-physical → host translation, by value, without reference counting.
public struct GuestMemoryView {
    @usableFromInline let entries: UnsafeMutablePointer<RegionEntry>
    @usableFromInline let count: Int

    @inlinable init(entries: UnsafeMutablePointer<RegionEntry>, count: Int) {
        self.entries = entries
        self.count = count
    }

    /// Host pointer for `[gpa, gpa+length)` when the whole range lies in one region; nil otherwise.
    /// `length` 0 is allowed (and must still start inside a region).
    @inlinable
    public func translate(_ gpa: GuestAddress, length: UInt64) -> UnsafeMutableRawPointer? {
        let a = gpa.rawValue
        var i = 0
        while i < count {
            let e = entries[i]
            if a >= e.guestStart && a < e.guestEnd {
                // Overflow-free: a < guestEnd, so guestEnd - a is the room left in this region.
                guard length <= e.guestEnd - a else { return nil }
                return e.host + Int(a - e.guestStart)
            }
            i += 1
        }
        return nil
    }

    /// The longest prefix of `[gpa, gpa+length)` inside one region: (host pointer, bytes). Lets callers
    /// split a buffer that crosses from one region into the adjacent one.
    @inlinable
    public func translatePrefix(_ gpa: GuestAddress, length: UInt64) -> (UnsafeMutableRawPointer, UInt64)? {
        let a = gpa.rawValue
        var i = 0
        while i < count {
            let e = entries[i]
            if a >= e.guestStart && a < e.guestEnd {
                return (e.host + Int(a - e.guestStart), min(length, e.guestEnd - a))
            }
            i += 1
        }
        return nil
    }
}
