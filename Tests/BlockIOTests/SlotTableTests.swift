import Glibc
import Testing
import VhostSystem
@testable import BlockIO

/// The bookkeeping both kernel engines rely on, without a kernel: the engine tests cover it through
/// real I/O, these pin the rules no cached-file request reaches (refusals, a full table, short
/// transfers).
@Suite struct SlotTableTests {
    @Test func immediateCompletionsCountAgainstTheCapacity() {
        var table = SlotTable(capacity: 3)
        defer { table.deallocate() }
        let a = table.take(tag: 10, length: 4096)
        table.complete(tag: 11, result: -EIO)
        #expect(table.inFlight == 2)
        #expect(table.hasRoom)
        let b = table.take(tag: 12, length: 512)
        #expect(a != b)
        // Two slots free in the stack, but one is owed to the completion waiting in the ring.
        #expect(table.inFlight == 3)
        #expect(!table.hasRoom)

        var out = [BlockCompletion](repeating: BlockCompletion(tag: 0, result: 0), count: 4)
        #expect(out.withUnsafeMutableBufferPointer { table.drain(into: $0) } == 1)
        #expect(out[0] == BlockCompletion(tag: 11, result: -EIO))
        #expect(table.hasRoom)
        #expect(table.finish(b, result: 0) == BlockCompletion(tag: 12, result: 0))
        #expect(table.finish(a, result: -EBADF) == BlockCompletion(tag: 10, result: -EBADF))
        #expect(table.inFlight == 0)
    }

    @Test func refusedSlotIsFreedAndCompletedAtTheNextDrain() {
        var table = SlotTable(capacity: 2)
        defer { table.deallocate() }
        let slot = table.take(tag: 7, length: 4096)
        table.refuse(slot, result: -ENOMEM)
        #expect(table.inFlight == 1)
        var out = [BlockCompletion](repeating: BlockCompletion(tag: 0, result: 0), count: 2)
        #expect(out.withUnsafeMutableBufferPointer { table.drain(into: $0) } == 1)
        #expect(out[0] == BlockCompletion(tag: 7, result: -ENOMEM))
        #expect(table.inFlight == 0)
        // Both slots are free again.
        _ = table.take(tag: 1, length: 1)
        _ = table.take(tag: 2, length: 1)
        #expect(!table.hasRoom)
    }

    @Test func transferResultIsZeroOnlyForTheWholeLength() {
        var table = SlotTable(capacity: 1)
        defer { table.deallocate() }
        let slot = table.take(tag: 1, length: 8192)
        #expect(table.transferResult(of: slot, res: 8192) == 0)
        #expect(table.transferResult(of: slot, res: 4096) == -EIO)
        #expect(table.transferResult(of: slot, res: 0) == -EIO)
        #expect(table.transferResult(of: slot, res: Int64(-EAGAIN)) == -EAGAIN)
    }

    @Test func reapOnACopyKeepsTheFreedSlots() {
        var table = SlotTable(capacity: 2)
        defer { table.deallocate() }
        let a = table.take(tag: 1, length: 1), b = table.take(tag: 2, length: 1)
        var copy = table
        _ = copy.finish(a, result: 0)
        _ = copy.finish(b, result: 0)
        table.endReap(copy)
        #expect(table.inFlight == 0)
        #expect(table.hasRoom)
    }

    @Test func eventFDIsSignalledOncePerSubmitThatWantsIt() throws {
        let fd = try EventFD(nonBlocking: true)
        var table = SlotTable(capacity: 2)
        defer { table.deallocate() }
        table.signalIfWanted(fd.rawValue)
        #expect(drainEventFD(fd.rawValue) == 0)
        table.complete(tag: 1, result: 0)
        table.complete(tag: 2, result: 0)
        table.signalIfWanted(fd.rawValue)
        table.signalIfWanted(fd.rawValue)
        #expect(drainEventFD(fd.rawValue) == 1)
        table.wantSignal()
        table.signalIfWanted(fd.rawValue)
        #expect(drainEventFD(fd.rawValue) == 1)
    }
}
