// swift-tools-version:6.1
// VhostUserBlk: a vhost-user-blk backend. Module layering (dependencies point down only):
//   CVhostLinux ← VhostSystem ← GuestMemory ← Virtqueue
//   VhostSystem ← VhostUserProtocol ← VhostUserBackend
//   VhostSystem ← BlockIO
//   Virtqueue + BlockIO ← VirtioBlk
//   VhostUserBackend + VirtioBlk ← VhostUserBlk ← vhost-user-blk (executable)
// See ARCHITECTURE.md for why each boundary sits where it does.
import PackageDescription

let package = Package(
    name: "VhostUserBlk",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vhost-user-blk", targets: ["vhost-user-blk"]),
        .library(name: "VhostUserBlk", targets: ["VhostUserBlk"]),
        .library(name: "VhostUserTesting", targets: ["VhostUserTesting"]),
        // The data path without vhost-user, for out-of-package benchmarks (bench/HotPath).
        .library(name: "VirtioBlkDataPath", targets: ["VirtioBlk", "BlockIO", "Virtqueue", "GuestMemory", "VhostSystem"]),
        .executable(name: "vhost-user-blk-bench", targets: ["vhost-user-blk-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C only for what Swift cannot import: macros (CMSG_*, CPU_SET, ioctl numbers), _GNU_SOURCE
        // APIs, explicit memory-order atomics on shared memory, and liburing's static inline helpers.
        // No logic.
        .target(
            name: "CVhostLinux",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("aio"), .linkedLibrary("uring"), .linkedLibrary("numa")]
        ),
        .target(name: "VhostSystem", dependencies: ["CVhostLinux"]),
        .target(name: "GuestMemory", dependencies: ["VhostSystem", "CVhostLinux"]),
        .target(name: "Virtqueue", dependencies: ["GuestMemory", "CVhostLinux"]),
        .target(name: "VhostUserProtocol", dependencies: ["VhostSystem"]),
        .target(
            name: "VhostUserBackend",
            dependencies: [
                "VhostUserProtocol", "GuestMemory", "Virtqueue", "VhostSystem",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "BlockIO", dependencies: ["VhostSystem", "CVhostLinux"]),
        .target(name: "VirtioBlk", dependencies: ["Virtqueue", "GuestMemory", "BlockIO"]),
        .target(
            name: "VhostUserBlk",
            dependencies: [
                "VhostUserBackend", "VirtioBlk", "BlockIO", "VhostSystem",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "vhost-user-blk",
            dependencies: [
                "VhostUserBlk", "BlockIO", "VhostSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Shipped test doubles: a vhost-user frontend (the QEMU side) with a driver-side virtqueue.
        .target(
            name: "VhostUserTesting",
            dependencies: ["VhostUserProtocol", "VhostSystem", "CVhostLinux"]
        ),
        // bench/: the load generator, a vhost-user front-end that drives any vhost-user-blk socket.
        .target(
            name: "LoadGenerator",
            dependencies: [
                "VhostUserTesting", "VhostUserProtocol", "VhostSystem", "CVhostLinux",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "bench/Sources/LoadGenerator"
        ),
        .executableTarget(
            name: "vhost-user-blk-bench",
            dependencies: ["LoadGenerator", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "bench/Sources/vhost-user-blk-bench"
        ),
        .testTarget(
            name: "LoadGeneratorTests",
            dependencies: ["LoadGenerator", "VhostUserTesting", "VhostSystem"],
            path: "bench/Tests/LoadGeneratorTests"
        ),
        .testTarget(name: "VhostSystemTests", dependencies: ["VhostSystem"]),
        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory", "VhostSystem", "VhostUserTesting"]),
        .testTarget(name: "VirtqueueTests", dependencies: ["Virtqueue", "GuestMemory", "VhostSystem", "VhostUserTesting"]),
        .testTarget(name: "VhostUserProtocolTests", dependencies: ["VhostUserProtocol", "VhostSystem"]),
        .testTarget(name: "BlockIOTests", dependencies: ["BlockIO", "VhostSystem"]),
        .testTarget(
            name: "VirtioBlkTests",
            dependencies: ["VirtioBlk", "Virtqueue", "GuestMemory", "BlockIO", "VhostSystem", "VhostUserTesting"]
        ),
        .testTarget(
            name: "VhostUserBackendTests",
            dependencies: [
                "VhostUserBackend", "VhostUserProtocol", "VhostSystem", "VhostUserTesting", "GuestMemory", "Virtqueue",
                "VhostUserBlk", "VirtioBlk", "BlockIO",
            ]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["VhostUserTesting", "VhostUserProtocol", "VhostSystem"]
        ),
    ],
    // Swift 5 language mode: the data plane runs on hand-managed pthreads that share raw guest memory
    // by design (ARCHITECTURE.md, "Threads"); Swift 6's Sendable checking cannot express that ownership
    // and would only add @unchecked annotations, not safety.
    swiftLanguageModes: [.v5]
)
