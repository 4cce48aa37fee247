import VhostSystem

/// A framed message as it came off the socket: header fields, payload bytes and the fds that rode
/// with it. Not yet validated; `Request(decoding:)` is the one place that does that.
public struct RawMessage {
    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: [FileDescriptor]

    public init(request: UInt32, flags: UInt32, payload: [UInt8], fds: [FileDescriptor] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds
    }

    public var needsReply: Bool { flags & MessageFlags.needReply.rawValue != 0 }
    public var name: String { FrontendRequest(rawValue: request)?.description ?? "request \(request)" }

    /// Header + payload as sent on the wire.
    public var encoded: [UInt8] {
        var w = PayloadWriter()
        w.u32(request); w.u32(flags); w.u32(UInt32(payload.count)); w.raw(payload)
        return w.bytes
    }
}

/// What a frontend did wrong. Every case drops the connection (the frontend is broken or hostile), or
/// — when the message asked for an acknowledgement — is answered with a failure code first.
public struct ProtocolError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Equatable, Sendable {
        case badVersion
        case unknownFlags
        case replyFlagFromFrontend
        case payloadTooLarge
        case wrongPayloadSize(expected: String)
        case wrongFDCount(expected: String)
        case unknownRequest
        case notNegotiated(String)
        case invalidValue(String)
        case truncated
    }
    public var kind: Kind
    public var request: String

    public init(_ kind: Kind, request: String) {
        self.kind = kind
        self.request = request
    }

    public var description: String {
        switch kind {
        case .badVersion: "\(request): header version is not 1"
        case .unknownFlags: "\(request): undefined header flag bits set"
        case .replyFlagFromFrontend: "\(request): REPLY flag set on a front-end request"
        case .payloadTooLarge: "\(request): payload larger than \(ProtocolLimits.maxPayloadSize) bytes"
        case .wrongPayloadSize(let e): "\(request): payload size must be \(e)"
        case .wrongFDCount(let e): "\(request): must carry \(e)"
        case .unknownRequest: "\(request): unknown request"
        case .notNegotiated(let what): "\(request): needs \(what), which was not negotiated"
        case .invalidValue(let what): "\(request): \(what)"
        case .truncated: "\(request): connection closed mid-message"
        }
    }
}
