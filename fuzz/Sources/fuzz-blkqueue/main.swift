// libFuzzer target: the virtio-blk data path as a hostile guest drives it. The fuzz input becomes the
// bytes of guest memory (descriptor table, avail ring, headers, buffers); a SplitQueue is laid over
// it and BlkQueue<MemoryEngine> polls it: chain walking, request parsing, engine submission and
// used-ring publishing.
//
// Input:
//   [cfg u8]          bits 0-3: log2 of the queue size (clamped to 10: 1...1024)
//                     bit 4: EVENT_IDX; bit 5: read-only disk; bit 6: flush/discard/write-zeroes
//                     negotiated; bit 7: 4096-byte logical blocks instead of 512
//   [nextAvail u16][usedIdx u16]   where the device resumes (as after SET_VRING_BASE)
//   [n u16][n bytes]  copied to guest-physical 0: the descriptor table is at 0, the avail ring right
//                     after it, the used ring after that (4-aligned), so a small queue's rings and
//                     chains sit in the first few hundred bytes of the input
//   then patches until the input ends: [offset u32][len u8][len bytes], written at offset mod the
//                     region size; the queue is polled once after the image and once after each
//                     patch (a driver publishing more chains, or rewriting memory it already handed
//                     over)
//
// The queue logs into an in-flight region (INFLIGHT_SHMFD, as under QEMU) placed inside the guest
// region at `inflightAt`, past the largest queue's rings, so the image and patches can write it: a
// log with version 1 in the image is recovered from (resubmissions, a published-but-unmarked batch),
// and patches rewrite it under a running queue, as a hostile front-end could.
//
// Checks beyond "no crash, no hang": the guest region is surrounded by PROT_NONE guard pages (as every
// GuestRegion is), so a read or write past either end faults (the region is a shared mmap of a
// memfd, as in production, which ASan does not track); and after the passes, draining (poll(acceptNew: false))
// completes every request in flight within a bounded number of passes.
#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import FuzzSupport
import GuestMemory
import VhostSystem
import VirtioBlk
import Virtqueue

let regionBytes = 1 << 20
/// 32 KiB: a 1024-entry queue's rings end at 26 KiB (16 KiB table, 2 KiB avail, 8 KiB used).
let inflightAt = 0x8000
let diskBytes: UInt64 = 64 << 10

/// The guest region, mapped once for the process and cleared before each input. GuestRegion maps every
/// region between PROT_NONE guards (GuestRegion.guardBytes each side), as in production.
let guest: (map: GuestMemoryMap, host: UnsafeMutableRawPointer) = {
    do {
        let fd = try makeMemFD(name: "fuzz-blk-guest", size: regionBytes)
        let region = try GuestRegion(guestStart: 0, size: UInt64(regionBytes), frontendStart: 0x7f00_0000_0000,
                                     mmapOffset: 0, fd: fd.rawValue)
        return (try GuestMemoryMap(regions: [region]), region.host)
    } catch {
        fatalError("guest memory: \(error)")
    }
}()

@inline(never)
func runQueue(_ input: inout ByteReader) {
    memset(guest.host, 0, regionBytes)
    let cfg = input.u8()
    let size = UInt16(1) << min(UInt16(cfg & 0x0f), 10)
    let nextAvail = input.u16(), usedIdx = input.u16()
    let image = input.take(Int(input.u16()))
    UnsafeMutableRawBufferPointer(start: guest.host, count: regionBytes).copyMemory(from: image)

    let descBytes = SplitQueue.descriptorTableBytes(size)
    let availAt = descBytes
    let usedAt = (availAt + SplitQueue.availRingBytes(size) + 3) & ~3
    let config = SplitQueueConfig(size: size, descriptorTable: GuestAddress(0), availRing: GuestAddress(availAt),
                                  usedRing: GuestAddress(usedAt), eventIdx: cfg & 0x10 != 0)
    let features = cfg & 0x40 != 0
    let blockSize: UInt32 = cfg & 0x80 != 0 ? 4096 : 512
    let queue: BlkQueue<MemoryEngine>
    do {
        var ring = try SplitQueue(config: config, memory: guest.map.view, nextAvail: nextAvail, usedIdx: usedIdx)
        do {
            _ = try ring.attachInflight(InflightRegion(base: guest.host + inflightAt, capacity: SplitQueueConfig.maxSize))
        } catch {
            _ = error.description // a foreign log version: the session refuses to start the queue
            return
        }
        // A fresh RAM disk per input: what one input writes must not change what the next one reads.
        var backing = BackingOptions(readOnly: cfg & 0x20 != 0, createSize: diskBytes, engine: .memory)
        backing.blockSize = blockSize
        let store = try BackingStore.open(backing)
        let params = BlkQueueParams(capacitySectors: store.capacityBytes / 512, blockSize: blockSize,
                                    readOnly: store.readOnly, flush: features, discard: features,
                                    writeZeroes: features, writeZeroesMayUnmap: features, serial: "fuzz")
        queue = BlkQueue(ring: ring, memory: guest.map, engine: try MemoryEngine(store: store, depth: Int(size)),
                         params: params)
    } catch {
        fatalError("queue set-up: \(error)") // the layout above always fits: a harness bug
    }

    // A QueueError means the driver broke the ring; the worker stops the queue then, and so do we.
    do {
        _ = try queue.poll(acceptNew: true)
        while !input.isEmpty {
            let offset = Int(input.u32() % UInt32(regionBytes))
            let patch = input.take(Int(input.u8()))
            let n = min(patch.count, regionBytes - offset)
            UnsafeMutableRawBufferPointer(start: guest.host + offset, count: n)
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: patch[..<n]))
            _ = try queue.poll(acceptNew: true)
        }
    } catch {
        _ = error.description
    }
    // What a worker does when told to stop: complete what is in flight without taking more.
    var passes = 0
    while queue.inFlight > 0 {
        passes += 1
        if passes > 1000 { fatalError("\(queue.inFlight) request(s) still in flight after 1000 draining passes") }
        do { _ = try queue.poll(acceptNew: false) } catch { break }
    }
    _ = queue.guestErrors
    _ = queue.lastGuestError
}

_ = guest
runLibFuzzer { data, size in
    var input = ByteReader(data, size)
    runQueue(&input)
    return 0
}
