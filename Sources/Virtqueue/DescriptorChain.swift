import GuestMemory

/// Why one request's descriptor chain is unusable. The request fails (virtio-blk: IOERR); the queue
/// keeps running.
public enum ChainError: Error, Equatable, CustomStringConvertible {
    case loop
    case nextOutOfRange(UInt16)
    case nestedIndirect
    case indirectWithNext
    case indirectTableLength(UInt32)
    case indirectNotAtHead
    case addressOutsideMemory(GuestAddress, UInt32)
    case readableAfterWritable
    case tooManySegments

    public var description: String {
        switch self {
        case .loop: "descriptor chain longer than the queue (a loop)"
        case .nextOutOfRange(let n): "next index \(n) out of range"
        case .nestedIndirect: "indirect descriptor inside an indirect table"
        case .indirectWithNext: "descriptor has both INDIRECT and NEXT"
        case .indirectTableLength(let l): "indirect table length \(l) is not a non-zero multiple of 16"
        case .indirectNotAtHead: "indirect descriptor after the head of a chain"
        case .addressOutsideMemory(let a, let l): "buffer \(a)+\(l) outside guest memory"
        case .readableAfterWritable: "device-readable descriptor after a device-writable one"
        case .tooManySegments: "more buffer segments than the device handles"
        }
    }
}

/// One translated buffer piece of a chain.
public struct Segment {
    public var host: UnsafeMutableRawPointer
    public var length: UInt32
    public var writable: Bool
    @inlinable public init(host: UnsafeMutableRawPointer, length: UInt32, writable: Bool) {
        self.host = host
        self.length = length
        self.writable = writable
    }
}

/// Preallocated storage for one chain's segments, reused for every request on a queue so the walk
/// allocates nothing.
public struct SegmentBuffer {
    public let capacity: Int
    public let base: UnsafeMutablePointer<Segment>
    public var count: Int = 0
    /// Segments before this index are device-readable, the rest device-writable.
    public var firstWritable: Int = 0
    /// The last byte of the chain's last non-empty device-writable buffer, when the whole chain was
    /// walked and that buffer lies in guest memory — even if another buffer did not (then the walk
    /// throws `.addressOutsideMemory`, and the caller can still report the error in this byte).
    public var lastWritableByte: UnsafeMutablePointer<UInt8>?

    public init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
    }

    public func deallocate() { base.deallocate() }

    @inlinable
    public subscript(i: Int) -> Segment {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}

extension SplitQueue {
    /// Walks the chain that starts at `head`, translating every buffer to host memory into `out`.
    /// Enforces virtio 1.2 §2.7.5: a chain is no longer than the queue (so a loop is caught), `next`
    /// stays inside its table, an indirect table is a non-zero multiple of 16 bytes, holds no further
    /// indirect descriptor, and is only referenced from the head without NEXT; device-readable buffers
    /// precede device-writable ones; every buffer lies inside guest memory (a buffer that crosses into an
    /// adjacent region becomes two segments).
    @inlinable
    public func walkChain(head: UInt16, memory: GuestMemoryView, into out: inout SegmentBuffer) throws(ChainError) {
        // Everything the loop updates lives in locals and reaches `out` once at the end: `out` is
        // inout memory, and stores to it on every descriptor kept the compiler from holding these
        // in registers (callgrind: ~100 instructions per descriptor, most of them spills).
        let base = out.base, capacity = out.capacity
        var count = 0
        var firstWritable = -1 // -1: no device-writable descriptor yet
        var lastWritable: UnsafeMutablePointer<UInt8>?
        out.count = 0
        out.firstWritable = 0
        out.lastWritableByte = nil
        // A buffer outside guest memory fails the request, but the walk goes on to the end so the
        // chain's shape is still checked and its status byte can still be found.
        var badAddress: (address: UInt64, length: UInt32)?

        var d = descriptor(head)
        var table = desc
        var tableSize = size
        var budget = Int(size) // descriptors we may still visit before calling it a loop
        if d.flags & Descriptor.flagIndirect != 0 {
            guard d.flags & Descriptor.flagNext == 0 else { throw .indirectWithNext }
            guard d.length > 0, d.length % 16 == 0 else { throw .indirectTableLength(d.length) }
            let entries = d.length / 16
            // An indirect table can hold at most as many descriptors as a u16 `next` can name.
            guard entries <= UInt32(UInt16.max) else { throw .indirectTableLength(d.length) }
            guard let t = memory.translate(GuestAddress(d.address), length: UInt64(d.length)) else {
                throw .addressOutsideMemory(GuestAddress(d.address), d.length)
            }
            table = t
            tableSize = UInt16(entries)
            budget = Int(entries)
            d = Descriptor(at: table)
        }
        let indirect = table != desc

        while true {
            budget -= 1
            guard budget >= 0 else { throw .loop }
            if d.flags & Descriptor.flagIndirect != 0 { throw indirect ? .nestedIndirect : .indirectNotAtHead }
            let writable = d.flags & Descriptor.flagWrite != 0
            if writable {
                if firstWritable < 0 { firstWritable = count }
            } else if firstWritable >= 0 {
                throw .readableAfterWritable
            }
            // Zero-length buffers carry nothing: they add no segment and are not translated, but
            // still count towards the chain's shape.
            if d.length > 0 {
                if let host = memory.translate(GuestAddress(d.address), length: UInt64(d.length)) {
                    // The common case: the whole buffer in one region.
                    guard count < capacity else { throw .tooManySegments }
                    base[count] = Segment(host: host, length: d.length, writable: writable)
                    count &+= 1
                    if writable { lastWritable = (host + (Int(d.length) &- 1)).assumingMemoryBound(to: UInt8.self) }
                } else {
                    let last = try translateAcrossRegions(d, writable: writable, memory: memory, into: base,
                                                          capacity: capacity, count: &count)
                    if last == nil, badAddress == nil { badAddress = (d.address, d.length) }
                    if writable { lastWritable = last }
                }
            }
            guard d.flags & Descriptor.flagNext != 0 else { break }
            guard d.next < tableSize else { throw .nextOutOfRange(d.next) }
            d = Descriptor(at: table + 16 * Int(d.next))
        }
        out.count = count
        out.firstWritable = firstWritable < 0 ? count : firstWritable
        out.lastWritableByte = lastWritable
        if let badAddress { throw .addressOutsideMemory(GuestAddress(badAddress.address), badAddress.length) }
    }

    /// A buffer that is not inside one region: one segment per region it crosses, when the regions
    /// are adjacent. Returns the buffer's last byte, or nil if part of it lies outside guest memory
    /// (the segments for the part before stay; the walk fails the request at its end anyway).
    @inlinable
    func translateAcrossRegions(_ d: Descriptor, writable: Bool, memory: GuestMemoryView,
                                into base: UnsafeMutablePointer<Segment>, capacity: Int,
                                count: inout Int) throws(ChainError) -> UnsafeMutablePointer<UInt8>? {
        var gpa = d.address
        var remaining = UInt64(d.length)
        var lastByte: UnsafeMutablePointer<UInt8>?
        while remaining > 0 {
            // translatePrefix returns n ≤ guestEnd - gpa, so gpa + n cannot overflow.
            guard let (host, n) = memory.translatePrefix(GuestAddress(gpa), length: remaining) else { return nil }
            guard count < capacity else { throw .tooManySegments }
            // n ≤ remaining ≤ d.length, a UInt32.
            base[count] = Segment(host: host, length: UInt32(truncatingIfNeeded: n), writable: writable)
            count += 1
            gpa += n
            remaining -= n
            lastByte = (host + Int(n) - 1).assumingMemoryBound(to: UInt8.self)
        }
        return lastByte
    }
}
