import Histogram

/// Latency histogram in nanoseconds. 1 ns resolution at the bottom, 3 significant digits (0.1 %
/// error) throughout, up to `highestNanoseconds`; larger values are clamped to it (and counted), so
/// a request stuck for minutes still lands in p99.9 instead of vanishing.
public struct LatencyRecorder: Sendable {
    /// 60 s: far above any completion a healthy device gives; a run lasting longer than that with
    /// one request in flight the whole time is a hang, reported as "≥ 60 s".
    public static let highestNanoseconds: UInt64 = 60_000_000_000

    public var histogram: Histogram<UInt64>
    public private(set) var clamped: UInt64 = 0

    public init() {
        histogram = Histogram(lowestDiscernibleValue: 1, highestTrackableValue: Self.highestNanoseconds,
                              numberOfSignificantValueDigits: .three)
    }

    @inline(__always)
    public mutating func record(nanoseconds: UInt64) {
        if !histogram.record(nanoseconds) {
            clamped &+= 1
            histogram.record(Self.highestNanoseconds)
        }
    }

    public mutating func merge(_ other: LatencyRecorder) {
        histogram.add(other.histogram)
        clamped &+= other.clamped
    }

    public mutating func reset() {
        histogram.reset()
        clamped = 0
    }

    public var summary: LatencySummary {
        let h = histogram
        guard h.totalCount > 0 else { return LatencySummary() }
        return LatencySummary(count: h.totalCount, minNs: h.min, meanNs: h.mean,
                              p50Ns: h.valueAtPercentile(50), p90Ns: h.valueAtPercentile(90),
                              p99Ns: h.valueAtPercentile(99), p999Ns: h.valueAtPercentile(99.9), maxNs: h.max)
    }
}

/// Percentiles of a latency distribution, in nanoseconds.
public struct LatencySummary: Sendable, Equatable {
    public var count: UInt64 = 0
    public var minNs: UInt64 = 0
    public var meanNs: Double = 0
    public var p50Ns: UInt64 = 0
    public var p90Ns: UInt64 = 0
    public var p99Ns: UInt64 = 0
    public var p999Ns: UInt64 = 0
    public var maxNs: UInt64 = 0

    public init() {}
    public init(count: UInt64, minNs: UInt64, meanNs: Double, p50Ns: UInt64, p90Ns: UInt64, p99Ns: UInt64, p999Ns: UInt64, maxNs: UInt64) {
        self.count = count
        self.minNs = minNs
        self.meanNs = meanNs
        self.p50Ns = p50Ns
        self.p90Ns = p90Ns
        self.p99Ns = p99Ns
        self.p999Ns = p999Ns
        self.maxNs = maxNs
    }
}

/// The outcome of a run, ready to print.
public struct RunReport: Sendable {
    public var target: String
    public var workload: WorkloadSpec
    public var queues: Int
    public var queueSize: Int
    public var waitMode: WaitMode
    public var negotiatedFeatures: UInt64
    public var hugePages: Bool
    /// Measured interval (after the ramp).
    public var elapsedSeconds: Double
    public var completed: UInt64
    public var reads: UInt64
    public var writes: UInt64
    public var bytes: UInt64
    /// Requests whose status byte was not VIRTIO_BLK_S_OK.
    public var ioErrors: UInt64
    /// Verify mode: blocks whose read-back data did not match, and a description of the first.
    public var verifyErrors: UInt64
    public var firstVerifyError: String?
    public var verifiedBlocks: UInt64
    public var latency: LatencySummary
    public var kicks: UInt64
    public var callWaits: UInt64
    /// Back-end CPU seconds (user+system, all threads) over the measured interval, when its pid was given.
    public var backendCPUSeconds: Double?
    /// This process's CPU seconds over the same interval.
    public var generatorCPUSeconds: Double
    /// With `RunOptions.idleSeconds`: how long the queues then sat idle, and the back-end's CPU
    /// seconds over that time.
    public var idleSeconds: Double?
    public var backendIdleCPUSeconds: Double?

    public var iops: Double { elapsedSeconds > 0 ? Double(completed) / elapsedSeconds : 0 }
    public var megabytesPerSecond: Double { elapsedSeconds > 0 ? Double(bytes) / elapsedSeconds / 1e6 : 0 }
    public var backendCPUMicrosecondsPerIO: Double? {
        guard let s = backendCPUSeconds, completed > 0 else { return nil }
        return s * 1e6 / Double(completed)
    }
    /// Back-end CPU over the idle interval, in percent of one core.
    public var backendIdleCPUPercent: Double? {
        guard let s = backendIdleCPUSeconds, let t = idleSeconds, t > 0 else { return nil }
        return s / t * 100
    }
    public var generatorCPUMicrosecondsPerIO: Double? {
        completed > 0 ? generatorCPUSeconds * 1e6 / Double(completed) : nil
    }

    public var text: String {
        func us(_ ns: UInt64) -> String { fixed(Double(ns) / 1000, 2) }
        var lines: [String] = []
        lines.append("target: \(target)")
        lines.append("workload: \(workload.pattern.rawValue) bs=\(workload.blockSize) depth=\(workload.queueDepth) queues=\(queues)"
            + " queue-size=\(queueSize) wait=\(waitMode.rawValue)" + (hugePages ? " hugepages" : "")
            + (workload.verify ? " verify" : ""))
        lines.append("elapsed: \(fixed(elapsedSeconds, 3)) s, \(completed) requests (\(reads) reads, \(writes) writes)")
        lines.append("IOPS: \(fixed(iops, 0))  MB/s: \(fixed(megabytesPerSecond, 1))")
        lines.append("latency µs: min \(us(latency.minNs)) p50 \(us(latency.p50Ns)) p90 \(us(latency.p90Ns))"
            + " p99 \(us(latency.p99Ns)) p99.9 \(us(latency.p999Ns)) max \(us(latency.maxNs)) mean \(fixed(latency.meanNs / 1000, 2))")
        if let b = backendCPUSeconds {
            lines.append("backend CPU: \(fixed(b, 2)) s = \(fixed(backendCPUMicrosecondsPerIO ?? 0, 3)) µs/IO"
                + " (\(fixed(elapsedSeconds > 0 ? b / elapsedSeconds : 0, 2)) cores)")
        }
        lines.append("generator CPU: \(fixed(generatorCPUSeconds, 2)) s = \(fixed(generatorCPUMicrosecondsPerIO ?? 0, 3)) µs/IO;"
            + " kicks \(kicks), call waits \(callWaits)")
        if let p = backendIdleCPUPercent, let t = idleSeconds {
            lines.append("backend CPU while idle: \(fixed(p, 2)) % of a core over \(fixed(t, 1)) s")
        }
        if ioErrors > 0 { lines.append("I/O errors: \(ioErrors)") }
        if workload.verify {
            lines.append("verify: \(verifiedBlocks) blocks checked, \(verifyErrors) mismatches" + (firstVerifyError.map { "; first: \($0)" } ?? ""))
        }
        return lines.joined(separator: "\n")
    }

    public var json: String {
        var o = JSONObject()
        o.add("target", target)
        o.add("pattern", workload.pattern.rawValue)
        o.add("block_size", workload.blockSize)
        o.add("queue_depth", workload.queueDepth)
        o.add("queues", queues)
        o.add("queue_size", queueSize)
        o.add("wait_mode", waitMode.rawValue)
        o.add("read_mix", workload.readMix)
        o.add("hugepages", hugePages)
        o.add("negotiated_features", negotiatedFeatures)
        o.add("elapsed_s", elapsedSeconds)
        o.add("requests", completed)
        o.add("reads", reads)
        o.add("writes", writes)
        o.add("bytes", bytes)
        o.add("iops", iops)
        o.add("mb_per_s", megabytesPerSecond)
        var l = JSONObject()
        l.add("count", latency.count)
        l.add("min_us", Double(latency.minNs) / 1000)
        l.add("mean_us", latency.meanNs / 1000)
        l.add("p50_us", Double(latency.p50Ns) / 1000)
        l.add("p90_us", Double(latency.p90Ns) / 1000)
        l.add("p99_us", Double(latency.p99Ns) / 1000)
        l.add("p99_9_us", Double(latency.p999Ns) / 1000)
        l.add("max_us", Double(latency.maxNs) / 1000)
        o.addRaw("latency", l.text)
        o.add("backend_cpu_s", backendCPUSeconds)
        o.add("backend_cpu_us_per_io", backendCPUMicrosecondsPerIO)
        o.add("generator_cpu_s", generatorCPUSeconds)
        o.add("generator_cpu_us_per_io", generatorCPUMicrosecondsPerIO)
        o.add("think_us", Int(workload.thinkMicroseconds))
        o.add("idle_s", idleSeconds)
        o.add("backend_idle_cpu_percent", backendIdleCPUPercent)
        o.add("kicks", kicks)
        o.add("call_waits", callWaits)
        o.add("io_errors", ioErrors)
        o.add("verify", workload.verify)
        o.add("verified_blocks", verifiedBlocks)
        o.add("verify_errors", verifyErrors)
        o.add("first_verify_error", firstVerifyError)
        return o.text
    }
}

/// `value` with `digits` decimals, without Foundation's String(format:).
public func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = value < 0
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9e18 else { return "\(value)" }
    let n = UInt64(scaled)
    let p = UInt64(scale)
    var s = String(n / p)
    if digits > 0 {
        let frac = String(n % p)
        s += "." + String(repeating: "0", count: digits - frac.count) + frac
    }
    return negative && n != 0 ? "-" + s : s
}

/// A flat JSON object writer: keys in insertion order, numbers as JSON numbers, nil as null.
struct JSONObject {
    private var fields: [String] = []

    private static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    mutating func addRaw(_ key: String, _ json: String) { fields.append("\(Self.quote(key)): \(json)") }
    mutating func add(_ key: String, _ v: String?) { addRaw(key, v.map(Self.quote) ?? "null") }
    mutating func add(_ key: String, _ v: Int) { addRaw(key, String(v)) }
    mutating func add(_ key: String, _ v: UInt64) { addRaw(key, String(v)) }
    mutating func add(_ key: String, _ v: Bool) { addRaw(key, v ? "true" : "false") }
    mutating func add(_ key: String, _ v: Double?) {
        guard let v, v.isFinite else { addRaw(key, "null"); return }
        addRaw(key, fixed(v, 3))
    }

    var text: String { "{" + fields.joined(separator: ", ") + "}" }
}
