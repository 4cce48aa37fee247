import BlockIO
import Glibc
import Logging
import Testing
import VhostSystem
import VhostUserBackend
import VhostUserBlk
import VhostUserProtocol
import VhostUserTesting

/// A private directory under /tmp (socket paths must stay short), removed with its entries.
final class ScratchDir {
    let path: String

    init() throws {
        var template = Array("/tmp/vub-unit-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw SystemError.current("mkdtemp") }
        path = String(cString: template)
    }

    deinit {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { unlink("\(path)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

/// Quiet logs: failures are reported through expectations, and parallel servers would interleave.
let quietLogger: Logger = {
    var l = Logger(label: "vhost-user-backend-tests")
    l.logLevel = .critical
    return l
}()

/// An in-process vhost-user-blk back-end: a VirtioBlkDevice over a RAM disk, served by
/// VhostUserServer on its own thread at a socket in a private directory. `stop()` must be called
/// (tests `defer` it); it returns once `run()` has returned.
final class ServerUnderTest {
    static let diskBytes: UInt64 = 4 << 20
    static let serial = "unit-disk-serial"

    let dir: ScratchDir
    let path: String
    let device: VirtioBlkDevice<MemoryEngine>
    let server: VhostUserServer<VirtioBlkDevice<MemoryEngine>>
    /// Signalled by the server thread right after `run()` returned.
    let returned: EventFD
    private var thread: PinnedThread?

    init(queues: Int = 1, readOnly: Bool = false) throws {
        dir = try ScratchDir()
        path = dir.path + "/sock"
        var backing = BackingOptions(readOnly: readOnly, createSize: Self.diskBytes, engine: .memory)
        backing.blockSize = 512
        var configuration = DaemonConfiguration(listen: .path(path), backing: backing)
        configuration.queues = queues
        configuration.serial = Self.serial
        configuration.pollMicroseconds = 20 // workers go to sleep quickly: this machine has 2 cores
        let store = try BackingStore.open(backing)
        device = VirtioBlkDevice(store: store, configuration: configuration, cpus: []) { try MemoryEngine(store: store, depth: $0) }
        server = try VhostUserServer(listener: try UnixSocket.listen(path: path), device: device, logger: quietLogger)
        returned = try EventFD()
        let server = self.server, returned = self.returned
        thread = try PinnedThread(name: "unit-server", cpu: nil) {
            server.run()
            returned.signal()
        }
    }

    /// Stops the server and joins its thread, failing the test (instead of hanging) when `run()`
    /// does not return within the bound.
    func stop() {
        guard let t = thread else { return }
        thread = nil
        server.requestStop()
        let ready = (try? Poll.readable([returned.rawValue], timeoutMs: 20_000)) ?? []
        #expect(!ready.isEmpty, "run() did not return after requestStop()")
        if !ready.isEmpty { t.join() }
    }

    func connect() throws -> Frontend { try Frontend.connectServing(socketPath: path) }
}

/// Guest memory for one test: enough for a 128-entry queue's rings, the driver's slots and scratch.
func makeArena(regions: Int = 1) throws -> GuestMemoryArena {
    try GuestMemoryArena(regions: (0..<regions).map { _ in GuestMemoryArena.RegionSpec(size: 4 << 20) })
}

/// Whether `ticket` completes within `timeoutMs` (false on timeout). Used for "must not complete yet"
/// checks, so the wait is short but bounded.
func completes(_ driver: BlkDriver, _ ticket: BlkTicket, withinMs timeoutMs: Int) -> Bool {
    let saved = driver.timeoutMs
    driver.timeoutMs = timeoutMs
    defer { driver.timeoutMs = saved }
    do {
        _ = try driver.wait(ticket)
        return true
    } catch {
        return false
    }
}
