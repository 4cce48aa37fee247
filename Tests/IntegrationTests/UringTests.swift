#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// The comm names of a process's threads.
private func threadNames(_ pid: pid_t) -> [String] {
    guard let dir = opendir("/proc/\(pid)/task") else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let id = withUnsafePointer(to: &entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        guard id != "." && id != "..", let fd = try? FileDescriptor.open("/proc/\(pid)/task/\(id)/comm", flags: O_RDONLY) else { continue }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) }
        fd.close()
        if n > 0 { names.append(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: "\n")) }
    }
    return names
}

private extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}

/// What the io_uring engine adds at the level of the daemon: the start-up probe and its message,
/// the SQ polling threads, and completions waking a sleeping worker. The request semantics it
/// shares with aio are covered by the suites that take `allEngines`/`fileEngines`.
@Suite("io_uring engine")
struct UringTests {
    @Test("--engine uring starts, says what it set up, and serves read/write/flush")
    func startsAndServes() throws {
        let daemon = try TestDaemon.file(engine: "uring")
        #expect(daemon.process.stderr.contains("engine uring"), "\(daemon.context())")
        #expect(daemon.process.stderr.contains("io_uring: registered file, completion eventfd"), "\(daemon.context())")
        #expect(!daemon.process.stderr.contains("SQ polling"))
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 8, sectors: 64, seed: 800, segments: 4) == nil)
            #expect(try s.driver.flush().isOK)
        }
    }

    @Test("--uring-sqpoll: one kernel polling thread per queue, pinned where asked; I/O works")
    func sqPollThreads() throws {
        let daemon = try TestDaemon.file(engine: "uring", queues: 2, extra: ["--uring-sqpoll", "--uring-sqpoll-cpu", "0"])
        #expect(daemon.process.stderr.contains("SQ polling (thread idle after 1 ms, on CPU 0)"), "\(daemon.context())")
        let s = try daemon.session(queues: 2)
        try daemon.run(s.frontend) { () throws in
            for (i, d) in s.drivers.enumerated() {
                #expect(try writeReadVerify(d, sector: UInt64(i) * 128, sectors: 16, seed: 810 + UInt64(i)) == nil)
            }
            // The kernel names an SQ polling thread "iou-sqp-<pid>"; one per ring, so per started queue.
            // The start-up probe's ring had one too, which its teardown ends asynchronously: give it
            // up to 5 s to go (it takes milliseconds), checking every 10 ms.
            var polling = 0
            for _ in 0..<500 {
                polling = threadNames(daemon.process.pid).filter { $0.hasPrefix("iou-sqp-") }.count
                if polling == 2 { break }
                usleep(10_000)
            }
            #expect(polling == 2, "\(threadNames(daemon.process.pid))")
        }
    }

    @Test("a worker sleeping with I/O in flight is woken by the ring's eventfd (--poll-us 1)")
    func completionsWakeASleepingWorker() throws {
        // A 1 µs poll window: the worker goes to sleep on its kick fd and the ring's completion
        // eventfd between the submission and the completion of almost every request.
        let daemon = try TestDaemon.file(engine: "uring", extra: ["--poll-us", "1"])
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            for k in 0..<20 {
                #expect(try writeReadVerify(s.driver, sector: UInt64(k) * 64, sectors: 32, seed: 820 + UInt64(k), segments: 2) == nil)
            }
            #expect(try s.driver.flush().isOK)
        }
    }

    @Test("io_uring that cannot be set up: exit status 1, --engine named with the reason and the way out, no socket left")
    func probeFailureIsReportedAtStart() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.makeFile("disk.img", size: diskBytes)
        // CPU 4095 is on no machine this runs on, so the kernel refuses the polling thread's affinity.
        let p = try DaemonProcess(arguments: ["--engine", "uring", "--backing", file, "--uring-sqpoll", "--uring-sqpoll-cpu", "4095"],
                                  directory: dir)
        let status = p.waitForExit()
        #expect(status == .exited(1), "\(p.stderr)")
        #expect(p.stderr.contains("--engine: uring: io_uring_setup"), "\(p.stderr)")
        #expect(p.stderr.contains("use --engine aio"), "\(p.stderr)")
        #expect(!p.stderr.contains("listening on"), "\(p.stderr)")
        #expect(access(p.socketPath, F_OK) != 0, "socket file left behind")
    }
}
