#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// A small /proc file of the daemon, whole.
private func readProcFile(_ path: String) -> String? {
    guard let fd = try? FileDescriptor.open(path, flags: O_RDONLY) else { return nil }
    var buffer = [UInt8](repeating: 0, count: 512)
    let n = buffer.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress, $0.count) }
    return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
}

/// The id of the daemon's thread named `name` (workers are "vqN").
private func threadID(_ pid: pid_t, named name: String) -> String? {
    guard let dir = opendir("/proc/\(pid)/task") else { return nil }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let tid = withUnsafePointer(to: &entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        guard tid != ".", tid != ".." else { continue }
        if readProcFile("/proc/\(pid)/task/\(tid)/comm")?.trimmingSuffixNewline == name { return tid }
    }
    return nil
}

/// Nanoseconds a thread has run: the first field of /proc/PID/task/TID/schedstat (exact, where
/// /proc/PID/stat counts 10 ms ticks).
private func runNanoseconds(_ pid: pid_t, _ tid: String) -> UInt64? {
    readProcFile("/proc/\(pid)/task/\(tid)/schedstat")?.split(separator: " ").first.flatMap { UInt64($0) }
}

private extension String {
    var trimmingSuffixNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

private func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

@Suite("Poll → sleep (the daemon binary)", .serialized)
struct PollingTests {
    /// The target: a connected queue with nothing to do costs < 1 % of a core once its poll
    /// window has passed. Its worker thread's own run time is read from /proc over a second.
    @Test("an idle queue's worker costs under 1 % of a core", arguments: ["memory", "aio"])
    func idleQueueSleeps(_ engine: String) throws {
        let daemon = try TestDaemon.engine(engine, extra: ["--poll-us", "50"])
        let s = try daemon.session()
        try daemon.run(s.frontend) { () throws in
            for _ in 0..<100 { #expect(try s.driver.flush().isOK) }
            let pid = daemon.process.pid
            let tid = try #require(threadID(pid, named: "vq0"), "no vq0 thread in \(pid)")
            // The window is at most 50 µs: 50 ms later the worker sleeps, or something is wrong.
            usleep(50_000)
            let run0 = try #require(runNanoseconds(pid, tid)), t0 = nowNanoseconds()
            usleep(1_000_000)
            let run1 = try #require(runNanoseconds(pid, tid)), t1 = nowNanoseconds()
            let share = Double(run1 - run0) / Double(t1 - t0)
            // A worker that kept polling would use most of a core, even sharing it (≥ 30 %).
            #expect(share < 0.01, "idle worker ran \(share * 100) % of the time")
            // Its sleep ends with the next kick.
            #expect(try s.driver.flush().isOK)
        }
    }

    /// Requests one at a time with random gaps from 0 to 3× the 20 µs maximum window, so that they
    /// arrive while the worker polls, while it arms notifications and while it sleeps, and the
    /// window keeps growing and shrinking. Every one must be answered (a lost kick never is) and
    /// by its call (a lost call is an error in the driver's wait).
    @Test("requests at random gaps around the poll window are all answered", arguments: [true, false])
    func randomGapsAroundTheWindow(_ eventIdx: Bool) throws {
        let daemon = try TestDaemon.memory(extra: ["--poll-us", "20"])
        var options = Frontend.StartOptions()
        options.eventIdx = eventIdx
        let s = try daemon.session(options: options)
        s.driver.timeoutMs = 5_000
        try daemon.run(s.frontend) { () throws in
            #expect(s.frontend.ackedFeatures.contains(.ringEventIdx) == eventIdx)
            // xorshift64*: deterministic gaps, so a failing run can be repeated.
            var state: UInt64 = eventIdx ? 11 : 12
            let deadline = Deadline(milliseconds: 15_000)
            var done = 0
            while done < 2_000 && !deadline.expired {
                state ^= state >> 12
                state ^= state << 25
                state ^= state >> 27
                let gap = (state &* 0x2545_F491_4F6C_DD1D) % 60_000
                let until = nowNanoseconds() + gap
                while nowNanoseconds() < until {}
                #expect(try s.driver.flush().isOK)
                done += 1
            }
            #expect(done >= 300)
        }
    }
}
