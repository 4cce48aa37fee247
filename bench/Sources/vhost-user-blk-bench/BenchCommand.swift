#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import LoadGenerator
import VhostSystem

@main
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhost-user-blk-bench",
        abstract: "Load generator for vhost-user-blk back-ends: a vhost-user front-end driving split virtqueues from pinned threads.",
        discussion: """
        Connects to a vhost-user-blk socket (ours, qemu-storage-daemon, ...) like QEMU does, or with
        --self-test-device drives an in-process device that completes every request at once (the
        generator's own capacity). Exit status: 0 when every request succeeded (and verified), 1 on
        I/O or verify errors or a stalled run, 2 on a set-up error.
        """)

    @Option(help: "vhost-user-blk socket to connect to.")
    var socket: String?

    @Flag(help: "Drive an in-process device that completes at once instead of a socket.")
    var selfTestDevice = false

    @Option(help: "CPUs for the in-process device threads (e.g. 1), with --self-test-device.")
    var deviceCpus: String?

    @Option(help: "Size the in-process device pretends to have (e.g. 1g).")
    var deviceSize = "1g"

    @Option(help: "Virtqueues, one pinned thread each.")
    var queues = 1

    @Option(name: [.customLong("depth"), .customLong("iodepth")], help: "Requests in flight per queue (≤ 341: 3 descriptors each, rings of ≤ 1024).")
    var depth = 32

    @Option(name: [.customLong("bs"), .customLong("block-size")], help: "Request size, 4k...1m.")
    var bs = "4k"

    @Option(help: "read, write, randread, randwrite, readwrite or randrw.")
    var rw = "randread"

    @Option(help: "Reads in percent for readwrite/randrw.")
    var rwmixread = 50

    @Option(help: "Measured seconds (after --ramp).")
    var time: Double = 5

    @Option(help: "Seconds run before measuring.")
    var ramp: Double = 0

    @Option(help: "Total requests over all queues instead of a time limit.")
    var requests: UInt64?

    @Option(help: "Completion: poll (spin on the used ring) or event (sleep on the call eventfd).")
    var wait = "poll"

    @Option(help: "CPUs for the queue threads, e.g. 0 or 0,2-3 (queue i on the i-th, round robin).")
    var cpus: String?

    @Option(help: "Back-end pid: report its CPU seconds per I/O from /proc/PID/stat.")
    var backendPid: Int32?

    @Option(help: "Ring size (power of two ≤ 1024; default: smallest ≥ 3 × depth, at least 128).")
    var queueSize: Int?

    @Option(help: "Use only the first SIZE bytes of the device.")
    var size: String?

    @Flag(help: "Write a pattern over the first --verify-blocks blocks of each queue's slice, read it back and check it.")
    var verify = false

    @Option(help: "Blocks per queue in verify mode.")
    var verifyBlocks = 1024

    @Option(help: "Seed of offsets and the read/write mix (runs repeat with the same seed).")
    var seed: UInt64 = 1

    @Flag(help: "Do not try 2 MiB hugetlb pages for guest memory.")
    var noHugepages = false

    @Flag(help: "Print the report as JSON instead of text.")
    var json = false

    @Option(help: "Seconds without any completion before the run is abandoned.")
    var stallTimeout: Double = 10

    @Option(name: .customLong("think-us"), help: "Wait this many µs after each batch of completions before submitting again (depth 1: a request every N µs, like a slow guest).")
    var thinkUS: UInt64 = 0

    @Option(help: "After the run, keep the queues started and idle this many seconds and report the back-end's CPU meanwhile (needs --backend-pid).")
    var idle: Double = 0

    func run() throws {
        do {
            let outcome = try runLoad(try options())
            print(json ? outcome.report.json : outcome.report.text)
            for f in outcome.failures { _ = "error: \(f)\n".withCString { fputs($0, stderr) } }
            let r = outcome.report
            if !outcome.failures.isEmpty || r.ioErrors > 0 || r.verifyErrors > 0 || (verify && r.verifiedBlocks == 0) {
                throw ExitCode(1)
            }
        } catch let e as ExitCode {
            throw e
        } catch let e as ValidationError {
            throw e
        } catch {
            _ = "vhost-user-blk-bench: \(error)\n".withCString { fputs($0, stderr) }
            throw ExitCode(2)
        }
    }

    func options() throws -> RunOptions {
        var target: Target
        switch (socket, selfTestDevice) {
        case (let s?, false): target = .socket(s)
        case (nil, true):
            guard let bytes = parseSize(deviceSize) else { throw ValidationError("bad --device-size \(deviceSize)") }
            target = .instant(deviceBytes: bytes, cpus: try cpuList(deviceCpus, "--device-cpus"))
        default: throw ValidationError("give exactly one of --socket and --self-test-device")
        }
        var o = RunOptions(target: target)
        guard let pattern = AccessPattern(rawValue: rw) else {
            throw ValidationError("--rw must be one of \(AccessPattern.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let block = parseSize(bs), block <= UInt64(Int.max) else { throw ValidationError("bad --bs \(bs)") }
        guard let mode = WaitMode(rawValue: wait) else { throw ValidationError("--wait must be poll or event") }
        o.workload.pattern = pattern
        o.workload.blockSize = Int(block)
        o.workload.readMix = rwmixread
        o.workload.queueDepth = depth
        o.workload.seconds = time
        o.workload.rampSeconds = ramp
        o.workload.requestLimit = requests
        o.workload.verify = verify
        o.workload.verifyBlocks = verifyBlocks
        o.workload.seed = seed
        o.workload.thinkMicroseconds = thinkUS
        if let size {
            guard let b = parseSize(size) else { throw ValidationError("bad --size \(size)") }
            o.workload.limitBytes = b
        }
        try o.workload.validate()
        o.queues = queues
        o.queueSize = queueSize
        o.waitMode = mode
        o.cpus = try cpuList(cpus, "--cpus")
        o.hugePages = !noHugepages
        o.backendPID = backendPid
        o.stallTimeoutSeconds = stallTimeout
        guard idle >= 0 else { throw ValidationError("--idle must not be negative") }
        guard idle == 0 || backendPid != nil else { throw ValidationError("--idle needs --backend-pid") }
        o.idleSeconds = idle
        // Progress lines only make sense on a terminal; in a log they would be noise.
        o.progress = isatty(2) != 0
        return o
    }

    private func cpuList(_ text: String?, _ option: String) throws -> [Int] {
        guard let text else { return [] }
        guard let list = parseCPUList(text) else { throw ValidationError("bad \(option) \(text)") }
        return list
    }
}
