import BlockIO
import CVhostLinux
import Glibc
import Testing
import VhostSystem
@testable import VhostUserBackend
import VhostUserTesting

/// A worker whose CPU another busy thread takes: it polls briefly and floats while that lasts, and
/// is pinned back with its full window once its CPU is its own again (`SharedCoreDetector`).
@Suite(.serialized, .enabled(if: CPUTopology.allowedCPUs().count >= 2, "needs a CPU for the worker and one for the driver"))
struct SharedCoreTests {
    /// Requests one at a time, back to back, from the driver's CPU, until `done` holds or `timeoutMs`
    /// passes; whether `done` held. The driver sleeps on the call eventfd for each completion, so it
    /// is no competitor itself for a worker that floats onto its CPU.
    static func drive(_ rig: WorkerRig<NullEngine>, chains: FlushChains, timeoutMs: Int,
                      until done: @escaping () -> Bool) throws -> Bool {
        try rig.drive {
            let deadline = Deadline(milliseconds: timeoutMs)
            while !deadline.expired {
                if done() { return true }
                chains.submit()
                guard try chains.waitForCompletion(timeoutMs: 10_000).allOK else { throw DriverFailure("a request failed") }
            }
            return done()
        }
    }

    /// Idle and busy jiffies of all CPUs together, from /proc/stat's first line.
    static func machineTimes() -> (idle: UInt64, total: UInt64)? {
        guard let stat = readProcFile("/proc/stat"), let line = stat.split(separator: "\n").first else { return nil }
        let v = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
        guard v.count >= 5 else { return nil }
        return (v[3] + v[4], v.prefix(8).reduce(0, +))
    }

    @Test func aWorkerFindingItsCPUTakenPollsBrieflyAndFloatsUntilItIsFreeAgain() throws {
        let all = CPUTopology.allowedCPUs()
        let pinned = try #require(WorkerRig<NullEngine>.cpus.worker)
        let rig = try WorkerRig(engine: try NullEngine(depth: 128), pollMicroseconds: 50,
                                sharedCore: SharedCoreResponse(floatOver: all))
        defer { rig.stop() }
        let chains = try FlushChains(queue: rig.queue, arena: rig.arena, count: 1)
        // (Whether the worker finds its CPU shared before the hog depends on what else this machine
        // runs, tests included: not checked.)
        let hog = try CPUHog(cpu: pinned)
        defer { hog.stop() }
        // Polling after each request, the worker now shares its CPU with the hog half and half: the
        // first judgement (100 ms) shows it.
        let shared = try Self.drive(rig, chains: chains, timeoutMs: 10_000) { rig.worker.coreShared }
        #expect(shared, "the worker did not notice the hog on its CPU")
        #expect(rig.worker.pollWindowNanoseconds <= SharedCoreResponse.defaultPollCeilingNanoseconds)
        #expect(rig.worker.allowedCPUs == all)
        hog.stop()

        // Its CPU is free again: after ten quiet judgements it is pinned back and may poll its full
        // window again (which regrows as sleeps show it pays).
        let before = Self.machineTimes()
        let dedicated = try Self.drive(rig, chains: chains, timeoutMs: 20_000) { !rig.worker.coreShared }
        if dedicated {
            #expect(rig.worker.allowedCPUs == [pinned])
        } else if let b = before, let a = Self.machineTimes(), a.total > b.total {
            // Still shared is right if the rest of the machine kept every CPU busy meanwhile.
            let idle = Double(a.idle - b.idle) / Double(a.total - b.total)
            #expect(idle < 0.4, "the worker still judged its CPU shared with the hog gone and the machine \(Int(idle * 100)) % idle")
        }
        let s = rig.stop()
        let detector = try #require(s.sharedCore)
        #expect(detector.spells >= 1)
        if dedicated { #expect(s.window?.ceiling == s.window?.maximum) }
    }

    /// Without a `SharedCoreResponse` (CPUs the operator named), the worker keeps its pin and window.
    @Test func aWorkerOnANamedCPUKeepsItsPlacement() throws {
        let pinned = try #require(WorkerRig<NullEngine>.cpus.worker)
        let rig = try WorkerRig(engine: try NullEngine(depth: 128), pollMicroseconds: 50)
        defer { rig.stop() }
        let chains = try FlushChains(queue: rig.queue, arena: rig.arena, count: 1)
        let hog = try CPUHog(cpu: pinned)
        defer { hog.stop() }
        // Five judged intervals' worth: the first would have done.
        #expect(try Self.drive(rig, chains: chains, timeoutMs: 500) { rig.worker.coreShared } == false)
        #expect(rig.worker.allowedCPUs == [pinned])
        let s = rig.stop()
        #expect(s.sharedCore == nil)
        #expect(s.window?.ceiling == 50_000)
    }
}
