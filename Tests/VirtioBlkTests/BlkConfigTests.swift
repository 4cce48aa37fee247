import Testing
import VirtioBlk

func le<T: FixedWidthInteger>(_ b: [UInt8], _ offset: Int, as: T.Type) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v |= T(b[offset + i]) << (8 * i) }
    return v
}

@Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
func configEncodingPutsEveryFieldAtItsOffset(discard: Bool, writeZeroes: Bool) {
    let c = BlkConfig(capacitySectors: 0x1_2345_6789, blockSize: 4096, physicalBlockSize: 4096, numQueues: 3,
                      writeback: true, discard: discard, writeZeroes: writeZeroes, writeZeroesMayUnmap: true)
    let b = c.encoded
    #expect(b.count == 60)
    #expect(le(b, 0, as: UInt64.self) == 0x1_2345_6789)       // capacity
    #expect(le(b, 8, as: UInt32.self) == BlkConfig.sizeMax)   // size_max
    #expect(le(b, 12, as: UInt32.self) == BlkConfig.segMax)   // seg_max
    #expect(b[16..<20].allSatisfy { $0 == 0 })               // geometry: not offered
    #expect(le(b, 20, as: UInt32.self) == 4096)               // blk_size
    #expect(b[24] == 0)                                       // physical_block_exp
    #expect(b[25] == 0)                                       // alignment_offset
    #expect(le(b, 26, as: UInt16.self) == 1)                  // min_io_size
    #expect(le(b, 28, as: UInt32.self) == 0)                  // opt_io_size
    #expect(b[32] == 1)                                       // writeback
    #expect(le(b, 34, as: UInt16.self) == 3)                  // num_queues
    if discard {
        #expect(le(b, 36, as: UInt32.self) == BlkConfig.maxRangeSectors)
        #expect(le(b, 40, as: UInt32.self) == 1)
        #expect(le(b, 44, as: UInt32.self) == 8)              // discard_sector_alignment: 4096 / 512
    } else {
        #expect(b[36..<48].allSatisfy { $0 == 0 })
    }
    if writeZeroes {
        #expect(le(b, 48, as: UInt32.self) == BlkConfig.maxRangeSectors)
        #expect(le(b, 52, as: UInt32.self) == 1)
        #expect(b[56] == 1)
    } else {
        #expect(b[48..<57].allSatisfy { $0 == 0 })
    }
    #expect(b[57..<60].allSatisfy { $0 == 0 })               // padding
}

@Test(arguments: [(UInt32(512), UInt32(512), UInt8(0)), (512, 4096, 3), (4096, 4096, 0), (512, 1024, 1)])
func physicalBlockExponentIsLog2OfPhysicalOverLogical(logical: UInt32, physical: UInt32, exp: UInt8) {
    let b = BlkConfig(capacitySectors: 8, blockSize: logical, physicalBlockSize: physical, numQueues: 1,
                      writeback: false, discard: true, writeZeroes: true, writeZeroesMayUnmap: false).encoded
    #expect(b[24] == exp)
    #expect(b[32] == 0)                                       // write-through
    #expect(b[56] == 0)                                       // write_zeroes_may_unmap off
    #expect(le(b, 44, as: UInt32.self) == logical / 512)
}

@Test(arguments: [("", [UInt8](repeating: 0, count: 20)),
                  ("abc", [97, 98, 99] + [UInt8](repeating: 0, count: 17)),
                  ("0123456789abcdefghijKLMN", Array("0123456789abcdefghij".utf8))])
func serialIsPaddedOrTruncatedTo20Bytes(serial: String, expected: [UInt8]) {
    #expect(params(serial: serial).serial == expected)
}
