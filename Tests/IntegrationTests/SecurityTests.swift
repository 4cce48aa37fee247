#if canImport(Glibc)
import Glibc
#endif
import Testing
import VhostSystem
import VhostUserProtocol
import VhostUserTesting

/// uid/gid of a database entry, looked up the plain way (not through the daemon's code under test).
private func uidOf(_ name: String) -> uid_t? { getpwnam(name).map { $0.pointee.pw_uid } }
private func gidOf(_ name: String) -> gid_t? { getgrnam(name).map { $0.pointee.gr_gid } }

/// /proc/PID/task/TID/status, whole; nil if it cannot be read (the thread is gone).
func readStatus(_ statusPath: String) -> String? { readProcFile(statusPath) }

/// The "Uid:", "Gid:", "Groups:" or "CapEff:" line of a status file's text, split into fields.
func statusFields(_ status: String, _ key: String, of statusPath: String) throws -> [String] {
    for line in status.split(separator: "\n") where line.hasPrefix(key + ":") {
        return line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    }
    throw IntegrationFailure(description: "no \(key) line in \(statusPath)")
}

/// The thread ids of a process (every thread must have dropped, not only the main one).
func threadIDs(_ pid: pid_t) -> [String] {
    guard let dir = opendir("/proc/\(pid)/task") else { return [] }
    defer { closedir(dir) }
    var ids: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafePointer(to: &entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { ids.append(name) }
    }
    return ids
}

private func lstatOf(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

/// A security option the daemon must reject before opening anything, and the argument its message names.
struct BadSecurityArguments: Sendable, CustomTestStringConvertible {
    let arguments: [String]
    let names: String
    var testDescription: String { arguments.joined(separator: " ") }

    static let all: [BadSecurityArguments] = [
        .init(arguments: ["--user", "nosuchuser"], names: "--user"),
        .init(arguments: ["--user", "nobody:nosuchgroup"], names: "--user"),
        // A uid with no password entry has no primary group to take.
        .init(arguments: ["--user", "4242424"], names: "--user"),
        .init(arguments: ["--user", "nobody:"], names: "--user"),
        .init(arguments: ["--socket-owner", "nosuchuser"], names: "--socket-owner"),
        .init(arguments: ["--socket-group", "nosuchgroup"], names: "--socket-group"),
        // Any local user could connect and read or overwrite the disk.
        .init(arguments: ["--socket-mode", "0666"], names: "--socket-mode"),
        .init(arguments: ["--socket-mode", "0606"], names: "--socket-mode"),
        // Execute bits mean nothing on a socket: a typo for something else.
        .init(arguments: ["--socket-mode", "0770"], names: "--socket-mode"),
        // The owner must keep write (connect needs it).
        .init(arguments: ["--socket-mode", "0460"], names: "--socket-mode"),
        .init(arguments: ["--socket-mode", "rw"], names: "--socket-mode"),
        .init(arguments: ["--socket-mode", "0680"], names: "--socket-mode"),
    ]
}

@Suite("Security: socket ownership and mode, symlinks, --user")
struct SecurityTests {
    @Test("by default the socket is 0600 and owned by the daemon's user")
    func defaultMode() throws {
        let daemon = try TestDaemon.memory()
        let st = try #require(lstatOf(daemon.socketPath))
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o7777 == 0o600, "mode \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(st.st_uid == geteuid())
    }

    @Test("--socket-mode is applied, and a front-end can still connect", arguments: ["0660", "0640", "660"])
    func socketMode(_ mode: String) throws {
        let daemon = try TestDaemon.memory(extra: ["--socket-mode", mode])
        let st = try #require(lstatOf(daemon.socketPath))
        #expect(st.st_mode & 0o7777 == mode_t(mode, radix: 8)!, "mode \(String(st.st_mode & 0o7777, radix: 8))")
        let s = try daemon.session()
        #expect(try writeReadVerify(s.driver, sector: 0, sectors: 8, seed: 600) == nil, "\(daemon.context(s.frontend))")
    }

    @Test("--socket-owner and --socket-group by name and by number")
    func socketOwnerAndGroup() throws {
        let nobody = try #require(uidOf("nobody"))
        let nogroup = try #require(gidOf("nogroup"))
        for (owner, group) in [("nobody", "nogroup"), (String(nobody), String(nogroup))] {
            let daemon = try TestDaemon.memory(extra: ["--socket-owner", owner, "--socket-group", group, "--socket-mode", "0660"])
            let st = try #require(lstatOf(daemon.socketPath))
            #expect(st.st_uid == nobody && st.st_gid == nogroup, "owner \(st.st_uid):\(st.st_gid)")
            // chown must not have cleared or widened the mode.
            #expect(st.st_mode & 0o7777 == 0o660, "mode \(String(st.st_mode & 0o7777, radix: 8))")
            daemon.process.signal(SIGTERM)
            #expect(daemon.process.waitForExit() == .exited(0), "\(daemon.context())")
        }
    }

    @Test("--socket-group alone keeps the owner")
    func socketGroupOnly() throws {
        let nogroup = try #require(gidOf("nogroup"))
        let daemon = try TestDaemon.memory(extra: ["--socket-group", "nogroup"])
        let st = try #require(lstatOf(daemon.socketPath))
        #expect(st.st_uid == geteuid() && st.st_gid == nogroup, "owner \(st.st_uid):\(st.st_gid)")
        #expect(st.st_mode & 0o7777 == 0o600)
    }

    /// A symlink planted at the socket path (to a file root owns, or dangling, where bind would create
    /// a socket elsewhere if it followed): refused, and nothing at the target is created or changed,
    /// even with owner/mode options that would chown/chmod through the link if it were followed.
    @Test("a symlink at the socket path is refused and its target is untouched", arguments: [false, true])
    func symlinkRefused(_ dangling: Bool) throws {
        let dir = try TemporaryDirectory()
        let target = dir.file("target")
        if !dangling {
            try dir.makeFile("target", size: 4096)
            #expect(chmod(target, 0o644) == 0)
        }
        let link = dir.file("vhost.sock")
        try #require(symlink(target, link) == 0)
        let before = lstatOf(target)
        let p = try DaemonProcess(arguments: ["--engine", "memory", "--size", "1M", "--socket-owner", "nobody",
                                              "--socket-group", "nogroup", "--socket-mode", "0660"], directory: dir)
        let status = p.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status))")
        #expect(p.stderr.contains("--socket"), "\(p.stderr)")
        #expect(!p.stderr.contains("listening"))
        // The link itself is still there, still a link.
        #expect(lstatOf(link).map { $0.st_mode & S_IFMT == S_IFLNK } == true)
        if dangling {
            #expect(lstatOf(target) == nil, "a file was created at the symlink's target")
        } else {
            let after = try #require(lstatOf(target))
            let b = try #require(before)
            #expect(after.st_mode == b.st_mode && after.st_uid == b.st_uid && after.st_gid == b.st_gid
                    && after.st_size == b.st_size && after.st_ino == b.st_ino,
                    "target changed: mode \(String(after.st_mode, radix: 8)) owner \(after.st_uid):\(after.st_gid)")
        }
    }

    /// The backing file is root's, 0600, in a 0700 root directory: nobody could never open it, so
    /// serving I/O on it proves the store was opened before the drop.
    /// With uring, the start-up probe runs after the drop, as nobody.
    @Test("--user nobody: every thread runs as nobody without capabilities, I/O on a root-only file works, SIGTERM exits 0",
          arguments: fileEngines)
    func dropToNobody(_ engine: String) throws {
        try #require(geteuid() == 0, "needs root (CI runs the tests as root)")
        let nobody = try #require(uidOf("nobody"))
        let nogroup = try #require(gidOf("nogroup"))
        let dir = try TemporaryDirectory()
        let file = try dir.makeFile("disk.img", size: diskBytes)
        let dirStat = try #require(lstatOf(dir.path))
        let fileStat = try #require(lstatOf(file))
        try #require(dirStat.st_mode & 0o777 == 0o700 && dirStat.st_uid == 0)
        try #require(fileStat.st_mode & 0o777 == 0o600 && fileStat.st_uid == 0)

        let daemon = try TestDaemon(["--engine", engine, "--backing", file, "--queues", "2", "--user", "nobody"], directory: dir)
        #expect(daemon.process.stderr.contains("dropped privileges"), "\(daemon.context())")
        let s = try daemon.session(queues: 2)
        try daemon.run(s.frontend) { () throws in
            for (i, d) in s.drivers.enumerated() {
                #expect(try writeReadVerify(d, sector: UInt64(i) * 64, sectors: 16, seed: 610 + UInt64(i)) == nil)
            }
            #expect(try s.driver.flush().isOK)
        }
        // Checked after the session started, so the queue workers exist too.
        let tasks = threadIDs(daemon.process.pid)
        #expect(tasks.count >= 3, "expected main, signals and 2 workers: \(tasks)")
        var checked = 0
        for t in tasks {
            let path = "/proc/\(daemon.process.pid)/task/\(t)/status"
            // With uring the daemon also has the kernel's io-wq workers (iou-wrk-*), which come and
            // go with its I/O: one may have exited since the listing. A thread that is gone runs as
            // no one; every one still there is checked.
            guard let status = readStatus(path) else { continue }
            checked += 1
            #expect(try statusFields(status, "Uid", of: path) == Array(repeating: String(nobody), count: 4), "\(path)")
            #expect(try statusFields(status, "Gid", of: path) == Array(repeating: String(nogroup), count: 4), "\(path)")
            // root's supplementary groups are gone: only nobody's own.
            #expect(try statusFields(status, "Groups", of: path).allSatisfy { $0 == String(nogroup) }, "\(path)")
            #expect(try statusFields(status, "CapEff", of: path) == ["0000000000000000"], "\(path)")
            #expect(try statusFields(status, "CapPrm", of: path) == ["0000000000000000"], "\(path)")
        }
        // The main thread, the signal thread and the two workers never exit while the daemon runs.
        #expect(checked >= 4, "only \(checked) of \(tasks) could be read")
        // The data really went to the root-only file.
        let expected = patternBytes(seed: 610, byteOffset: 0, count: 16 * 512)
        #expect(try dir.readFile(file, offset: 0, count: expected.count) == expected)

        daemon.process.signal(SIGTERM)
        #expect(daemon.process.waitForExit() == .exited(0), "\(daemon.context())")
        // nobody may not write to the 0700 root directory, so the socket stays, with a warning.
        #expect(daemon.process.stderr.contains("cannot remove the socket file"), "\(daemon.context())")
        #expect(lstatOf(daemon.socketPath) != nil)
    }

    /// A socket file left behind by a dropped daemon is stale: the next (root) start replaces it.
    @Test("--user: a socket left behind is replaced by the next start")
    func leftoverSocketReplaced() throws {
        try #require(geteuid() == 0, "needs root (CI runs the tests as root)")
        let first = try TestDaemon.memory(extra: ["--user", "nobody"])
        first.process.signal(SIGTERM)
        #expect(first.process.waitForExit() == .exited(0), "\(first.context())")
        try #require(lstatOf(first.socketPath) != nil)
        let second = try TestDaemon(["--engine", "memory", "--size", "64M"], directory: first.directory)
        let s = try second.session()
        #expect(try writeReadVerify(s.driver, sector: 0, sectors: 1, seed: 620) == nil, "\(second.context(s.frontend))")
    }

    @Test("--user with a directory the user may write: the socket is removed on SIGTERM")
    func dropRemovesSocketWhenAllowed() throws {
        try #require(geteuid() == 0, "needs root (CI runs the tests as root)")
        let nobody = try #require(uidOf("nobody"))
        let dir = try TemporaryDirectory()
        // The socket lives in a subdirectory nobody owns, under root's 0700 directory that nobody
        // cannot even enter: the daemon keeps the subdirectory open from before the drop, so write
        // permission on it is all the unlink needs.
        let sub = dir.file("run")
        try #require(mkdir(sub, 0o700) == 0 && chown(sub, nobody, gid_t.max) == 0)
        let sock = sub + "/vhost.sock"
        let p = try DaemonProcess(arguments: ["--socket", sock, "--engine", "memory", "--size", "64M", "--user", "nobody"],
                                  passSocket: false, directory: dir)
        try p.waitUntilListening()
        p.signal(SIGTERM)
        #expect(p.waitForExit() == .exited(0), "\(p.stderr)")
        #expect(lstatOf(sock) == nil, "socket left behind:\n\(p.stderr)")
        #expect(!p.stderr.contains("cannot remove"), "\(p.stderr)")
    }

    @Test("bad security options: non-zero exit, the argument named, nothing listening", arguments: BadSecurityArguments.all)
    func badArguments(_ b: BadSecurityArguments) throws {
        let p = try DaemonProcess(arguments: ["--engine", "memory", "--size", "1M"] + b.arguments)
        let status = p.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status))")
        #expect(p.stderr.contains(b.names), "stderr does not name \(b.names):\n\(p.stderr)")
        #expect(!p.stderr.contains("listening"))
        #expect(lstatOf(p.socketPath) == nil, "a socket was created")
    }

    @Test("socket ownership options are refused with an inherited socket")
    func optionsWithListenFD() throws {
        let dir = try TemporaryDirectory()
        let listener = try UnixSocket.listen(path: dir.file("inherited.sock"))
        let p = try DaemonProcess(arguments: ["--listen-fd", "3", "--engine", "memory", "--size", "1M", "--socket-mode", "0660"],
                                  passSocket: false, inheritedFD: listener.fd.rawValue, directory: dir)
        listener.fd.close()
        let status = p.waitForExit()
        #expect(status != nil && status != .exited(0), "status \(String(describing: status))")
        #expect(p.stderr.contains("--socket-mode"), "\(p.stderr)")
    }
}
