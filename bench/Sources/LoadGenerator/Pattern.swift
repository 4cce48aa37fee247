/// Verify-mode data: every 8-byte word of the device gets a value derived from its own byte offset
/// and the run's seed. A block read back from the wrong place, a stale block from an earlier run
/// (different seed), a torn or zero-filled block and a single flipped byte all fail the check.
public enum VerifyPattern {
    /// splitmix64's finaliser: neighbouring offsets give unrelated words.
    @inline(__always)
    static func word(offset: UInt64, seed: UInt64) -> UInt64 {
        var z = offset &+ seed &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Fills `length` bytes at `buffer` (a multiple of 8) with the pattern of device bytes
    /// `deviceOffset..<deviceOffset+length`.
    public static func fill(_ buffer: UnsafeMutableRawPointer, length: Int, deviceOffset: UInt64, seed: UInt64) {
        var i = 0
        while i < length {
            buffer.storeBytes(of: word(offset: deviceOffset &+ UInt64(i), seed: seed).littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
    }

    /// The index of the first byte that differs from the pattern, or nil when all `length` bytes match.
    public static func firstMismatch(_ buffer: UnsafeRawPointer, length: Int, deviceOffset: UInt64, seed: UInt64) -> Int? {
        var i = 0
        while i < length {
            let expected = word(offset: deviceOffset &+ UInt64(i), seed: seed).littleEndian
            let got = buffer.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            if got != expected {
                // Locate the byte inside the word (little-endian: the lowest differing byte comes first).
                let diff = got ^ expected
                return i + diff.trailingZeroBitCount / 8
            }
            i += 8
        }
        return nil
    }
}
