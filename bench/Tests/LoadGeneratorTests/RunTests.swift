import Testing
import VhostSystem
import VhostUserTesting
@testable import LoadGenerator

/// Short, bounded runs: request-limited (never time-limited), with a stall timeout far below the
/// test runner's patience, so a broken device fails a test in seconds instead of hanging CI.
private func options(_ target: Target, pattern: AccessPattern = .randrw, requests: UInt64 = 20_000, depth: Int = 16,
                     queues: Int = 1, wait: WaitMode = .poll, verify: Bool = false) -> RunOptions {
    var o = RunOptions(target: target)
    o.workload.pattern = pattern
    o.workload.readMix = 70
    o.workload.queueDepth = depth
    o.workload.requestLimit = requests
    o.workload.verify = verify
    o.workload.verifyBlocks = 256
    o.queues = queues
    o.waitMode = wait
    o.hugePages = false
    o.stallTimeoutSeconds = 5
    return o
}

@Suite struct InstantDeviceRunTests {
    @Test(arguments: [WaitMode.poll, .event])
    func shortRunCompletesEveryRequest(wait: WaitMode) throws {
        let out = try runLoad(options(.instant(deviceBytes: 1 << 30, cpus: []), requests: 20_000, queues: 2, wait: wait))
        #expect(out.failures.isEmpty, "\(out.failures)")
        let r = out.report
        #expect(r.completed == 20_000)
        #expect(r.reads + r.writes == 20_000)
        #expect(r.ioErrors == 0)
        #expect(r.iops > 0)
        #expect(r.latency.count == 20_000)
        // 70 % reads ± a wide margin (20 000 draws).
        #expect(r.reads > 12_000 && r.reads < 16_000)
        #expect(r.json.contains("\"requests\": 20000"))
    }

    /// The instant device never writes data: verify mode must notice that reads return nothing.
    @Test func verifyCatchesADeviceThatReturnsNoData() throws {
        let out = try runLoad(options(.instant(deviceBytes: 1 << 26, cpus: []), verify: true))
        #expect(out.failures.isEmpty, "\(out.failures)")
        #expect(out.report.verifiedBlocks == 256)
        #expect(out.report.verifyErrors == 256)
        #expect(out.report.firstVerifyError != nil)
    }
}

/// Against the real daemon binary (VHOST_USER_BLK_BIN, or next to this test executable).
@Suite struct DaemonRunTests {
    private func daemon(_ args: [String], directory: TemporaryDirectory? = nil) throws -> DaemonProcess {
        // --poll-us 1: the daemon sleeps on its kick eventfd almost at once, so it does not take a
        // core away from the ~230 other tests this runs next to.
        let d = try DaemonProcess(arguments: args + ["--queues", "2", "--poll-us", "1"], directory: directory)
        try d.waitUntilListening()
        return d
    }

    @Test func verifyOnTheMemoryEngine() throws {
        let d = try daemon(["--engine", "memory", "--size", "64M"])
        var o = options(.socket(d.socketPath), depth: 8, queues: 2, wait: .event, verify: true)
        o.backendPID = d.pid
        let out = try runLoad(o)
        #expect(out.failures.isEmpty, "\(out.failures)")
        #expect(out.report.verifiedBlocks == 512)
        #expect(out.report.verifyErrors == 0, "\(out.report.firstVerifyError ?? "")")
        #expect(out.report.ioErrors == 0)
        #expect(out.report.iops > 0)
        #expect(out.report.backendCPUSeconds != nil)
    }

    @Test func verifyOnAFileWithAIO() throws {
        let dir = try TemporaryDirectory(prefix: "lg-test")
        let image = try dir.makeFile("disk.img", size: 32 << 20)
        let d = try daemon(["--backing", image], directory: dir)
        let out = try runLoad(options(.socket(d.socketPath), depth: 16, queues: 2, wait: .poll, verify: true))
        #expect(out.failures.isEmpty, "\(out.failures)")
        #expect(out.report.verifiedBlocks == 512)
        #expect(out.report.verifyErrors == 0, "\(out.report.firstVerifyError ?? "")")
        #expect(out.report.ioErrors == 0)
        #expect(out.report.iops > 0)
    }

    /// --think-us spaces the requests; --idle reports the back-end's CPU while its queue sits idle
    /// (the daemon's worker sleeps then: far below a core).
    @Test func thinkTimeAndIdleMeasurement() throws {
        let d = try daemon(["--engine", "null", "--size", "1G"])
        var o = options(.socket(d.socketPath), requests: 200, depth: 1, queues: 1)
        o.workload.thinkMicroseconds = 200
        o.backendPID = d.pid
        o.idleSeconds = 0.5
        let out = try runLoad(o)
        #expect(out.failures.isEmpty, "\(out.failures)")
        #expect(out.report.completed == 200)
        // 200 requests, each after a 200 µs pause: at least 40 ms.
        #expect(out.report.elapsedSeconds >= 0.04)
        #expect(out.report.json.contains("\"think_us\": 200"))
        let idle = try #require(out.report.backendIdleCPUPercent)
        #expect((out.report.idleSeconds ?? 0) >= 0.5)
        // /proc ticks are 10 ms: over 0.5 s one tick is 2 %; a spinning worker would show ~100 %.
        #expect(idle < 50)
    }

    @Test func mixedRandomRunOnTheNullEngine() throws {
        let d = try daemon(["--engine", "null", "--size", "1G"])
        let out = try runLoad(options(.socket(d.socketPath), requests: 20_000, depth: 32, queues: 1, wait: .event))
        #expect(out.failures.isEmpty, "\(out.failures)")
        #expect(out.report.completed == 20_000)
        #expect(out.report.ioErrors == 0)
    }
}
