import Testing
@testable import LoadGenerator

@Suite struct WorkloadTests {
    @Test func sizesParseWithBinaryUnits() {
        #expect(parseSize("4k") == 4096)
        #expect(parseSize("1M") == 1 << 20)
        #expect(parseSize("2g") == 2 << 30)
        #expect(parseSize("512") == 512)
        #expect(parseSize("k") == nil)
        #expect(parseSize("4x") == nil)
    }

    @Test func regionsAreDisjointAlignedAndInsideTheDevice() throws {
        // 1 GiB + 5 sectors: the tail that is not a whole block per queue is left out.
        let regions = try QueueRegion.split(deviceBytes: (1 << 30) + 2560, queues: 3, blockSize: 65536)
        #expect(regions.count == 3)
        for (i, r) in regions.enumerated() {
            #expect(r.start % 65536 == 0 && r.length % 65536 == 0 && r.length > 0)
            #expect(r.start + r.length <= (1 << 30))
            if i > 0 { #expect(regions[i - 1].start + regions[i - 1].length <= r.start) }
        }
        #expect(throws: WorkloadError.self) { try QueueRegion.split(deviceBytes: 8192, queues: 4, blockSize: 4096) }
    }

    @Test func randomOffsetsStayAlignedInsideTheRegionAndCoverIt() {
        let region = QueueRegion(start: 1 << 20, length: 64 * 8192)
        var p = RequestPlanner(region: region, blockSize: 8192, pattern: .randread, readMix: 0, seed: 7)
        var seen = Set<UInt64>()
        for _ in 0..<10_000 {
            let o = p.nextOffset()
            #expect(o >= region.start && o + 8192 <= region.start + region.length)
            #expect(o % 8192 == 0)
            seen.insert(o)
        }
        // 10 000 uniform draws over 64 blocks miss one with probability ~64·(63/64)^10000 ≈ 0.
        #expect(seen.count == 64)
    }

    @Test func sequentialOffsetsWalkTheRegionAndWrap() {
        let region = QueueRegion(start: 4096 * 10, length: 4096 * 3)
        var p = RequestPlanner(region: region, blockSize: 4096, pattern: .write, readMix: 0, seed: 1)
        let got = (0..<7).map { _ in p.nextOffset() / 4096 }
        #expect(got == [10, 11, 12, 10, 11, 12, 10])
    }

    @Test func mixRatioIsHonoured() {
        var p = RequestPlanner(region: QueueRegion(start: 0, length: 1 << 20), blockSize: 4096, pattern: .randrw, readMix: 70, seed: 3)
        let n = 100_000
        let reads = (0..<n).reduce(0) { acc, _ in acc + (p.nextIsRead() ? 1 : 0) }
        // Binomial(100 000, 0.7): σ ≈ 145, so ±1 000 is ~7σ.
        #expect(abs(reads - 70_000) < 1_000)
        var r = RequestPlanner(region: QueueRegion(start: 0, length: 1 << 20), blockSize: 4096, pattern: .randread, readMix: 0, seed: 3)
        #expect((0..<1000).allSatisfy { _ in r.nextIsRead() })
        var w = RequestPlanner(region: QueueRegion(start: 0, length: 1 << 20), blockSize: 4096, pattern: .randwrite, readMix: 100, seed: 3)
        #expect((0..<1000).allSatisfy { _ in !w.nextIsRead() })
    }

    @Test func specValidationRejectsBadBlockSizes() {
        var s = WorkloadSpec()
        s.blockSize = 6000
        #expect(throws: WorkloadError.self) { try s.validate() }
        s.blockSize = 2 << 20
        #expect(throws: WorkloadError.self) { try s.validate() }
        s.blockSize = 1 << 20
        #expect(throws: Never.self) { try s.validate() }
    }

    @Test func queueSizeFitsThreeDescriptorsPerRequest() {
        #expect(defaultQueueSize(depth: 1) == 128)
        #expect(defaultQueueSize(depth: 32) == 128)
        #expect(defaultQueueSize(depth: 128) == 512)
        #expect(defaultQueueSize(depth: 341) == 1024)
    }
}

@Suite struct StatsTests {
    @Test func percentilesOfAKnownSample() {
        var rec = LatencyRecorder()
        // 1 µs, 2 µs, ..., 1000 µs once each.
        for i in 1...1000 { rec.record(nanoseconds: UInt64(i) * 1000) }
        let s = rec.summary
        #expect(s.count == 1000)
        // Three significant digits: each value is within 0.1 % of the exact order statistic.
        func near(_ got: UInt64, _ exactMicros: Double) -> Bool { abs(Double(got) / 1000 - exactMicros) <= exactMicros * 0.001 + 0.001 }
        #expect(near(s.p50Ns, 500))
        #expect(near(s.p90Ns, 900))
        #expect(near(s.p99Ns, 990))
        #expect(near(s.p999Ns, 999))
        #expect(near(s.minNs, 1) && near(s.maxNs, 1000))
        #expect(abs(s.meanNs / 1000 - 500.5) < 1)
    }

    @Test func mergeAddsAndHugeValuesAreClampedNotLost() {
        var a = LatencyRecorder(), b = LatencyRecorder()
        a.record(nanoseconds: 1000)
        b.record(nanoseconds: LatencyRecorder.highestNanoseconds * 10)
        a.merge(b)
        #expect(a.summary.count == 2)
        #expect(a.clamped == 1)
    }

    @Test func procStatParsingSurvivesAParenthesisedName() {
        // utime 250 and stime 50 ticks; the name contains ") " to trip a naive split.
        let line = "1234 (evil) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000 10 18446744073709551615"
        let secs = ProcessCPU.parseStat(line)
        #expect(secs != nil)
        #expect(abs(secs! - 300 / Double(sysconfTicks())) < 1e-9)
    }

    @Test func fixedFormatting() {
        #expect(fixed(1.005, 1) == "1.0")
        #expect(fixed(12.3456, 2) == "12.35")
        #expect(fixed(-0.5, 0) == "-1")
        #expect(fixed(-0.0001, 2) == "0.00")
        #expect(fixed(3, 0) == "3")
    }
}

@Suite struct VerifyPatternTests {
    @Test func detectsAWrongByte() {
        let n = 4096
        let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        defer { buf.deallocate() }
        VerifyPattern.fill(buf, length: n, deviceOffset: 1 << 20, seed: 42)
        #expect(VerifyPattern.firstMismatch(buf, length: n, deviceOffset: 1 << 20, seed: 42) == nil)
        // Data of another block, or of another run, does not pass.
        #expect(VerifyPattern.firstMismatch(buf, length: n, deviceOffset: (1 << 20) + 4096, seed: 42) == 0)
        #expect(VerifyPattern.firstMismatch(buf, length: n, deviceOffset: 1 << 20, seed: 43) == 0)
        let p = buf.assumingMemoryBound(to: UInt8.self)
        p[1234] ^= 0x10
        #expect(VerifyPattern.firstMismatch(buf, length: n, deviceOffset: 1 << 20, seed: 42) == 1234)
    }
}
