#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import CVhostLinux
import Logging
import VhostSystem
import VhostUserBackend

/// The daemon: opens the store, listens, serves front-ends until SIGTERM/SIGINT, then drains and
/// cleans up. Signals are taken through a signalfd on a dedicated thread, so no code runs in a signal
/// handler and the workers never see them.
public enum Daemon {
    /// Runs until a stop signal. Returns normally after an orderly stop; throws when it cannot start.
    public static func run(_ configuration: DaemonConfiguration, logger: Logger) throws {
        try configuration.validate()
        // Block the stop signals before any thread exists, so every thread inherits the mask and only
        // the signalfd sees them.
        let sigfdRaw = cvh_signalfd_term()
        guard sigfdRaw >= 0 else { throw DaemonError(argument: nil, "signalfd: errno \(errno)") }
        let sigfd = FileDescriptor(adopting: sigfdRaw)
        _ = cvh_block_term_signals()

        let store: BackingStore
        do {
            store = try BackingStore.open(configuration.backing)
        } catch {
            throw DaemonError(argument: configuration.backing.path == nil ? "--size" : "--backing", "\(error)")
        }
        for w in store.warnings { logger.warning("\(w)") }
        let cpus = try workerCPUs(configuration, store: store, logger: logger)
        logger.info("backing \(store.path ?? "(\(store.engineKind.rawValue))"): \(store.capacityBytes) bytes, block size \(store.logicalBlockSize), engine \(store.engineKind.rawValue)\(store.directIO ? ", O_DIRECT" : "")\(store.readOnly ? ", read-only" : "")")

        switch store.engineKind {
        case .aio:
            try serve(VirtioBlkDevice(aio: store, configuration: configuration, cpus: cpus), configuration, sigfd: sigfd, logger: logger)
        case .uring:
            try serve(VirtioBlkDevice(uring: store, configuration: configuration, cpus: cpus), configuration, sigfd: sigfd, logger: logger)
        case .null:
            try serve(VirtioBlkDevice(null: store, configuration: configuration, cpus: cpus), configuration, sigfd: sigfd, logger: logger)
        case .memory:
            try serve(VirtioBlkDevice(memory: store, configuration: configuration, cpus: cpus), configuration, sigfd: sigfd, logger: logger)
        }
        let r = store.flushSync()
        if r != 0 { logger.error("final flush failed: errno \(-r)") }
        logger.info("stopped")
    }

    private static func serve<E>(_ device: VirtioBlkDevice<E>, _ configuration: DaemonConfiguration,
                                 sigfd: FileDescriptor, logger: Logger) throws {
        let listener: UnixSocket
        var socketFile: SocketFile?
        switch configuration.listen {
        case .path(let p):
            do {
                listener = try UnixSocket.listen(path: p, mode: configuration.socketMode,
                                                 owner: configuration.socketOwner, group: configuration.socketGroup)
            } catch let e as SystemError where e.operation == "fchownat" {
                throw DaemonError(argument: configuration.socketOwner != nil ? "--socket-owner" : "--socket-group", "\(e)")
            } catch {
                throw DaemonError(argument: "--socket", "\(error)")
            }
            socketFile = SocketFile(path: p)
        case .inheritedFD(let fd):
            guard UnixSocket.isListeningSocket(fd) else {
                throw DaemonError(argument: "--listen-fd", "fd \(fd) is not a listening stream socket")
            }
            listener = UnixSocket(adopting: FileDescriptor(adopting: fd))
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        defer {
            // Remove only the socket we created: an inherited socket belongs to whoever made it.
            if let f = socketFile {
                do {
                    try f.remove()
                } catch {
                    // Expected after --user when the new user may not write to the socket's directory.
                    // Not an error: the next start replaces a stale socket file.
                    logger.warning("cannot remove the socket file on exit: \(error)\(configuration.runAs.map { "; the --user \($0.name ?? String($0.uid)) needs write permission on its directory, or remove it by hand" } ?? "")")
                }
            }
        }
        // The last privileged step: the store is open and the socket listens (both may need root).
        // Done before the signal thread and any queue worker exist, so no other thread runs while the
        // ids change and none ever runs as root. Guest memory (memfd/hugetlbfs fds from QEMU), eventfds,
        // io_setup and CPU pinning of our own threads need no privilege; the store's fd keeps the
        // access it was opened with (O_DIRECT, BLKDISCARD/BLKZEROOUT on a block device included).
        if let target = configuration.runAs {
            do {
                try Privileges.drop(to: target)
            } catch {
                throw DaemonError(argument: "--user", "cannot drop privileges: \(error)")
            }
            logger.info("dropped privileges to \(target); setuid(0) refused, root cannot be regained")
        }
        if device.store.engineKind == .uring {
            // After the privilege drop: kernel.io_uring_disabled = 1 admits root but perhaps not --user.
            // Before the first front-end: a queue that cannot make its ring would only fail then.
            do {
                try UringEngine.probe(store: device.store, options: configuration.uring)
            } catch {
                throw DaemonError(argument: "--engine", "uring: \(error)")
            }
            logger.info("io_uring: registered file, completion eventfd\(configuration.uring.sqPoll ? ", SQ polling (thread idle after \(configuration.uring.sqPollIdleMilliseconds) ms\(configuration.uring.sqPollCPU.map { ", on CPU \($0)" } ?? ""))" : "")")
        }
        let server = try VhostUserServer(listener: listener, device: device, logger: logger)
        let signals = try PinnedThread(name: "signals", cpu: nil) {
            while true {
                _ = try? Poll.readable([sigfd.rawValue], timeoutMs: -1)
                let s = cvh_signalfd_read(sigfd.rawValue)
                if s == SIGTERM || s == SIGINT {
                    logger.info("signal \(s): stopping (draining in-flight I/O)")
                    server.requestStop()
                    return
                }
                if s > 0 { logger.info("signal \(s) ignored") }
            }
        }
        switch configuration.listen {
        case .path(let p): logger.info("listening on \(p) (\(configuration.queues) queue(s), serial \(device.serial))")
        case .inheritedFD(let fd): logger.info("listening on inherited fd \(fd) (\(configuration.queues) queue(s), serial \(device.serial))")
        }
        server.run()
        signals.join()
    }

    /// The CPUs workers are pinned to (see `WorkerCPUs`); queues take them round robin. Empty: not pinned.
    static func workerCPUs(_ c: DaemonConfiguration, store: BackingStore, logger: Logger) throws -> [Int] {
        let allowed = Set(CPUTopology.allowedCPUs())
        switch c.cpus {
        case .unpinned:
            logger.info("queue workers not pinned (--cpus none)")
            return []
        case .pinned(let cpus):
            let outside = cpus.filter { !allowed.contains($0) }
            guard outside.isEmpty else {
                throw DaemonError(argument: "--cpus", "CPU(s) \(outside) are not available to this process (allowed: \(allowed.sorted()))")
            }
            return cpus
        case .automatic:
            break
        }
        if let node = store.numaNode, let nodeCPUs = CPUTopology.cpus(ofNUMANode: node) {
            let usable = nodeCPUs.filter { allowed.contains($0) }
            if !usable.isEmpty {
                logger.info("pinning queue workers to NUMA node \(node) CPUs \(usable)")
                return usable
            }
        }
        return allowed.sorted()
    }
}
