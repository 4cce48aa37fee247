#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserTesting

/// Where queue workers may run: pinned one per CPU from `--cpus LIST` (dedicated cores), or left to the
/// scheduler with `--cpus none` (cores shared with vCPUs).
@Suite("Worker CPU placement")
struct PlacementTests {
    /// The Cpus_allowed_list of the daemon's thread named `name`, once it equals `expected` (or at the
    /// 10 s deadline, whatever it is then). A worker names and pins itself when it first runs, which on
    /// a loaded machine can be well after the session that created it has started.
    static func allowedCPUs(of daemon: TestDaemon, thread name: String, expecting expected: String? = nil) throws -> String {
        let pid = daemon.process.pid
        let deadline = Deadline(milliseconds: 10_000)
        var last: String?
        repeat {
            for t in threadIDs(pid) {
                let path = "/proc/\(pid)/task/\(t)/status"
                guard let status = readStatus(path), try statusFields(status, "Name", of: path) == [name] else { continue }
                last = try statusFields(status, "Cpus_allowed_list", of: path).joined()
            }
            if let last, expected == nil || last == expected { return last }
            usleep(1_000)
        } while !deadline.expired
        guard let last else { throw IntegrationFailure(description: "no thread \(name) in the daemon\n\(daemon.context())") }
        return last
    }

    /// A daemon that placed its one queue's worker itself, serving a session that has written and read
    /// back once; `body` runs with them and the CPU the worker was pinned to.
    static func withPlacedWorker(seed: UInt64, _ body: (TestDaemon, Session, Int) throws -> Void) throws {
        let daemon = try TestDaemon.file(engine: "aio", queues: 1)
        let s = try daemon.session(queues: 1)
        try daemon.run(s.frontend) { () throws in
            #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: seed) == nil)
            let placed = try allowedCPUs(of: daemon, thread: "vq0")
            let cpu = try #require(Int(placed), "automatic placement pins each worker to one CPU, got \(placed)")
            try body(daemon, s, cpu)
        }
    }

    /// Flushes, one at a time ~100 µs apart, for at least `minimumMs` and then until `done` holds or
    /// `timeoutMs` has passed.
    static func flush(_ driver: BlkDriver, minimumMs: Int = 0, timeoutMs: Int, until done: () -> Bool) throws {
        let minimum = Deadline(milliseconds: minimumMs), deadline = Deadline(milliseconds: timeoutMs)
        while !(minimum.expired && done()), !deadline.expired {
            #expect(try driver.flush().status == .ok)
            usleep(100)
        }
    }

    /// The id of the daemon's thread named `name`.
    static func threadID(of daemon: TestDaemon, thread name: String) throws -> String {
        let pid = daemon.process.pid
        for t in threadIDs(pid) {
            let path = "/proc/\(pid)/task/\(t)/status"
            if let status = readStatus(path), try statusFields(status, "Name", of: path) == [name] { return t }
        }
        throw IntegrationFailure(description: "no thread \(name) in the daemon\n\(daemon.context())")
    }

    /// Runs `taskset -p -c CPUS TID`, as an operator or a management tool would; its exit status.
    static func taskset(_ cpus: String, thread tid: String) -> Int32 {
        let args = ["taskset", "-p", "-c", cpus, tid]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        guard posix_spawnp(&pid, "taskset", &actions, nil, &argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    @Test("--cpus LIST pins each queue's worker to one CPU of it; --cpus none pins none")
    func pinnedOrFloating() throws {
        let cpus = CPUTopology.allowedCPUs()
        let last = try #require(cpus.last)
        let pinned = try TestDaemon.file(engine: "aio", queues: 2, extra: ["--cpus", String(last)])
        let s = try pinned.session(queues: 2)
        try pinned.run(s.frontend) { () throws in
            #expect(try Self.allowedCPUs(of: pinned, thread: "vq0", expecting: String(last)) == String(last))
            #expect(try Self.allowedCPUs(of: pinned, thread: "vq1", expecting: String(last)) == String(last))
        }

        let floating = try TestDaemon.file(engine: "aio", queues: 2, extra: ["--cpus", "none"])
        let f = try floating.session(queues: 2)
        try floating.run(f.frontend) { () throws in
            // The process's own affinity, which the workers inherit unchanged.
            let main = try Self.allowedCPUs(of: floating, thread: "vhost-user-blk")
            #expect(try Self.allowedCPUs(of: floating, thread: "vq0", expecting: main) == main)
            #expect(try Self.allowedCPUs(of: floating, thread: "vq1", expecting: main) == main)
            if cpus.count > 1 { #expect(main != String(last), "the test needs a process allowed more than one CPU") }
            #expect(try writeReadVerify(f.driver, sector: 0, sectors: 8, seed: 77) == nil)
            #expect(floating.process.stderr.contains("not pinned"))
        }
    }

    /// Placement left to the daemon adapts to a CPU another busy thread takes (the worker floats over
    /// the CPUs it was placed among, and polls briefly: `SharedCoreDetector`); a CPU named with
    /// `--cpus` is the operator's promise that it is dedicated, and its worker stays.
    @Test("an automatically placed worker floats off a CPU another thread takes; one on a named CPU stays",
          .enabled(if: CPUTopology.allowedCPUs().count >= 2, "needs two CPUs"))
    func sharedCPU() throws {
        try Self.withPlacedWorker(seed: 5) { automatic, a, cpu in
            let hog = try CPUHog(cpu: cpu)
            defer { hog.stop() }
            try Self.flush(a.driver, timeoutMs: 10_000) { automatic.process.stderr.contains("is shared") }
            #expect(automatic.process.stderr.contains("queue 0: its CPU \(cpu) is shared"), "\(automatic.context(a.frontend))")
            let floating = try Self.allowedCPUs(of: automatic, thread: "vq0", expecting: nil)
            #expect(floating != String(cpu) && floating.count > 1, "still on \(floating)")
            #expect(try writeReadVerify(a.driver, sector: 64, sectors: 8, seed: 6) == nil)
        }

        let named = try TestDaemon.file(engine: "aio", queues: 1, extra: ["--cpus", String(try #require(CPUTopology.allowedCPUs().last))])
        let n = try named.session(queues: 1)
        try named.run(n.frontend) { () throws in
            let cpu = try #require(CPUTopology.allowedCPUs().last)
            #expect(try Self.allowedCPUs(of: named, thread: "vq0", expecting: String(cpu)) == String(cpu))
            let hog = try CPUHog(cpu: cpu)
            defer { hog.stop() }
            // A second of requests: ten judgements, had it been watching.
            try Self.flush(n.driver, minimumMs: 1_000, timeoutMs: 1_000) { true }
            #expect(!named.process.stderr.contains("is shared"))
            #expect(try Self.allowedCPUs(of: named, thread: "vq0") == String(cpu))
        }
    }

    /// Someone else moved the worker (`taskset -p`, a management tool): the daemon still caps its poll
    /// on a shared CPU, but neither floats it nor pins it back.
    @Test("a worker whose affinity was set from outside keeps it", .enabled(if: CPUTopology.allowedCPUs().count >= 2, "needs two CPUs"))
    func affinitySetFromOutside() throws {
        try Self.withPlacedWorker(seed: 7) { daemon, s, cpu in
            let other = try #require(CPUTopology.allowedCPUs().first { $0 != cpu })
            #expect(Self.taskset(String(other), thread: try Self.threadID(of: daemon, thread: "vq0")) == 0)
            let hog = try CPUHog(cpu: other)
            defer { hog.stop() }
            // At least a second of requests (ten judgements), until the worker has said what it did.
            try Self.flush(s.driver, minimumMs: 1_000, timeoutMs: 10_000) { daemon.process.stderr.contains("set from outside") }
            // On a loaded machine the worker may have found its CPU shared, and floated, before the
            // taskset: then it says so only when it would pin back (at debug). Either way the
            // affinity stays what the taskset made it.
            if !daemon.process.stderr.contains("may now run on any") {
                #expect(daemon.process.stderr.contains("its affinity was set from outside"), "\(daemon.context(s.frontend))")
            }
            #expect(try Self.allowedCPUs(of: daemon, thread: "vq0") == String(other))
        }
    }
}
