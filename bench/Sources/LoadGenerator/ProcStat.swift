#if canImport(Glibc)
import Glibc
#endif

/// CPU time of a process from /proc/PID/stat (all its threads, user + system).
public enum ProcessCPU {
    /// utime + stime in seconds, or nil when the process is gone or the file is unreadable.
    public static func seconds(pid: Int32) -> Double? {
        guard let text = readSmallFile("/proc/\(pid)/stat") else { return nil }
        return parseStat(text)
    }

    /// Parses a /proc/PID/stat line. The command name (field 2) is in parentheses and may itself
    /// contain spaces and ')', so fields are counted from the last ')'; utime and stime are fields
    /// 14 and 15 (proc(5)), i.e. the 12th and 13th after the name.
    public static func parseStat(_ text: String) -> Double? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let rest = text[text.index(after: close)...].split(separator: " ")
        guard rest.count > 12, let utime = UInt64(rest[11]), let stime = UInt64(rest[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return Double(utime + stime) / (ticks > 0 ? ticks : 100)
    }

    /// This process's CPU seconds (getrusage: microsecond resolution instead of /proc's ticks).
    public static func ownSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6
            + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // /proc/PID/stat is one line of ~300 bytes; 4096 leaves room for a long command name.
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: ~20 ns here with the tsc clock source, no system call).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
