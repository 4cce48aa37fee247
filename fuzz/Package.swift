// swift-tools-version:6.1
// libFuzzer targets for the parts of VhostUserBlk that read what a front-end or a guest controls:
// the vhost-user message decoder, a whole back-end session driven over a socketpair, and the
// virtio-blk descriptor-chain parser (issue 4, point 3). A package of its own, like bench/HotPath, so
// the sanitizer flags (-sanitize=fuzzer,address, applied to every module by run.sh) never reach the
// main package's build directory.
import PackageDescription

let package = Package(
    name: "VhostUserBlkFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "VhostUserBlk", path: ".."),
        // Same package and range as the root's: the session target needs a Logger to hand to Session.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // Input slicing and fd helpers shared by the targets.
        .target(
            name: "FuzzSupport",
            dependencies: [.product(name: "VirtioBlkDataPath", package: "VhostUserBlk")]
        ),
        .executableTarget(
            name: "fuzz-request",
            dependencies: ["FuzzSupport", .product(name: "VhostUserBlk", package: "VhostUserBlk")]
        ),
        .executableTarget(
            name: "fuzz-session",
            dependencies: [
                "FuzzSupport",
                .product(name: "VhostUserBlk", package: "VhostUserBlk"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "fuzz-blkqueue",
            dependencies: ["FuzzSupport", .product(name: "VirtioBlkDataPath", package: "VhostUserBlk")]
        ),
    ],
    // Swift 5 mode like the main package: the targets hand raw guest memory and fds around on one
    // thread, which Sendable checking cannot express.
    swiftLanguageModes: [.v5]
)
