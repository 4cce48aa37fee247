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

    /// Maps `length` bytes of `fd` at `offset`, shared (the guest and QEMU see our writes).
    public init(fd: Int32, offset: UInt64, length: Int, writable: Bool = true, populate: Bool = false) throws {
        guard length > 0 else { throw SystemError("mmap", errno: EINVAL, context: "length 0") }
        guard offset <= UInt64(Int64.max) else { throw SystemError("mmap", errno: EINVAL, context: "offset \(offset)") }
        var prot = PROT_READ
        if writable { prot |= PROT_WRITE }
        var flags = MAP_SHARED
        if populate { flags |= MAP_POPULATE }
        let p = Glibc.mmap(nil, length, prot, flags, fd, off_t(offset))
        guard let p, p != MAP_FAILED else {
            throw SystemError.current("mmap", context: "fd \(fd) offset \(offset) length \(length)")
        }
        base = p
        self.length = length
    }

    /// Anonymous private memory (tests, in-process doubles).
    public init(anonymous length: Int) throws {
        let p = Glibc.mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemError.current("mmap", context: "anonymous \(length)") }
        base = p
        self.length = length
    }

    deinit { munmap(base, length) }
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
