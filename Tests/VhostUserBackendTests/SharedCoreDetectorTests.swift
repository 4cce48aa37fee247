import Testing
import VhostUserBackend

@Suite struct SharedCoreDetectorTests {
    typealias D = SharedCoreDetector
    static let interval = D.intervalNanoseconds

    /// One sample of a busy worker (50 ms wanted in 100 ms: judged at once) with `percent` of the
    /// wanted time spent waiting.
    static func busy(_ d: inout D, waiting percent: UInt64) -> D.Change? {
        let wanted: UInt64 = 50_000_000
        return d.sample(onCPU: wanted * (100 - percent) / 100, runDelay: wanted * percent / 100, elapsed: interval)
    }

    @Test func aDedicatedCoreStaysDedicated() {
        var d = D()
        for p: UInt64 in [0, 1, 3, 19, 2, 0] { #expect(Self.busy(&d, waiting: p) == nil) }
        #expect(d.state == .dedicated)
        #expect(d.spells == 0)
    }

    @Test func oneJudgementAtTheThresholdMakesItShared() {
        var d = D()
        #expect(Self.busy(&d, waiting: 20) == .becameShared)
        #expect(d.state == .shared)
        #expect(d.lastWaitPercent == 20)
        #expect(d.spells == 1)
    }

    /// Samples with little wanted time add up until they hold enough to judge.
    @Test func lightSamplesAddUpUntilTheyCanBeJudged() {
        var d = D()
        #expect(d.sample(onCPU: 1_000_000, runDelay: 3_000_000, elapsed: Self.interval) == nil)
        #expect(d.state == .dedicated)
        #expect(d.sample(onCPU: 0, runDelay: 999_999, elapsed: Self.interval) == nil)
        #expect(d.sample(onCPU: 0, runDelay: 1, elapsed: Self.interval) == .becameShared)
        #expect(d.lastWaitPercent == 80)
    }

    /// A worker that wants less than the minimum in a whole second is judged on what it has, but
    /// only ever as quiet: a few unlucky wake-ups are no evidence of a shared CPU, and a light queue
    /// must not keep a capped window for ever.
    @Test func aWorkerThatWantsLittleIsJudgedEverySecondButOnlyAsQuiet() {
        var d = D()
        let perSecond = Int(D.longestJudgementNanoseconds / Self.interval)
        for _ in 0..<(3 * perSecond) {
            // 0.4 ms wanted per sample, 75 % of it waiting: 4 ms a second, under the minimum.
            #expect(d.sample(onCPU: 100_000, runDelay: 300_000, elapsed: Self.interval) == nil)
        }
        #expect(d.state == .dedicated)
        #expect(Self.busy(&d, waiting: 60) == .becameShared)
        // Now light and quiet: one judgement a second, ten of them to be dedicated again.
        var samples = 0
        while d.sample(onCPU: 100_000, runDelay: 0, elapsed: Self.interval) == nil {
            samples += 1
            if samples > 1_000 { break }
        }
        #expect(samples + 1 == D.initialQuietIntervals * perSecond)
        #expect(d.state == .dedicated)
    }

    @Test func itTakesQuietJudgementsInARowToBeDedicatedAgain() {
        var d = D()
        #expect(Self.busy(&d, waiting: 40) == .becameShared)
        for _ in 0..<(D.initialQuietIntervals - 1) { #expect(Self.busy(&d, waiting: 4) == nil) }
        // One judgement that is not quiet (though under the shared threshold) starts the count over.
        #expect(Self.busy(&d, waiting: 5) == nil)
        for _ in 0..<(D.initialQuietIntervals - 1) { #expect(Self.busy(&d, waiting: 0) == nil) }
        #expect(Self.busy(&d, waiting: 0) == .becameDedicated)
        #expect(d.state == .dedicated)
    }

    /// Each return to shared doubles the quiet spell needed to leave it, up to the maximum.
    @Test func aWorkerThatKeepsFindingItSharedTestsLessOften() {
        var d = D()
        var needed: [Int] = []
        for _ in 0..<9 {
            #expect(Self.busy(&d, waiting: 50) == .becameShared)
            needed.append(d.quietIntervals)
            var n = 0
            while Self.busy(&d, waiting: 0) == nil { n += 1 }
            #expect(n + 1 == d.quietIntervals)
        }
        #expect(needed == [10, 20, 40, 80, 160, 320, 640, 640, 640])
        #expect(d.spells == 9)
    }
}
