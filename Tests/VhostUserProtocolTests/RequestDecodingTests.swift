import Glibc
import Testing
import VhostSystem
import VhostUserProtocol

// MARK: Helpers

func u64(_ v: UInt64) -> [UInt8] { PayloadEncoding.u64(v) }

/// `n` fresh fds (eventfds) for messages that must carry them.
func someFDs(_ n: Int) throws -> [FileDescriptor] { try (0..<n).map { _ in try EventFD().fd } }

func decode(_ code: UInt32, _ payload: [UInt8] = [], fds: [FileDescriptor] = [], flags: UInt32 = 1) throws(ProtocolError) -> Request {
    try Request(decoding: RawMessage(request: code, flags: flags, payload: payload, fds: fds))
}

/// The kind of ProtocolError decoding threw, nil when it decoded.
func rejection(_ code: UInt32, _ payload: [UInt8] = [], fds: [FileDescriptor] = [], flags: UInt32 = 1) -> ProtocolError.Kind? {
    do {
        _ = try decode(code, payload, fds: fds, flags: flags)
        return nil
    } catch {
        return error.kind
    }
}

func code(_ r: FrontendRequest) -> UInt32 { r.rawValue }

let regionA = MemoryRegionDescription(guestPhysicalAddress: 0x1_0000_0000, size: 0x4000_0000, userAddress: 0x7f00_1234_0000, mmapOffset: 0x2000)
let regionB = MemoryRegionDescription(guestPhysicalAddress: 0, size: 0xa0000, userAddress: 0x7f10_0000_0000, mmapOffset: 0)

// MARK: Accepted requests

@Test func requestsWithoutPayloadDecode() throws {
    for c: FrontendRequest in [.getFeatures, .setOwner, .resetOwner, .getProtocolFeatures, .getQueueNum, .getMaxMemSlots] {
        let r = try decode(c.rawValue)
        switch (c, r) {
        case (.getFeatures, .getFeatures), (.setOwner, .setOwner), (.resetOwner, .resetOwner),
             (.getProtocolFeatures, .getProtocolFeatures), (.getQueueNum, .getQueueNum), (.getMaxMemSlots, .getMaxMemSlots):
            #expect(r.queueIndex == nil)
        default:
            Issue.record("\(c) decoded as \(r)")
        }
    }
    // RESET_OWNER also comes with a zero u64; NEED_REPLY is a legal flag.
    guard case .resetOwner = try decode(code(.resetOwner), u64(0)) else { Issue.record("RESET_OWNER u64"); return }
    guard case .resetDevice = try decode(code(.resetDevice)) else { Issue.record("RESET_DEVICE"); return }
    guard case .resetDevice = try decode(code(.resetDevice), u64(0)) else { Issue.record("RESET_DEVICE u64"); return }
    guard case .getFeatures = try decode(code(.getFeatures), flags: 0x9) else { Issue.record("NEED_REPLY"); return }
}

@Test func featureRequestsCarryTheirBits() throws {
    guard case .setFeatures(let f) = try decode(code(.setFeatures), u64(0x1_4000_0246)) else { Issue.record("SET_FEATURES"); return }
    #expect(f.rawValue == 0x1_4000_0246)
    guard case .setProtocolFeatures(let p) = try decode(code(.setProtocolFeatures), u64(0x8209)) else { Issue.record("SET_PROTOCOL_FEATURES"); return }
    #expect(p.rawValue == 0x8209)
}

@Test func vringStateRequestsDecode() throws {
    let payload = VringState(index: 3, num: 256).encoded
    #expect(payload == [3, 0, 0, 0, 0, 1, 0, 0])
    guard case .setVringNum(let a) = try decode(code(.setVringNum), payload) else { Issue.record("NUM"); return }
    guard case .setVringBase(let b) = try decode(code(.setVringBase), payload) else { Issue.record("BASE"); return }
    guard case .getVringBase(let c) = try decode(code(.getVringBase), payload) else { Issue.record("GET_BASE"); return }
    for s in [a, b, c] { #expect(s == VringState(index: 3, num: 256)) }
    for num: UInt32 in [0, 1] {
        let r = try decode(code(.setVringEnable), VringState(index: 1, num: num).encoded)
        guard case .setVringEnable(let s) = r else { Issue.record("ENABLE"); return }
        #expect(s == VringState(index: 1, num: num))
        #expect(r.queueIndex == 1)
    }
}

@Test func setVringAddrDecodesEveryField() throws {
    let a = VringAddress(index: 2, flags: 1, descriptorTable: 0x7f00_0000_1000, usedRing: 0x7f00_0000_3000,
                         availRing: 0x7f00_0000_2000, log: 0xdead_0000)
    let payload = a.encoded
    #expect(payload.count == 40)
    // Wire order: index, flags, desc, used, avail, log (struct vhost_vring_addr).
    #expect(PayloadReader(payload).u64(at: 16) == 0x7f00_0000_3000)
    #expect(PayloadReader(payload).u64(at: 24) == 0x7f00_0000_2000)
    let r = try decode(code(.setVringAddr), payload)
    guard case .setVringAddr(let got) = r else { Issue.record("ADDR"); return }
    #expect(got == a)
    #expect(r.queueIndex == 2)
}

@Test func setMemTableDecodesRegionsAndKeepsTheirFDs() throws {
    let payload = PayloadEncoding.memTable([regionA, regionB])
    #expect(payload.count == 8 + 2 * 32)
    #expect(PayloadReader(payload).u32(at: 0) == 2)
    let fds = try someFDs(2)
    let raws = fds.map(\.rawValue)
    guard case .setMemTable(let regions, let got) = try decode(code(.setMemTable), payload, fds: fds) else { Issue.record("MEM"); return }
    #expect(regions == [regionA, regionB])
    #expect(got.map(\.rawValue) == raws)
}

@Test func memSlotRequestsDecode() throws {
    let payload = PayloadEncoding.singleRegion(regionA)
    #expect(payload.count == 40 && payload.prefix(8).allSatisfy { $0 == 0 })
    let fd = try someFDs(1)
    guard case .addMemReg(let d, let f) = try decode(code(.addMemReg), payload, fds: fd) else { Issue.record("ADD"); return }
    #expect(d == regionA && f.rawValue == fd[0].rawValue)
    guard case .remMemReg(let r0) = try decode(code(.remMemReg), payload) else { Issue.record("REM"); return }
    #expect(r0 == regionA)
    // Some front-ends attach the region's fd to REM_MEM_REG too: tolerated.
    guard case .remMemReg(let r1) = try decode(code(.remMemReg), payload, fds: try someFDs(1)) else { Issue.record("REM+fd"); return }
    #expect(r1 == regionA)
}

@Test(arguments: [FrontendRequest.setVringKick, .setVringCall, .setVringErr])
func vringFDRequestsDecodeWithAndWithoutAnFD(_ c: FrontendRequest) throws {
    let fds = try someFDs(1)
    let withFD = try decode(c.rawValue, u64(7), fds: fds)
    let noFD = try decode(c.rawValue, u64(0x100 | 0xff))
    switch (withFD, noFD) {
    case (.setVringKick(let i, let f), .setVringKick(let j, let g)),
         (.setVringCall(let i, let f), .setVringCall(let j, let g)),
         (.setVringErr(let i, let f), .setVringErr(let j, let g)):
        #expect(i == 7 && f?.rawValue == fds[0].rawValue)
        #expect(j == 0xff && g == nil)
    default:
        Issue.record("\(c) decoded as \(withFD) / \(noFD)")
    }
    #expect(withFD.queueIndex == 7 && noFD.queueIndex == 0xff)
}

@Test func configRequestsDecode() throws {
    let get = ConfigAccess(offset: 20, size: 4, flags: 0, data: [0, 0, 0, 0])
    guard case .getConfig(let g) = try decode(code(.getConfig), get.encoded) else { Issue.record("GET_CONFIG"); return }
    #expect(g == get)
    let set = ConfigAccess(offset: 32, size: 1, flags: ConfigAccess.flagMigration, data: [1])
    guard case .setConfig(let s) = try decode(code(.setConfig), set.encoded) else { Issue.record("SET_CONFIG"); return }
    #expect(s == set)
    let full = ConfigAccess(offset: 0, size: 256, flags: 0, data: [UInt8](repeating: 9, count: 256))
    guard case .getConfig(let f) = try decode(code(.getConfig), full.encoded) else { Issue.record("256"); return }
    #expect(f.data.count == 256)
}

// MARK: Header rejections

@Test(arguments: [0x0, 0x2, 0x3, 0x8, 0xb] as [UInt32])
func badVersionIsRejected(flags: UInt32) {
    #expect(rejection(code(.getFeatures), flags: flags) == .badVersion)
}

@Test(arguments: [0x11, 0x101, 0x8000_0001] as [UInt32])
func unknownFlagBitsAreRejected(flags: UInt32) {
    #expect(rejection(code(.getFeatures), flags: flags) == .unknownFlags)
}

@Test func replyFlagFromTheFrontendIsRejected() {
    #expect(rejection(code(.getFeatures), flags: 0x5) == .replyFlagFromFrontend)
    #expect(rejection(code(.setOwner), flags: 0xd) == .replyFlagFromFrontend)
}

@Test(arguments: [0, 19, 20, 22, 23, 26, 41, 999] as [UInt32])
func unknownCodesAreRejected(code: UInt32) {
    #expect(rejection(code) == .unknownRequest)
}

@Test(arguments: [6, 7, 21, 35, 39, 40] as [UInt32])
func requestsNeedingUnofferedFeaturesAreRejected(code: UInt32) {
    guard case .notNegotiated = rejection(code, u64(0)) else {
        Issue.record("code \(code): \(String(describing: rejection(code, u64(0))))")
        return
    }
}

// MARK: Payload rejections

struct SizeCase: Sendable, CustomTestStringConvertible {
    var request: FrontendRequest
    var size: Int
    var testDescription: String { "\(request) with \(size) bytes" }
}

@Test(arguments: [
    SizeCase(request: .getFeatures, size: 8), SizeCase(request: .setFeatures, size: 0), SizeCase(request: .setFeatures, size: 4),
    SizeCase(request: .setFeatures, size: 16), SizeCase(request: .setOwner, size: 8), SizeCase(request: .resetOwner, size: 4),
    SizeCase(request: .resetOwner, size: 16), SizeCase(request: .resetDevice, size: 4), SizeCase(request: .setVringNum, size: 4), SizeCase(request: .setVringNum, size: 12),
    SizeCase(request: .setVringAddr, size: 32), SizeCase(request: .setVringAddr, size: 48), SizeCase(request: .setVringBase, size: 0),
    SizeCase(request: .getVringBase, size: 16), SizeCase(request: .setVringKick, size: 4), SizeCase(request: .setVringCall, size: 16),
    SizeCase(request: .setVringErr, size: 0), SizeCase(request: .getProtocolFeatures, size: 1),
    SizeCase(request: .setProtocolFeatures, size: 7), SizeCase(request: .getQueueNum, size: 8),
    SizeCase(request: .setVringEnable, size: 4), SizeCase(request: .getMaxMemSlots, size: 8),
    SizeCase(request: .remMemReg, size: 32), SizeCase(request: .remMemReg, size: 48),
    SizeCase(request: .setMemTable, size: 4), SizeCase(request: .getConfig, size: 11), SizeCase(request: .setConfig, size: 0),
])
func wrongPayloadSizesAreRejected(_ c: SizeCase) {
    guard case .wrongPayloadSize = rejection(c.request.rawValue, [UInt8](repeating: 0, count: c.size)) else {
        Issue.record("\(c.request) \(c.size): \(String(describing: rejection(c.request.rawValue, [UInt8](repeating: 0, count: c.size))))")
        return
    }
}

@Test func addMemRegWithAWrongSizeIsRejected() throws {
    for size in [32, 48] {
        guard case .wrongPayloadSize = rejection(code(.addMemReg), [UInt8](repeating: 0, count: size), fds: try someFDs(1)) else {
            Issue.record("ADD_MEM_REG \(size)")
            continue
        }
    }
}

@Test(arguments: [0, 9, 0xffff_ffff] as [UInt32])
func setMemTableRegionCountOutside1To8IsRejected(count: UInt32) throws {
    var w = PayloadWriter()
    w.u32(count); w.u32(0)
    for _ in 0..<min(Int(count), 9) { w.raw([UInt8](repeating: 0, count: 32)) }
    guard case .invalidValue = rejection(code(.setMemTable), w.bytes, fds: try someFDs(min(Int(count), 8))) else {
        Issue.record("count \(count)")
        return
    }
}

@Test func setMemTableSizeMustMatchItsCount() throws {
    // Count 2 but one region's bytes, and count 1 with a trailing byte.
    let short = Array(PayloadEncoding.memTable([regionA, regionB]).dropLast(32))
    guard case .wrongPayloadSize = rejection(code(.setMemTable), short, fds: try someFDs(2)) else { Issue.record("short"); return }
    let long = PayloadEncoding.memTable([regionA]) + [0]
    guard case .wrongPayloadSize = rejection(code(.setMemTable), long, fds: try someFDs(1)) else { Issue.record("long"); return }
}

@Test(arguments: [0, 1, 3])
func setMemTableFDsMustMatchTheRegionCount(fdCount: Int) throws {
    let payload = PayloadEncoding.memTable([regionA, regionB])
    guard case .wrongFDCount = rejection(code(.setMemTable), payload, fds: try someFDs(fdCount)) else {
        Issue.record("\(fdCount) fds")
        return
    }
}

@Test(arguments: [FrontendRequest.setVringKick, .setVringCall, .setVringErr])
func vringFDRulesAreEnforced(_ c: FrontendRequest) throws {
    // NOFD bit but an fd anyway; no bit and no fd; two fds.
    guard case .wrongFDCount = rejection(c.rawValue, u64(0x100), fds: try someFDs(1)) else { Issue.record("NOFD+fd"); return }
    guard case .wrongFDCount = rejection(c.rawValue, u64(0)) else { Issue.record("no fd, no bit"); return }
    guard case .wrongFDCount = rejection(c.rawValue, u64(0), fds: try someFDs(2)) else { Issue.record("2 fds"); return }
    // Bits above the index and NOFD flag are undefined.
    for v: UInt64 in [0x200, 0x1_0000_0000, 0x8000_0000_0000_0000] {
        guard case .invalidValue = rejection(c.rawValue, u64(v), fds: try someFDs(1)) else { Issue.record("0x\(String(v, radix: 16))"); return }
    }
}

@Test func fdsOnMessagesThatCarryNoneAreRejected() throws {
    for (c, p): (FrontendRequest, [UInt8]) in [(.getFeatures, []), (.setFeatures, u64(0)), (.setVringNum, u64(0)),
                                               (.setVringEnable, u64(0)), (.getConfig, ConfigAccess(offset: 0, size: 0, flags: 0, data: []).encoded)] {
        guard case .wrongFDCount = rejection(c.rawValue, p, fds: try someFDs(1)) else { Issue.record("\(c)"); continue }
    }
}

@Test func memSlotFDRulesAreEnforced() throws {
    let payload = PayloadEncoding.singleRegion(regionA)
    guard case .wrongFDCount = rejection(code(.addMemReg), payload) else { Issue.record("ADD without fd"); return }
    guard case .wrongFDCount = rejection(code(.addMemReg), payload, fds: try someFDs(2)) else { Issue.record("ADD 2 fds"); return }
    guard case .wrongFDCount = rejection(code(.remMemReg), payload, fds: try someFDs(2)) else { Issue.record("REM 2 fds"); return }
}

@Test func configAccessLimitsAreEnforced() {
    // size over 256 (with matching data) is refused outright.
    let big = ConfigAccess(offset: 0, size: 257, flags: 0, data: [UInt8](repeating: 0, count: 257)).encoded
    guard case .invalidValue = rejection(code(.getConfig), big) else { Issue.record("257"); return }
    // The data must be exactly `size` bytes.
    for (size, dataCount) in [(4, 8), (8, 4), (1, 0)] {
        let p = ConfigAccess(offset: 0, size: UInt32(size), flags: 0, data: [UInt8](repeating: 0, count: dataCount)).encoded
        guard case .wrongPayloadSize = rejection(code(.getConfig), p) else { Issue.record("size \(size) data \(dataCount)"); continue }
        guard case .wrongPayloadSize = rejection(code(.setConfig), p) else { Issue.record("SET size \(size) data \(dataCount)"); continue }
    }
}

@Test(arguments: [2, 3, 0xffff_ffff] as [UInt32])
func setVringEnableAcceptsOnly0Or1(num: UInt32) {
    guard case .invalidValue = rejection(code(.setVringEnable), VringState(index: 0, num: num).encoded) else {
        Issue.record("num \(num)")
        return
    }
}

// MARK: In-flight buffer messages (INFLIGHT_SHMFD)

@Test("GET/SET_INFLIGHT_FD decode QEMU's padded 24-byte payload and the spec's 20-byte one")
func inflightPayloadsDecode() throws {
    let d = InflightDescription(mmapSize: 4160, mmapOffset: 4096, numQueues: 2, queueSize: 128)
    for size in [InflightDescription.size, InflightDescription.unpaddedSize] {
        let payload = d.encoded(size: size)
        #expect(payload.count == size)
        guard case .getInflightFD(let got, let payloadSize) = try decode(code(.getInflightFD), payload) else {
            Issue.record("GET_INFLIGHT_FD \(size)"); continue
        }
        #expect(got == d && payloadSize == size)
        guard case .setInflightFD(let set, _) = try decode(code(.setInflightFD), payload, fds: try someFDs(1)) else {
            Issue.record("SET_INFLIGHT_FD \(size)"); continue
        }
        #expect(set == d)
    }
}

@Test("GET/SET_INFLIGHT_FD with a wrong size or wrong fds are refused")
func inflightPayloadRulesAreEnforced() throws {
    let payload = InflightDescription(mmapSize: 4160, mmapOffset: 0, numQueues: 1, queueSize: 128).encoded()
    for size in [0, 8, 16, 19, 21, 23, 25, 32] {
        guard case .wrongPayloadSize = rejection(code(.getInflightFD), [UInt8](repeating: 0, count: size)) else { Issue.record("GET \(size)"); continue }
        guard case .wrongPayloadSize = rejection(code(.setInflightFD), [UInt8](repeating: 0, count: size), fds: try someFDs(1)) else { Issue.record("SET \(size)"); continue }
    }
    guard case .wrongFDCount = rejection(code(.getInflightFD), payload, fds: try someFDs(1)) else { Issue.record("GET with an fd"); return }
    guard case .wrongFDCount = rejection(code(.setInflightFD), payload) else { Issue.record("SET without fd"); return }
    guard case .wrongFDCount = rejection(code(.setInflightFD), payload, fds: try someFDs(2)) else { Issue.record("SET with 2 fds"); return }
}
