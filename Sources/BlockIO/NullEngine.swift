/// Completes every request at once with success, touching no memory (reads leave the buffers as they
/// are). For measuring the virtio and vhost-user path alone.
///
/// Everything the caller uses per request is `@inlinable`: this engine exists to measure the cost
/// of everything but the I/O, so a cross-module call per request would distort what it measures;
/// inlined into the specialised worker, enqueue is one store into the completion ring.
///
/// Used by one thread at a time (its worker); `@unchecked Sendable` only so it can be handed to it.
public final class NullEngine: BlockEngine, @unchecked Sendable {
    public let capacity: Int
    // @exclusivity(unchecked): an engine is used by one thread (its queue's worker), so Swift's dynamic
    // exclusivity checks on these per-request fields can never fire (bench/HotPath measured their cost).
    @exclusivity(unchecked) @usableFromInline var completions: CompletionRing

    public init(depth: Int) throws(BlockIOError) {
        try validateDepth(depth, engine: "null")
        capacity = depth
        completions = CompletionRing(capacity: depth)
    }

    deinit { completions.deallocate() }

    /// Every request is complete from enqueue on, so those in flight are those not yet reaped.
    @inlinable
    public var inFlight: Int { completions.count }

    @inlinable
    public func enqueue(_ request: BlockRequest) {
        completions.push(BlockCompletion(tag: request.tag, result: 0))
    }

    @inlinable
    public func submit() {}
    /// No system call to amortise or plug to release: one submit per pass.
    @inlinable public var submitBatch: Int { Int.max }

    @inlinable
    public func reap(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        completions.drain(into: buffer, from: 0)
    }

    /// nil: every request is complete by the time `submit()` returns.
    @inlinable
    public var completionEventFD: Int32? { nil }
}
