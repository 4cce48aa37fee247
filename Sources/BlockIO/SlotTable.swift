#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

/// The requests a kernel engine (`AioEngine`, `UringEngine`) holds, apart from how it talks to its
/// kernel interface. A request handed to the kernel holds a slot, whose number travels with it as
/// the kernel's user data and brings back its tag and length at reap. A request finished at enqueue
/// (done synchronously, or refused) waits in the ring of immediate completions, and the completion
/// eventfd must be signalled for it, since the kernel will not.
///
/// Plain pointers to storage allocated once, so the struct is trivially copyable: an engine keeps it
/// in one stored property and no access to it retains, releases or allocates (a Swift `Array` here
/// would be retained and released at every use through the engine). The owning engine frees the
/// storage with `deallocate()` in its deinit. Used by that engine's one thread.
struct SlotTable {
    let capacity: Int
    private let tags: UnsafeMutablePointer<UInt32>
    private let lengths: UnsafeMutablePointer<UInt64>
    /// Stack of free slot numbers.
    private let freeSlots: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    private var immediate: CompletionRing
    /// Set when the eventfd has to be signalled at the end of `submit()`: immediate completions were
    /// added since it was last signalled, or the engine has work left with nothing in the kernel to
    /// wake its worker.
    private var signalWanted = false

    init(capacity: Int) {
        self.capacity = capacity
        tags = .allocate(capacity: capacity)
        tags.initialize(repeating: 0, count: capacity)
        lengths = .allocate(capacity: capacity)
        lengths.initialize(repeating: 0, count: capacity)
        freeSlots = .allocate(capacity: capacity)
        for i in 0..<capacity { (freeSlots + i).initialize(to: Int32(capacity - 1 - i)) }
        freeCount = capacity
        immediate = CompletionRing(capacity: capacity)
    }

    func deallocate() {
        tags.deallocate()
        lengths.deallocate()
        freeSlots.deallocate()
        immediate.deallocate()
    }

    /// Requests taken and not yet reaped: those holding a slot and those in the immediate ring. Derived
    /// rather than counted, so the per-request path keeps no extra counter.
    var inFlight: Int { capacity - freeCount + immediate.count }

    /// Whether one more request fits: every request in the immediate ring still counts against the
    /// capacity, so a free slot alone is not enough. Checked at every enqueue; also what keeps
    /// `take` from popping an empty stack and the immediate ring from overflowing.
    @inline(__always)
    var hasRoom: Bool { immediate.count < freeCount }

    /// Takes a free slot for a request the engine hands to the kernel. The caller checked `hasRoom`.
    @inline(__always)
    mutating func take(tag: UInt32, length: UInt64) -> Int {
        freeCount &-= 1
        let slot = Int(freeSlots[freeCount])
        tags[slot] = tag
        lengths[slot] = length
        return slot
    }

    @inline(__always)
    func length(of slot: Int) -> UInt64 { lengths[slot] }

    /// A read's or write's result from the kernel's byte count or negative errno (the rule is in
    /// `AioEngine`'s "Results").
    @inline(__always)
    func transferResult(of slot: Int, res: Int64) -> Int32 {
        res < 0 ? Int32(truncatingIfNeeded: res) : (UInt64(res) == lengths[slot] ? 0 : -EIO)
    }

    /// Frees a slot the kernel has answered for and returns the completion to hand back.
    @inline(__always)
    mutating func finish(_ slot: Int, result: Int32) -> BlockCompletion {
        let completion = BlockCompletion(tag: tags[slot], result: result)
        freeSlots[freeCount] = Int32(truncatingIfNeeded: slot)
        freeCount &+= 1
        return completion
    }

    /// The end of a reap loop that called `finish` on a local copy of the table (see the engines'
    /// `reap`). `finish` changes only the free count, so that is all there is to take back: assigning
    /// the whole copy back would store every field, ~24 instructions a reap (bench/HotPath).
    @inline(__always)
    mutating func endReap(_ copy: SlotTable) { freeCount = copy.freeCount }

    /// Frees a slot whose request the kernel refused, completing it with `result` at the next reap.
    mutating func refuse(_ slot: Int, result: Int32) {
        immediate.push(finish(slot, result: result))
        signalWanted = true
    }

    /// Completes a request that never reached the kernel: it is reaped with the next `drain`.
    @inline(__always)
    mutating func complete(tag: UInt32, result: Int32) {
        immediate.push(BlockCompletion(tag: tag, result: result))
        signalWanted = true
    }

    /// Makes the next `signalIfWanted` signal the eventfd although nothing completed: for work left
    /// queued with nothing in the kernel that would wake the worker to submit it again.
    @inline(__always)
    mutating func wantSignal() { signalWanted = true }

    /// The end of every `submit()`: a worker about to sleep on the eventfd must see the immediate
    /// completions (and the work left queued) that no kernel completion will signal.
    @inline(__always)
    mutating func signalIfWanted(_ eventFD: Int32) {
        if signalWanted {
            signalWanted = false
            signalEventFD(eventFD)
        }
    }

    /// Moves immediate completions into the start of `buffer`; returns how many.
    @inline(__always)
    mutating func drain(into buffer: UnsafeMutableBufferPointer<BlockCompletion>) -> Int {
        immediate.drain(into: buffer, from: 0)
    }
}
