import VhostSystem

/// A validated front-end request with its decoded payload and owned fds. Producing one of these checks
/// the exact payload size, the header version and flags, and that fds arrive exactly where the message
/// carries them (vhost-user.rst: each message's "Payload" and "file descriptor" rules). Queue indices
/// are checked against the device's queue count by the backend's dispatcher, which knows it.
public enum Request {
    case getFeatures
    case setFeatures(VirtioFeatures)
    case setOwner
    case resetOwner
    case resetDevice
    case setMemTable([MemoryRegionDescription], [FileDescriptor])
    case setVringNum(VringState)
    case setVringAddr(VringAddress)
    case setVringBase(VringState)
    case getVringBase(VringState)
    case setVringKick(index: UInt32, fd: FileDescriptor?)
    case setVringCall(index: UInt32, fd: FileDescriptor?)
    case setVringErr(index: UInt32, fd: FileDescriptor?)
    case getProtocolFeatures
    case setProtocolFeatures(ProtocolFeatures)
    case getQueueNum
    case setVringEnable(VringState)
    case getConfig(ConfigAccess)
    case setConfig(ConfigAccess)
    case getMaxMemSlots
    case addMemReg(MemoryRegionDescription, FileDescriptor)
    case remMemReg(MemoryRegionDescription)
    /// The payload size is kept so the reply can mirror it (see `InflightDescription`).
    case getInflightFD(InflightDescription, payloadSize: Int)
    case setInflightFD(InflightDescription, FileDescriptor)

    /// The queue the request addresses, for the dispatcher's range check.
    public var queueIndex: UInt32? {
        switch self {
        case .setVringNum(let s), .setVringBase(let s), .getVringBase(let s), .setVringEnable(let s): s.index
        case .setVringAddr(let a): a.index
        case .setVringKick(let i, _), .setVringCall(let i, _), .setVringErr(let i, _): i
        default: nil
        }
    }

    /// Validates and decodes `message`, taking ownership of its fds. On error the fds are closed when
    /// `message` goes away.
    public init(decoding message: RawMessage) throws(ProtocolError) {
        let name = message.name
        func fail(_ k: ProtocolError.Kind) -> ProtocolError { ProtocolError(k, request: name) }

        guard message.flags & MessageFlags.versionMask == 1 else { throw fail(.badVersion) }
        guard message.flags & ~MessageFlags.known == 0 else { throw fail(.unknownFlags) }
        guard message.flags & MessageFlags.reply.rawValue == 0 else { throw fail(.replyFlagFromFrontend) }
        guard let code = FrontendRequest(rawValue: message.request) else { throw fail(.unknownRequest) }

        let p = PayloadReader(message.payload)
        let size = message.payload.count
        let fds = message.fds
        func expectSize(_ n: Int) throws(ProtocolError) {
            guard size == n else { throw fail(.wrongPayloadSize(expected: "\(n) bytes, got \(size)")) }
        }
        func expectFDs(_ n: Int) throws(ProtocolError) {
            guard fds.count == n else {
                throw fail(.wrongFDCount(expected: n == 0 ? "no fds, got \(fds.count)" : "\(n) fd(s), got \(fds.count)"))
            }
        }
        // SET_VRING_KICK/CALL/ERR: one fd unless bit 8 says the queue is polled instead.
        func vringFD() throws(ProtocolError) -> (UInt32, FileDescriptor?) {
            try expectSize(8)
            let v = p.u64(at: 0)
            guard v & ~(ProtocolLimits.vringIndexMask | ProtocolLimits.vringNoFDFlag) == 0 else {
                throw fail(.invalidValue("undefined bits in 0x\(String(v, radix: 16))"))
            }
            let index = UInt32(v & ProtocolLimits.vringIndexMask)
            if v & ProtocolLimits.vringNoFDFlag != 0 {
                try expectFDs(0)
                return (index, nil)
            }
            try expectFDs(1)
            return (index, fds[0])
        }

        switch code {
        case .getFeatures:
            try expectSize(0); try expectFDs(0); self = .getFeatures
        case .setFeatures:
            try expectSize(8); try expectFDs(0); self = .setFeatures(VirtioFeatures(rawValue: p.u64(at: 0)))
        case .setOwner:
            try expectSize(0); try expectFDs(0); self = .setOwner
        case .resetOwner:
            // QEMU sends RESET_OWNER with a u64 payload of 0 on some paths and none on others.
            guard size == 0 || size == 8 else { throw fail(.wrongPayloadSize(expected: "0 or 8 bytes, got \(size)")) }
            try expectFDs(0); self = .resetOwner
        case .resetDevice:
            // No payload in the spec; accepted with RESET_OWNER's u64 too, since front-ends fill it alike.
            guard size == 0 || size == 8 else { throw fail(.wrongPayloadSize(expected: "0 or 8 bytes, got \(size)")) }
            try expectFDs(0); self = .resetDevice
        case .setMemTable:
            guard size >= 8 else { throw fail(.wrongPayloadSize(expected: "at least 8 bytes, got \(size)")) }
            let count = Int(p.u32(at: 0))
            guard count >= 1, count <= ProtocolLimits.memTableMaxRegions else {
                throw fail(.invalidValue("region count \(count) outside 1...\(ProtocolLimits.memTableMaxRegions)"))
            }
            try expectSize(8 + count * MemoryRegionDescription.size)
            try expectFDs(count)
            let regions = (0..<count).map { MemoryRegionDescription(p, at: 8 + $0 * MemoryRegionDescription.size) }
            self = .setMemTable(regions, fds)
        case .setVringNum:
            try expectSize(8); try expectFDs(0); self = .setVringNum(VringState(p))
        case .setVringAddr:
            try expectSize(VringAddress.size); try expectFDs(0); self = .setVringAddr(VringAddress(p))
        case .setVringBase:
            try expectSize(8); try expectFDs(0); self = .setVringBase(VringState(p))
        case .getVringBase:
            try expectSize(8); try expectFDs(0); self = .getVringBase(VringState(p))
        case .setVringKick:
            let (i, fd) = try vringFD(); self = .setVringKick(index: i, fd: fd)
        case .setVringCall:
            let (i, fd) = try vringFD(); self = .setVringCall(index: i, fd: fd)
        case .setVringErr:
            let (i, fd) = try vringFD(); self = .setVringErr(index: i, fd: fd)
        case .getProtocolFeatures:
            try expectSize(0); try expectFDs(0); self = .getProtocolFeatures
        case .setProtocolFeatures:
            try expectSize(8); try expectFDs(0); self = .setProtocolFeatures(ProtocolFeatures(rawValue: p.u64(at: 0)))
        case .getQueueNum:
            try expectSize(0); try expectFDs(0); self = .getQueueNum
        case .setVringEnable:
            try expectSize(8); try expectFDs(0)
            let s = VringState(p)
            guard s.num <= 1 else { throw fail(.invalidValue("enable must be 0 or 1, got \(s.num)")) }
            self = .setVringEnable(s)
        case .getConfig, .setConfig:
            try expectFDs(0)
            guard size >= ConfigAccess.headerSize else { throw fail(.wrongPayloadSize(expected: "at least 12 bytes, got \(size)")) }
            let access = ConfigAccess(offset: p.u32(at: 0), size: p.u32(at: 4), flags: p.u32(at: 8),
                                      data: Array(message.payload[ConfigAccess.headerSize...]))
            guard access.size <= UInt32(ProtocolLimits.maxConfigSize) else {
                throw fail(.invalidValue("config size \(access.size) > \(ProtocolLimits.maxConfigSize)"))
            }
            try expectSize(ConfigAccess.headerSize + Int(access.size))
            self = code == .getConfig ? .getConfig(access) : .setConfig(access)
        case .getMaxMemSlots:
            try expectSize(0); try expectFDs(0); self = .getMaxMemSlots
        case .addMemReg:
            try expectSize(8 + MemoryRegionDescription.size); try expectFDs(1)
            self = .addMemReg(MemoryRegionDescription(p, at: 8), fds[0])
        case .remMemReg:
            try expectSize(8 + MemoryRegionDescription.size)
            // The spec sends no fd, but some front-ends attach the region's fd; accept and close it
            // (it is dropped with `message`) rather than fail a legitimate hot-unplug.
            guard fds.count <= 1 else { throw fail(.wrongFDCount(expected: "at most 1 fd, got \(fds.count)")) }
            self = .remMemReg(MemoryRegionDescription(p, at: 8))
        case .getInflightFD, .setInflightFD:
            guard size == InflightDescription.size || size == InflightDescription.unpaddedSize else {
                throw fail(.wrongPayloadSize(expected: "\(InflightDescription.size) (or \(InflightDescription.unpaddedSize)) bytes, got \(size)"))
            }
            let d = InflightDescription(p)
            if code == .getInflightFD {
                try expectFDs(0); self = .getInflightFD(d, payloadSize: size)
            } else {
                try expectFDs(1); self = .setInflightFD(d, fds[0])
            }
        case .setLogBase, .setLogFD, .setBackendReqFD,
             .vringKick, .setStatus, .getStatus:
            // Known to the protocol, but gated by features this back-end does not offer.
            throw fail(.notNegotiated("a protocol feature this back-end does not offer"))
        }
    }
}
