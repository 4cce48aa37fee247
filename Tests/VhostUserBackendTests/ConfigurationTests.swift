import BlockIO
import Testing
import VhostUserBlk
import VhostUserProtocol
import VirtioBlk

func configuration(_ change: (inout DaemonConfiguration) -> Void = { _ in }) -> DaemonConfiguration {
    var c = DaemonConfiguration(listen: .path("/tmp/x.sock"), backing: BackingOptions(createSize: 1 << 20, engine: .memory))
    change(&c)
    return c
}

func failingArgument(_ c: DaemonConfiguration) -> String?? {
    do {
        try c.validate()
        return .none
    } catch {
        return .some(error.argument)
    }
}

@Test func aSensibleConfigurationValidates() throws {
    try configuration().validate()
    try configuration { $0.queues = 256; $0.maxQueueSize = 1; $0.serial = String(repeating: "s", count: 20) }.validate()
    try configuration { $0.backing = BackingOptions(path: "/dev/null", engine: .aio); $0.backing.blockSize = 4096 }.validate()
    try configuration { $0.backing = BackingOptions(path: "/dev/null", engine: .uring); $0.uring = UringOptions(sqPoll: true, sqPollCPU: 1) }.validate()
}

struct BadConfiguration: Sendable, CustomTestStringConvertible {
    var name: String
    var argument: String
    var change: @Sendable (inout DaemonConfiguration) -> Void
    var testDescription: String { name }
}

@Test(arguments: [
    BadConfiguration(name: "--queues 0", argument: "--queues") { $0.queues = 0 },
    BadConfiguration(name: "--queues 300", argument: "--queues") { $0.queues = 300 },
    BadConfiguration(name: "--queue-size 1000", argument: "--queue-size") { $0.maxQueueSize = 1000 },
    BadConfiguration(name: "--queue-size 2048", argument: "--queue-size") { $0.maxQueueSize = 2048 },
    BadConfiguration(name: "--queue-size 0", argument: "--queue-size") { $0.maxQueueSize = 0 },
    BadConfiguration(name: "--block-size 1000", argument: "--block-size") { $0.backing.blockSize = 1000 },
    BadConfiguration(name: "--block-size 1024", argument: "--block-size") { $0.backing.blockSize = 1024 },
    BadConfiguration(name: "--serial of 21 bytes", argument: "--serial") { $0.serial = String(repeating: "x", count: 21) },
    BadConfiguration(name: "--serial of 11 two-byte characters", argument: "--serial") { $0.serial = String(repeating: "é", count: 11) },
    BadConfiguration(name: "memory engine without --size", argument: "--size") { $0.backing.createSize = nil },
    BadConfiguration(name: "null engine without --size", argument: "--size") { $0.backing = BackingOptions(engine: .null) },
    BadConfiguration(name: "memory engine with --backing", argument: "--backing") { $0.backing.path = "/tmp/disk" },
    BadConfiguration(name: "aio without --backing", argument: "--backing") { $0.backing = BackingOptions(createSize: 4096, engine: .aio) },
    BadConfiguration(name: "uring without --backing", argument: "--backing") { $0.backing = BackingOptions(createSize: 4096, engine: .uring) },
    BadConfiguration(name: "--uring-sqpoll with the memory engine", argument: "--uring-sqpoll") { $0.uring.sqPoll = true },
    BadConfiguration(name: "--uring-sqpoll-cpu without --uring-sqpoll", argument: "--uring-sqpoll-cpu") {
        $0.backing = BackingOptions(path: "/dev/null", engine: .uring)
        $0.uring.sqPollCPU = 1
    },
    BadConfiguration(name: "--uring-sqpoll-cpu -1", argument: "--uring-sqpoll-cpu") {
        $0.backing = BackingOptions(path: "/dev/null", engine: .uring)
        $0.uring = UringOptions(sqPoll: true, sqPollCPU: -1)
    },
    BadConfiguration(name: "--poll-us -1", argument: "--poll-us") { $0.pollMicroseconds = -1 },
    BadConfiguration(name: "empty --socket", argument: "--socket") { $0.listen = .path("") },
])
func invalidConfigurationsNameTheArgument(_ c: BadConfiguration) {
    let got = failingArgument(configuration(c.change))
    #expect(got == .some(c.argument))
    // The message starts with the argument, so the operator sees which one to fix.
    do {
        try configuration(c.change).validate()
    } catch {
        #expect(error.description.hasPrefix(c.argument + ": "))
    }
}

let sizeCases: [(String, UInt64)] = [
    ("4096", 4096), ("0", 0), ("64K", 65_536), ("64k", 65_536), ("512M", 536_870_912),
    ("1G", 1_073_741_824), ("2g", 2_147_483_648), ("1T", 1_099_511_627_776),
    ("16777215T", 18_446_742_974_197_923_840), // the largest T value that fits in 64 bits
]

@Test(arguments: sizeCases)
func parseSizeAcceptsBinaryMultiples(text: String, expected: UInt64) {
    #expect(parseSize(text) == expected)
}

@Test(arguments: ["", "K", "12X", "-1", "1.5G", " 1G", "1GB", "99999999999T", "16777216T", "18446744073709551616"])
func parseSizeRejectsGarbageAndOverflow(text: String) {
    #expect(parseSize(text) == nil)
}

@Test func defaultSerialIsStableShortAndPathSpecific() {
    let a = DaemonConfiguration.defaultSerial(for: "/var/lib/disks/a.img", engine: .aio)
    #expect(a == DaemonConfiguration.defaultSerial(for: "/var/lib/disks/a.img", engine: .aio))
    #expect(a != DaemonConfiguration.defaultSerial(for: "/var/lib/disks/b.img", engine: .aio))
    #expect(a.utf8.count == 20 && a.hasPrefix("vub-"))
    #expect(a.dropFirst(4).allSatisfy { $0.isHexDigit })
    // FNV-1a of the empty string is the offset basis itself.
    #expect(DaemonConfiguration.defaultSerial(for: "", engine: .aio) == "vub-cbf29ce484222325")
    #expect(DaemonConfiguration.defaultSerial(for: nil, engine: .memory) == "vub-memory")
    for engine in EngineKind.allCases { #expect(DaemonConfiguration.defaultSerial(for: nil, engine: engine).utf8.count <= 20) }
}
