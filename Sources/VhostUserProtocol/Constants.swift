/// Front-end → back-end request codes (QEMU docs/interop/vhost-user.rst, "Front-end message types").
/// Only the codes this back-end understands are named; any other value is an unknown request.
public enum FrontendRequest: UInt32, Sendable, CustomStringConvertible {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case setBackendReqFD = 21
    case getConfig = 24
    case setConfig = 25
    case getInflightFD = 31
    case setInflightFD = 32
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40

    public var description: String {
        switch self {
        case .getFeatures: "GET_FEATURES"
        case .setFeatures: "SET_FEATURES"
        case .setOwner: "SET_OWNER"
        case .resetOwner: "RESET_OWNER"
        case .setMemTable: "SET_MEM_TABLE"
        case .setLogBase: "SET_LOG_BASE"
        case .setLogFD: "SET_LOG_FD"
        case .setVringNum: "SET_VRING_NUM"
        case .setVringAddr: "SET_VRING_ADDR"
        case .setVringBase: "SET_VRING_BASE"
        case .getVringBase: "GET_VRING_BASE"
        case .setVringKick: "SET_VRING_KICK"
        case .setVringCall: "SET_VRING_CALL"
        case .setVringErr: "SET_VRING_ERR"
        case .getProtocolFeatures: "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: "SET_PROTOCOL_FEATURES"
        case .getQueueNum: "GET_QUEUE_NUM"
        case .setVringEnable: "SET_VRING_ENABLE"
        case .setBackendReqFD: "SET_BACKEND_REQ_FD"
        case .getConfig: "GET_CONFIG"
        case .setConfig: "SET_CONFIG"
        case .getInflightFD: "GET_INFLIGHT_FD"
        case .setInflightFD: "SET_INFLIGHT_FD"
        case .resetDevice: "RESET_DEVICE"
        case .vringKick: "VRING_KICK"
        case .getMaxMemSlots: "GET_MAX_MEM_SLOTS"
        case .addMemReg: "ADD_MEM_REG"
        case .remMemReg: "REM_MEM_REG"
        case .setStatus: "SET_STATUS"
        case .getStatus: "GET_STATUS"
        }
    }
}

/// Header flags: bits 0–1 are the protocol version (always 1), bit 2 marks a reply, bit 3 asks for a
/// REPLY_ACK acknowledgement.
public struct MessageFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let version1 = MessageFlags(rawValue: 0x1)
    public static let reply = MessageFlags(rawValue: 0x4)
    public static let needReply = MessageFlags(rawValue: 0x8)
    /// The version field's two bits.
    public static let versionMask: UInt32 = 0x3
    /// Every flag bit this protocol version defines; others must be zero.
    public static let known: UInt32 = 0x3 | 0x4 | 0x8
}

/// Device-independent virtio feature bits (virtio 1.2 §6 "Reserved Feature Bits") plus vhost's bit 30.
public struct VirtioFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let notifyOnEmpty = VirtioFeatures(rawValue: 1 << 24)
    public static let ringIndirectDesc = VirtioFeatures(rawValue: 1 << 28)
    public static let ringEventIdx = VirtioFeatures(rawValue: 1 << 29)
    /// VHOST_USER_F_PROTOCOL_FEATURES: not a virtio bit; it gates GET/SET_PROTOCOL_FEATURES.
    public static let protocolFeatures = VirtioFeatures(rawValue: 1 << 30)
    public static let version1 = VirtioFeatures(rawValue: 1 << 32)
    public static let accessPlatform = VirtioFeatures(rawValue: 1 << 33)
    public static let ringPacked = VirtioFeatures(rawValue: 1 << 34)
    /// VHOST_F_LOG_ALL: dirty logging for migration.
    public static let logAll = VirtioFeatures(rawValue: 1 << 26)

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// vhost-user protocol feature bits (vhost-user.rst "Protocol features").
public struct ProtocolFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let mq = ProtocolFeatures(rawValue: 1 << 0)
    public static let logSHMFD = ProtocolFeatures(rawValue: 1 << 1)
    public static let replyAck = ProtocolFeatures(rawValue: 1 << 3)
    public static let backendReq = ProtocolFeatures(rawValue: 1 << 5)
    public static let config = ProtocolFeatures(rawValue: 1 << 9)
    public static let inflightSHMFD = ProtocolFeatures(rawValue: 1 << 12)
    public static let resetDevice = ProtocolFeatures(rawValue: 1 << 13)
    public static let inbandNotifications = ProtocolFeatures(rawValue: 1 << 14)
    public static let configureMemSlots = ProtocolFeatures(rawValue: 1 << 15)
    public static let status = ProtocolFeatures(rawValue: 1 << 16)

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

public enum ProtocolLimits {
    /// Header: u32 request, u32 flags, u32 size.
    public static let headerSize = 12
    /// SET_MEM_TABLE carries at most 8 regions (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let memTableMaxRegions = 8
    /// The largest payload any message we accept can have: GET/SET_CONFIG with 256 bytes of config
    /// (12-byte config header + 256). Anything larger is a framing error and drops the connection.
    public static let maxPayloadSize = 12 + 256
    /// Config space is at most 256 bytes in QEMU (VHOST_USER_MAX_CONFIG_SIZE).
    public static let maxConfigSize = 256
    /// SET_VRING_KICK/CALL/ERR payload: bits 0–7 the queue index, bit 8 "no fd" (poll instead).
    public static let vringIndexMask: UInt64 = 0xff
    public static let vringNoFDFlag: UInt64 = 0x100
    /// GET_MAX_MEM_SLOTS: QEMU caps at 512 and libvhost-user/rust-vmm answer 509, the number of
    /// memory slots KVM allows userspace minus those QEMU keeps for itself.
    public static let maxMemSlots: UInt64 = 509
    /// The most fds a single message legitimately carries (SET_MEM_TABLE with 8 regions).
    public static let maxFDsPerMessage = 8
}
