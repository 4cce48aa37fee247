import BlockIO
import GuestMemory
import Testing
import VhostUserTesting
import Virtqueue
import VirtioBlk

// MARK: Data path

@Test(arguments: [false, true])
func writeThenReadRoundTrips(indirect: Bool) throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let data = pattern(4096, seed: 3)
    // The write's data in two buffers, the read's in three of uneven (but 512-summing) sizes.
    let w1 = try rig.arena.allocate(1536), w2 = try rig.arena.allocate(2560)
    w1.write(Array(data[0..<1536])); w2.write(Array(data[1536...]))
    let wstatus = try rig.buffer(1)
    let wused = try rig.run([BufferSegment(try rig.header(ReqType.out, sector: 8), deviceWritable: false),
                             BufferSegment(w1, deviceWritable: false), BufferSegment(w2, deviceWritable: false),
                             BufferSegment(wstatus, deviceWritable: true)], indirect: indirect)
    #expect(wused?.length == 1)
    #expect(wstatus.read() == [Status.ok])

    let r = [try rig.buffer(1000), try rig.buffer(3000), try rig.buffer(96)]
    let rstatus = try rig.buffer(1)
    let rused = try rig.run([BufferSegment(try rig.header(ReqType.in, sector: 8), deviceWritable: false)]
        + r.map { BufferSegment($0, deviceWritable: true) } + [BufferSegment(rstatus, deviceWritable: true)], indirect: indirect)
    #expect(rused?.length == UInt32(4096 + 1)) // data + status byte
    #expect(rstatus.read() == [Status.ok])
    #expect(r.flatMap { $0.read() } == data)
    // Neighbouring sectors were not touched.
    #expect(try rig.read(sector: 7, count: 512).data == [UInt8](repeating: 0, count: 512))
    #expect(try rig.read(sector: 16, count: 512).data == [UInt8](repeating: 0, count: 512))
}

@Test func firstAndLastSectorsAreReachable() throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(capacitySectors: 2048))
    #expect(try rig.write(sector: 2047, pattern(512, seed: 9)) == Status.ok)
    #expect(try rig.read(sector: 2047, count: 512) == (Status.ok, pattern(512, seed: 9)))
    #expect(try rig.write(sector: 0, pattern(512, seed: 4)) == Status.ok)
    #expect(try rig.read(sector: 0, count: 512).data == pattern(512, seed: 4))
}

// MARK: Any layout (virtio 1.2 §2.6.4)

@Test func headerAndDataInOneDescriptor() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let h = try rig.header(ReqType.out, sector: 4)
    // One readable buffer holding the header followed by 1024 bytes of data: allocate 16 + 1024 and
    // copy the header into its start.
    let both = try rig.arena.allocate(16 + 1024)
    both.write(h.read())
    both.write(pattern(1024, seed: 5), at: 16)
    let status = try rig.buffer(1)
    let used = try rig.run([BufferSegment(both, deviceWritable: false), BufferSegment(status, deviceWritable: true)])
    #expect(used?.length == 1 && status.read() == [Status.ok])
    #expect(try rig.read(sector: 4, count: 1024).data == pattern(1024, seed: 5))
}

@Test func headerSplitAcrossTwoDescriptors() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let h = try rig.header(ReqType.out, sector: 12).read()
    let first = try rig.arena.allocate(8), second = try rig.arena.allocate(8 + 512)
    first.write(Array(h[0..<8]))
    second.write(Array(h[8..<16]))
    second.write(pattern(512, seed: 6), at: 8)
    let status = try rig.buffer(1)
    _ = try rig.run([BufferSegment(first, deviceWritable: false), BufferSegment(second, deviceWritable: false),
                     BufferSegment(status, deviceWritable: true)])
    #expect(status.read() == [Status.ok])
    #expect(try rig.read(sector: 12, count: 512).data == pattern(512, seed: 6))
}

@Test func statusByteSharingADescriptorWithReadData() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    #expect(try rig.write(sector: 20, pattern(1024, seed: 7)) == Status.ok)
    // Data and status in one writable buffer of 1025 bytes: the status is its last byte.
    let both = try rig.buffer(1024 + 1)
    let used = try rig.run([BufferSegment(try rig.header(ReqType.in, sector: 20), deviceWritable: false),
                            BufferSegment(both, deviceWritable: true)])
    #expect(used?.length == 1025)
    let bytes = both.read()
    #expect(Array(bytes[0..<1024]) == pattern(1024, seed: 7))
    #expect(bytes[1024] == Status.ok)
}

@Test func zeroLengthDescriptorsDoNotHideTheStatusByte() throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let status = try rig.buffer(1)
    let empty = try rig.buffer(8)
    // A trailing zero-length writable buffer: the status is still the last byte that has room.
    let used = try rig.run([BufferSegment(try rig.header(ReqType.flush), deviceWritable: false),
                            BufferSegment(status, deviceWritable: true), BufferSegment(gpa: empty.gpa, length: 0, deviceWritable: true)])
    #expect(used?.length == 1 && status.read() == [Status.ok])
    #expect(empty.read() == [UInt8](repeating: 0xff, count: 8))
}

// MARK: GET_ID, FLUSH, unknown types

@Test func getIDFillsExactly20Bytes() throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(serial: "disk-0001"))
    let id = try rig.buffer(20)
    let r = try rig.request(ReqType.getID, data: [BufferSegment(id, deviceWritable: true)])
    #expect(r.status == Status.ok && r.length == 21)
    #expect(id.read() == Array("disk-0001".utf8) + [UInt8](repeating: 0, count: 11))
}

@Test func getIDIntoAShorterBufferWritesOnlyWhatFits() throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(serial: "0123456789abcdefghij"))
    // 8 bytes of id and the status in one writable buffer: the status must not be overwritten by the id.
    let both = try rig.buffer(9)
    let used = try rig.run([BufferSegment(try rig.header(ReqType.getID), deviceWritable: false),
                            BufferSegment(both, deviceWritable: true)])
    #expect(used?.length == 9)
    #expect(both.read() == Array("01234567".utf8) + [Status.ok])
}

@Test(arguments: [true, false])
func flushIsOKOnlyWhenNegotiated(negotiated: Bool) throws {
    let rig = try BlkRig(engine: try memoryEngine(), params: params(flush: negotiated))
    let r = try rig.request(ReqType.flush)
    #expect(r.status == (negotiated ? Status.ok : Status.unsupported))
    #expect(r.length == 1)
    #expect(rig.blk.guestErrors == 0)
}

@Test(arguments: [2, 3, 5, 7, 9, 12, 0xffff_ffff] as [UInt32])
func unknownRequestTypesAreUnsupported(type: UInt32) throws {
    let rig = try BlkRig(engine: try memoryEngine())
    let r = try rig.request(type, data: [BufferSegment(try rig.buffer(512), deviceWritable: true)])
    #expect(r.status == Status.unsupported && r.length == 1)
}
