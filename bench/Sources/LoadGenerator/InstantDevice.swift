#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A device-side consumer of a split ring in the generator's own memory that completes every request
/// at once: it writes VIRTIO_BLK_S_OK into the chain's last descriptor and pushes the head to the
/// used ring, touching no data. Driving it measures the generator's own capacity (the most IOPS it
/// can issue and reap), which tells whether a result against a real back-end is the generator's
/// limit or the back-end's. It busy-polls and never asks for kicks.
public struct InstantDevice: @unchecked Sendable {
    public var memory: QueueMemory
    /// Where guest-physical address `regionGPA` is mapped locally, and the region's length: the
    /// translation for descriptor addresses (one-region arena).
    public var regionBase: UnsafeMutableRawPointer
    public var regionGPA: UInt64
    public var regionSize: UInt64
    /// [0] stop flag (main → device).
    public var control: UnsafeMutablePointer<UInt64>

    public init(memory: QueueMemory, regionBase: UnsafeMutableRawPointer, regionGPA: UInt64, regionSize: UInt64,
                control: UnsafeMutablePointer<UInt64>) {
        self.memory = memory
        self.regionBase = regionBase
        self.regionGPA = regionGPA
        self.regionSize = regionSize
        self.control = control
    }

    /// Serves the ring until the stop flag is set. Returns the requests completed.
    public func run() -> UInt64 {
        let qsize = memory.queueSize
        let mask = UInt16(truncatingIfNeeded: qsize - 1)
        let desc = memory.desc, avail = memory.avail, used = memory.used
        let availIdxP = avail + 2, usedIdxP = used + 2
        // VRING_USED_F_NO_NOTIFY: this device polls, kicks would only cost the driver system calls.
        cvh_store_release_u16(used, Virtio.usedNoNotify)
        // A fresh ring starts at index 0 on both sides. Not read from the ring: this thread may be
        // scheduled only after the driver has published its first requests, and starting from the
        // avail index it sees then would skip them forever.
        var lastAvail: UInt16 = 0
        var usedIdx: UInt16 = 0
        var served: UInt64 = 0
        var idle: UInt32 = 0
        while true {
            let availIdx = cvh_load_acquire_u16(availIdxP)
            if availIdx == lastAvail {
                idle &+= 1
                // Look at the stop flag only every 1024 idle spins: the flag's cache line is written
                // by another core, and reading it on every spin would slow the ring reads down.
                if idle & 1023 == 0 && cvh_load_acquire_u64(control) != 0 { break }
                continue
            }
            while lastAvail != availIdx {
                let head = UInt16(littleEndian: (avail + 4 + 2 * Int(lastAvail & mask)).load(as: UInt16.self))
                lastAvail &+= 1
                // Walk to the chain's last descriptor (the status byte), at most a ring's length of
                // hops so that a looping chain cannot hang the device.
                var d = Int(head) & (qsize - 1)
                var hops = 0
                while hops < qsize {
                    let p = desc + Virtio.descriptorSize * d
                    let flags = UInt16(littleEndian: p.load(fromByteOffset: 12, as: UInt16.self))
                    if flags & Virtio.descNext == 0 { break }
                    d = Int(UInt16(littleEndian: p.load(fromByteOffset: 14, as: UInt16.self))) & (qsize - 1)
                    hops += 1
                }
                let statusGPA = UInt64(littleEndian: (desc + Virtio.descriptorSize * d).load(as: UInt64.self))
                var status = Virtio.statusOK
                if statusGPA >= regionGPA && statusGPA - regionGPA < regionSize {
                    (regionBase + Int(statusGPA - regionGPA)).storeBytes(of: status, as: UInt8.self)
                } else {
                    status = 1
                }
                let e = used + 4 + 8 * Int(usedIdx & mask)
                e.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
                e.storeBytes(of: UInt32(status == Virtio.statusOK ? 1 : 0).littleEndian, toByteOffset: 4, as: UInt32.self)
                usedIdx &+= 1
                served &+= 1
            }
            cvh_store_release_u16(usedIdxP, usedIdx)
            // Interrupts only when the driver did not set VRING_AVAIL_F_NO_INTERRUPT (event wait mode).
            cvh_fence_seq_cst()
            if cvh_load_acquire_u16(avail) & Virtio.availNoInterrupt == 0 {
                var one: UInt64 = 1
                _ = write(memory.callFD, &one, 8)
            }
            idle = 0
        }
        return served
    }
}
