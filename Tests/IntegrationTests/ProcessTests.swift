#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// A command line the daemon must reject, and the argument its message must name.
struct BadArguments: Sendable, CustomTestStringConvertible {
    let arguments: [String]
    let passSocket: Bool
    let names: String
    var testDescription: String { arguments.joined(separator: " ") + (passSocket ? " (with --socket)" : "") }

    static let all: [BadArguments] = [
        BadArguments(arguments: ["--engine", "memory", "--size", "1M", "--queues", "0"], passSocket: true, names: "--queues"),
        BadArguments(arguments: ["--engine", "memory", "--size", "1M", "--block-size", "1000"], passSocket: true, names: "--block-size"),
        BadArguments(arguments: ["--engine", "foo", "--size", "1M"], passSocket: true, names: "--engine"),
        BadArguments(arguments: ["--engine", "memory", "--size", "1M"], passSocket: false, names: "--socket"),
        BadArguments(arguments: ["--backing", "/nonexistent/vhost-itest/disk.img"], passSocket: true, names: "--backing"),
        BadArguments(arguments: ["--engine", "memory", "--size", "1M", "--queue-size", "1000"], passSocket: true, names: "--queue-size"),
        BadArguments(arguments: ["--engine", "memory", "--size", "lots"], passSocket: true, names: "--size"),
        BadArguments(arguments: ["--engine", "memory"], passSocket: true, names: "--size"),
        BadArguments(arguments: ["--engine", "uring", "--size", "1M"], passSocket: true, names: "--backing"),
        BadArguments(arguments: ["--engine", "memory", "--size", "1M", "--uring-sqpoll"], passSocket: true, names: "--uring-sqpoll"),
        BadArguments(arguments: ["--engine", "uring", "--backing", "/var/tmp/x.img", "--uring-sqpoll-cpu", "0"],
                     passSocket: true, names: "--uring-sqpoll-cpu"),
    ]
}

@Suite("The daemon process")
struct ProcessTests {
    @Test("SIGTERM and SIGINT: exit 0 and the socket file is removed", arguments: [SIGTERM, SIGINT])
    func terminate(_ signal: Int32) throws {
        let daemon = try TestDaemon.memory()
        #expect(access(daemon.socketPath, F_OK) == 0)
        daemon.process.signal(signal)
        let status = daemon.process.waitForExit()
        #expect(status == .exited(0), "\(daemon.context())")
        #expect(access(daemon.socketPath, F_OK) != 0, "socket file left behind")
    }

    @Test("SIGTERM during I/O with a session active: exit 0, socket removed", arguments: allEngines)
    func terminateDuringIO(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine)
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            let buffers = try (0..<64).map { _ in try s.arena.allocate(64 << 10, alignment: 4096) }
            for (i, b) in buffers.enumerated() {
                _ = try s.driver.enqueue(.write, sector: UInt64(i) * 128, data: [BufferSegment(b, deviceWritable: false)], indirect: true)
            }
            s.driver.kick()
            daemon.process.signal(SIGTERM)
            #expect(daemon.process.waitForExit() == .exited(0))
            #expect(access(daemon.socketPath, F_OK) != 0, "socket file left behind")
            #expect(try s.frontend.waitForClose(timeoutMs: 5_000))
        }
    }

    @Test("the socket is mode 0600")
    func socketMode() throws {
        let daemon = try TestDaemon.memory()
        var st = stat()
        try #require(lstat(daemon.socketPath, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
    }

    @Test("bad arguments: non-zero exit, the argument named on stderr", arguments: BadArguments.all)
    func badArguments(_ b: BadArguments) throws {
        let p = try DaemonProcess(arguments: b.arguments, passSocket: b.passSocket)
        let status = p.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status))")
        #expect(p.stderr.contains(b.names), "stderr does not name \(b.names):\n\(p.stderr)")
        #expect(!p.stderr.contains("listening"))
    }

    @Test("--listen-fd: serves on an inherited listening socket")
    func listenFD() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("inherited.sock")
        let listener = try UnixSocket.listen(path: path)
        let p = try DaemonProcess(arguments: ["--listen-fd", "3", "--engine", "memory", "--size", "64M"],
                                  passSocket: false, inheritedFD: listener.fd.rawValue, directory: dir)
        listener.fd.close()
        try p.waitUntilListening()
        let f = try Frontend.connectServing(socketPath: path)
        let arena = try GuestMemoryArena(size: arenaBytes)
        let d = try f.connectDevice(arena: arena)[0]
        #expect(try writeReadVerify(d, sector: 0, sectors: 8, seed: 500) == nil, "\(p.stderr)")
        p.signal(SIGTERM)
        #expect(p.waitForExit() == .exited(0), "\(p.stderr)")
    }

    /// systemd socket activation: fds start at 3 (SD_LISTEN_FDS_START) and LISTEN_PID names the
    /// process they are meant for. `sh -c 'LISTEN_PID=$$ … exec daemon'` gives the daemon the shell's
    /// pid, as systemd does between fork and exec.
    @Test("no --socket: systemd LISTEN_FDS/LISTEN_PID socket activation on fd 3")
    func systemdSocketActivation() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("activated.sock")
        let listener = try UnixSocket.listen(path: path)
        let daemon = try DaemonProcess.binaryPath()
        let p = try DaemonProcess(
            arguments: ["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec '\(daemon)' --engine memory --size 64M"],
            passSocket: false, inheritedFD: listener.fd.rawValue, directory: dir, binary: "/bin/sh")
        listener.fd.close()
        try p.waitUntilListening()
        #expect(p.stderr.contains("inherited fd 3"), "\(p.stderr)")
        let f = try Frontend.connectServing(socketPath: path)
        let arena = try GuestMemoryArena(size: arenaBytes)
        let d = try f.connectDevice(arena: arena)[0]
        #expect(try writeReadVerify(d, sector: 0, sectors: 8, seed: 505) == nil, "\(p.stderr)")
        p.signal(SIGTERM)
        #expect(p.waitForExit() == .exited(0), "\(p.stderr)")
        // The socket belongs to whoever created it: the daemon must not remove it.
        #expect(access(path, F_OK) == 0, "the daemon removed an inherited socket")
    }

    @Test("LISTEN_FDS meant for another process (LISTEN_PID differs) is ignored: --socket is required")
    func systemdActivationForAnotherProcess() throws {
        let daemon = try DaemonProcess.binaryPath()
        let p = try DaemonProcess(
            arguments: ["-c", "LISTEN_PID=1 LISTEN_FDS=1 exec '\(daemon)' --engine memory --size 64M"],
            passSocket: false, binary: "/bin/sh")
        let status = p.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status))")
        #expect(p.stderr.contains("--socket"), "\(p.stderr)")
    }

    @Test("a second daemon on a socket that is in use refuses to start")
    func socketInUse() throws {
        let first = try TestDaemon.memory()
        let second = try DaemonProcess(arguments: ["--engine", "memory", "--size", "1M"], directory: first.directory)
        let status = second.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status)):\n\(second.stderr)")
        // The first one is unharmed.
        let s = try first.session()
        #expect(try writeReadVerify(s.driver, sector: 0, sectors: 1, seed: 510) == nil)
    }
}
