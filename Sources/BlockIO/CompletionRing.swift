/// A fixed ring of completions that are finished before the caller reaps them: the requests done
/// synchronously at enqueue (flush, discard, write zeroes, bounce reads/writes, every request of the
/// null and memory engines) and submissions the kernel refused. Its storage is allocated once; it
/// holds as many entries as the engine's capacity, which is the most requests in flight at once, so
/// it cannot overflow while the caller keeps to that capacity.
///
/// A struct with `@usableFromInline` members so the `@inlinable` null engine can use it across
/// modules; its owner frees the storage (`deallocate()`) in its deinit.
@usableFromInline
struct CompletionRing {
    @usableFromInline let storage: UnsafeMutablePointer<BlockCompletion>
    @usableFromInline let capacity: Int
    @usableFromInline var head = 0
    @usableFromInline var count = 0

    @usableFromInline
    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
    }

    @usableFromInline
    func deallocate() { storage.deallocate() }

    @inlinable @inline(__always)
    var isEmpty: Bool { count == 0 }

    @inlinable @inline(__always)
    mutating func push(_ completion: BlockCompletion) {
        // More entries than capacity means the caller enqueued beyond `capacity`: a bug in the
        // caller, not an I/O condition, so it stops the process rather than corrupting memory.
        precondition(count < capacity, "BlockEngine: more requests enqueued than its capacity")
        var tail = head &+ count
        if tail >= capacity { tail &-= capacity }
        storage[tail] = completion
        count &+= 1
    }

    /// Moves up to `buffer.count - start` entries into `buffer` from index `start`; returns how many.
    @inlinable @inline(__always)
    mutating func drain(into buffer: UnsafeMutableBufferPointer<BlockCompletion>, from start: Int) -> Int {
        let n = min(count, buffer.count - start)
        guard n > 0, let out = buffer.baseAddress else { return 0 }
        for i in 0..<n {
            out[start &+ i] = storage[head]
            head &+= 1
            if head == capacity { head = 0 }
        }
        count &-= n
        return n
    }
}
