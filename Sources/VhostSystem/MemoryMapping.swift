#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// An mmap'd range, unmapped when the last reference goes away. Guest memory regions hold one each;
/// the memory map snapshots share them, so a region stays mapped while any snapshot (and thus any
/// worker that may still hold a pointer into it) references it.
public final class MemoryMapping: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int
    /// What deinit unmaps: `base..<base+length`, or the whole reservation around it when guarded.
    private let reservation: UnsafeMutableRawPointer
    private let reservationLength: Int

    /// Maps `length` bytes of `fd` at `offset`, shared (the guest and QEMU see our writes).
    ///
    /// `guardBytes` > 0 puts at least that many inaccessible (PROT_NONE) bytes on each side, so that an
    /// access that runs off either end faults instead of reaching whatever else is mapped next to it:
    /// for guest memory, a bug in a bounds check then crashes loudly (and fuzzing sees it) rather than
    /// reading or writing the daemon's own memory. `alignment` is what the fd needs for the mapping's
    /// address (the huge page size for hugetlbfs). Costs address space only.
    public init(fd: Int32, offset: UInt64, length: Int, writable: Bool = true, populate: Bool = false,
                guardBytes: Int = 0, alignment: Int = 0) throws {
        guard length > 0 else { throw SystemError("mmap", errno: EINVAL, context: "length 0") }
        guard offset <= UInt64(Int64.max) else { throw SystemError("mmap", errno: EINVAL, context: "offset \(offset)") }
        var prot = PROT_READ
        if writable { prot |= PROT_WRITE }
        var flags = MAP_SHARED
        if populate { flags |= MAP_POPULATE }
        guard guardBytes > 0 else {
            let p = Glibc.mmap(nil, length, prot, flags, fd, off_t(offset))
            guard let p, p != MAP_FAILED else {
                throw SystemError.current("mmap", context: "fd \(fd) offset \(offset) length \(length)")
            }
            base = p
            self.length = length
            reservation = p
            reservationLength = length
            return
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let align = max(alignment, page)
        guard align & (align - 1) == 0 else { throw SystemError("mmap", errno: EINVAL, context: "alignment \(alignment)") }
        let guardSize = (guardBytes + page - 1) & ~(page - 1)
        // Reserve room for the guards plus the worst-case slack of aligning the start, then map the
        // file over the middle (MAP_FIXED replaces that part of the reservation atomically).
        let (total, o1) = length.addingReportingOverflow(2 * guardSize + align)
        guard !o1 else { throw SystemError("mmap", errno: EINVAL, context: "length \(length)") }
        let r = Glibc.mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let r, r != MAP_FAILED else { throw SystemError.current("mmap", context: "reserve \(total) bytes") }
        let start = (Int(bitPattern: r) + guardSize + align - 1) & ~(align - 1)
        let p = Glibc.mmap(UnsafeMutableRawPointer(bitPattern: start), length, prot, flags | MAP_FIXED, fd, off_t(offset))
        guard let p, p != MAP_FAILED else {
            let e = SystemError.current("mmap", context: "fd \(fd) offset \(offset) length \(length)")
            munmap(r, total)
            throw e
        }
        base = p
        self.length = length
        reservation = r
        reservationLength = total
    }

    /// Anonymous private memory (tests, in-process doubles).
    public init(anonymous length: Int) throws {
        let p = Glibc.mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemError.current("mmap", context: "anonymous \(length)") }
        base = p
        self.length = length
        reservation = p
        reservationLength = length
    }

    deinit { munmap(reservation, reservationLength) }
}

/// memfd_create + ftruncate: the memory QEMU shares with us, and what our test frontend shares.
/// `hugePageSize` (2 MiB or 1 GiB) puts it on hugetlbfs pages; `size` must then be a multiple of it.
public func makeMemFD(name: String, size: Int, allowSealing: Bool = false, hugePageSize: Int? = nil) throws -> FileDescriptor {
    let raw: Int32
    if let page = hugePageSize {
        guard page > 0, page & (page - 1) == 0 else { throw SystemError("memfd_create", errno: EINVAL, context: "huge page size \(page)") }
        raw = cvh_memfd_create_hugetlb(name, Int32(page.trailingZeroBitCount))
    } else {
        raw = cvh_memfd_create(name, allowSealing ? 1 : 0)
    }
    if raw < 0 { throw SystemError.current("memfd_create", context: name) }
    let fd = FileDescriptor(adopting: raw)
    _ = try retryingEINTR("ftruncate", context: name) { ftruncate(fd.rawValue, off_t(size)) }
    return fd
}
