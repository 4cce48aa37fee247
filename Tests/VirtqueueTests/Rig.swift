import GuestMemory
import Testing
import VhostSystem
import VhostUserTesting
import Virtqueue

/// The back-end's view (a GuestMemoryMap of its own mappings) of the memfds a GuestMemoryArena shares,
/// exactly as a session builds it from SET_MEM_TABLE.
func backendMap(of arena: GuestMemoryArena) throws -> GuestMemoryMap {
    try GuestMemoryMap(regions: arena.regions.map {
        try GuestRegion(guestStart: $0.guestPhysicalAddress, size: UInt64($0.size), frontendStart: $0.userAddress,
                        mmapOffset: $0.description.mmapOffset, fd: $0.fd.rawValue)
    })
}

/// A driver-side ring (DriverQueue, in an arena) and the device-side SplitQueue over the same memory.
final class Rig {
    let arena: GuestMemoryArena
    let map: GuestMemoryMap
    let driver: DriverQueue
    var queue: SplitQueue
    var segments: SegmentBuffer

    init(size: Int = 8, eventIdx: Bool = false, usedIdx: UInt16 = 0, segmentCapacity: Int = 16,
         regions: [GuestMemoryArena.RegionSpec] = [.init(size: 1 << 20)]) throws {
        arena = try GuestMemoryArena(regions: regions)
        map = try backendMap(of: arena)
        driver = try DriverQueue(index: 0, size: size, arena: arena, region: 0)
        driver.eventIdx = eventIdx
        if usedIdx != 0 { driver.resetUsedIndex(to: usedIdx) }
        queue = try SplitQueue(config: Self.config(driver, eventIdx: eventIdx), memory: map.view, nextAvail: 0, usedIdx: usedIdx)
        segments = SegmentBuffer(capacity: segmentCapacity)
    }

    deinit { segments.deallocate() }

    static func config(_ d: DriverQueue, eventIdx: Bool = false) -> SplitQueueConfig {
        SplitQueueConfig(size: d.size, descriptorTable: GuestAddress(d.descriptorTable.gpa),
                         availRing: GuestAddress(d.availRing.gpa), usedRing: GuestAddress(d.usedRing.gpa), eventIdx: eventIdx)
    }

    /// Publishes hand-written `head` as the next avail entry and pops it on the device side.
    func publishAndPop(_ head: UInt16) throws -> UInt16 {
        driver.pushAvail(head)
        return try popAdded(head)
    }

    /// Publishes a chain `addChain` already put in the avail ring and pops it on the device side.
    func popAdded(_ head: UInt16) throws -> UInt16 {
        driver.publish()
        #expect(try queue.pending() == 1)
        return try queue.popHead()
    }

    /// Walks `head`: the segments as (host, length, writable) or the chain error.
    func walk(_ head: UInt16) -> Result<[Seg], ChainError> {
        do throws(ChainError) {
            try queue.walkChain(head: head, memory: map.view, into: &segments)
            var out: [Seg] = []
            for i in 0..<segments.count {
                let s = segments[i]
                out.append(Seg(host: s.host, length: s.length, writable: s.writable))
            }
            #expect(segments.firstWritable == (out.firstIndex { $0.writable } ?? out.count))
            return .success(out)
        } catch {
            return .failure(error)
        }
    }

    /// The error walking `head` produced, nil if the walk succeeded.
    func walkError(_ head: UInt16) -> ChainError? {
        if case .failure(let e) = walk(head) { return e }
        return nil
    }

    /// Host pointer of a guest buffer, as the back-end maps it.
    func host(_ b: GuestBuffer) -> UnsafeMutableRawPointer? { map.view.translate(GuestAddress(b.gpa), length: UInt64(b.length)) }

    /// The avail ring's used_event field (virtio 1.2 §2.7.6).
    func setUsedEvent(_ v: UInt16) {
        driver.availRing.pointer.storeBytes(of: v, toByteOffset: 4 + 2 * Int(driver.size), as: UInt16.self)
    }
}

struct Seg: Equatable {
    var host: UnsafeMutableRawPointer
    var length: UInt32
    var writable: Bool
}
