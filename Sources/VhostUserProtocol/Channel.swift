import VhostSystem

/// Framing on a connected vhost-user socket: reads one message (header, payload, fds) and sends
/// replies. Used by the back-end and by the test front-end.
public final class Channel {
    public let socket: UnixSocket

    public init(_ socket: UnixSocket) { self.socket = socket }

    /// Reads the next message. Returns nil when the peer closed the connection between messages.
    /// Framing errors (a size over the limit, EOF mid-message, a truncated fd list) throw: the stream
    /// can no longer be trusted to be in sync, so the caller drops the connection.
    public func receive() throws -> RawMessage? {
        var header = [UInt8](repeating: 0, count: ProtocolLimits.headerSize)
        var fds: [FileDescriptor] = []
        var got = 0
        while got < header.count {
            let r = try header.withUnsafeMutableBytes {
                try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]),
                                   maxFDs: ProtocolLimits.maxFDsPerMessage)
            }
            fds += r.fds
            if r.fdsTruncated {
                throw ProtocolError(.wrongFDCount(expected: "at most \(ProtocolLimits.maxFDsPerMessage) fds"), request: "message")
            }
            if r.bytes == 0 {
                if got == 0 && fds.isEmpty { return nil }
                throw ProtocolError(.truncated, request: "header")
            }
            got += r.bytes
        }
        let h = PayloadReader(header)
        let request = h.u32(at: 0), flags = h.u32(at: 4), size = Int(h.u32(at: 8))
        let name = FrontendRequest(rawValue: request)?.description ?? "request \(request)"
        guard size <= ProtocolLimits.maxPayloadSize else { throw ProtocolError(.payloadTooLarge, request: name) }
        var payload = [UInt8](repeating: 0, count: size)
        if size > 0 {
            let r = try payload.withUnsafeMutableBytes { try socket.receiveExactly(into: $0) }
            // fds must ride on the header's bytes; any that arrive with the payload are a violation.
            if !r.strayFDs.isEmpty {
                throw ProtocolError(.wrongFDCount(expected: "fds only with the header"), request: name)
            }
            if !r.complete { throw ProtocolError(.truncated, request: name) }
        }
        return RawMessage(request: request, flags: flags, payload: payload, fds: fds)
    }

    /// Sends a reply: flags exactly VERSION|REPLY (QEMU rejects anything else).
    public func reply(to request: UInt32, payload: [UInt8], fds: [Int32] = []) throws {
        let m = RawMessage(request: request, flags: MessageFlags.version1.rawValue | MessageFlags.reply.rawValue,
                           payload: payload)
        try socket.send(m.encoded, fds: fds)
    }

    /// Sends a front-end request (test front-ends and the load generator).
    public func send(_ message: RawMessage, fds: [Int32] = []) throws {
        try socket.send(message.encoded, fds: fds)
    }
}
