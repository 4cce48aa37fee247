#if canImport(Glibc)
import Glibc
#endif

/// A RAM disk: reads and writes copy between the caller's iovecs and the store's anonymous mapping,
/// which every queue's engine shares. Requests complete at enqueue. Discard and write-zeroes-unmap
/// give whole pages back to the kernel (MADV_DONTNEED: they read as zeros again and cost no memory);
/// write zeroes without unmap clears bytes. Flush has nothing to do. On a read-only store every
/// modifying request fails with -EBADF, the errno a read-only fd would give.
///
/// Per-request methods are plain members of a `final` class (direct calls from a specialised
/// caller), not `@inlinable`: the copy dominates their cost, not the call.
///
/// Used by one thread at a time (its worker); `@unchecked Sendable` only so it can be handed to it.
/// Different queues may touch the same bytes at once; like a real disk, the result of overlapping
/// concurrent requests is whichever landed last, which virtio leaves undefined anyway.
public final class MemoryEngine: BlockEngine, @unchecked Sendable {
    public let capacity: Int
    // @exclusivity(unchecked): an engine is used by one thread (its queue's worker), so Swift's dynamic
    // exclusivity checks on these per-request fields can never fire (bench/HotPath measured their cost).
    @exclusivity(unchecked) private var completions: CompletionRing
    /// Keeps the mapping alive for as long as this engine may use it.
    private let store: BackingStore
    private let base: UnsafeMutableRawPointer
    private let size: UInt64
    private let readOnly: Bool
    private let pageMask: UInt64

    public init(store: BackingStore, depth: Int) throws(BlockIOError) {
        try validateDepth(depth, engine: "memory")
        guard let memory = store.memory else {
            throw .invalid("memory", path: store.path, "the store was not opened for the memory engine")
        }
        self.store = store
        base = memory.base
        size = store.capacityBytes
        readOnly = store.readOnly
        pageMask = UInt64(max(sysconf(Int32(_SC_PAGESIZE)), 1) - 1)
        capacity = depth
        completions = CompletionRing(capacity: depth)
    }

    deinit { completions.deallocate() }

    /// Every request is complete from enqueue on, so those in flight are those not yet reaped.
    public var inFlight: Int { completions.count }

    /// nil: every request is complete by the time `submit()` returns.
    public var completionEventFD: Int32? { nil }

    public func enqueue(_ request: BlockRequest) {
        completions.push(BlockCompletion(tag: request.tag, result: perform(request)))
    }

    public func submit() {}
    /// No system call to amortise or plug to release: one submit per pass.
    @inlinable public var submitBatch: Int { Int.max }

    public func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        completions.drain(into: buffer, from: 0)
    }

    private func perform(_ request: BlockRequest) -> Int32 {
        if request.operation == .flush { return 0 }
        // The caller validates ranges, but a slip here would be a copy outside the mapping, so the
        // check is repeated (overflow-safe) rather than trusted.
        guard request.offset <= size, request.length <= size - request.offset else { return -EINVAL }
        let offset = Int(request.offset), length = Int(request.length)
        switch request.operation {
        case .read:
            var cursor = IovecCursor(request.iovecs, count: request.iovecCount)
            return cursor.scatter(from: base + offset, length: length) == length ? 0 : -EINVAL
        case .write, .writeDurable: // RAM has no volatile cache beyond itself
            if readOnly { return -EBADF }
            var cursor = IovecCursor(request.iovecs, count: request.iovecCount)
            return cursor.gather(into: base + offset, length: length) == length ? 0 : -EINVAL
        case .writeZeroes:
            if readOnly { return -EBADF }
            (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: length)
            return 0
        case .discard, .writeZeroesUnmap:
            if readOnly { return -EBADF }
            return release(offset: request.offset, length: request.length)
        case .flush:
            return 0
        }
    }

    /// Zeros the range, returning its whole pages to the kernel and clearing the partial edges.
    private func release(offset: UInt64, length: UInt64) -> Int32 {
        let end = offset + length
        let firstPage = (offset + pageMask) & ~pageMask
        let lastPage = end & ~pageMask
        guard firstPage < lastPage else {
            (base + Int(offset)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
            return 0
        }
        (base + Int(offset)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(firstPage - offset))
        (base + Int(lastPage)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(end - lastPage))
        // Private anonymous memory reads as zeros after MADV_DONTNEED. Should the kernel refuse,
        // clearing the bytes gives the same result without freeing the memory.
        if madvise(base + Int(firstPage), Int(lastPage - firstPage), MADV_DONTNEED) != 0 {
            (base + Int(firstPage)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(lastPage - firstPage))
        }
        return 0
    }
}
