// libFuzzer target: one vhost-user message, as the Channel hands it over, through the decoder.
//
// Input: [ctl u8][request u32 LE][flags u32 LE][payload: the rest, at most maxPayloadSize bytes]
//   ctl bits 0-3: number of fds riding with the message (0...15; the socket layer lets through at
//                 most 8, but the decoder must not rely on the count matching anything)
//   ctl bit 4:    the fds are memfds instead of eventfds
//
// Checks beyond "no crash": every fd handed to the decoder is closed once the message and the
// decoded request are gone (ownership, not leaks), and payloads that decode re-encode to the same
// bytes (the decoder read the fields from where the spec puts them).
import FuzzSupport
import VhostSystem
import VhostUserProtocol

// A separate function so the message, the request and their FileDescriptor objects are released
// before the caller checks the fds.
@inline(never)
func decode(request: UInt32, flags: UInt32, payload: [UInt8], fds raw: [Int32]) {
    let message = RawMessage(request: request, flags: flags, payload: payload,
                             fds: raw.map { FileDescriptor(adopting: $0) })
    _ = message.name
    _ = message.encoded
    let decoded: Request
    do {
        decoded = try Request(decoding: message)
    } catch {
        _ = error.description // every error must be describable (it is logged)
        return
    }
    _ = decoded.queueIndex
    switch decoded {
    case .setVringNum(let s), .setVringBase(let s), .getVringBase(let s), .setVringEnable(let s):
        check(s.encoded == payload, "VringState re-encodes differently", request)
    case .setVringAddr(let a):
        check(a.encoded == payload, "VringAddress re-encodes differently", request)
    case .getConfig(let c), .setConfig(let c):
        check(c.encoded == payload, "ConfigAccess re-encodes differently", request)
    case .setMemTable(let regions, let fds):
        check(regions.count == fds.count, "SET_MEM_TABLE: \(regions.count) regions, \(fds.count) fds", request)
        check(fds.allSatisfy(\.isOpen), "SET_MEM_TABLE handed over a closed fd", request)
    case .setVringKick(_, let fd), .setVringCall(_, let fd), .setVringErr(_, let fd):
        check(fd?.isOpen ?? true, "vring fd handed over closed", request)
    default:
        break
    }
}

func check(_ ok: Bool, _ what: @autoclosure () -> String, _ request: UInt32) {
    if !ok { fatalError("request \(request): \(what())") }
}

runLibFuzzer { data, size in
    var input = ByteReader(data, size)
    let ctl = input.u8()
    let request = input.u32(), flags = input.u32()
    // Channel.receive never produces more than maxPayloadSize bytes; stay inside its contract.
    let payload = [UInt8](input.take(ProtocolLimits.maxPayloadSize))
    let fdCount = Int(ctl & 0x0f)
    let raw = (0..<fdCount).map { _ in ctl & 0x10 != 0 ? FuzzFD.memfd() : FuzzFD.eventfd() }
    decode(request: request, flags: flags, payload: payload, fds: raw)
    for fd in raw where FuzzFD.isOpen(fd) {
        fatalError("fd \(fd) of request \(request) still open after the message and its decoding were dropped")
    }
    return 0
}
