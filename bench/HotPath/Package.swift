// swift-tools-version:6.1
// Hot-path benchmark of the virtio-blk data path: chain parse → engine submit → used-ring publish,
// failing if a request allocates. A package of its own so ordo-one/benchmark and its plugin
// dependencies never enter the main package's build (issue 3, point 4).
// 6.1: package traits, which the malloc-counting interposer needs.
import PackageDescription

let package = Package(
    name: "HotPath",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "VhostUserBlk", path: "../.."),
        // MallocInterposer is what makes mallocCountTotal non-zero-able on Linux with Swift 6.3: without
        // it the metric is not produced and a zero-allocation threshold could not fail. Naming the trait
        // also turns off the default RuntimeInterposer trait (ARC counting), whose package is not in
        // this machine's mirror; retain/release are counted with callgrind instead (run.sh).
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Guest memory, ring and driver side, plus the queue under test: shared by the benchmark and the
        // callgrind driver so both measure the same code.
        .target(
            name: "HotPathFixture",
            dependencies: [.product(name: "VirtioBlkDataPath", package: "VhostUserBlk")]
        ),
        .executableTarget(
            name: "HotPath",
            dependencies: [
                "HotPathFixture",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/HotPath",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Instruction counts under callgrind (no benchmark framework in the process to count).
        .executableTarget(name: "hotpath-instructions", dependencies: ["HotPathFixture"]),
    ],
    // Swift 5 mode like the main package: the fixture shares raw guest memory with the queue under
    // test on one thread, which Sendable checking cannot express.
    swiftLanguageModes: [.v5]
)
