#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import GuestMemory
import Virtqueue

extension BlkQueue {
    /// Parses the chain at `head` as a virtio-blk request (virtio 1.2 §5.2.6) and either hands it to the
    /// engine or completes it at once. With VERSION_1 the device must accept any framing (§2.6.4), so the
    /// 16-byte header, the data and the status byte are located as byte ranges over the chain's readable
    /// and writable parts, not as "descriptor 0, descriptors 1…n-2, descriptor n-1".
    @inlinable
    func start(head: UInt16) -> StartOutcome {
        do {
            try ring.walkChain(head: head, memory: memory, into: &segments)
        } catch {
            noteGuestError("head \(head): \(error)")
            // A chain whose every descriptor was walked, but one of whose buffers lies outside guest
            // memory, still has a known status byte: report IOERR there, so the driver cannot mistake
            // a stale status for success. When the chain's shape itself is broken (a loop, a bad index)
            // no byte of it is known to be the status: return the head with length 0.
            return completeNow(head: head, status: BlkStatus.ioError, statusPointer: segments.lastWritableByte,
                               usedLength: 1)
        }
        let segs = segments
        // Status: the last byte of the writable part.
        var writableBytes: UInt64 = 0
        var k = segs.firstWritable
        while k < segs.count { writableBytes += UInt64(segs[k].length); k += 1 }
        var lastWritable = segs.count - 1
        while lastWritable >= segs.firstWritable && segs[lastWritable].length == 0 { lastWritable -= 1 }
        guard lastWritable >= segs.firstWritable else {
            noteGuestError("head \(head): no device-writable status byte")
            return completeNow(head: head, status: BlkStatus.ioError, statusPointer: nil, usedLength: 0)
        }
        let last = segs[lastWritable]
        let status = (last.host + Int(last.length) - 1).assumingMemoryBound(to: UInt8.self)
        let inDataBytes = writableBytes - 1

        // Header: the first 16 readable bytes.
        var readableBytes: UInt64 = 0
        k = 0
        while k < segs.firstWritable { readableBytes += UInt64(segs[k].length); k += 1 }
        let headerSize = 16
        guard readableBytes >= UInt64(headerSize) else {
            noteGuestError("head \(head): request header shorter than 16 bytes")
            return completeNow(head: head, status: BlkStatus.ioError, statusPointer: status, usedLength: 1)
        }
        var header = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &header) { copyReadable(to: $0.baseAddress!, count: headerSize, skipping: 0) }
        let type = UInt32(truncatingIfNeeded: header.0)
        let sector = header.1
        let outDataBytes = readableBytes - UInt64(headerSize)

        func fail(_ s: UInt8, _ why: @autoclosure () -> String) -> StartOutcome {
            if s == BlkStatus.ioError { noteGuestError("head \(head): \(why())") }
            return completeNow(head: head, status: s, statusPointer: status, usedLength: 1)
        }

        switch type {
        case BlkRequestType.in, BlkRequestType.out:
            let isRead = type == BlkRequestType.in
            let bytes = isRead ? inDataBytes : outDataBytes
            if isRead ? outDataBytes != 0 : inDataBytes != 0 {
                return fail(BlkStatus.ioError, "\(isRead ? "read" : "write") with data in the wrong direction")
            }
            if !isRead && params.readOnly { return fail(BlkStatus.ioError, "write to a read-only disk") }
            guard bytes > 0, params.rangeIsValid(sector: sector, bytes: bytes) else {
                return fail(BlkStatus.ioError, "\(bytes) bytes at sector \(sector): outside the disk or misaligned")
            }
            let iov = iovecs + Int(head) * Self.iovecsPerSlot
            guard let count = gatherData(into: iov, writable: isRead) else {
                return fail(BlkStatus.ioError, "more than \(Self.iovecsPerSlot) data segments")
            }
            return submit(head: head, status: status, usedLength: isRead ? UInt32(truncatingIfNeeded: writableBytes) : 1,
                          BlockRequest(tag: UInt32(head), operation: isRead ? .read : (params.writeThrough ? .writeDurable : .write),
                                       offset: sector &* BlkConfig.sectorSize, length: bytes, iovecs: iov, iovecCount: Int32(count)))
        case BlkRequestType.flush:
            guard params.flush else { return fail(BlkStatus.unsupported, "") }
            return submit(head: head, status: status, usedLength: 1,
                          BlockRequest(tag: UInt32(head), operation: .flush, offset: 0, length: 0))
        case BlkRequestType.getID:
            guard outDataBytes == 0 else { return fail(BlkStatus.ioError, "GET_ID with device-readable data") }
            let n = Int(min(UInt64(BlkConfig.idBytes), inDataBytes))
            params.serial.withUnsafeBytes { scatterWritable(from: $0.baseAddress!, count: n) }
            return completeNow(head: head, status: BlkStatus.ok, statusPointer: status, usedLength: UInt32(n) + 1)
        case BlkRequestType.discard, BlkRequestType.writeZeroes:
            let isDiscard = type == BlkRequestType.discard
            guard isDiscard ? params.discard : params.writeZeroes else { return fail(BlkStatus.unsupported, "") }
            if params.readOnly { return fail(BlkStatus.ioError, "discard/write-zeroes on a read-only disk") }
            // One 16-byte range {le64 sector, le32 num_sectors, le32 flags} (max_*_seg = 1).
            let rangeSize: UInt64 = 16
            guard inDataBytes == 0, outDataBytes == rangeSize * UInt64(BlkConfig.maxRangeSegments) else {
                return fail(BlkStatus.ioError, "discard/write-zeroes payload of \(outDataBytes) bytes")
            }
            var range = (UInt64(0), UInt64(0))
            withUnsafeMutableBytes(of: &range) { copyReadable(to: $0.baseAddress!, count: 16, skipping: headerSize) }
            let start = range.0
            let sectors = UInt64(UInt32(truncatingIfNeeded: range.1))
            let flags = UInt32(truncatingIfNeeded: range.1 >> 32)
            // virtio 1.2 §5.2.6.2: unknown flags → UNSUPP; discard must not set UNMAP (bit 0).
            let allowed: UInt32 = isDiscard ? 0 : 1
            guard flags & ~allowed == 0 else { return fail(BlkStatus.unsupported, "") }
            guard sectors > 0, sectors <= UInt64(BlkConfig.maxRangeSectors),
                  params.rangeIsValid(sector: start, bytes: sectors * BlkConfig.sectorSize) else {
                return fail(BlkStatus.ioError, "range of \(sectors) sectors at \(start): outside the disk, misaligned or too long")
            }
            let op: BlockOperation = isDiscard ? .discard : (flags & 1 != 0 && params.writeZeroesMayUnmap ? .writeZeroesUnmap : .writeZeroes)
            return submit(head: head, status: status, usedLength: 1,
                          BlockRequest(tag: UInt32(head), operation: op, offset: start * BlkConfig.sectorSize,
                                       length: sectors * BlkConfig.sectorSize))
        default:
            return fail(BlkStatus.unsupported, "")
        }
    }

    @inlinable
    func submit(head: UInt16, status: UnsafeMutablePointer<UInt8>, usedLength: UInt32, _ request: BlockRequest) -> StartOutcome {
        slots[Int(head)] = Slot(status: status, usedLength: usedLength, busy: true)
        inFlight += 1
        engine.enqueue(request)
        return .submitted
    }

    /// Copies `count` readable bytes starting `skip` bytes into the readable part.
    @inlinable
    func copyReadable(to dst: UnsafeMutableRawPointer, count: Int, skipping skip: Int) {
        var skip = skip
        var copied = 0
        var k = 0
        while k < segments.firstWritable && copied < count {
            let s = segments[k]
            let len = Int(s.length)
            if skip >= len { skip -= len; k += 1; continue }
            let n = min(len - skip, count - copied)
            (dst + copied).copyMemory(from: s.host + skip, byteCount: n)
            copied += n
            skip = 0
            k += 1
        }
    }

    /// Copies `count` bytes into the start of the writable part (GET_ID).
    @inlinable
    func scatterWritable(from src: UnsafeRawPointer, count: Int) {
        var copied = 0
        var k = segments.firstWritable
        while k < segments.count && copied < count {
            let s = segments[k]
            let n = min(Int(s.length), count - copied)
            s.host.copyMemory(from: src + copied, byteCount: n)
            copied += n
            k += 1
        }
    }

    /// Builds the data iovecs: the readable part after the 16-byte header (writes), or the writable
    /// part minus the final status byte (reads). Returns nil when they do not fit in a slot.
    @inlinable
    func gatherData(into iov: UnsafeMutablePointer<iovec>, writable: Bool) -> Int? {
        var count = 0
        if writable {
            var remaining: Int = 0
            var k = segments.firstWritable
            while k < segments.count { remaining += Int(segments[k].length); k += 1 }
            remaining -= 1 // the status byte
            k = segments.firstWritable
            while k < segments.count && remaining > 0 {
                let s = segments[k]
                let n = min(Int(s.length), remaining)
                if n > 0 {
                    guard count < Self.iovecsPerSlot else { return nil }
                    iov[count] = iovec(iov_base: s.host, iov_len: n)
                    count += 1
                    remaining -= n
                }
                k += 1
            }
        } else {
            var skip = 16
            var k = 0
            while k < segments.firstWritable {
                let s = segments[k]
                let len = Int(s.length)
                if skip >= len { skip -= len; k += 1; continue }
                guard count < Self.iovecsPerSlot else { return nil }
                iov[count] = iovec(iov_base: s.host + skip, iov_len: len - skip)
                count += 1
                skip = 0
                k += 1
            }
        }
        return count
    }
}
