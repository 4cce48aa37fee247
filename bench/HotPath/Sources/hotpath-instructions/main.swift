#if canImport(Glibc)
import Glibc
#endif
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
func measured(_ fixture: HotPathFixture, passes: Int) {
    fixture.run(passes: passes)
}

let args = CommandLine.arguments
guard args.count == 3, let passes = Int(args[2]), passes > 0,
      let variant = Scenario.all.first(where: { $0.name == args[1] }) else {
    let names = Scenario.all.map(\.name).joined(separator: "|")
    fputs("usage: hotpath-instructions <\(names)> <passes>\n", stderr)
    exit(2)
}
do {
    let fixture = try HotPathFixture(variant.scenario)
    try fixture.verifyOnePass()
    fixture.run(passes: 1000) // warm-up: every chain, slot and cache line touched once
    measured(fixture, passes: passes)
    if let why = fixture.failure() {
        fputs("hotpath-instructions: \(why)\n", stderr)
        exit(1)
    }
    print("\(variant.name): \(passes) passes × \(variant.scenario.batch) = \(passes * variant.scenario.batch) requests")
} catch {
    fputs("hotpath-instructions: \(error)\n", stderr)
    exit(1)
}
