import GuestMemory
import VhostSystem
import VhostUserProtocol
import Virtqueue

extension Session {
    /// Handles a validated request. Returns true when the request's success may be acknowledged with a
    /// REPLY_ACK u64 (requests that send their own reply return false).
    func handle(_ request: Request, _ raw: RawMessage) throws -> Bool {
        switch request {
        case .getFeatures:
            try channel.reply(to: raw.request, payload: PayloadEncoding.u64(device.features.rawValue))
            return false
        case .setFeatures(let f):
            guard device.features.isSuperset(of: f) else {
                throw SessionError("SET_FEATURES 0x\(String(f.rawValue, radix: 16)) acknowledges bits never offered (offered 0x\(String(device.features.rawValue, radix: 16)))")
            }
            let changed = f != ackedFeatures || !featuresSet
            ackedFeatures = f
            featuresSet = true
            if changed {
                // Without PROTOCOL_FEATURES every ring is enabled at once (vhost-user.rst "Ring states").
                let enableAll = !f.contains(.protocolFeatures)
                try restartAll { if enableAll { $0.enabled = true } }
            }
        case .setOwner:
            break
        case .resetOwner:
            logger.info("RESET_OWNER: stopping all queues")
            resetDevice()
        case .resetDevice:
            // vhost-user.rst: disable every ring and return to the initial state, keeping ownership;
            // the same drain-then-forget as RESET_OWNER (which QEMU sends when this is not offered).
            try requireProtocol(.resetDevice, raw)
            logger.info("RESET_DEVICE: stopping all queues")
            resetDevice()
        case .setMemTable(let descriptions, let fds):
            var regions: [GuestRegion] = []
            for (d, fd) in zip(descriptions, fds) {
                regions.append(try GuestRegion(guestStart: d.guestPhysicalAddress, size: d.size,
                                               frontendStart: d.userAddress, mmapOffset: d.mmapOffset, fd: fd.rawValue))
            }
            try replaceMemory(try GuestMemoryMap(regions: regions))
            logger.info("memory table: \(regions.map(\.description).joined(separator: ", "))")
        case .addMemReg(let d, let fd):
            try requireProtocol(.configureMemSlots, raw)
            let region = try GuestRegion(guestStart: d.guestPhysicalAddress, size: d.size,
                                         frontendStart: d.userAddress, mmapOffset: d.mmapOffset, fd: fd.rawValue)
            try replaceMemory(try memory.adding(region))
            logger.info("memory region added: \(region)")
        case .remMemReg(let d):
            try requireProtocol(.configureMemSlots, raw)
            try replaceMemory(try memory.removing(guestStart: d.guestPhysicalAddress, size: d.size, frontendStart: d.userAddress))
            logger.info("memory region removed: gpa 0x\(String(d.guestPhysicalAddress, radix: 16))")
        case .getMaxMemSlots:
            try requireProtocol(.configureMemSlots, raw)
            try channel.reply(to: raw.request, payload: PayloadEncoding.u64(ProtocolLimits.maxMemSlots))
            return false
        case .setVringNum(let s):
            guard SplitQueueConfig.isValidSize(s.num), s.num <= UInt32(device.maxQueueSize) else {
                throw SessionError("SET_VRING_NUM \(s.num) for queue \(s.index): not a power of two in 1...\(device.maxQueueSize)")
            }
            try updateQueue(Int(s.index)) { $0.size = UInt16(s.num) }
        case .setVringAddr(let a):
            guard a.flags & ~VringAddress.flagLog == 0 else {
                throw SessionError("SET_VRING_ADDR: undefined flags 0x\(String(a.flags, radix: 16))")
            }
            guard a.flags & VringAddress.flagLog == 0 || ackedFeatures.contains(.logAll) else {
                throw SessionError("SET_VRING_ADDR asks for used-ring logging, which was not negotiated")
            }
            try updateQueue(Int(a.index)) { $0.address = a }
        case .setVringBase(let s):
            // Split rings: the next avail index in the low 16 bits; nothing else may be set.
            guard s.num <= UInt32(UInt16.max) else { throw SessionError("SET_VRING_BASE \(s.num) is not a 16-bit index") }
            try updateQueue(Int(s.index)) { $0.base = UInt16(s.num) }
        case .getVringBase(let s):
            let i = Int(s.index)
            stopWorker(i) // drains: nothing popped stays unanswered when the front-end takes the index
            vrings[i].started = false
            try channel.reply(to: raw.request, payload: VringState(index: s.index, num: UInt32(vrings[i].base)).encoded)
            return false
        case .setVringKick(let index, let fd):
            // The worker drains the kick eventfd after every wake-up, including wake-ups for other
            // reasons; on a blocking fd with a zero count that read would never return.
            try fd?.setNonBlocking(true)
            try updateQueue(Int(index)) {
                $0.kick = fd
                $0.started = true
            }
        case .setVringCall(let index, let fd):
            try updateQueue(Int(index)) { $0.call = fd }
        case .setVringErr(let index, let fd):
            try updateQueue(Int(index)) { $0.err = fd }
        case .getInflightFD(let d, let payloadSize):
            try requireProtocol(.inflightSHMFD, raw)
            let (fd, reply) = try InflightBuffer.allocate(queues: d.numQueues, queueSize: d.queueSize,
                                                          maxQueues: device.queueCount, maxQueueSize: device.maxQueueSize)
            try channel.reply(to: raw.request, payload: reply.encoded(size: payloadSize), fds: [fd.rawValue])
            logger.info("in-flight buffer allocated: \(reply.numQueues) queue(s) of \(reply.queueSize), \(reply.mmapSize) bytes")
            return false
        case .setInflightFD(let d, let fd):
            try requireProtocol(.inflightSHMFD, raw)
            let buffer = try InflightBuffer(d, fd: fd, maxQueues: device.queueCount, maxQueueSize: device.maxQueueSize)
            // Running queues write into the old buffer: drain them, swap, restart them on the new one.
            for i in workers.indices { stopWorker(i) }
            inflight = buffer
            try restartAll()
            logger.info("in-flight buffer set: \(buffer.queues) queue(s) of \(buffer.queueSize)")
        case .getProtocolFeatures:
            guard device.features.contains(.protocolFeatures) else {
                throw SessionError("GET_PROTOCOL_FEATURES without F_PROTOCOL_FEATURES offered")
            }
            try channel.reply(to: raw.request, payload: PayloadEncoding.u64(device.protocolFeatures.rawValue))
            return false
        case .setProtocolFeatures(let p):
            guard device.protocolFeatures.isSuperset(of: p) else {
                throw SessionError("SET_PROTOCOL_FEATURES 0x\(String(p.rawValue, radix: 16)) names bits never offered")
            }
            protocolFeatures = p
        case .getQueueNum:
            try requireProtocol(.mq, raw)
            try channel.reply(to: raw.request, payload: PayloadEncoding.u64(UInt64(device.queueCount)))
            return false
        case .setVringEnable(let s):
            guard ackedFeatures.contains(.protocolFeatures) || !featuresSet else {
                throw SessionError("SET_VRING_ENABLE without F_PROTOCOL_FEATURES negotiated")
            }
            try updateQueue(Int(s.index)) { $0.enabled = s.num == 1 }
        case .getConfig(let access):
            try requireProtocol(.config, raw)
            let data = device.readConfig(offset: Int(access.offset), size: Int(access.size))
            if data == nil {
                logger.warning("GET_CONFIG offset \(access.offset) size \(access.size) is outside the config space")
            }
            // A failed read is answered with an empty config, which QEMU reports as an error.
            let reply = ConfigAccess(offset: access.offset, size: UInt32(data?.count ?? 0), flags: access.flags, data: data ?? [])
            try channel.reply(to: raw.request, payload: reply.encoded)
            return false
        case .setConfig(let access):
            try requireProtocol(.config, raw)
            // vhost-user.rst: the flags say who writes; only the driver's own writes (FRONTEND) change
            // the device. The migration flag would restore state we do not migrate.
            guard access.flags == ConfigAccess.flagFrontend else {
                throw SessionError("SET_CONFIG with flags \(access.flags): only front-end (driver) writes are supported")
            }
            // Queues drain and stop first, so no request straddles the change, then restart with it.
            for i in workers.indices { stopWorker(i) }
            var failure: Error?
            do {
                try device.writeConfig(offset: Int(access.offset), data: access.data)
            } catch {
                failure = error
            }
            try restartAll()
            if let failure { throw failure }
        }
        return true
    }

    private func requireProtocol(_ f: ProtocolFeatures, _ raw: RawMessage) throws {
        guard protocolFeatures.contains(f) else {
            throw SessionError("\(raw.name) needs protocol feature \(f), which was not negotiated")
        }
    }
}
