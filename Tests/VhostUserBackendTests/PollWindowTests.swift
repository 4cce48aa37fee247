import Testing
import VhostUserBackend

@Suite struct PollWindowTests {
    @Test func startsAtTheMaximum() {
        let w = PollWindow(maximum: 50_000)
        #expect(w.current == 50_000)
    }

    @Test func sleepsLongerThanTheMaximumHalveTheWindowDownToZero() {
        var w = PollWindow(maximum: 50_000)
        var seen: [UInt64] = []
        for _ in 0..<6 {
            #expect(w.eventAfterSleeping(idle: 3_000_000_000) == .shrank)
            seen.append(w.current)
        }
        // Below the 4 µs first step a window is not worth polling: 0.
        #expect(seen == [25_000, 12_500, 6_250, 0, 0, 0])
    }

    @Test func eventsSoonAfterSleepingGrowTheWindowToTheMaximum() {
        var w = PollWindow(maximum: 50_000)
        for _ in 0..<4 { w.eventAfterSleeping(idle: 1_000_000) }
        #expect(w.current == 0)
        var seen: [UInt64] = []
        for _ in 0..<7 {
            // Each event came 20 µs after the queue went idle: within the maximum, so polling
            // longer would have caught it.
            w.eventAfterSleeping(idle: 20_000)
            seen.append(w.current)
        }
        #expect(seen == [4_000, 8_000, 16_000, 32_000, 50_000, 50_000, 50_000])
        #expect(w.eventAfterSleeping(idle: 20_000) == .kept)
    }

    @Test func theMaximumItselfStillCounts() {
        var w = PollWindow(maximum: 50_000)
        w.eventAfterSleeping(idle: 60_000)
        #expect(w.eventAfterSleeping(idle: 50_000) == .grew)
        #expect(w.current == 50_000)
        #expect(w.eventAfterSleeping(idle: 50_001) == .shrank)
    }

    @Test func aMaximumBelowTheFirstStepCapsIt() {
        var w = PollWindow(maximum: 1_000)
        w.eventAfterSleeping(idle: 2_000)
        #expect(w.current == 0)
        w.eventAfterSleeping(idle: 900)
        #expect(w.current == 1_000)
    }

    /// One long gap among short ones (the driver was preempted) costs half the window, and the half
    /// still covers the short gaps: no further sleep is needed to get it back.
    @Test func anOccasionalLongGapCostsHalfTheWindow() {
        var w = PollWindow(maximum: 50_000)
        w.eventAfterSleeping(idle: 5_000_000)
        #expect(w.current == 25_000)
    }

    /// Requests a little further apart than the maximum (a slow guest): the window reaches 0 after
    /// a few of them and stays there, whatever the order of the gaps.
    @Test func gapsJustAboveTheMaximumBringTheWindowToZero() {
        var w = PollWindow(maximum: 50_000)
        for idle: UInt64 in [60_000, 55_000, 70_000, 51_000, 58_000, 52_000] {
            #expect(w.eventAfterSleeping(idle: idle) == .shrank)
        }
        #expect(w.current == 0)
    }

    /// A shared CPU caps the window: it drops to the cap at once, grows no further, and gaps longer
    /// than the cap (though within the maximum) shrink it, since no poll allowed would catch them.
    @Test func aLimitCapsTheWindowUntilItIsLifted() {
        var w = PollWindow(maximum: 50_000)
        w.limit(to: 4_000)
        #expect(w.ceiling == 4_000)
        #expect(w.current == 4_000)
        #expect(w.eventAfterSleeping(idle: 3_000) == .kept)
        #expect(w.eventAfterSleeping(idle: 20_000) == .shrank)
        #expect(w.current == 0)
        #expect(w.eventAfterSleeping(idle: 3_000) == .grew)
        #expect(w.current == 4_000)
        // Lifted: the window grows back by doubling as sleeps show it pays, not in one step.
        w.removeLimit()
        #expect(w.current == 4_000)
        var seen: [UInt64] = []
        for _ in 0..<5 {
            w.eventAfterSleeping(idle: 20_000)
            seen.append(w.current)
        }
        #expect(seen == [8_000, 16_000, 32_000, 50_000, 50_000])
    }

    @Test func aLimitAboveTheMaximumIsTheMaximum() {
        var w = PollWindow(maximum: 50_000)
        w.limit(to: 80_000)
        #expect(w.ceiling == 50_000)
        #expect(w.current == 50_000)
    }
}
