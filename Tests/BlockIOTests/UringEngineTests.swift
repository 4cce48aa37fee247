import Glibc
import Testing
import VhostSystem
@testable import BlockIO

/// What only the io_uring engine has: the start-up probe, its error messages, and its teardown. The
/// request semantics it shares with the aio engine are in FileEngineTests.
@Suite struct UringEngineTests {
    @Test(arguments: [UringOptions(), UringOptions(sqPoll: true), UringOptions(sqPoll: true, sqPollCPU: 0)])
    func probeSucceedsHere(_ options: UringOptions) throws {
        let f = try FileEngineTests.Fixture()
        try UringEngine.probe(store: f.store, options: options)
        let engine = try UringEngine(store: f.store, depth: 8, options: options)
        #expect(engine.options == options)
        let data = AlignedBuffer(count: 4096)
        data.fill(seed: 4)
        #expect(try runOne(engine, IovecList([(data, 0, 4096)]).request(tag: 1, .write, offset: 4096)) == 0)
        #expect(preadBytes(f.path, offset: 4096, length: 4096) == data.bytes)
    }

    @Test func probeAndEngineNeedAFile() throws {
        let memory = try openStore(BackingOptions(createSize: 1 << 20, engine: .memory))
        #expect(throws: BlockIOError.self) { try UringEngine.probe(store: memory, options: UringOptions()) }
        #expect(throws: BlockIOError.self) { try UringEngine(store: memory, depth: 4) }
    }

    @Test func anOfflineSQPollCPUIsRefusedWithAReason() throws {
        let f = try FileEngineTests.Fixture()
        // CPU 4095: beyond any CPU this machine has (the kernel's CPU limit is at least that).
        let options = UringOptions(sqPoll: true, sqPollCPU: 4095)
        do {
            try UringEngine.probe(store: f.store, options: options)
            Issue.record("a ring polled from a CPU that does not exist was accepted")
        } catch {
            #expect(error.operation == "io_uring_setup")
            #expect(error.reason.contains("--engine aio"), "\(error)")
        }
    }

    @Test func setupFailuresAreExplained() {
        let plain = UringOptions()
        let reason = { (e: Int32, setting: String?) in
            UringEngine.setupFailureReason(errno: e, options: plain, disabledSetting: setting)
        }
        #expect(reason(EPERM, "2").contains("kernel.io_uring_disabled = 2"))
        #expect(reason(EPERM, "1").contains("io_uring_group"))
        #expect(reason(EPERM, "0").contains("seccomp"))
        #expect(reason(EPERM, nil).contains("seccomp"))
        #expect(reason(ENOSYS, nil).contains("CONFIG_IO_URING"))
        #expect(reason(ENOMEM, nil).contains("RLIMIT_MEMLOCK"))
        #expect(UringEngine.setupFailureReason(errno: EINVAL, options: UringOptions(sqPoll: true), disabledSetting: nil)
            .contains("--uring-sqpoll-cpu"))
        for e in [EPERM, ENOSYS, ENOMEM, EINVAL, EMFILE] { #expect(reason(e, nil).hasSuffix("use --engine aio")) }
    }

    @Test func theSysctlIsReadWhereItExists() {
        // kernel.io_uring_disabled appeared in Linux 6.6; where it exists it is 0, 1 or 2.
        if let value = UringEngine.readSysctl("kernel/io_uring_disabled") {
            #expect(["0", "1", "2"].contains(value))
        }
        #expect(UringEngine.readSysctl("kernel/no-such-setting") == nil)
    }

    @Test(arguments: [1, 5, 64])
    func aFullDepthInFlightAtOnce(_ depth: Int) throws {
        // The kernel rounds the ring up to a power of two; every slot of a depth that is not one
        // (5) must still find a submission entry.
        let f = try FileEngineTests.Fixture()
        let engine = try UringEngine(store: f.store, depth: depth)
        let data = AlignedBuffer(count: 4096 * depth)
        data.fill(seed: 8)
        let lists = (0..<depth).map { IovecList([(data, 4096 * $0, 4096)]) }
        let results = try run(engine, (0..<depth).map { lists[$0].request(tag: UInt32($0), .write, offset: UInt64($0) * 8192) })
        #expect(results.count == depth)
        #expect(results.values.allSatisfy { $0 == 0 })
    }

    @Test func teardownWaitsForRequestsInFlight() throws {
        // Dropping an engine with requests in the kernel must not let them outlive it (they point
        // into memory the caller frees next): deinit waits for them. A smoke test of that path (it
        // must neither hang nor lose the write); a request that outlived the engine would usually
        // finish in time anyway, so this cannot prove the wait.
        let f = try FileEngineTests.Fixture()
        let data = AlignedBuffer(count: 1 << 20)
        data.fill(seed: 12)
        let list = IovecList([(data, 0, 1 << 20)])
        do {
            let engine = try UringEngine(store: f.store, depth: 4)
            let request = list.request(tag: 1, .write, offset: 2 << 20)
            engine.enqueue(request.request)
            engine.submit()
            #expect(engine.inFlight == 1)
        }
        #expect(preadBytes(f.path, offset: 2 << 20, length: 1 << 20) == data.bytes)
    }
}
