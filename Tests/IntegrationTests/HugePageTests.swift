#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// Reserves `count` more huge pages of `kib` KiB for the duration of a test and gives them back:
/// the pool is machine-wide, so the suite below is serialized and restores the old value.
final class HugePageReservation {
    let path: String
    let previous: Int

    init(pageKiB kib: Int, count: Int) throws {
        path = "/sys/kernel/mm/hugepages/hugepages-\(kib)kB/nr_hugepages"
        previous = try Self.read(path)
        try Self.write(path, previous + count)
        let free = try Self.read("/sys/kernel/mm/hugepages/hugepages-\(kib)kB/free_hugepages")
        guard free >= count else {
            try? Self.write(path, previous)
            throw IntegrationFailure(description: "could not reserve \(count) huge pages of \(kib) KiB (free: \(free))")
        }
    }

    deinit { try? Self.write(path, previous) }

    static func read(_ path: String) throws -> Int {
        guard let f = fopen(path, "r") else { throw SystemError.current("fopen", context: path) }
        defer { fclose(f) }
        var value = 0
        guard fscanf_int(f, &value) else { throw SystemError("fscanf", errno: EIO, context: path) }
        return value
    }

    static func write(_ path: String, _ value: Int) throws {
        guard let f = fopen(path, "w") else { throw SystemError.current("fopen", context: path) }
        defer { fclose(f) }
        guard fputs("\(value)\n", f) >= 0, fflush(f) == 0 else { throw SystemError.current("write", context: path) }
    }
}

private func fscanf_int(_ f: UnsafeMutablePointer<FILE>, _ value: inout Int) -> Bool {
    var buf = [CChar](repeating: 0, count: 32)
    guard fgets(&buf, Int32(buf.count), f) != nil else { return false }
    guard let v = Int(String(cString: buf).trimmingCharacters(in: "\n ")) else { return false }
    value = v
    return true
}

extension String {
    fileprivate func trimmingCharacters(in chars: String) -> String {
        var s = Substring(self)
        while let c = s.first, chars.contains(c) { s = s.dropFirst() }
        while let c = s.last, chars.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

/// Guest memory on hugetlbfs, as QEMU gives it with `memory-backend-memfd,hugetlb=on,hugetlbsize=…` or
/// `memory-backend-file,mem-path=/dev/hugepages`: the back-end must map it at huge-page-aligned offsets.
@Suite("Huge-page guest memory", .serialized)
struct HugePageTests {
    static let twoMiB = 2 << 20
    static let oneGiB = 1 << 30

    @Test("2 MiB pages: two regions (one at a non-zero mmap offset), both memory setups, data verified",
          arguments: [MemorySetup.memTable, .addMemReg])
    func twoMiBPages(setup: MemorySetup) throws {
        let pages = 16 + 16 + 2 // two 16-page regions, the second 2 pages into its file
        let reservation = try HugePageReservation(pageKiB: 2048, count: pages)
        defer { withExtendedLifetime(reservation) {} }
        let daemon = try TestDaemon.aio(queues: 2)
        let arena = try GuestMemoryArena(regions: [
            .init(size: 16 * Self.twoMiB, hugePageSize: Self.twoMiB),
            .init(size: 16 * Self.twoMiB, mmapOffset: UInt64(2 * Self.twoMiB), hugePageSize: Self.twoMiB),
        ])
        var options = Frontend.StartOptions()
        options.memorySetup = setup
        let s = try daemon.session(queues: 2, arena: arena, options: options)
        try daemon.run(s.frontend) { () throws in
            for (q, d) in s.drivers.enumerated() {
                #expect(try writeReadVerify(d, sector: UInt64(q) * 4096, sectors: 256, seed: 300 + UInt64(q), segments: 4) == nil)
            }
        }
    }

    @Test("1 GiB pages: a 1 GiB region, data verified")
    func oneGiBPage() throws {
        let reservation = try HugePageReservation(pageKiB: 1_048_576, count: 1)
        defer { withExtendedLifetime(reservation) {} }
        let daemon = try TestDaemon.memory()
        let arena = try GuestMemoryArena(regions: [.init(size: Self.oneGiB, hugePageSize: Self.oneGiB)])
        let s = try daemon.session(arena: arena)
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 2048, seed: 310, segments: 8) == nil)
        }
    }
}
