import Glibc
import GuestMemory
import Testing
import VhostSystem

/// A memfd of `pages` pages and a local mapping of all of it: the "front-end's" view of guest RAM
/// that each test checks the back-end's mapping against.
final class SharedFile {
    static let page = 4096
    let fd: FileDescriptor
    let local: MemoryMapping

    init(pages: Int) throws {
        fd = try makeMemFD(name: "guest-memory-test", size: pages * Self.page)
        local = try MemoryMapping(fd: fd.rawValue, offset: 0, length: pages * Self.page)
    }

    func region(gpa: UInt64, size: UInt64, va: UInt64 = 0x7f00_0000_0000, offset: UInt64 = 0) throws -> GuestRegion {
        try GuestRegion(guestStart: gpa, size: size, frontendStart: va, mmapOffset: offset, fd: fd.rawValue)
    }
}

/// Runs `body` and returns the kind of GuestMemoryError it threw (nil if it did not throw one).
func memoryErrorKind(_ body: () throws -> Void) -> GuestMemoryError.Kind? {
    do { try body() } catch let e as GuestMemoryError { return e.kind } catch { return nil }
    return nil
}

// MARK: Region validation

struct RegionCase: Sendable, CustomTestStringConvertible {
    var name: String
    var gpa: UInt64, size: UInt64, va: UInt64, offset: UInt64
    var expected: GuestMemoryError.Kind
    var testDescription: String { name }
}

@Test(arguments: [
    RegionCase(name: "size 0", gpa: 0, size: 0, va: 0, offset: 0, expected: .emptyRegion),
    RegionCase(name: "GPA wraps", gpa: UInt64.max - 0xfff, size: 0x2000, va: 0, offset: 0, expected: .wraps("guest address")),
    RegionCase(name: "VA wraps", gpa: 0, size: 0x2000, va: UInt64.max - 0xfff, offset: 0, expected: .wraps("front-end address")),
    RegionCase(name: "mmap offset wraps", gpa: 0, size: 0x2000, va: 0, offset: UInt64.max - 0xfff, expected: .wraps("mmap offset")),
    // 4 pages of file; the region would need offset 0x2000 + 0x3000 = 0x5000 bytes.
    RegionCase(name: "fd too small", gpa: 0, size: 0x3000, va: 0, offset: 0x2000,
               expected: .fileTooSmall(fileSize: 0x4000, needed: 0x5000)),
    RegionCase(name: "fd too small by one byte", gpa: 0, size: 0x4001, va: 0, offset: 0,
               expected: .fileTooSmall(fileSize: 0x4000, needed: 0x4001)),
])
func regionValidationRejects(_ c: RegionCase) throws {
    let file = try SharedFile(pages: 4)
    let kind = memoryErrorKind { _ = try file.region(gpa: c.gpa, size: c.size, va: c.va, offset: c.offset) }
    #expect(kind == c.expected)
}

@Test func regionExactlyCoveringTheFileIsAccepted() throws {
    let file = try SharedFile(pages: 4)
    let r = try file.region(gpa: 0x1_0000, size: 0x2000, offset: 0x2000)
    #expect(r.guestStart == 0x1_0000 && r.size == 0x2000 && r.mmapOffset == 0x2000)
    // host points at file offset 0x2000, not at the start of the file.
    file.local.base.storeBytes(of: 0xab as UInt8, toByteOffset: 0x2000, as: UInt8.self)
    #expect(r.host.load(as: UInt8.self) == 0xab)
}

// MARK: Tables: overlap, add, remove

@Test func overlappingRegionsAreRejected() throws {
    let file = try SharedFile(pages: 4)
    let a = try file.region(gpa: 0x10000, size: 0x2000)
    let b = try file.region(gpa: 0x11000, size: 0x2000, offset: 0x2000)
    let kind = memoryErrorKind { _ = try GuestMemoryMap(regions: [b, a]) }
    guard case .overlaps = kind else {
        Issue.record("expected .overlaps, got \(String(describing: kind))")
        return
    }
    // Adding an overlapping region to an existing table is refused the same way.
    let map = try GuestMemoryMap(regions: [a])
    let kind2 = memoryErrorKind { _ = try map.adding(b) }
    guard case .overlaps = kind2 else {
        Issue.record("expected .overlaps from adding, got \(String(describing: kind2))")
        return
    }
    #expect(map.regions.count == 1) // the original table is unchanged
}

@Test func adjacentRegionsAreNotOverlapping() throws {
    let file = try SharedFile(pages: 4)
    let a = try file.region(gpa: 0x10000, size: 0x2000)
    let b = try file.region(gpa: 0x12000, size: 0x2000, offset: 0x2000)
    let map = try GuestMemoryMap(regions: [b, a])
    #expect(map.regions.map(\.guestStart) == [0x10000, 0x12000]) // kept sorted
}

@Test func addingAndRemovingRegions() throws {
    let file = try SharedFile(pages: 4)
    let a = try file.region(gpa: 0x0, size: 0x1000, va: 0x1000_0000)
    let b = try file.region(gpa: 0x8000_0000, size: 0x1000, va: 0x2000_0000, offset: 0x1000)
    let one = try GuestMemoryMap(regions: [a])
    let two = try one.adding(b)
    #expect(two.regions.count == 2)
    #expect(two.view.translate(GuestAddress(0x8000_0000), length: 1) == b.host)
    #expect(one.view.translate(GuestAddress(0x8000_0000), length: 1) == nil) // snapshots are immutable

    // REM needs all three of gpa, size and va to match.
    for (gpa, size, va): (UInt64, UInt64, UInt64) in [(0x8000_0000, 0x1000, 0x2000_1000), (0x8000_0000, 0x2000, 0x2000_0000),
                                                      (0x8000_1000, 0x1000, 0x2000_0000)] {
        #expect(memoryErrorKind { _ = try two.removing(guestStart: gpa, size: size, frontendStart: va) } == .noSuchRegion)
    }
    let back = try two.removing(guestStart: 0x8000_0000, size: 0x1000, frontendStart: 0x2000_0000)
    #expect(back.regions.count == 1)
    #expect(back.view.translate(GuestAddress(0x8000_0000), length: 1) == nil)
    #expect(back.view.translate(GuestAddress(0), length: 1) == a.host)
    #expect(memoryErrorKind { _ = try GuestMemoryMap.empty.removing(guestStart: 0, size: 0x1000, frontendStart: 0x1000_0000) } == .noSuchRegion)
}

@Test func tableRefusesMoreThanMaxRegions() throws {
    let file = try SharedFile(pages: 1)
    var regions: [GuestRegion] = []
    for i in 0...GuestMemoryMap.maxRegions {
        regions.append(try file.region(gpa: UInt64(i) * 0x1000, size: 0x1000))
    }
    #expect(memoryErrorKind { _ = try GuestMemoryMap(regions: regions) } == .tooManyRegions(GuestMemoryMap.maxRegions))
    #expect(try GuestMemoryMap(regions: Array(regions.dropLast())).regions.count == GuestMemoryMap.maxRegions)
}

// MARK: Translation

struct TranslateCase: Sendable, CustomTestStringConvertible {
    var name: String
    var gpa: UInt64
    var length: UInt64
    /// Offset into the region the result must point at, or nil for "no translation".
    var hostOffset: Int?
    var testDescription: String { name }
}

// One region: gpa 0x10000, size 0x4000.
@Test(arguments: [
    TranslateCase(name: "first byte", gpa: 0x10000, length: 1, hostOffset: 0),
    TranslateCase(name: "whole region", gpa: 0x10000, length: 0x4000, hostOffset: 0),
    TranslateCase(name: "last byte", gpa: 0x13fff, length: 1, hostOffset: 0x3fff),
    TranslateCase(name: "exactly the end", gpa: 0x14000, length: 1, hostOffset: nil),
    TranslateCase(name: "zero length at the end", gpa: 0x14000, length: 0, hostOffset: nil),
    TranslateCase(name: "zero length inside", gpa: 0x12000, length: 0, hostOffset: 0x2000),
    TranslateCase(name: "one byte too long", gpa: 0x13000, length: 0x1001, hostOffset: nil),
    TranslateCase(name: "length near 2^64", gpa: 0x13000, length: UInt64.max, hostOffset: nil),
    TranslateCase(name: "below the region", gpa: 0xffff, length: 1, hostOffset: nil),
    TranslateCase(name: "address near 2^64", gpa: UInt64.max, length: 1, hostOffset: nil),
])
func translateBounds(_ c: TranslateCase) throws {
    let file = try SharedFile(pages: 4)
    let map = try GuestMemoryMap(regions: [try file.region(gpa: 0x10000, size: 0x4000)])
    let got = map.view.translate(GuestAddress(c.gpa), length: c.length)
    #expect(got == c.hostOffset.map { map.regions[0].host + $0 })
}

@Test func translatePrefixSplitsAtTheRegionBoundary() throws {
    // Two adjacent regions from different files: contiguous in guest-physical space, not in ours.
    let f1 = try SharedFile(pages: 2), f2 = try SharedFile(pages: 2)
    let low = try f1.region(gpa: 0x20000, size: 0x2000, va: 0x1000_0000)
    let high = try f2.region(gpa: 0x22000, size: 0x2000, va: 0x5000_0000)
    // The view borrows the map's table: keep the map alive for as long as the view is used.
    let map = try GuestMemoryMap(regions: [high, low])
    defer { withExtendedLifetime(map) {} }
    let view = map.view

    let first = try #require(view.translatePrefix(GuestAddress(0x21800), length: 0x1000))
    #expect(first.0 == low.host + 0x1800 && first.1 == 0x800)
    let second = try #require(view.translatePrefix(GuestAddress(0x22000), length: 0x800))
    #expect(second.0 == high.host && second.1 == 0x800)
    // The whole range is not in one region: translate refuses it.
    #expect(view.translate(GuestAddress(0x21800), length: 0x1000) == nil)
    // A prefix that ends inside the region is returned whole; one past the last region has none.
    #expect(view.translatePrefix(GuestAddress(0x22000), length: 0x10)?.1 == 0x10)
    #expect(view.translatePrefix(GuestAddress(0x24000), length: 1) == nil)
}

@Test func frontendAddressTranslatesToGuestAddress() throws {
    let file = try SharedFile(pages: 4)
    let map = try GuestMemoryMap(regions: [
        try file.region(gpa: 0x0, size: 0x2000, va: 0x7f00_0000_0000),
        try file.region(gpa: 0x1_0000_0000, size: 0x2000, va: 0x7f10_0000_0000, offset: 0x2000),
    ])
    #expect(map.guestAddress(ofFrontend: FrontendAddress(0x7f00_0000_0010), length: 16) == GuestAddress(0x10))
    #expect(map.guestAddress(ofFrontend: FrontendAddress(0x7f10_0000_1000), length: 0x1000) == GuestAddress(0x1_0000_1000))
    // A ring that would run past the region's end, or a VA no region covers.
    #expect(map.guestAddress(ofFrontend: FrontendAddress(0x7f10_0000_1000), length: 0x1001) == nil)
    #expect(map.guestAddress(ofFrontend: FrontendAddress(0x7f00_0000_2000), length: 1) == nil)
    #expect(map.guestAddress(ofFrontend: FrontendAddress(0x10), length: 1) == nil)
}

// MARK: Mapping

@Test func unalignedMmapOffsetMapsFromThePageBelow() throws {
    let file = try SharedFile(pages: 3)
    let offset: UInt64 = 0x1000 + 100
    file.local.base.storeBytes(of: 0x1122_3344 as UInt32, toByteOffset: Int(offset), as: UInt32.self)
    file.local.base.storeBytes(of: 0x77 as UInt8, toByteOffset: Int(offset) + 0x1000 - 1, as: UInt8.self)
    let r = try file.region(gpa: 0x5000, size: 0x1000, offset: offset)
    // The region's first byte is file byte `offset`, and its last byte is readable (the mapping was
    // extended to cover the lead-in from the page boundary).
    #expect(r.host.load(as: UInt32.self) == 0x1122_3344)
    #expect(r.host.load(fromByteOffset: 0xfff, as: UInt8.self) == 0x77)
    let map = try GuestMemoryMap(regions: [r])
    #expect(map.view.translate(GuestAddress(0x5000 + 4), length: 4) == r.host + 4)
}

@Test func regionMappingIsSharedWithTheFile() throws {
    let file = try SharedFile(pages: 2)
    let map = try GuestMemoryMap(regions: [try file.region(gpa: 0x9000, size: 0x2000)])
    let p = try #require(map.view.translate(GuestAddress(0xa000), length: 8))
    // Device writes (through the region) reach the front-end's mapping and vice versa.
    p.storeBytes(of: 0x0102_0304_0506_0708 as UInt64, as: UInt64.self)
    #expect(file.local.base.load(fromByteOffset: 0x1000, as: UInt64.self) == 0x0102_0304_0506_0708)
    file.local.base.storeBytes(of: 0xfe as UInt8, toByteOffset: 0x1008, as: UInt8.self)
    #expect(p.load(fromByteOffset: 8, as: UInt8.self) == 0xfe)
}

@Test func regionKeepsItsMappingAfterTheFDCloses() throws {
    let file = try SharedFile(pages: 1)
    let r = try file.region(gpa: 0, size: 0x1000)
    file.local.base.storeBytes(of: 0x42 as UInt8, toByteOffset: 7, as: UInt8.self)
    // The fd is only borrowed (the session closes it after SET_MEM_TABLE): the mapping must stay.
    file.fd.close()
    #expect(r.host.load(fromByteOffset: 7, as: UInt8.self) == 0x42)
}

@Test func everyRegionIsFencedByGuardPages() throws {
    let file = try SharedFile(pages: 4)
    // A region that starts one page into its file: the guard sits below the mapped page boundary.
    let region = try file.region(gpa: 0x10000, size: 0x2000, offset: 0x1000)
    var ends: [Int32] = [0, 0]
    #expect(pipe(&ends) == 0)
    defer { close(ends[0]); close(ends[1]) }
    // write(2) from an address fails with EFAULT instead of faulting the test when it is inaccessible.
    func readable(_ p: UnsafeRawPointer) -> Bool { write(ends[1], p, 1) == 1 }
    #expect(readable(region.host) && readable(region.host + 0x1fff))
    #expect(!readable(region.host - 1) && !readable(region.host - GuestRegion.guardBytes))
    #expect(!readable(region.host + 0x2000) && !readable(region.host + 0x2000 + GuestRegion.guardBytes - 1))
}
