// libFuzzer target: a whole back-end session (VhostUserBackend.Session over a VirtioBlkDevice on the
// memory engine) fed a sequence of vhost-user messages over a real socketpair, fds and all.
//
// Input: records, back to back, until the input ends:
//   [ctl u8][header: request u32, flags u32, size u32 (LE)][payload: `size` bytes, or what is left]
//   ctl bits 0-3: fds sent with the record (0...15; over 8 the kernel truncates the list, which the
//                 channel must refuse)
//   ctl bit 4:    the fds are memfds of FuzzFD.memfdSize bytes instead of eventfds (so SET_MEM_TABLE /
//                 ADD_MEM_REG map real files with the fuzzer's sizes and offsets)
//   ctl bit 5:    header and payload are sent separately, the fds with the payload (a violation)
// The bytes after ctl are exactly what goes on the wire, so a size field larger than what is left
// makes a message cut short by EOF. After each record the session handles one message; after the
// last, the write side is shut down and the session must report .closed.
//
// Checks beyond "no crash, no hang": the session reports .closed at EOF, and after teardown() every
// fd it was sent is closed again (the process's open-fd count is back where it started).
#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import FuzzSupport
import Logging
import VhostSystem
import VhostUserBackend
import VhostUserBlk
import VhostUserProtocol

// Nothing is logged: errors are the normal outcome of most inputs, and formatting them is not what
// is measured. (The messages are still built: Logger's autoclosures run only for enabled levels.)
let logger: Logger = {
    var l = Logger(label: "fuzz-session")
    l.logLevel = .critical
    return l
}()

// One device for the whole process: it holds no per-connection state (that is the Session's), and
// building its RAM disk per input would dominate the run time. Two queues, so queue-index checks and
// multi-queue start/stop both get exercised.
let device: VirtioBlkDevice<MemoryEngine> = {
    do {
        var backing = BackingOptions(createSize: 1 << 20, engine: .memory)
        backing.blockSize = 512
        var configuration = DaemonConfiguration(listen: .path("/nonexistent/fuzz.sock"), backing: backing)
        configuration.queues = 2
        configuration.serial = "fuzz"
        configuration.pollMicroseconds = 1 // a started worker goes to sleep at once: 2 cores here
        let store = try BackingStore.open(backing)
        return VirtioBlkDevice(store: store, configuration: configuration, cpus: []) { try MemoryEngine(store: store, depth: $0) }
    } catch {
        fatalError("device: \(error)")
    }
}()

signal(SIGPIPE, SIG_IGN)
/// FUZZ_DEBUG=1: one line per message with the session's outcome (for writing seeds).
let debug = getenv("FUZZ_DEBUG") != nil

@inline(never)
func runSession(_ input: inout ByteReader) {
    let front: UnixSocket, back: UnixSocket
    do { (front, back) = try UnixSocket.pair() } catch { fatalError("socketpair: \(error)") }
    let session = Session(device: device, channel: Channel(back), logger: logger)
    defer { session.teardown() }
    var open = true
    while open && !input.isEmpty {
        let ctl = input.u8()
        let header = [UInt8](input.take(ProtocolLimits.headerSize))
        // A ctl byte with nothing after it: no bytes to carry fds (sendmsg refuses that), so it is EOF.
        if header.isEmpty { break }
        let declared = header.count == ProtocolLimits.headerSize
            ? Int(UInt32(header[8]) | UInt32(header[9]) << 8 | UInt32(header[10]) << 16 | UInt32(header[11]) << 24) : 0
        let payload = [UInt8](input.take(declared))
        let fds = (0..<Int(ctl & 0x0f)).map { _ in ctl & 0x10 != 0 ? FuzzFD.memfd() : FuzzFD.eventfd() }
        let sock = front.fd.rawValue
        let sent: Bool
        if ctl & 0x20 != 0 && !payload.isEmpty {
            sent = sendRaw(sock, header, fds: []) && sendRaw(sock, payload, fds: fds)
        } else {
            sent = sendRaw(sock, header + payload, fds: fds)
        }
        // The session never closes its end while we run, so a failed send is a harness bug.
        if !sent { fatalError("sendmsg: errno \(errno)") }
        // The kernel holds its own references to fds in flight; ours go now.
        for fd in fds { close(fd) }
        // A message cut short must meet EOF, not wait for bytes that never come.
        if input.isEmpty { shutdown(front.fd.rawValue, Int32(SHUT_WR)) }
        open = session.handleNextMessage() == .continueSession
        if debug { fputs("request \(header.count >= 4 ? header[0] : 0) -> \(open ? "continue" : "closed")\n", stderr) }
        drainReplies(front)
    }
    if open {
        shutdown(front.fd.rawValue, Int32(SHUT_WR))
        // Everything sent was handled, so the next read meets EOF: the session must say closed.
        if session.handleNextMessage() != .closed { fatalError("session did not report .closed at EOF") }
    }
}

/// Replies are read and thrown away so the session never blocks on a full socket buffer.
func drainReplies(_ s: UnixSocket) {
    var buf = [UInt8](repeating: 0, count: 4096)
    while buf.withUnsafeMutableBytes({ recv(s.fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
}

runLibFuzzer { data, size in
    var input = ByteReader(data, size)
    let before = FuzzFD.openCount()
    runSession(&input)
    let after = FuzzFD.openCount()
    if after != before { fatalError("fd leak: \(before) open fds before the session, \(after) after teardown") }
    return 0
}
