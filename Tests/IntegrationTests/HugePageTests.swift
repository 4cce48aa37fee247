#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// Reserves `count` more huge pages of `kib` KiB for the duration of a test and gives them back.
///
/// The pool is machine-wide, so the reservation holds an exclusive flock on /sys/kernel/mm/hugepages
/// from before it reads the pool until after it has restored it: `.serialized` below orders this
/// suite's tests within one test process only, and another test process on the same machine (a
/// sanitizer run, a second checkout's suite) resizing the pool at the same time would read a size
/// that includes our pages, and restore it after we restored ours (pages left allocated), or take
/// the pages our mapping was about to reserve.
final class HugePageReservation {
    let directory: String
    let previous: Int
    private let lock: FileDescriptor

    /// Growing the pool is best effort in the kernel: it allocates what it can and stops. A 2 MiB page
    /// needs 2 MiB of contiguous free memory and a 1 GiB page a whole free, migratable gigabyte, which
    /// can be missing for a moment (memory fragmented, pages pinned by other tests' direct I/O). So a
    /// short pool is compacted and asked again, a bounded number of times.
    static let attempts = 8

    init(pageKiB kib: Int, count: Int) throws {
        let lock = try FileDescriptor.open("/sys/kernel/mm/hugepages", flags: O_RDONLY | O_DIRECTORY)
        // Bounded, like every wait in these tests: a process that hangs holding the lock fails this
        // test instead of hanging it too.
        let deadline = Deadline(milliseconds: 120_000)
        while flock(lock.rawValue, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { throw SystemError.current("flock", context: "/sys/kernel/mm/hugepages") }
            guard !deadline.expired else {
                throw IntegrationFailure(description: "another process held the huge page pool's lock (/sys/kernel/mm/hugepages) for 120 s")
            }
            usleep(10_000)
        }
        self.lock = lock
        let directory = "/sys/kernel/mm/hugepages/hugepages-\(kib)kB"
        self.directory = directory
        let previous = try Self.read(directory + "/nr_hugepages")
        self.previous = previous
        var target = previous + count
        var attempt = 1
        while true {
            try Self.write(directory + "/nr_hugepages", target)
            let total = try Self.read(directory + "/nr_hugepages")
            // Free pages that a mapping has reserved but not touched yet are still counted free:
            // only free − reserved can back our mappings.
            let free = try Self.read(directory + "/free_hugepages")
            let reserved = try Self.read(directory + "/resv_hugepages")
            if free - reserved >= count { break }
            guard attempt < Self.attempts else {
                // (deinit, which runs for a fully initialized object that throws, restores the pool.)
                throw IntegrationFailure(description: "could not reserve \(count) huge pages of \(kib) KiB in \(attempt) attempts: pool \(total) of \(target) asked, free \(free), reserved \(reserved)")
            }
            // Pages held by someone outside these tests: ask for more instead of waiting for them.
            if total >= target { target += count - (free - reserved) }
            Self.compactMemory()
            usleep(UInt32(attempt) * 50_000)
            attempt += 1
        }
    }

    deinit { try? Self.write(directory + "/nr_hugepages", previous) }

    /// Asks the kernel to defragment free memory (best effort: nothing to do if it cannot).
    static func compactMemory() {
        try? write("/proc/sys/vm/compact_memory", 1)
    }

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
