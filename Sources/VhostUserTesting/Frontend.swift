#if canImport(Glibc)
import Glibc
#endif
import VhostSystem
import VhostUserProtocol

public enum FrontendError: Error, CustomStringConvertible {
    case closedByBackend(while: String)
    case noReply(to: String, timeoutMs: Int)
    case badReply(to: String, why: String)
    case nack(request: String, status: UInt64)
    case notNegotiated(String)
    case invalidUse(String)

    public var description: String {
        switch self {
        case .closedByBackend(let w): "the back-end closed the connection while \(w)"
        case .noReply(let r, let t): "no reply to \(r) within \(t) ms"
        case .badReply(let r, let why): "bad reply to \(r): \(why)"
        case .nack(let r, let s): "\(r) was refused with status \(s)"
        case .notNegotiated(let what): "\(what) was not negotiated"
        case .invalidUse(let what): what
        }
    }
}

/// How guest memory is announced to the back-end in `Frontend.start`.
public enum MemorySetup: Sendable {
    /// One SET_MEM_TABLE with every region (QEMU without CONFIGURE_MEM_SLOTS).
    case memTable
    /// One ADD_MEM_REG per region (QEMU with CONFIGURE_MEM_SLOTS).
    case addMemReg
}

/// What the back-end answered during `handshake`.
public struct HandshakeResult: Sendable {
    /// GET_FEATURES (both answers: QEMU asks twice and they must agree).
    public var offeredFeatures: VirtioFeatures
    public var offeredFeaturesAgain: VirtioFeatures
    public var offeredProtocolFeatures: ProtocolFeatures
    /// What SET_PROTOCOL_FEATURES acknowledged.
    public var protocolFeatures: ProtocolFeatures
    /// GET_QUEUE_NUM (nil when MQ was not offered).
    public var queueCount: UInt64?
    /// GET_MAX_MEM_SLOTS (nil when CONFIGURE_MEM_SLOTS was not offered).
    public var maxMemSlots: UInt64?
    /// GET_CONFIG's bytes.
    public var config: [UInt8]
}

/// The outcome of a message the back-end should refuse.
public enum Rejection: Sendable, Equatable, CustomStringConvertible {
    /// The back-end closed the connection.
    case closed
    /// A REPLY_ACK reply with a non-zero status.
    case errorReply(UInt64)
    /// A reply with status 0: the back-end accepted what it should have refused.
    case accepted
    /// A GET_CONFIG reply without config bytes: how the spec says GET_CONFIG fails.
    case emptyConfigReply
    /// Some other reply (request code, size) — reported for diagnosis.
    case otherReply(request: UInt32, flags: UInt32, size: Int)
    /// Neither a reply nor a close within the timeout.
    case silence

    public var description: String {
        switch self {
        case .closed: "connection closed"
        case .errorReply(let s): "error reply \(s)"
        case .accepted: "success reply"
        case .emptyConfigReply: "GET_CONFIG reply without config bytes"
        case .otherReply(let r, let f, let s): "reply request \(r) flags 0x\(String(f, radix: 16)) size \(s)"
        case .silence: "no reply and no close"
        }
    }

    /// Either outcome the contract allows for a refused control message.
    public var isRefusal: Bool {
        switch self {
        case .closed, .errorReply, .emptyConfigReply: true
        default: false
        }
    }
}

/// The front-end (QEMU) side of vhost-user: connects to a back-end's socket and drives it through the
/// message sequence QEMU 7.2's vhost-user-blk uses (see docs/…/vhost-user-protocol-notes.md, D.3).
/// Also sends arbitrary bytes for hostile tests. Not thread-safe.
public final class Frontend: @unchecked Sendable {
    public let socket: UnixSocket
    public let channel: Channel
    /// Bound on every reply wait.
    public var timeoutMs = 10_000
    /// Every request sent, by name, in order (printed by failing tests).
    public private(set) var transcript: [String] = []

    /// Set NEED_REPLY on every message without a reply of its own, not just where QEMU does
    /// (SET_MEM_TABLE, ADD_MEM_REG, SET_VRING_ENABLE). Only effective when REPLY_ACK was negotiated.
    public var acknowledgeEverything = false

    public private(set) var handshakeResult: HandshakeResult?
    public private(set) var protocolFeatures: ProtocolFeatures = []
    /// Features sent with SET_FEATURES.
    public private(set) var ackedFeatures: VirtioFeatures = []
    public private(set) var queues: [DriverQueue] = []
    private var wantedFeatures: VirtioFeatures = []
    private var queueCount = 0
    private var queueSize = 0
    /// The "masked" call eventfds QEMU installs at init, replaced in `start` (kept open until then,
    /// as QEMU keeps them).
    private var maskedCallFDs: [EventFD] = []

    /// Connects once; throws when nothing listens on `path`.
    public init(socketPath path: String) throws {
        socket = try UnixSocket.connect(path: path)
        channel = Channel(socket)
    }

    /// Connects and checks the back-end is serving this connection (a GET_FEATURES gets an answer),
    /// retrying while it refuses it: a one-front-end back-end closes a new connection at once while
    /// it still tears down the previous session, which can take a moment after that one closed.
    /// The wait between attempts doubles from 1 ms (bounded by `timeoutMs`); it is a retry
    /// back-off, not a wait for something to happen.
    public static func connectServing(socketPath path: String, timeoutMs: Int = 10_000) throws -> Frontend {
        let deadline = Deadline(milliseconds: timeoutMs)
        var backoff: Int32 = 1
        var lastError: Error = FrontendError.closedByBackend(while: "connecting")
        while true {
            do {
                let f = try Frontend(socketPath: path)
                f.timeoutMs = Int(max(deadline.remainingMilliseconds, 1))
                _ = try f.getU64(.getFeatures)
                f.timeoutMs = timeoutMs
                return f
            } catch {
                lastError = error
            }
            if deadline.expired { throw lastError }
            _ = try Poll.readable([], timeoutMs: min(backoff, deadline.remainingMilliseconds))
            backoff = min(backoff * 2, 100)
        }
    }

    public func close() { socket.fd.close() }

    // MARK: Low-level messaging

    private func header(needReply: Bool) -> UInt32 {
        MessageFlags.version1.rawValue | (needReply ? MessageFlags.needReply.rawValue : 0)
    }

    private var replyAck: Bool { protocolFeatures.contains(.replyAck) }

    /// Sends exactly the header fields given (hostile tests: any flags, any code, any payload).
    public func sendRaw(request: UInt32, flags: UInt32, payload: [UInt8], fds: [Int32] = []) throws {
        transcript.append("\(FrontendRequest(rawValue: request)?.description ?? "request \(request)") flags 0x\(String(flags, radix: 16)) size \(payload.count) fds \(fds.count)")
        try channel.send(RawMessage(request: request, flags: flags, payload: payload), fds: fds)
    }

    /// Sends raw bytes with no framing (e.g. half a header).
    public func sendBytes(_ bytes: [UInt8], fds: [Int32] = []) throws {
        transcript.append("\(bytes.count) raw bytes, fds \(fds.count)")
        try socket.send(bytes, fds: fds)
    }

    /// Reads the next message from the back-end; nil when it closed the connection (EOF or reset)
    /// before the first byte. Throws `noReply` after `timeoutMs`.
    public func receiveReply(timeoutMs: Int? = nil) throws -> RawMessage? {
        let t = timeoutMs ?? self.timeoutMs
        let ready = try waitReadable(timeoutMs: t)
        guard ready else { throw FrontendError.noReply(to: transcript.last ?? "?", timeoutMs: t) }
        do {
            return try channel.receive()
        } catch let e as SystemError where e.errno == ECONNRESET {
            return nil
        }
    }

    private func waitReadable(timeoutMs: Int) throws -> Bool {
        let deadline = Deadline(milliseconds: timeoutMs)
        while true {
            if try !Poll.readable([socket.fd.rawValue], timeoutMs: deadline.remainingMilliseconds).isEmpty { return true }
            if deadline.expired { return false }
        }
    }

    /// Waits until the back-end closes the connection, discarding anything it sends first. Returns
    /// false if it is still open after `timeoutMs`.
    public func waitForClose(timeoutMs: Int? = nil) throws -> Bool {
        let deadline = Deadline(milliseconds: timeoutMs ?? self.timeoutMs)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            guard try waitReadable(timeoutMs: Int(deadline.remainingMilliseconds)) else { return false }
            do {
                let r = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0, maxFDs: 8) }
                if r.bytes == 0 { return true }
            } catch let e as SystemError where e.errno == ECONNRESET {
                return true
            }
            if deadline.expired { return false }
        }
    }

    /// After sending something the back-end must refuse: what it did about it.
    public func awaitRejection(timeoutMs: Int? = nil) throws -> Rejection {
        let reply: RawMessage?
        do {
            reply = try receiveReply(timeoutMs: timeoutMs)
        } catch FrontendError.noReply {
            return .silence
        } catch is ProtocolError {
            // Half a message and then EOF: the back-end went away mid-reply; still a close.
            return .closed
        }
        guard let reply else { return .closed }
        if reply.flags == 0x5 && reply.request == FrontendRequest.getConfig.rawValue
            && reply.payload.count <= ConfigAccess.headerSize {
            return .emptyConfigReply
        }
        if reply.flags == 0x5 && reply.payload.count == 8 {
            let status = PayloadReader(reply.payload).u64(at: 0)
            return status == 0 ? .accepted : .errorReply(status)
        }
        return .otherReply(request: reply.request, flags: reply.flags, size: reply.payload.count)
    }

    /// Sends a request that has no reply of its own; with `needReply` (or `acknowledgeEverything`)
    /// and REPLY_ACK negotiated, asks for and checks the acknowledgement.
    public func send(_ code: FrontendRequest, payload: [UInt8] = [], fds: [Int32] = [], needReply: Bool = false) throws {
        let ack = replyAck && (needReply || acknowledgeEverything)
        try sendRaw(request: code.rawValue, flags: header(needReply: ack), payload: payload, fds: fds)
        if ack {
            let reply = try expectReply(to: code, size: 8)
            let status = PayloadReader(reply.payload).u64(at: 0)
            guard status == 0 else { throw FrontendError.nack(request: code.description, status: status) }
        }
    }

    /// Sends a request whose reply is defined by the protocol and returns that reply.
    public func call(_ code: FrontendRequest, payload: [UInt8] = [], replySize: Int?) throws -> RawMessage {
        try sendRaw(request: code.rawValue, flags: header(needReply: false), payload: payload)
        return try expectReply(to: code, size: replySize)
    }

    public func getU64(_ code: FrontendRequest) throws -> UInt64 {
        PayloadReader(try call(code, replySize: 8).payload).u64(at: 0)
    }

    /// Reads a reply and checks it as QEMU does: flags exactly VERSION|REPLY, the same request code,
    /// the expected size.
    private func expectReply(to code: FrontendRequest, size: Int?) throws -> RawMessage {
        guard let reply = try receiveReply() else { throw FrontendError.closedByBackend(while: "waiting for the reply to \(code)") }
        guard reply.flags == MessageFlags.version1.rawValue | MessageFlags.reply.rawValue else {
            throw FrontendError.badReply(to: code.description, why: "flags 0x\(String(reply.flags, radix: 16)), must be 0x5")
        }
        guard reply.request == code.rawValue else {
            throw FrontendError.badReply(to: code.description, why: "request code \(reply.request)")
        }
        if let size, reply.payload.count != size {
            throw FrontendError.badReply(to: code.description, why: "size \(reply.payload.count), expected \(size)")
        }
        guard reply.fds.count == (code == .getInflightFD ? 1 : 0) else {
            throw FrontendError.badReply(to: code.description, why: "carries \(reply.fds.count) fds")
        }
        return reply
    }

    // MARK: In-flight buffer (INFLIGHT_SHMFD)

    /// The buffer from GET_INFLIGHT_FD, as QEMU keeps it: across back-end reconnects (pass it to the
    /// next connection's `StartOptions.inflight`), dropped on a device reset.
    public private(set) var inflight: InflightBufferHandle?

    /// GET_INFLIGHT_FD for `queues` queues of `queueSize`, checked as QEMU checks it.
    public func getInflight(queues: Int, queueSize: Int) throws -> InflightBufferHandle {
        let request = InflightDescription(mmapSize: 0, mmapOffset: 0, numQueues: UInt16(queues), queueSize: UInt16(queueSize))
        let reply = try call(.getInflightFD, payload: request.encoded(), replySize: InflightDescription.size)
        let r = PayloadReader(reply.payload)
        let d = InflightDescription(mmapSize: r.u64(at: 0), mmapOffset: r.u64(at: 8), numQueues: UInt16(truncatingIfNeeded: r.u32(at: 16)),
                                    queueSize: UInt16(truncatingIfNeeded: r.u32(at: 16) >> 16))
        guard d.mmapSize > 0 else { throw FrontendError.badReply(to: "GET_INFLIGHT_FD", why: "mmap size 0") }
        return try InflightBufferHandle(fd: reply.fds[0], description: d)
    }

    public func setInflight(_ buffer: InflightBufferHandle) throws {
        try send(.setInflightFD, payload: buffer.description.encoded(), fds: [buffer.fd.rawValue])
    }

    // MARK: QEMU 7.2's sequence

    /// The protocol features this front-end implements (QEMU masks the offer to what it knows).
    /// INFLIGHT_SHMFD included, as QEMU 7.2 does: `start` then asks for the in-flight buffer and hands
    /// it back, and keeps it in `inflight` for a reconnect to reuse.
    public static let supportedProtocolFeatures: ProtocolFeatures = [.mq, .replyAck, .config, .configureMemSlots, .inflightSHMFD, .resetDevice]

    /// Phase 1 of QEMU's vhost-user-blk (realize / reconnect): GET_FEATURES, GET_PROTOCOL_FEATURES,
    /// SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (if MQ), GET_MAX_MEM_SLOTS (if CONFIGURE_MEM_SLOTS),
    /// SET_OWNER, GET_FEATURES, SET_VRING_CALL × queues (masked eventfds), GET_CONFIG.
    /// `features`: what the "guest" would accept; `start` acknowledges offered ∩ features.
    /// `protocolFeatures`: restricts what is acknowledged (e.g. leave out REPLY_ACK).
    public func handshake(queues: Int, queueSize: Int, features: VirtioFeatures = Frontend.defaultDriverFeatures,
                          protocolFeatures wanted: ProtocolFeatures = Frontend.supportedProtocolFeatures,
                          configSize: Int = 60) throws -> HandshakeResult {
        precondition(queues >= 1 && queues <= 256, "1...256 queues")
        let offered = VirtioFeatures(rawValue: try getU64(.getFeatures))
        guard offered.contains(.protocolFeatures) else { throw FrontendError.notNegotiated("VHOST_USER_F_PROTOCOL_FEATURES") }
        let offeredProtocol = ProtocolFeatures(rawValue: try getU64(.getProtocolFeatures))
        let acked = offeredProtocol.intersection(wanted).intersection(Self.supportedProtocolFeatures)
        guard acked.contains(.config) else { throw FrontendError.notNegotiated("VHOST_USER_PROTOCOL_F_CONFIG") }
        try send(.setProtocolFeatures, payload: PayloadEncoding.u64(acked.rawValue))
        protocolFeatures = acked
        var queueNum: UInt64?
        if acked.contains(.mq) {
            queueNum = try getU64(.getQueueNum)
            if queueNum! < UInt64(queues) {
                throw FrontendError.invalidUse("back-end offers \(queueNum!) queues, \(queues) wanted")
            }
        } else if queues > 1 {
            throw FrontendError.notNegotiated("MQ (needed for \(queues) queues)")
        }
        var slots: UInt64?
        if acked.contains(.configureMemSlots) { slots = try getU64(.getMaxMemSlots) }
        try send(.setOwner)
        let offeredAgain = VirtioFeatures(rawValue: try getU64(.getFeatures))
        maskedCallFDs = []
        for q in 0..<queues {
            let fd = try EventFD()
            maskedCallFDs.append(fd)
            try send(.setVringCall, payload: PayloadEncoding.u64(UInt64(q)), fds: [fd.rawValue])
        }
        let config = try getConfig(offset: 0, size: configSize)
        let result = HandshakeResult(offeredFeatures: offered, offeredFeaturesAgain: offeredAgain,
                                     offeredProtocolFeatures: offeredProtocol, protocolFeatures: acked,
                                     queueCount: queueNum, maxMemSlots: slots, config: config)
        handshakeResult = result
        wantedFeatures = features
        self.queueCount = queues
        self.queueSize = queueSize
        return result
    }

    /// What a Linux guest's virtio-blk driver accepts (virtio 1.2 §5.2.3 bits it knows) plus the ring
    /// features; `start` intersects this with the offer.
    public static let defaultDriverFeatures: VirtioFeatures = {
        var f: VirtioFeatures = [.version1, .ringIndirectDesc, .ringEventIdx]
        // SIZE_MAX 1, SEG_MAX 2, GEOMETRY 4, RO 5, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, CONFIG_WCE 11,
        // MQ 12, DISCARD 13, WRITE_ZEROES 14.
        for bit in [1, 2, 4, 5, 6, 9, 10, 11, 12, 13, 14] { f.insert(VirtioFeatures(rawValue: 1 << UInt64(bit))) }
        return f
    }()

    /// GET_CONFIG at `offset`/`size`; checks the reply echoes offset and size.
    public func getConfig(offset: Int, size: Int) throws -> [UInt8] {
        let request = ConfigAccess(offset: UInt32(offset), size: UInt32(size), flags: 0, data: [UInt8](repeating: 0, count: size))
        let reply = try call(.getConfig, payload: request.encoded, replySize: ConfigAccess.headerSize + size)
        let r = PayloadReader(reply.payload)
        guard r.u32(at: 0) == UInt32(offset), r.u32(at: 4) == UInt32(size) else {
            throw FrontendError.badReply(to: "GET_CONFIG", why: "offset/size \(r.u32(at: 0))/\(r.u32(at: 4))")
        }
        return Array(reply.payload[ConfigAccess.headerSize...])
    }

    /// Options for `start` that deviate from the default sequence.
    public struct StartOptions: Sendable {
        public var memorySetup: MemorySetup = .memTable
        /// Acknowledge EVENT_IDX if offered (and wanted in `handshake`).
        public var eventIdx = true
        /// Acknowledge INDIRECT_DESC if offered (and wanted).
        public var indirect = true
        /// Send SET_VRING_ERR with each queue's err eventfd.
        public var sendErrFD = true
        /// QEMU 7.2's own order: SET_VRING_CALL with the guest's eventfds after SET_VRING_ENABLE
        /// (the unmask step) rather than right after SET_VRING_KICK.
        public var callAfterEnable = false
        /// The avail index each queue starts at (SET_VRING_BASE), e.g. where a previous session stopped.
        public var vringBase: UInt16 = 0
        public var waitMode: DriverQueue.WaitMode = .callEventFD
        /// With INFLIGHT_SHMFD: hand this buffer over instead of asking for a new one (a reconnect).
        public var inflight: InflightBufferHandle?
        /// Resume these queues (same rings, same requests in flight) instead of laying out new ones,
        /// each from its used->idx, as QEMU does after its back-end died: the reconnect test.
        public var resume: [DriverQueue]?
        public init() {}
    }

    /// Phase 2 (start): SET_FEATURES, memory (SET_MEM_TABLE or ADD_MEM_REG), then per queue
    /// SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL (and SET_VRING_ERR),
    /// and SET_VRING_ENABLE(1) with NEED_REPLY. The queues' rings are laid out in `arena`.
    public func start(arena: GuestMemoryArena, options: StartOptions = StartOptions()) throws -> [DriverQueue] {
        guard let hs = handshakeResult else { throw FrontendError.invalidUse("start before handshake") }
        var features = hs.offeredFeatures.intersection(wantedFeatures)
        if !options.eventIdx { features.remove(.ringEventIdx) }
        if !options.indirect { features.remove(.ringIndirectDesc) }
        features.insert(.protocolFeatures)
        try send(.setFeatures, payload: PayloadEncoding.u64(features.rawValue))
        ackedFeatures = features
        if protocolFeatures.contains(.inflightSHMFD) {
            let buffer = try options.inflight ?? getInflight(queues: queueCount, queueSize: queueSize)
            try setInflight(buffer)
            inflight = buffer
        }

        switch options.memorySetup {
        case .memTable:
            try send(.setMemTable, payload: PayloadEncoding.memTable(arena.memoryTable), fds: arena.fileDescriptors, needReply: true)
        case .addMemReg:
            guard protocolFeatures.contains(.configureMemSlots) else { throw FrontendError.notNegotiated("CONFIGURE_MEM_SLOTS") }
            for (region, fd) in zip(arena.memoryTable, arena.fileDescriptors) {
                try send(.addMemReg, payload: PayloadEncoding.singleRegion(region), fds: [fd], needReply: true)
            }
        }

        var made: [DriverQueue] = []
        for q in 0..<queueCount {
            let queue: DriverQueue
            let base: UInt16
            if let resumed = options.resume {
                guard q < resumed.count else { throw FrontendError.invalidUse("resume: \(resumed.count) queues for \(queueCount)") }
                queue = resumed[q]
                base = queue.deviceUsedIndex // QEMU: the dead back-end cannot be asked, used->idx is the truth
            } else {
                queue = try DriverQueue(index: UInt32(q), size: queueSize, arena: arena)
                queue.eventIdx = features.contains(.ringEventIdx)
                queue.waitMode = options.waitMode
                base = options.vringBase
                if base != 0 { queue.setAvailIndex(base); queue.resetUsedIndex(to: base) }
            }
            made.append(queue)
            try send(.setVringNum, payload: VringState(index: UInt32(q), num: UInt32(queueSize)).encoded)
            try send(.setVringBase, payload: VringState(index: UInt32(q), num: UInt32(base)).encoded)
            let a = queue.ringUserAddresses
            try send(.setVringAddr, payload: VringAddress(index: UInt32(q), descriptorTable: a.descriptorTable,
                                                          usedRing: a.usedRing, availRing: a.availRing).encoded)
            try send(.setVringKick, payload: PayloadEncoding.u64(UInt64(q)), fds: [queue.kickFD.rawValue])
            if !options.callAfterEnable {
                try send(.setVringCall, payload: PayloadEncoding.u64(UInt64(q)), fds: [queue.callFD.rawValue])
            }
            if options.sendErrFD {
                try send(.setVringErr, payload: PayloadEncoding.u64(UInt64(q)), fds: [queue.errFD.rawValue])
            }
        }
        for q in 0..<queueCount {
            try enable(queue: q, true)
        }
        if options.callAfterEnable {
            for (q, queue) in made.enumerated() {
                // The ring already runs, so until the back-end has switched fds it may signal the
                // masked one. QEMU forwards a notification pending on the masked eventfd when it
                // unmasks (virtio-pci's guest_notifier_pending); we do the same, after an
                // acknowledgement guarantees the switch has happened, so nothing is lost.
                try send(.setVringCall, payload: PayloadEncoding.u64(UInt64(q)), fds: [queue.callFD.rawValue], needReply: true)
                if !replyAck { _ = try getU64(.getFeatures) }
                if q < maskedCallFDs.count, maskedCallFDs[q].drain() > 0 { queue.callFD.signal() }
            }
        }
        maskedCallFDs = []
        queues = made
        return made
    }

    /// SET_VRING_ENABLE with NEED_REPLY (QEMU 7.2 waits for it; without REPLY_ACK it would use
    /// GET_FEATURES as a barrier, which we do too).
    public func enable(queue q: Int, _ on: Bool) throws {
        try send(.setVringEnable, payload: VringState(index: UInt32(q), num: on ? 1 : 0).encoded, needReply: true)
        if !replyAck { _ = try getU64(.getFeatures) }
    }

    /// Phase 3 (stop): SET_VRING_ENABLE(0) then GET_VRING_BASE for every queue. Returns the avail
    /// index each queue had reached.
    public func stop() throws -> [UInt16] {
        var bases: [UInt16] = []
        for q in 0..<queueCount {
            try enable(queue: q, false)
            let reply = try call(.getVringBase, payload: VringState(index: UInt32(q), num: 0).encoded, replySize: VringState.size)
            let r = PayloadReader(reply.payload)
            guard r.u32(at: 0) == UInt32(q) else {
                throw FrontendError.badReply(to: "GET_VRING_BASE", why: "index \(r.u32(at: 0)) for queue \(q)")
            }
            bases.append(UInt16(truncatingIfNeeded: r.u32(at: 4)))
        }
        return bases
    }

    /// Handshake, start and one `BlkDriver` per queue: the usual set-up of a test.
    public func connectDevice(queues: Int = 1, queueSize: Int = 128, arena: GuestMemoryArena,
                              options: StartOptions = StartOptions()) throws -> [BlkDriver] {
        _ = try handshake(queues: queues, queueSize: queueSize)
        return try start(arena: arena, options: options).map { try BlkDriver(queue: $0) }
    }
}

/// The front-end's handle on an in-flight buffer: the fd it got from GET_INFLIGHT_FD and its mapping,
/// so tests can look at what the back-end logged.
public final class InflightBufferHandle: @unchecked Sendable {
    public let fd: FileDescriptor
    public let description: InflightDescription
    public let mapping: MemoryMapping

    public init(fd: FileDescriptor, description: InflightDescription) throws {
        self.fd = fd
        self.description = description
        mapping = try MemoryMapping(fd: fd.rawValue, offset: description.mmapOffset, length: Int(description.mmapSize))
    }

    /// Heads queue `q`'s region marks as in flight (inflight byte 1), by the region's own layout.
    public func markedHeads(queue q: Int) -> [UInt16] {
        let region = mapping.base + q * regionBytes
        let n = Int(region.load(fromByteOffset: 10, as: UInt16.self))
        return (0..<min(n, Int(description.queueSize))).compactMap { h in
            region.load(fromByteOffset: 16 + 16 * h, as: UInt8.self) == 1 ? UInt16(h) : nil
        }
    }

    /// The region's version field (0 until a back-end starts the queue on it).
    public func version(queue q: Int) -> UInt16 {
        (mapping.base + q * regionBytes).load(fromByteOffset: 8, as: UInt16.self)
    }

    /// The front-end does not interpret the layout; the tests that read it use the spec's (16-byte
    /// header, 16 bytes per descriptor), each region rounded up to 64 bytes.
    private var regionBytes: Int { (16 + 16 * Int(description.queueSize) + 63) / 64 * 64 }
}
