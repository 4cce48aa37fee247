import GuestMemory
import Logging
import VhostSystem
import VhostUserProtocol
import Virtqueue

/// What went wrong handling a front-end message after it was decoded.
public struct SessionError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One queue's settings as the front-end has set them.
struct VringSettings {
    var size: UInt16?
    var address: VringAddress?
    var base: UInt16 = 0
    var kick: FileDescriptor?
    var call: FileDescriptor?
    var err: FileDescriptor?
    /// vhost-user.rst "Ring states": started by SET_VRING_KICK, stopped by GET_VRING_BASE.
    var started = false
    /// Enabled by SET_VRING_ENABLE(1), or by SET_FEATURES when PROTOCOL_FEATURES is not negotiated.
    var enabled = false
}

/// The back-end side of one front-end connection: the state machine of vhost-user.rst, with one
/// dispatcher that validates every message before any handler runs.
public final class Session<D: VhostUserDevice> {
    let device: D
    let channel: Channel
    let logger: Logger
    var ackedFeatures: VirtioFeatures = []
    var featuresSet = false
    var protocolFeatures: ProtocolFeatures = []
    var memory = GuestMemoryMap.empty
    var vrings: [VringSettings]
    var workers: [Worker<D.Queue>?]
    /// The in-flight log from SET_INFLIGHT_FD. Workers write into it through raw pointers, so it is
    /// replaced or dropped only with every worker stopped.
    var inflight: InflightBuffer?

    public init(device: D, channel: Channel, logger: Logger) {
        self.device = device
        self.channel = channel
        self.logger = logger
        vrings = Array(repeating: VringSettings(), count: device.queueCount)
        workers = Array(repeating: nil, count: device.queueCount)
    }

    public enum Outcome { case continueSession, closed }

    /// Reads and handles one message. Returns `.closed` when the front-end disconnected or must be
    /// dropped (a malformed message, or a failed request it did not ask to be acknowledged).
    public func handleNextMessage() -> Outcome {
        let raw: RawMessage
        do {
            guard let m = try channel.receive() else {
                logger.info("front-end disconnected")
                return .closed
            }
            raw = m
        } catch {
            logger.error("dropping the front-end: \(error)")
            return .closed
        }
        let request: Request
        do {
            request = try Request(decoding: raw)
            if let q = request.queueIndex, Int(q) >= device.queueCount {
                throw SessionError("\(raw.name): queue index \(q) ≥ queue count \(device.queueCount)")
            }
        } catch {
            return reject(raw, error)
        }
        do {
            let ackable = try handle(request, raw)
            if ackable && raw.needsReply && protocolFeatures.contains(.replyAck) {
                try channel.reply(to: raw.request, payload: PayloadEncoding.u64(0))
            }
            return .continueSession
        } catch {
            return reject(raw, error)
        }
    }

    /// A request that cannot be honoured: answer a failure when the front-end asked for an
    /// acknowledgement (REPLY_ACK), otherwise drop the connection so it cannot go on believing the
    /// request succeeded.
    private func reject(_ raw: RawMessage, _ error: Error) -> Outcome {
        let code = FrontendRequest(rawValue: raw.request)
        let hasOwnReply: Set<FrontendRequest> = [.getFeatures, .getProtocolFeatures, .getVringBase, .getQueueNum, .getInflightFD,
                                                 .getConfig, .getMaxMemSlots]
        if raw.needsReply, protocolFeatures.contains(.replyAck), let code, !hasOwnReply.contains(code),
           !(error is ProtocolError) {
            logger.warning("\(raw.name) failed: \(error); replying with a failure")
            if (try? channel.reply(to: raw.request, payload: PayloadEncoding.u64(1))) != nil { return .continueSession }
        }
        logger.error("dropping the front-end: \(error)")
        return .closed
    }

    /// Stops every queue (draining in-flight I/O) and forgets the session's state.
    public func teardown() {
        resetDevice()
        inflight = nil
        memory = .empty
        protocolFeatures = []
    }

    /// RESET_OWNER: the device goes back to its initial state — every queue drained and stopped, its
    /// settings and the acknowledged virtio features forgotten. The protocol features stay: they
    /// belong to the connection, and a front-end that goes on sending NEED_REPLY after the reset must
    /// still get its acknowledgements (libvhost-user keeps them too).
    func resetDevice() {
        for i in workers.indices { stopWorker(i) }
        vrings = Array(repeating: VringSettings(), count: device.queueCount)
        ackedFeatures = []
        featuresSet = false
    }

    // MARK: queue lifecycle

    func stopWorker(_ i: Int) {
        guard let w = workers[i] else { return }
        w.stop()
        vrings[i].base = w.handler.ring.nextAvail
        workers[i] = nil
        logger.debug("queue \(i) stopped at avail index \(vrings[i].base)")
    }

    /// Starts queue i if everything it needs is set and it is started and enabled.
    func startWorkerIfReady(_ i: Int) throws {
        let v = vrings[i]
        guard workers[i] == nil, v.started, v.enabled, featuresSet, let size = v.size, let addr = v.address,
              !memory.regions.isEmpty else { return }
        func gpa(_ va: UInt64, _ len: UInt64, _ what: String) throws -> GuestAddress {
            guard let g = memory.guestAddress(ofFrontend: FrontendAddress(va), length: len) else {
                throw SessionError("queue \(i): \(what) at va 0x\(String(va, radix: 16)) is outside guest memory")
            }
            return g
        }
        let config = SplitQueueConfig(
            size: size,
            descriptorTable: try gpa(addr.descriptorTable, SplitQueue.descriptorTableBytes(size), "descriptor table"),
            availRing: try gpa(addr.availRing, SplitQueue.availRingBytes(size), "avail ring"),
            usedRing: try gpa(addr.usedRing, SplitQueue.usedRingBytes(size), "used ring"),
            eventIdx: ackedFeatures.contains(.ringEventIdx))
        // The used index lives in guest memory; the driver never writes it, so it is where we resume.
        guard let usedHost = memory.view.translate(config.usedRing, length: 4) else {
            throw SessionError("queue \(i): used ring outside guest memory")
        }
        let usedIdx = usedHost.load(fromByteOffset: 2, as: UInt16.self)
        var ring: SplitQueue
        do {
            ring = try SplitQueue(config: config, memory: memory.view, nextAvail: v.base, usedIdx: usedIdx)
        } catch {
            throw SessionError("queue \(i): \(error)")
        }
        if let buffer = inflight {
            guard let region = buffer.region(queue: i) else {
                throw SessionError("queue \(i): the in-flight buffer covers only \(buffer.queues) queue(s)")
            }
            let recovery: InflightRecovery
            do {
                recovery = try ring.attachInflight(region)
            } catch {
                throw SessionError("queue \(i): \(error)")
            }
            if !recovery.fresh && (recovery.resubmitted > 0 || recovery.completedUnmarked > 0 || ring.nextAvail != v.base) {
                logger.info("queue \(i): in-flight log: \(recovery); resuming at avail index \(ring.nextAvail) (front-end said \(v.base)), used index \(usedIdx)")
            }
        } else if protocolFeatures.contains(.inflightSHMFD) {
            logger.debug("queue \(i): INFLIGHT_SHMFD negotiated but no buffer set; requests are not logged")
        }
        let handler: D.Queue, poll: QueuePoller
        do {
            (handler, poll) = try device.makeQueue(index: i, ring: ring, memory: memory, features: ackedFeatures)
        } catch {
            ring.discardResubmissions()
            throw error
        }
        workers[i] = try Worker(index: i, handler: handler, poll: poll, kickFD: v.kick?.rawValue ?? -1,
                                callFD: v.call?.rawValue ?? -1, errFD: v.err?.rawValue ?? -1,
                                policy: device.workerPolicy(queue: i), logger: logger)
        logger.debug("queue \(i) started: size \(size), avail index \(v.base), used index \(usedIdx)")
    }

    /// Applies `change` to queue i with its worker stopped, then restarts it if it is ready.
    func updateQueue(_ i: Int, _ change: (inout VringSettings) throws -> Void) throws {
        stopWorker(i)
        try change(&vrings[i])
        try startWorkerIfReady(i)
    }

    /// Swaps the memory table: every running queue drains first, so no request in flight still points
    /// into a region that the new table drops (the old table, and its mappings, are released here).
    func replaceMemory(_ new: GuestMemoryMap) throws {
        for i in workers.indices { stopWorker(i) }
        memory = new
        try restartAll()
    }

    /// Starts every ready queue; one queue that cannot start (its rings are no longer in guest memory,
    /// say) must not leave the others stopped, so all are tried before the first error is reported.
    func restartAll(_ change: (inout VringSettings) -> Void = { _ in }) throws {
        var firstError: Error?
        for i in workers.indices {
            do {
                try updateQueue(i, change)
            } catch {
                if firstError == nil { firstError = error }
            }
        }
        if let firstError { throw firstError }
    }
}
