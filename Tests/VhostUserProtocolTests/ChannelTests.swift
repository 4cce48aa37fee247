import Glibc
import Testing
import VhostSystem
import VhostUserProtocol

/// A connected pair of channels (front-end side, back-end side).
func channelPair() throws -> (front: Channel, back: Channel) {
    let (a, b) = try UnixSocket.pair()
    return (Channel(a), Channel(b))
}

func header(request: UInt32, flags: UInt32, size: UInt32) -> [UInt8] {
    var w = PayloadWriter()
    w.u32(request); w.u32(flags); w.u32(size)
    return w.bytes
}

func channelErrorKind(_ c: Channel) -> ProtocolError.Kind? {
    do {
        _ = try c.receive()
        return nil
    } catch let e as ProtocolError {
        return e.kind
    } catch {
        return nil
    }
}

@Test func rawMessageEncodingIsLittleEndianHeaderThenPayload() {
    let m = RawMessage(request: 0x0102_0304, flags: 0x9, payload: [0xaa, 0xbb])
    #expect(m.encoded == [4, 3, 2, 1, 9, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb])
    #expect(m.needsReply)
    #expect(RawMessage(request: 5, flags: 1, payload: []).name == "SET_MEM_TABLE")
    #expect(RawMessage(request: 999, flags: 1, payload: []).name == "request 999")
}

@Test func aMessageWithFDsRoundTrips() throws {
    let (front, back) = try channelPair()
    let kick = try EventFD(), call = try EventFD()
    let payload = PayloadEncoding.memTable([regionA, regionB])
    try front.send(RawMessage(request: code(.setMemTable), flags: 0x9, payload: payload), fds: [kick.rawValue, call.rawValue])
    let m = try #require(try back.receive())
    #expect(m.request == code(.setMemTable) && m.flags == 0x9 && m.payload == payload)
    try #require(m.fds.count == 2)
    // Same order, and the received fds are the same eventfds.
    signalEventFD(m.fds[1].rawValue)
    #expect(call.drain() == 1 && kick.drain() == 0)
    // The decoder accepts what the channel produced.
    guard case .setMemTable(let regions, _) = try Request(decoding: m) else { Issue.record("decode"); return }
    #expect(regions == [regionA, regionB])
}

@Test func messagesAreFramedOneAtATime() throws {
    let (front, back) = try channelPair()
    // Two messages in one write: the channel must split them at the header's size.
    let bytes = RawMessage(request: 2, flags: 1, payload: u64(7)).encoded + RawMessage(request: 1, flags: 1, payload: []).encoded
    try front.socket.send(bytes)
    let first = try #require(try back.receive())
    let second = try #require(try back.receive())
    #expect(first.request == 2 && first.payload == u64(7))
    #expect(second.request == 1 && second.payload.isEmpty)
}

@Test func aHeaderSplitOverSeveralWritesIsReassembled() throws {
    let (front, back) = try channelPair()
    let bytes = RawMessage(request: 8, flags: 1, payload: VringState(index: 0, num: 128).encoded).encoded
    try front.socket.send(Array(bytes[0..<5]))
    try front.socket.send(Array(bytes[5..<13]))
    try front.socket.send(Array(bytes[13...]))
    let m = try #require(try back.receive())
    #expect(m.request == 8 && m.payload == VringState(index: 0, num: 128).encoded)
}

@Test(arguments: [ProtocolLimits.maxPayloadSize + 1, 0x1000_0000, Int(UInt32.max)])
func payloadsOverTheLimitAreAFramingError(size: Int) throws {
    let (front, back) = try channelPair()
    try front.socket.send(header(request: 24, flags: 1, size: UInt32(size)))
    #expect(channelErrorKind(back) == .payloadTooLarge)
}

@Test func payloadAtTheLimitIsRead() throws {
    let (front, back) = try channelPair()
    let payload = [UInt8](repeating: 3, count: ProtocolLimits.maxPayloadSize)
    try front.send(RawMessage(request: 24, flags: 1, payload: payload))
    #expect(try back.receive()?.payload == payload)
}

@Test func eofBetweenMessagesIsACleanClose() throws {
    let (front, back) = try channelPair()
    try front.send(RawMessage(request: 1, flags: 1, payload: []))
    front.socket.fd.close()
    #expect(try back.receive()?.request == 1)
    #expect(try back.receive() == nil)
}

@Test func eofMidHeaderIsTruncated() throws {
    let (front, back) = try channelPair()
    try front.socket.send([1, 0, 0, 0, 1])
    front.socket.fd.close()
    #expect(channelErrorKind(back) == .truncated)
}

@Test func eofMidPayloadIsAnError() throws {
    let (front, back) = try channelPair()
    try front.socket.send(header(request: 2, flags: 1, size: 8) + [1, 2, 3])
    front.socket.fd.close()
    #expect(throws: (any Error).self) { _ = try back.receive() }
}

@Test func fdsArrivingWithThePayloadAreRejected() throws {
    let (front, back) = try channelPair()
    let stray = try EventFD()
    // The header arrives alone; the fd rides on the payload bytes instead.
    try front.socket.send(header(request: code(.setVringKick), flags: 1, size: 8))
    try front.socket.send(u64(0), fds: [stray.rawValue])
    guard case .wrongFDCount = channelErrorKind(back) else {
        Issue.record("stray fd accepted")
        return
    }
}

@Test func fdsWithAnEmptyMessageAtEOFAreNotACleanClose() throws {
    // Half a header carrying an fd, then EOF: the fd must not be silently taken as "peer closed".
    let (front, back) = try channelPair()
    let e = try EventFD()
    try front.socket.send([1, 0], fds: [e.rawValue])
    front.socket.fd.close()
    #expect(channelErrorKind(back) == .truncated)
}

@Test func repliesCarryExactlyVersionAndReplyFlags() throws {
    let (front, back) = try channelPair()
    try back.reply(to: code(.getFeatures), payload: u64(0x1234))
    let r = try #require(try front.receive())
    #expect(r.flags == 0x5)
    #expect(r.request == code(.getFeatures))
    #expect(r.payload == u64(0x1234))
    #expect(r.fds.isEmpty)
}
