#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// Every engine a test of the data path runs on: the RAM disk and both file engines.
let allEngines = ["memory", "aio", "uring"]
/// The engines that do I/O on a file.
let fileEngines = ["aio", "uring"]

/// 64 MiB in 512-byte sectors: the disk most tests use (`--size 64M`).
let diskBytes = 64 << 20
let diskSectors = UInt64(diskBytes / 512)
/// Guest RAM for a test: room for rings, request slots, a 1 MiB scratch buffer and data buffers.
let arenaBytes = 32 << 20

/// An error that carries the daemon's stderr and the front-end's transcript, so a failing test says
/// what was sent and what the daemon logged.
struct IntegrationFailure: Error, CustomStringConvertible {
    var description: String
}

/// A running daemon for one test, with its own directory and socket.
final class TestDaemon: @unchecked Sendable {
    let process: DaemonProcess
    var directory: TemporaryDirectory { process.directory }
    var socketPath: String { process.socketPath }

    /// Launches the daemon with `arguments` (after `--socket`) and waits for its "listening" line.
    init(_ arguments: [String], directory: TemporaryDirectory? = nil) throws {
        process = try DaemonProcess(arguments: arguments, directory: directory)
        try process.waitUntilListening()
    }

    /// The memory engine on a 64 MiB disk.
    static func memory(queues: Int = 1, extra: [String] = []) throws -> TestDaemon {
        try TestDaemon(["--engine", "memory", "--size", "64M", "--queues", String(queues)] + extra)
    }

    /// The aio engine on a fresh sparse 64 MiB file in the test's directory (a disk filesystem, so
    /// O_DIRECT works).
    static func aio(queues: Int = 1, extra: [String] = []) throws -> TestDaemon {
        try file(engine: "aio", queues: queues, extra: extra)
    }

    /// `engine` on a fresh sparse 64 MiB file in the test's directory: "aio", "uring", or
    /// "uring-sqpoll" (the uring engine with `--uring-sqpoll`).
    static func file(engine: String, queues: Int = 1, extra: [String] = []) throws -> TestDaemon {
        let dir = try TemporaryDirectory()
        let file = try dir.makeFile("disk.img", size: diskBytes)
        let engineArguments = engine == "uring-sqpoll" ? ["--engine", "uring", "--uring-sqpoll"] : ["--engine", engine]
        return try TestDaemon(engineArguments + ["--backing", file, "--queues", String(queues)] + extra, directory: dir)
    }

    /// "memory", or an engine on a file (see `file(engine:)`).
    static func engine(_ name: String, queues: Int = 1, extra: [String] = []) throws -> TestDaemon {
        name == "memory" ? try memory(queues: queues, extra: extra) : try file(engine: name, queues: queues, extra: extra)
    }

    func connect() throws -> Frontend { try Frontend.connectServing(socketPath: socketPath) }

    /// Runs `body`; a thrown error comes back with the daemon's stderr attached. (Not generic: a
    /// generic result would make Swift infer the closure's type before it sees the `try`s that
    /// #expect expands to, and reject them.)
    func run(_ frontend: Frontend? = nil, _ body: () throws -> Void) throws {
        try value(frontend, body)
    }

    /// `run` for a body that produces a value.
    func value<T>(_ frontend: Frontend? = nil, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw IntegrationFailure(description: "\(error)\n\(context(frontend))")
        }
    }

    /// The transcript of `frontend` and the daemon's stderr, for failure messages.
    func context(_ frontend: Frontend? = nil) -> String {
        var s = ""
        if let frontend { s += "--- sent ---\n" + frontend.transcript.suffix(30).joined(separator: "\n") + "\n" }
        s += "--- daemon \(process.arguments.joined(separator: " ")) stderr ---\n" + process.stderr
        return s
    }
}

/// A front-end session with guest memory and one driver per queue.
struct Session {
    let frontend: Frontend
    let arena: GuestMemoryArena
    let drivers: [BlkDriver]
    var driver: BlkDriver { drivers[0] }
}

extension TestDaemon {
    /// Connects, handshakes and starts `queues` queues of `queueSize` entries.
    func session(queues: Int = 1, queueSize: Int = 128, arena: GuestMemoryArena? = nil,
                 options: Frontend.StartOptions = Frontend.StartOptions()) throws -> Session {
        let frontend = try connect()
        let memory = try arena ?? GuestMemoryArena(size: arenaBytes)
        let drivers = try value(frontend) {
            try frontend.connectDevice(queues: queues, queueSize: queueSize, arena: memory, options: options)
        }
        return Session(frontend: frontend, arena: memory, drivers: drivers)
    }
}

extension BlkCompletion {
    var isOK: Bool { status == .ok }
}

/// Writes a pattern at `sector`, reads it back and compares; returns a description of the first
/// difference, or nil.
func writeReadVerify(_ driver: BlkDriver, sector: UInt64, sectors: Int, seed: UInt64, segments: Int = 1,
                     misalign: Int = 0, indirect: Bool? = nil) throws -> String? {
    let data = patternBytes(seed: seed, byteOffset: sector * 512, count: sectors * 512)
    let w = try driver.write(sector: sector, data: data, segments: segments, misalign: misalign, indirect: indirect)
    guard w.isOK else { return "write of \(sectors) sectors at \(sector) (\(segments) segments, misalign \(misalign)): \(w)" }
    let (r, back) = try driver.read(sector: sector, count: sectors, segments: segments, misalign: misalign, indirect: indirect)
    guard r.isOK else { return "read of \(sectors) sectors at \(sector): \(r)" }
    guard r.usedLength <= UInt32(sectors * 512 + 1) else {
        return "read used len \(r.usedLength) exceeds the \(sectors * 512 + 1) writable bytes"
    }
    if let i = data.indices.first(where: { data[$0] != back[$0] }) {
        return "data differs at byte \(i) of \(sectors) sectors at \(sector): wrote \(data[i]), read \(back[i])"
    }
    return nil
}

/// Reads `sectors` at `sector` and reports the first non-zero byte, or nil if all are zero.
func expectZeros(_ driver: BlkDriver, sector: UInt64, sectors: Int) throws -> String? {
    let (r, back) = try driver.read(sector: sector, count: sectors)
    guard r.isOK else { return "read of \(sectors) sectors at \(sector): \(r)" }
    if let i = back.firstIndex(where: { $0 != 0 }) { return "byte \(i) of sector \(sector)+ is \(back[i]), expected 0" }
    return nil
}
