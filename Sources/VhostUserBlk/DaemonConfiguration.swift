#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import VhostSystem

/// Why the daemon cannot start: the argument at fault and what is wrong with it.
public struct DaemonError: Error, CustomStringConvertible {
    public var argument: String?
    public var reason: String
    public init(argument: String?, _ reason: String) {
        self.argument = argument
        self.reason = reason
    }
    public var description: String { argument.map { "\($0): \(reason)" } ?? reason }
}

/// Everything the daemon runs with, validated before anything is opened.
public struct DaemonConfiguration: Sendable {
    public enum Listen: Sendable {
        case path(String)
        /// An already-listening socket inherited from the parent (libvirt, systemd LISTEN_FDS).
        case inheritedFD(Int32)
    }

    public var listen: Listen
    public var backing: BackingOptions
    public var queues: Int = 1
    public var maxQueueSize: UInt16 = 1024
    /// Where queue workers run (`--cpus`).
    public var cpus: WorkerCPUs = .automatic
    public var serial: String? = nil
    /// The longest idle poll before a worker sleeps (the window adapts below it, `PollWindow`); 0 =
    /// never sleep. 50 µs: long enough that a guest issuing requests back to back is served without
    /// kicks, and the adaptive window keeps it from costing CPU when requests come further apart
    /// (cloud-hypervisor polls 50 µs after each kick; QEMU's iothread default poll-max-ns is 32 µs).
    public var pollMicroseconds: Int = 50
    /// Owner and group given to the socket file (`--socket-owner`, `--socket-group`); nil keeps the
    /// daemon's own. Typically the user and group QEMU runs as (libvirt: libvirt-qemu / kvm).
    public var socketOwner: uid_t? = nil
    public var socketGroup: gid_t? = nil
    /// The socket file's permission bits (`--socket-mode`). See `allowedSocketModeBits`.
    public var socketMode: mode_t = 0o600
    /// Who to become once the store is open and the socket listens (`--user`); nil: stay as started.
    public var runAs: Credentials? = nil
    /// Ring options of `--engine uring` (`--uring-sqpoll`, `--uring-sqpoll-cpu`).
    public var uring = UringOptions()

    public init(listen: Listen, backing: BackingOptions) {
        self.listen = listen
        self.backing = backing
    }

    /// QEMU supports up to 1024 queues per virtio device, but vhost-user's SET_VRING_* messages encode the
    /// queue index in 8 bits, so 256 is the protocol's hard limit.
    public static let maxQueues = 256

    /// Whoever can connect to the socket is a full front-end: it can read and overwrite the whole disk.
    /// So the mode may grant owner and group read/write only: never "other", and no execute, setuid,
    /// setgid or sticky bits (meaningless on a socket, and a sign of a typo such as 0666 or 0777).
    /// The owner keeps read/write (0600 at least), because connect() needs write permission and the
    /// owner is who QEMU normally runs as. Allowed: 0600, 0620, 0640, 0660.
    public static let allowedSocketModeBits: mode_t = 0o660

    public func validate() throws(DaemonError) {
        guard (1...Self.maxQueues).contains(queues) else {
            throw DaemonError(argument: "--queues", "must be 1...\(Self.maxQueues), got \(queues)")
        }
        guard maxQueueSize >= 1, maxQueueSize <= 1024, maxQueueSize & (maxQueueSize - 1) == 0 else {
            throw DaemonError(argument: "--queue-size", "must be a power of two in 1...1024, got \(maxQueueSize)")
        }
        if let b = backing.blockSize, b != 512 && b != 4096 {
            throw DaemonError(argument: "--block-size", "must be 512 or 4096, got \(b)")
        }
        guard pollMicroseconds >= 0 else { throw DaemonError(argument: "--poll-us", "must be ≥ 0") }
        if let s = serial, s.utf8.count > 20 {
            throw DaemonError(argument: "--serial", "at most 20 bytes (virtio-blk GET_ID), got \(s.utf8.count)")
        }
        switch backing.engine {
        case .aio, .uring:
            guard backing.path != nil else {
                throw DaemonError(argument: "--backing", "required with --engine \(backing.engine.rawValue)")
            }
        case .null, .memory:
            guard backing.path == nil else {
                throw DaemonError(argument: "--backing", "not used with --engine \(backing.engine.rawValue)")
            }
            guard backing.createSize != nil else {
                throw DaemonError(argument: "--size", "required with --engine \(backing.engine.rawValue)")
            }
        }
        if backing.engine != .uring && uring.sqPoll {
            throw DaemonError(argument: "--uring-sqpoll", "only with --engine uring")
        }
        if let cpu = uring.sqPollCPU {
            guard uring.sqPoll else { throw DaemonError(argument: "--uring-sqpoll-cpu", "only with --uring-sqpoll") }
            guard cpu >= 0 else { throw DaemonError(argument: "--uring-sqpoll-cpu", "must be ≥ 0, got \(cpu)") }
        }
        if case .path(let p) = listen, p.isEmpty { throw DaemonError(argument: "--socket", "empty path") }
        guard socketMode & ~Self.allowedSocketModeBits == 0, socketMode & 0o600 == 0o600 else {
            throw DaemonError(argument: "--socket-mode",
                              "must grant owner rw and nothing beyond owner/group rw (0600, 0620, 0640 or 0660), got 0\(String(socketMode, radix: 8))")
        }
        if case .inheritedFD = listen {
            // An inherited socket was created (and given its permissions) by whoever passed it.
            if socketOwner != nil { throw DaemonError(argument: "--socket-owner", "only with --socket, not an inherited socket") }
            if socketGroup != nil { throw DaemonError(argument: "--socket-group", "only with --socket, not an inherited socket") }
            if socketMode != 0o600 { throw DaemonError(argument: "--socket-mode", "only with --socket, not an inherited socket") }
        }
    }

    /// A serial that stays the same across restarts on the same backing store (guests key mounts and
    /// udev links on it): "vub-" and 16 hex digits of an FNV-1a hash of the path.
    public static func defaultSerial(for path: String?, engine: EngineKind) -> String {
        guard let path else { return "vub-\(engine.rawValue)" }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 // FNV-1a 64-bit offset basis
        for b in path.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3 // FNV-1a 64-bit prime
        }
        let hex = String(h, radix: 16)
        return "vub-" + String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// Parses "4096", "64K", "512M", "2G", "1T" (binary multiples).
public func parseSize(_ text: String) -> UInt64? {
    // Digits first: UInt64("+5") would accept a sign, which no size should carry.
    guard let first = text.first, first.isASCII, first.isNumber, let last = text.last else { return nil }
    let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40, "k": 10, "m": 20, "g": 30, "t": 40]
    if let shift = shifts[last] {
        guard let n = UInt64(text.dropLast()), n <= (UInt64.max >> shift) else { return nil }
        return n << shift
    }
    return UInt64(text)
}

/// Parses a permission mode written in octal: "0660", "660" or "0o660"; nil for anything else
/// (including values above 07777).
public func parseOctalMode(_ text: String) -> mode_t? {
    let digits = text.hasPrefix("0o") ? String(text.dropFirst(2)) : text
    guard !digits.isEmpty, digits.utf8.count <= 5,
          digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }),
          let v = mode_t(digits, radix: 8), v <= 0o7777 else { return nil }
    return v
}

/// Where queue workers run.
public enum WorkerCPUs: Sendable, Equatable {
    /// Pinned, one queue per CPU round robin, to the backing device's NUMA node's CPUs (when it has
    /// one and libnuma knows it), else to every CPU the process may use.
    case automatic
    /// Pinned, one queue per CPU round robin, to these (`--cpus LIST`): dedicated cores.
    case pinned([Int])
    /// Not pinned (`--cpus none`): the scheduler moves workers within the process's affinity. On a
    /// host whose cores the back-end shares with vCPUs, a worker pinned to one core waits whenever a
    /// vCPU runs there while another core may be free (bench/README.md, "Pinned or floating workers":
    /// pinned 0.91x/0.92x qsd's guest IOPS, unpinned 1.00x/1.13x, with --poll-us 5, TCG guest).
    case unpinned
}
