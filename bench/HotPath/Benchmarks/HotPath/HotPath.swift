import Benchmark
import BlockIO
import HotPathFixture

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

    for (name, scenario) in Scenario.all {
        switch scenario.engine {
        case .null: register(name, scenario) { try HotPathFixture(null: $0) }
        case .uring: register(name, scenario) { try HotPathFixture(uring: $0) }
        case .aio: register(name, scenario) { try HotPathFixture(aio: $0) }
        }
    }
}

/// One benchmark; called with a concrete engine, so `run` (inlinable) is specialised for it here.
func register<E: BlockEngine>(_ name: String, _ scenario: Scenario, _ make: @escaping (Scenario) throws -> HotPathFixture<E>) {
    precondition(requestsPerIteration % scenario.batch == 0)
    let passes = requestsPerIteration / scenario.batch
    Benchmark(name) { benchmark, fixture in
        fixture.run(passes: passes)
        if let why = fixture.failure() { benchmark.error(why) }
    } setup: { () throws -> HotPathFixture<E> in
        let fixture = try make(scenario)
        try fixture.verifyOnePass()
        return fixture
    }
}
