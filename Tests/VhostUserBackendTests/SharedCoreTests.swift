import BlockIO
import CVhostLinux
import Glibc
import Testing
import VhostSystem
@testable import VhostUserBackend
import VhostUserTesting

extension AdaptivePollingTests {
    /// A worker whose CPU another busy thread takes: it polls briefly and floats while that lasts, and
    /// is pinned back with its full window once its CPU is its own again (`SharedCoreDetector`).
    ///
    /// Nested in AdaptivePollingTests, whose `.serialized` covers nested suites: the hog here shares a CPU
    /// with the workers those tests pin, so the two must not run at the same time.
    @Suite(.enabled(if: CPUTopology.allowedCPUs().count >= 2, "needs a CPU for the worker and one for the driver"))
    struct SharedCoreTests {
        /// Requests one at a time, back to back, from the driver's CPU, until `done` holds or `timeoutMs`
        /// passes; whether `done` held. The driver sleeps on the call eventfd for each completion, so it
        /// is no competitor itself for a worker that floats onto its CPU.
        static func drive(_ rig: WorkerRig<NullEngine>, chains: FlushChains, timeoutMs: Int,
                          until done: @escaping () -> Bool) throws -> Bool {
            try driveMeasured(rig, chains: chains, timeoutMs: timeoutMs, until: done).done
        }

        /// `drive`, also returning the CPU time the driver thread used.
        static func driveMeasured(_ rig: WorkerRig<NullEngine>, chains: FlushChains, timeoutMs: Int,
                                  until done: @escaping () -> Bool) throws -> (done: Bool, driverCPU: UInt64) {
            try rig.drive {
                let cpu0 = threadCPUNanoseconds()
                let deadline = Deadline(milliseconds: timeoutMs)
                while !deadline.expired {
                    if done() { return (true, threadCPUNanoseconds() - cpu0) }
                    chains.submit()
                    guard try chains.waitForCompletion(timeoutMs: 10_000).allOK else { throw DriverFailure("a request failed") }
                }
                return (done(), threadCPUNanoseconds() - cpu0)
            }
        }

        static func threadCPUNanoseconds() -> UInt64 {
            var ts = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
            return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
        }

        /// Busy and total time of all CPUs together in ns, from /proc/stat's first line (user, nice,
        /// system, idle, iowait, irq, softirq, steal; idle and iowait are not busy).
        static func machineTimes() -> (busy: UInt64, total: UInt64)? {
            guard let stat = readProcFile("/proc/stat"), let line = stat.split(separator: "\n").first else { return nil }
            let v = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
            guard v.count >= 8 else { return nil }
            let tick = UInt64(1_000_000_000) / UInt64(sysconf(Int32(_SC_CLK_TCK)))
            let total = v.prefix(8).reduce(0, +)
            return ((total - v[3] - v[4]) * tick, total * tick)
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
            // Polling after each request, the worker now shares its CPU with the hog half and half: its
            // first judgement shows it (the second schedstat read, 100 ms after the first).
            let shared = try Self.drive(rig, chains: chains, timeoutMs: 10_000) { rig.worker.coreShared }
            #expect(shared, "the worker did not notice the hog on its CPU")
            #expect(rig.worker.pollWindowNanoseconds <= SharedCoreResponse.defaultPollCeilingNanoseconds)
            #expect(rig.worker.allowedCPUs == all)
            hog.stop()

            // Its CPU is free again: after ten quiet judgements it is pinned back and may poll its full
            // window again (which regrows as sleeps show it pays).
            let before = Self.machineTimes()
            let workerBefore = rig.workerCPUNanoseconds
            let (dedicated, driverCPU) = try Self.driveMeasured(rig, chains: chains, timeoutMs: 20_000) { !rig.worker.coreShared }
            if dedicated {
                #expect(rig.worker.allowedCPUs == [pinned])
            } else if let b = before, let a = Self.machineTimes(), a.total > b.total {
                // Still shared is right if something else kept a CPU busy meanwhile (other tests, on a
                // loaded machine). What the machine did besides this worker and its driver:
                let own = rig.workerCPUNanoseconds - workerBefore + driverCPU
                let others = Double((a.busy - b.busy) > own ? (a.busy - b.busy) - own : 0) / Double(a.total - b.total)
                if others < 0.05 {
                    Issue.record("the worker still judged its CPU shared with the hog gone, and the rest of the machine was \(Int(others * 100)) % busy")
                } else {
                    print("SharedCoreTests: inconclusive, the rest of the machine was \(Int(others * 100)) % busy while the worker stayed shared")
                }
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
}
