#if canImport(Glibc)
import Glibc
#endif
import VhostSystem
import VhostUserProtocol

/// A range of fake guest memory: where the device sees it (its guest-physical address) and where the
/// test can touch it (a pointer into the local mapping of the same memfd).
public struct GuestBuffer: @unchecked Sendable {
    public let gpa: UInt64
    public let pointer: UnsafeMutableRawPointer
    public let length: Int

    public init(gpa: UInt64, pointer: UnsafeMutableRawPointer, length: Int) {
        self.gpa = gpa
        self.pointer = pointer
        self.length = length
    }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: length) }

    /// A sub-range; traps when it does not lie inside this buffer (a test bug, not a device bug).
    public func slice(offset: Int, length: Int) -> GuestBuffer {
        precondition(offset >= 0 && length >= 0 && offset + length <= self.length, "slice outside the buffer")
        return GuestBuffer(gpa: gpa + UInt64(offset), pointer: pointer + offset, length: length)
    }

    public func read() -> [UInt8] { Array(bytes) }

    public func write(_ data: [UInt8], at offset: Int = 0) {
        precondition(offset >= 0 && offset + data.count <= length, "write outside the buffer")
        data.withUnsafeBytes { (pointer + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public func fill(_ byte: UInt8) { memset(pointer, Int32(byte), length) }
}

/// Fake guest RAM shared with a back-end the way QEMU shares it: each region is a memfd, mapped here
/// and passed to the back-end, which maps it again. Every region gets three addresses, deliberately
/// unrelated to each other so that a back-end mixing them up fails loudly:
/// - `guestPhysicalAddress`: what descriptors carry;
/// - `userAddress`: the front-end's virtual address (QEMU's VA), what SET_VRING_ADDR carries;
/// - the local pointer, which the back-end never sees.
/// Buffers come from a bump allocator; nothing is ever freed (arenas are per test).
public final class GuestMemoryArena: @unchecked Sendable {
    /// How to lay out one region. `nil` fields get the defaults described on `init(regions:)`.
    public struct RegionSpec: Sendable {
        public var size: Int
        public var guestPhysicalAddress: UInt64?
        public var userAddress: UInt64?
        /// Where the region starts inside its memfd: QEMU passes non-zero offsets when one file backs
        /// several regions. Must be a multiple of the page size (mmap's rule).
        public var mmapOffset: UInt64
        /// Back the region with hugetlbfs pages of this size (2 MiB or 1 GiB), like QEMU's
        /// memory-backend-memfd,hugetlb=on; nil for ordinary 4 KiB pages.
        public var hugePageSize: Int?

        public init(size: Int, guestPhysicalAddress: UInt64? = nil, userAddress: UInt64? = nil, mmapOffset: UInt64 = 0,
                    hugePageSize: Int? = nil) {
            self.size = size
            self.guestPhysicalAddress = guestPhysicalAddress
            self.userAddress = userAddress
            self.mmapOffset = mmapOffset
            self.hugePageSize = hugePageSize
        }
    }

    public final class Region: @unchecked Sendable {
        public let description: MemoryRegionDescription
        public let fd: FileDescriptor
        /// The local pointer to the region's first byte (the mapping starts at memfd offset 0, so this is
        /// `mapping.base + mmapOffset`).
        public let base: UnsafeMutableRawPointer
        let mapping: MemoryMapping
        /// Bump pointer: offset of the next free byte.
        var next: Int

        init(description: MemoryRegionDescription, fd: FileDescriptor, mapping: MemoryMapping, firstFree: Int) {
            self.description = description
            self.fd = fd
            self.mapping = mapping
            self.base = mapping.base + Int(description.mmapOffset)
            self.next = firstFree
        }

        public var size: Int { Int(description.size) }
        public var guestPhysicalAddress: UInt64 { description.guestPhysicalAddress }
        public var userAddress: UInt64 { description.userAddress }
        public var bytesFree: Int { size - next }
    }

    public enum ArenaError: Error, CustomStringConvertible {
        case outOfMemory(requested: Int)
        case badLayout(String)
        public var description: String {
            switch self {
            case .outOfMemory(let n): "guest memory arena: no region has \(n) free bytes"
            case .badLayout(let why): "guest memory arena: \(why)"
            }
        }
    }

    public let regions: [Region]
    /// Region the allocator currently bumps in (earlier ones are full or skipped).
    private var current = 0

    /// Default layout, modelled on a q35 guest: region 0 at GPA 0, region i at GPA i × 4 GiB (QEMU puts
    /// RAM above 4 GiB there). Front-end VAs start at 0x7f12_0000_0000 with a 12 GiB stride, so the
    /// VA−GPA difference is different for every region (a back-end that derives one region's
    /// translation from another's gets wrong addresses).
    public static let defaultUserAddressBase: UInt64 = 0x7f12_0000_0000
    public static let defaultUserAddressStride: UInt64 = 0x3_0000_0000
    public static let defaultGuestPhysicalStride: UInt64 = 0x1_0000_0000

    /// The allocator never hands out a region's first page: guest address 0 is valid memory, but a
    /// buffer at GPA 0 would make a back-end treating 0 as "no address" look correct by accident or
    /// fail for a reason the test does not mean to probe.
    public static let reservedPrefix = 4096

    public init(regions specs: [RegionSpec]) throws {
        guard !specs.isEmpty else { throw ArenaError.badLayout("no regions") }
        var made: [Region] = []
        for (i, spec) in specs.enumerated() {
            let page = spec.hugePageSize ?? Int(sysconf(Int32(_SC_PAGESIZE)))
            guard spec.size > Self.reservedPrefix, spec.size % page == 0 else {
                throw ArenaError.badLayout("region \(i) size \(spec.size) must be a page multiple above \(Self.reservedPrefix)")
            }
            guard spec.mmapOffset % UInt64(page) == 0 else {
                throw ArenaError.badLayout("region \(i) mmap offset \(spec.mmapOffset) is not page aligned")
            }
            let gpa = spec.guestPhysicalAddress ?? UInt64(i) * Self.defaultGuestPhysicalStride
            let va = spec.userAddress ?? Self.defaultUserAddressBase + UInt64(i) * Self.defaultUserAddressStride
            let fileSize = Int(spec.mmapOffset) + spec.size
            let fd = try makeMemFD(name: "vhost-itest-guest-ram-\(i)", size: fileSize, hugePageSize: spec.hugePageSize)
            let mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, length: fileSize)
            let description = MemoryRegionDescription(guestPhysicalAddress: gpa, size: UInt64(spec.size),
                                                      userAddress: va, mmapOffset: spec.mmapOffset)
            made.append(Region(description: description, fd: fd, mapping: mapping, firstFree: Self.reservedPrefix))
        }
        for a in 0..<made.count {
            for b in (a + 1)..<made.count {
                let x = made[a].description, y = made[b].description
                if x.guestPhysicalAddress < y.guestPhysicalAddress + y.size && y.guestPhysicalAddress < x.guestPhysicalAddress + x.size {
                    throw ArenaError.badLayout("regions \(a) and \(b) overlap in guest-physical space")
                }
            }
        }
        regions = made
    }

    /// One region of `size` bytes at the default addresses.
    public convenience init(size: Int) throws {
        try self.init(regions: [RegionSpec(size: size)])
    }

    /// What SET_MEM_TABLE / ADD_MEM_REG describe, one entry per region, with the fds in the same order.
    public var memoryTable: [MemoryRegionDescription] { regions.map(\.description) }
    public var fileDescriptors: [Int32] { regions.map { $0.fd.rawValue } }

    /// Allocates `length` bytes aligned to `alignment` (a power of two) in `region`, or in the first
    /// region from the current one on that has room.
    public func allocate(_ length: Int, alignment: Int = 8, region: Int? = nil) throws -> GuestBuffer {
        precondition(length > 0 && alignment > 0 && alignment & (alignment - 1) == 0, "bad allocation request")
        let candidates = region.map { [$0] } ?? Array(current..<regions.count)
        for i in candidates {
            let r = regions[i]
            // Align the guest-physical address, which is what the device sees (the local mapping is
            // page aligned and region GPAs are page aligned, so the pointer is aligned too).
            let gpaNext = r.guestPhysicalAddress + UInt64(r.next)
            let pad = Int((UInt64(alignment) - gpaNext % UInt64(alignment)) % UInt64(alignment))
            if r.next + pad + length <= r.size {
                let offset = r.next + pad
                r.next = offset + length
                if region == nil { current = i }
                return GuestBuffer(gpa: r.guestPhysicalAddress + UInt64(offset), pointer: r.base + offset, length: length)
            }
        }
        throw ArenaError.outOfMemory(requested: length)
    }

    /// The local view of `length` bytes at `gpa`, or nil when the range is not inside one region.
    public func buffer(gpa: UInt64, length: Int) -> GuestBuffer? {
        for r in regions {
            let start = r.guestPhysicalAddress
            guard gpa >= start, gpa - start < UInt64(r.size), UInt64(length) <= UInt64(r.size) - (gpa - start) else { continue }
            return GuestBuffer(gpa: gpa, pointer: r.base + Int(gpa - start), length: length)
        }
        return nil
    }

    /// The front-end VA of `gpa` (what SET_VRING_ADDR carries for a ring at that GPA).
    public func userAddress(ofGPA gpa: UInt64) -> UInt64? {
        for r in regions where gpa >= r.guestPhysicalAddress && gpa - r.guestPhysicalAddress < UInt64(r.size) {
            return r.userAddress + (gpa - r.guestPhysicalAddress)
        }
        return nil
    }

    /// A guest-physical address that no region covers (for "address outside guest memory" tests):
    /// one byte past the highest region, rounded up to a page.
    public var unmappedGPA: UInt64 {
        let end = regions.map { $0.guestPhysicalAddress + UInt64($0.size) }.max()!
        return (end + 0xfff) & ~0xfff
    }
}
