import ArgumentParser
import BlockIO
import Logging
import VhostSystem
import VhostUserBlk

/// The executable only turns arguments into a validated DaemonConfiguration and runs it.
struct VhostUserBlkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhost-user-blk",
        abstract: "Serve a raw file or block device to a QEMU guest as a vhost-user-blk disk.",
        discussion: """
            QEMU: -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
                  -chardev socket,id=c0,path=SOCK -device vhost-user-blk-pci,chardev=c0,num-queues=N
            Logs go to stderr. SIGTERM/SIGINT drain in-flight I/O, remove the socket and exit 0.
            Security: the socket is created 0600 and never through a symlink. Started as root with
            --user, the daemon opens --backing and the socket first, then runs as USER (the socket
            file can then only be removed on exit if USER may write to its directory).
            Example for libvirt: --socket-owner libvirt-qemu --socket-group kvm --socket-mode 0660.
            """)

    @Option(help: "Unix socket path to listen on (created mode 0600, see --socket-mode).")
    var socket: String?

    @Option(name: .customLong("socket-owner"), help: "Owner of the socket file (user name or uid), e.g. libvirt-qemu.")
    var socketOwner: String?

    @Option(name: .customLong("socket-group"), help: "Group of the socket file (group name or gid), e.g. kvm.")
    var socketGroup: String?

    @Option(name: .customLong("socket-mode"), help: "Socket file mode in octal: 0600 (default), 0620, 0640 or 0660 (group may connect). Never grants others.")
    var socketMode: String?

    @Option(help: "After opening --backing and listening, drop root for USER[:GROUP] (or UID[:GID]) with its supplementary groups.")
    var user: String?

    @Option(name: .customLong("listen-fd"), help: "Use an inherited listening socket fd instead of --socket (libvirt, systemd LISTEN_FDS).")
    var listenFD: Int32?

    @Option(help: "Raw image file or block device (NVMe namespace, LVM LV).")
    var backing: String?

    @Option(help: "Size (bytes, or K/M/G/T): creates a missing --backing file; the size of null/memory stores.")
    var size: String?

    @Flag(help: "Fully allocate a file created with --size (thick) instead of sparse (thin).")
    var preallocate = false

    @Option(help: "Number of virtqueues offered.")
    var queues: Int = 1

    @Option(name: .customLong("queue-size"), help: "Largest virtqueue size accepted (power of two ≤ 1024).")
    var queueSize: Int = 1024

    @Option(help: "CPUs for the queue workers, one per queue round robin, e.g. 2-3,6 (default: the backing device's NUMA node, else all); 'none': do not pin, let the scheduler place them (cores shared with vCPUs).")
    var cpus: String?

    @Flag(name: .customLong("read-only"), help: "Offer VIRTIO_BLK_F_RO and reject writes.")
    var readOnly = false

    @Option(help: "I/O engine: aio (libaio, O_DIRECT), uring (io_uring, O_DIRECT), null (completes at once), memory (RAM disk).")
    var engine: String = "aio"

    @Flag(name: .customLong("uring-sqpoll"), help: "With --engine uring: a kernel thread per queue polls for submissions (no system call per batch; takes a CPU while busy).")
    var uringSQPoll = false

    @Option(name: .customLong("uring-sqpoll-cpu"), help: "With --uring-sqpoll: pin the polling threads to this CPU (default: the scheduler picks).")
    var uringSQPollCPU: Int?

    @Option(help: "Serial returned by GET_ID (≤ 20 bytes; default derived from the backing path).")
    var serial: String?

    @Option(name: .customLong("block-size"), help: "Logical block size the guest sees: 512 or 4096.")
    var blockSize: UInt32?

    @Option(name: .customLong("poll-us"), help: "Longest busy-poll in µs before an idle queue sleeps; the window adapts below it to the traffic (0 = never sleep).")
    var pollUS: Int = 50

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func makeConfiguration() throws -> DaemonConfiguration {
        let listen: DaemonConfiguration.Listen
        switch (socket, listenFD) {
        case (let p?, nil): listen = .path(p)
        case (nil, let fd?):
            guard fd >= 0 else { throw ValidationError("--listen-fd: must be ≥ 0") }
            listen = .inheritedFD(fd)
        case (nil, nil):
            // systemd socket activation: LISTEN_PID names us and LISTEN_FDS counts fds from 3 (SD_LISTEN_FDS_START).
            if let pid = ProcessEnvironment.value("LISTEN_PID"), Int32(pid) == ProcessEnvironment.pid,
               let n = ProcessEnvironment.value("LISTEN_FDS"), (Int(n) ?? 0) >= 1 {
                listen = .inheritedFD(3)
            } else {
                throw ValidationError("--socket: required (or --listen-fd, or systemd LISTEN_FDS)")
            }
        case (_?, _?): throw ValidationError("--socket and --listen-fd: give only one")
        }
        guard let kind = EngineKind(rawValue: engine) else {
            throw ValidationError("--engine: must be one of \(EngineKind.allCases.map(\.rawValue).joined(separator: ", ")), got \(engine)")
        }
        var createSize: UInt64?
        if let s = size {
            guard let v = parseSize(s), v > 0 else { throw ValidationError("--size: not a size: \(s)") }
            createSize = v
        }
        guard let queueSize16 = UInt16(exactly: queueSize) else { throw ValidationError("--queue-size: must be a power of two in 1...1024, got \(queueSize)") }
        var c = DaemonConfiguration(
            listen: listen,
            backing: BackingOptions(path: backing, readOnly: readOnly, createSize: createSize, preallocate: preallocate,
                                    blockSize: blockSize, engine: kind))
        c.queues = queues
        c.maxQueueSize = queueSize16
        c.serial = serial
        c.pollMicroseconds = pollUS
        c.uring = UringOptions(sqPoll: uringSQPoll, sqPollCPU: uringSQPollCPU)
        // Names are resolved now, before anything is opened: a typo fails at once, naming the argument.
        do {
            if let o = socketOwner { c.socketOwner = try Privileges.userID(o) }
        } catch { throw ValidationError("--socket-owner: \(error)") }
        do {
            if let g = socketGroup { c.socketGroup = try Privileges.groupID(g) }
        } catch { throw ValidationError("--socket-group: \(error)") }
        do {
            if let u = user { c.runAs = try Privileges.credentials(u) }
        } catch { throw ValidationError("--user: \(error)") }
        if let m = socketMode {
            guard let mode = parseOctalMode(m) else { throw ValidationError("--socket-mode: not an octal mode: \(m)") }
            c.socketMode = mode
        }
        if cpus == "none" {
            c.cpus = .unpinned
        } else if let list = cpus {
            guard let parsed = parseCPUList(list) else { throw ValidationError("--cpus: not a CPU list: \(list)") }
            c.cpus = .pinned(parsed)
        }
        do {
            try c.validate()
        } catch {
            throw ValidationError(error.description)
        }
        return c
    }

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: unknown level \(logLevel)") }
        let config = try makeConfiguration()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "vhost-user-blk")
        do {
            try Daemon.run(config, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
    }
}

VhostUserBlkCommand.main()
