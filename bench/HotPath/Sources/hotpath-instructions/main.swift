#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import HotPathFixture

// Instruction counts per request, for callgrind (run.sh): the wall-clock numbers of the benchmark swing
// with whatever else runs on this shared VM, instruction counts do not.
//
//   hotpath-instructions <variant> <passes>
//
// Builds and verifies the variant's fixture, warms it up, then runs `measured` — the only function
// callgrind collects in (`--toggle-collect`), so setup and warm-up are not counted. Divide its
// inclusive cost by passes × batch.

/// The collection boundary for callgrind; never inlined so its symbol exists to toggle on.
@inline(never)
func measured<E: BlockEngine>(_ fixture: HotPathFixture<E>, passes: Int) {
    fixture.run(passes: passes)
}

/// Verifies, warms up and measures one fixture; called with a concrete engine, so `run` is
/// specialised for it.
func measure<E: BlockEngine>(_ fixture: HotPathFixture<E>, passes: Int) throws {
    try fixture.verifyOnePass()
    fixture.run(passes: 1000) // warm-up: every chain, slot and cache line touched once
    measured(fixture, passes: passes)
    if let why = fixture.failure() {
        fputs("hotpath-instructions: \(why)\n", stderr)
        exit(1)
    }
}

let args = CommandLine.arguments
guard args.count == 3, let passes = Int(args[2]), passes > 0,
      let variant = Scenario.all.first(where: { $0.name == args[1] }) else {
    let names = Scenario.all.map(\.name).joined(separator: "|")
    fputs("usage: hotpath-instructions <\(names)> <passes>\n", stderr)
    exit(2)
}
do {
    switch variant.scenario.engine {
    case .null: try measure(HotPathFixture(null: variant.scenario), passes: passes)
    case .uring: try measure(HotPathFixture(uring: variant.scenario), passes: passes)
    case .aio: try measure(HotPathFixture(aio: variant.scenario), passes: passes)
    }
    print("\(variant.name): \(passes) passes × \(variant.scenario.batch) = \(passes * variant.scenario.batch) requests")
} catch {
    fputs("hotpath-instructions: \(error)\n", stderr)
    exit(1)
}
