import Benchmark

// Each iteration is 1000 requests (scalingFactor .kilo), so `--scale` prints wall time per request and a
// single allocation anywhere in 1000 requests makes that iteration's mallocCountTotal non-zero.
// Thresholds/HotPath.<name>.p90.json pins mallocCountTotal to 0; `benchmark thresholds check` (run.sh)
// fails (exit 2) when a benchmark's p90 exceeds it.
let requestsPerIteration = 1000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        // No OS metrics (.cpuTotal, .syscalls …): on Linux the framework reads /proc for them between
        // its two malloc snapshots, and those reads' allocations would be counted against the hot path
        // (16–20 per iteration when tried).
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000,
        // Tolerance for the static check: none. One malloc per iteration is a regression.
        thresholds: [.mallocCountTotal: .init(relative: [.p90: 0], absolute: [.p90: 0])]
    )

    // 40 = a batch a busy guest queue typically hands over in one kick, and divides 1000; 1 shows the
    // fixed cost of a pass (acquire load, release store, seq_cst fence, notification decision).
    let variants: [(String, Scenario)] = [
        ("read-direct-b40", Scenario(shape: .direct, write: false, eventIdx: false, batch: 40)),
        ("read-indirect-b40", Scenario(shape: .indirect, write: false, eventIdx: false, batch: 40)),
        ("read-direct-eventidx-b40", Scenario(shape: .direct, write: false, eventIdx: true, batch: 40)),
        ("write-direct-b40", Scenario(shape: .direct, write: true, eventIdx: false, batch: 40)),
        ("read-direct-b1", Scenario(shape: .direct, write: false, eventIdx: false, batch: 1)),
    ]

    for (name, scenario) in variants {
        precondition(requestsPerIteration % scenario.batch == 0)
        let passes = requestsPerIteration / scenario.batch
        Benchmark(name) { benchmark, fixture in
            fixture.run(passes: passes)
            if let why = fixture.failure() { benchmark.error(why) }
        } setup: { () throws -> HotPathFixture in
            let fixture = try HotPathFixture(scenario)
            try fixture.verifyOnePass()
            return fixture
        }
    }
}
