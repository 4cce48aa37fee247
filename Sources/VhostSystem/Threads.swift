#if canImport(Glibc)
import Glibc
#endif
import CVhostLinux

/// A dedicated pthread: virtqueue workers busy-poll, so they must never run on Swift's cooperative
/// pool, where a spinning task would starve every other task.
public final class PinnedThread: @unchecked Sendable {
    private var thread: pthread_t
    public let name: String
    private var joined = false

    private final class Box {
        let name: String
        let cpu: Int?
        let body: () -> Void
        init(name: String, cpu: Int?, body: @escaping () -> Void) {
            self.name = name
            self.cpu = cpu
            self.body = body
        }
    }

    /// Starts `body` on a new thread named `name`, pinned to `cpu` when given. A failed pin is not
    /// fatal (the CPU may have gone offline or be outside our cgroup); `pinError` reports it.
    public init(name: String, cpu: Int?, body: @escaping () -> Void) throws {
        self.name = name
        let box = Unmanaged.passRetained(Box(name: name, cpu: cpu, body: body))
        var t = pthread_t()
        let r = pthread_create(&t, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            _ = cvh_set_thread_name(box.name)
            if let cpu = box.cpu { _ = cvh_pin_current_thread(Int32(cpu)) }
            box.body()
            return nil
        }, box.toOpaque())
        if r != 0 {
            box.release()
            throw SystemError("pthread_create", errno: r, context: name)
        }
        thread = t
    }

    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    /// CPU time the thread has used so far (its per-thread CPU clock, ns resolution); nil once joined.
    /// Lets a test check that an idle worker really sleeps, without the 10 ms ticks of /proc.
    public var cpuTimeNanoseconds: UInt64? {
        guard !joined else { return nil }
        var clock = clockid_t()
        guard pthread_getcpuclockid(thread, &clock) == 0 else { return nil }
        var ts = timespec()
        guard clock_gettime(clock, &ts) == 0 else { return nil }
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// The CPUs the thread may run on now (it may change them itself); nil once joined.
    public var allowedCPUs: [Int]? {
        guard !joined else { return nil }
        return CPUTopology.cpuIDs { cvh_thread_cpus(thread, $0, $1) }
    }
}

public enum CPUTopology {
    public static var onlineCPUCount: Int { Int(cvh_online_cpus()) }

    /// CPUs this process may run on (its affinity mask), in ascending order.
    public static func allowedCPUs() -> [Int] {
        cpuIDs { cvh_allowed_cpus($0, $1) } ?? Array(0..<onlineCPUCount)
    }

    /// CPUs of a NUMA node through libnuma, or nil when NUMA is unavailable or the node is unknown.
    public static func cpus(ofNUMANode node: Int) -> [Int]? {
        guard node >= 0, cvh_numa_available() >= 0 else { return nil }
        // 4096: more CPUs than any node of a machine this runs on has (the kernel's NR_CPUS default
        // on x86_64 Debian is 8192 system-wide; a node holds far fewer).
        var buf = [Int32](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBufferPointer { cvh_numa_cpus_of_node(Int32(node), $0.baseAddress, Int32($0.count)) }
        guard n > 0 else { return nil }
        return buf.prefix(Int(n)).map(Int.init)
    }

    public static var currentCPU: Int { Int(cvh_current_cpu()) }

    /// The CPUs the calling thread may run on (its own affinity, which may differ from the process's).
    public static func currentThreadCPUs() -> [Int] {
        cpuIDs { cvh_thread_cpus(pthread_self(), $0, $1) } ?? []
    }

    /// The CPU ids an affinity reader (`cvh_allowed_cpus`, `cvh_thread_cpus`) fills in; nil when it
    /// fails or finds none.
    static func cpuIDs(_ read: (UnsafeMutablePointer<Int32>?, Int32) -> Int32) -> [Int]? {
        // CPU_SETSIZE (1024) ids: the most a cpu_set_t can describe.
        var buf = [Int32](repeating: 0, count: 1024)
        let n = buf.withUnsafeMutableBufferPointer { read($0.baseAddress, Int32($0.count)) }
        return n > 0 ? buf.prefix(Int(n)).map(Int.init) : nil
    }

    /// Lets the calling thread run on any of `cpus` (replacing a pin); 0 or an errno value.
    public static func setCurrentThreadCPUs(_ cpus: [Int]) -> Int32 {
        let ids = cpus.map(Int32.init)
        return ids.withUnsafeBufferPointer { cvh_set_current_thread_cpus($0.baseAddress, Int32($0.count)) }
    }

    /// The NUMA node of `cpu`, nil when NUMA is unavailable.
    public static func numaNode(ofCPU cpu: Int) -> Int? {
        let n = cvh_numa_node_of_cpu(Int32(cpu))
        return n >= 0 ? Int(n) : nil
    }

    /// The NUMA node holding the page at `address` (faulting it in), nil when unknown.
    public static func numaNode(of address: UnsafeRawPointer) -> Int? {
        let n = cvh_numa_node_of_address(UnsafeMutableRawPointer(mutating: address))
        return n >= 0 ? Int(n) : nil
    }
}

/// Per-thread NUMA memory policy, for placing a queue's request state on the node of the CPU that
/// will run it: pages are placed when first touched, and what a constructor touches on the control
/// thread would otherwise land on the control thread's node.
public enum NUMAPolicy {
    /// Runs `body` with this thread's allocations preferring `node` (falling back to other nodes when it
    /// is full: a preference, not a binding), then restores the default policy. nil runs `body` as is.
    public static func withPreferredNode<T>(_ node: Int?, _ body: () throws -> T) rethrows -> T {
        guard let node, cvh_numa_available() >= 0, cvh_numa_prefer_node(Int32(node)) == 0 else { return try body() }
        defer { _ = cvh_numa_prefer_node(-1) }
        return try body()
    }

    /// This thread's policy mode (MPOL_DEFAULT = 0, MPOL_PREFERRED = 1, ...), nil when unknown.
    public static var currentMode: Int? {
        let m = cvh_numa_policy_mode()
        return m >= 0 ? Int(m) : nil
    }
}

/// Parses a CPU list in the kernel's format ("0-3,8,10-11").
public func parseCPUList(_ text: String) -> [Int]? {
    var cpus: [Int] = []
    for part in text.split(separator: ",", omittingEmptySubsequences: false) {
        let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 1 || bounds.count == 2,
              let lo = Int(bounds[0].trimmingCharacters(in: " ")), lo >= 0 else { return nil }
        let hi = bounds.count == 2 ? Int(bounds[1].trimmingCharacters(in: " ")) : lo
        guard let hi, hi >= lo, hi < 65536 else { return nil }
        cpus.append(contentsOf: lo...hi)
    }
    return cpus.isEmpty ? nil : cpus
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> Substring {
        var s = self
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return s
    }
}

/// Process environment without Foundation.
public enum ProcessEnvironment {
    public static func value(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
    public static var pid: Int32 { getpid() }
}

/// The calling thread's scheduler statistics from /proc/thread-self/schedstat (CONFIG_SCHED_INFO):
/// time on a CPU and run delay (time runnable but waiting for a CPU), the file's first two fields.
/// A worker uses them twice: it subtracts the run delay that accumulates across a sleep from the
/// sleep's length (on a busy CPU, the time between being woken and getting to run is not time its
/// queue was idle), and it compares the two over time to tell whether its CPU is shared
/// (`SharedCoreDetector`). Reading costs one pread of the already-open file (~0.2 µs here); nothing
/// is allocated per read. Owned by the thread that created it.
public final class ThreadSchedStat {
    public struct Sample: Equatable, Sendable {
        /// Nanoseconds the thread has run.
        public var onCPU: UInt64
        /// Nanoseconds it has been runnable without a CPU.
        public var runDelay: UInt64
        public init(onCPU: UInt64, runDelay: UInt64) {
            self.onCPU = onCPU
            self.runDelay = runDelay
        }
    }

    private let fd: FileDescriptor
    /// The file is three decimal u64s and a newline: 64 bytes hold it (20 digits each at most).
    private static let bufferSize = 64
    private let buffer: UnsafeMutablePointer<UInt8>

    /// Opens the calling thread's schedstat; nil when there is none (no /proc, a kernel without
    /// SCHED_INFO): callers then treat every sleep as idle time and every CPU as dedicated.
    public init?() {
        guard let fd = try? FileDescriptor.open("/proc/thread-self/schedstat", flags: O_RDONLY) else { return nil }
        self.fd = fd
        buffer = .allocate(capacity: Self.bufferSize)
        guard read() != nil else {
            buffer.deallocate()
            return nil
        }
    }

    deinit { buffer.deallocate() }

    /// The counters so far, or nil if the file could not be read or parsed.
    public func read() -> Sample? {
        let n = pread(fd.rawValue, buffer, Self.bufferSize, 0)
        guard n > 0 else { return nil }
        var fields: (UInt64, UInt64) = (0, 0)
        var field = 0
        var value: UInt64 = 0
        var digits = 0
        for i in 0..<n {
            let c = buffer[i]
            if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
                value = value &* 10 &+ UInt64(c &- UInt8(ascii: "0"))
                digits += 1
            } else {
                if digits > 0 {
                    if field == 0 {
                        fields.0 = value
                    } else {
                        fields.1 = value
                        return Sample(onCPU: fields.0, runDelay: fields.1)
                    }
                    field += 1
                }
                value = 0
                digits = 0
            }
        }
        return nil
    }
}
