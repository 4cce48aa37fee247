#if canImport(Glibc)
import Glibc
#endif
import VhostSystem

public enum DaemonProcessError: Error, CustomStringConvertible {
    case binaryNotFound(String)
    case spawnFailed(String, errno: Int32)
    case notReady(timeoutMs: Int, stderr: String)
    case system(SystemError)

    public var description: String {
        switch self {
        case .binaryNotFound(let p):
            "vhost-user-blk binary not found at \(p) (build it with `swift build`, or set VHOST_USER_BLK_BIN)"
        case .spawnFailed(let p, let e): "posix_spawn \(p): \(String(cString: strerror(e)))"
        case .notReady(let t, let s): "the daemon printed no 'listening' line within \(t) ms; stderr:\n\(s)"
        case .system(let e): "\(e)"
        }
    }
}

/// A directory under /var/tmp (a real disk filesystem, where O_DIRECT works, unlike tmpfs) that is
/// removed with everything in it when the last reference goes away.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(prefix: String = "vhost-itest") throws {
        var template = Array("/var/tmp/\(prefix)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw DaemonProcessError.system(.current("mkdtemp", context: "/var/tmp")) }
        path = String(cString: template.map { UInt8(bitPattern: $0) })
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Creates (or truncates) a sparse file of `size` bytes.
    @discardableResult
    public func makeFile(_ name: String, size: Int) throws -> String {
        let p = file(name)
        let fd = try FileDescriptor.open(p, flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o600)
        _ = try retryingEINTR("ftruncate", context: p) { ftruncate(fd.rawValue, off_t(size)) }
        return p
    }

    /// Reads `count` bytes of a file at `offset` with the page cache (what another process sees).
    public func readFile(_ path: String, offset: Int, count: Int) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY)
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try out.withUnsafeMutableBytes { b in
                try retryingEINTR("pread", context: path) { pread(fd.rawValue, b.baseAddress! + got, count - got, off_t(offset + got)) }
            }
            if n == 0 { break }
            got += n
        }
        return Array(out.prefix(got))
    }

    deinit { Self.removeTree(path) }

    /// Removes `path` and, if it is a directory, everything under it (never following symlinks).
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            if let dir = opendir(path) {
                var names: [String] = []
                while let entry = readdir(dir) {
                    let name = withUnsafePointer(to: &entry.pointee.d_name) {
                        $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                    }
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(dir)
                for n in names { removeTree(path + "/" + n) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    public var description: String {
        switch self {
        case .exited(let c): "exit code \(c)"
        case .signaled(let s): "killed by signal \(s)"
        }
    }
}

/// What the reader thread shares with the test: the daemon's stderr so far, whether it reached EOF,
/// and the exit status, behind a mutex with a condition variable on the monotonic clock.
final class ChildState: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var output: [UInt8] = []
    private var eof = false
    private var status: ExitStatus?

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        // Deadlines are CLOCK_MONOTONIC, so the condition variable must time out on that clock.
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    func append(_ bytes: ArraySlice<UInt8>) { locked { output += bytes; pthread_cond_broadcast(cond) } }
    func setEOF() { locked { eof = true; pthread_cond_broadcast(cond) } }

    var text: String { locked { String(decoding: output, as: UTF8.self) } }
    var exitStatus: ExitStatus? { locked { status } }

    /// Runs `reap` under the lock and records the status it returns, so that `ifRunning` callers
    /// never act on a pid that was reaped (and might already belong to another process).
    func reap(_ reap: () -> ExitStatus) {
        locked {
            status = reap()
            pthread_cond_broadcast(cond)
        }
    }

    /// Runs `body` under the lock if the child has not been reaped.
    func ifRunning(_ body: () -> Void) { locked { if status == nil { body() } } }

    /// Waits until `done` holds (evaluated under the lock) or the deadline passes.
    func wait(until deadline: Deadline, _ done: (_ output: [UInt8], _ eof: Bool, _ status: ExitStatus?) -> Bool) -> Bool {
        locked {
            var ts = deadline.timespecValue
            while !done(output, eof, status) {
                if pthread_cond_timedwait(cond, mutex, &ts) == ETIMEDOUT { return done(output, eof, status) }
            }
            return true
        }
    }
}

/// The daemon binary running as a child process in its own temporary directory, with a unique socket.
/// Its stderr is collected by a reader thread (and copied to `daemon-PID.stderr` in the directory); its
/// exit is observed without polling. Dropping the object kills the daemon (SIGKILL) if it still runs,
/// reaps it and removes the directory.
public final class DaemonProcess: @unchecked Sendable {
    public let directory: TemporaryDirectory
    public let socketPath: String
    public let arguments: [String]
    public let pid: pid_t
    private let state = ChildState()
    private var reader: PinnedThread?

    /// The binary under test: $VHOST_USER_BLK_BIN, else `vhost-user-blk` next to the running test
    /// executable (SwiftPM puts both in the same build directory).
    public static func binaryPath() throws -> String {
        if let env = getenv("VHOST_USER_BLK_BIN") {
            let p = String(cString: env)
            guard access(p, X_OK) == 0 else { throw DaemonProcessError.binaryNotFound(p) }
            return p
        }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { throw DaemonProcessError.binaryNotFound("(readlink /proc/self/exe failed)") }
        let exe = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let p = dir + "/vhost-user-blk"
        guard access(p, X_OK) == 0 else { throw DaemonProcessError.binaryNotFound(p) }
        return p
    }

    /// Starts the daemon. `arguments` are passed as given, preceded by `--socket <dir>/vhost.sock`
    /// unless `passSocket` is false. `inheritedFD`, if given, appears in the child as fd 3 (for
    /// --listen-fd 3). Does not wait for readiness: see `waitUntilListening`.
    public init(arguments: [String], passSocket: Bool = true, inheritedFD: Int32? = nil,
                directory: TemporaryDirectory? = nil, binary: String? = nil) throws {
        let dir = try directory ?? TemporaryDirectory()
        self.directory = dir
        socketPath = dir.file("vhost.sock")
        let argv = (passSocket ? ["--socket", socketPath] : []) + arguments
        self.arguments = argv
        let path = try binary ?? Self.binaryPath()

        // stderr goes through a socket pair rather than a pipe: it is created close-on-exec atomically
        // (pipe2 is not visible to Swift here), so a daemon spawned concurrently by another test
        // cannot inherit our end and keep it open.
        let (readSocket, writeSocket) = try Self.wrap { try UnixSocket.pair() }
        let readEnd = readSocket.fd, writeEnd = writeSocket.fd
        // Appended to, not truncated: several daemons may share a directory (e.g. one that must fail
        // to start on a socket another one serves).
        let stdoutFile = try FileDescriptor.open(dir.file("daemon.stdout"), flags: O_WRONLY | O_CREAT | O_APPEND)
        // The inherited socket is first duplicated above the range posix_spawn's dup2 targets: dup2
        // onto the same number would leave its close-on-exec flag set.
        var inheritedCopy: FileDescriptor?
        if let inheritedFD {
            // 100: any number above 3 that is not already one of the fds dup2'd into the child.
            let copy = fcntl(inheritedFD, F_DUPFD_CLOEXEC, 100)
            guard copy >= 0 else { throw DaemonProcessError.system(.current("fcntl(F_DUPFD_CLOEXEC)")) }
            inheritedCopy = FileDescriptor(adopting: copy)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutFile.rawValue, 1)
        posix_spawn_file_actions_adddup2(&actions, writeEnd.rawValue, 2)
        if let inheritedCopy { posix_spawn_file_actions_adddup2(&actions, inheritedCopy.rawValue, 3) }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // The child starts with no blocked signals and default dispositions, whatever the test runner
        // blocked or ignored: the daemon's own signal handling is under test.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let cArgs: [UnsafeMutablePointer<CChar>?] = ([path] + argv).map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var child: pid_t = 0
        let r = posix_spawn(&child, path, &actions, &attr, cArgs, environ)
        guard r == 0 else { throw DaemonProcessError.spawnFailed(path, errno: r) }
        pid = child
        writeEnd.close()
        stdoutFile.close()
        inheritedCopy?.close()

        let state = self.state
        let logPath = dir.file("daemon-\(child).stderr")
        reader = try PinnedThread(name: "itest-stderr", cpu: nil) {
            Self.collect(readEnd: readEnd, logPath: logPath, pid: child, state: state)
        }
    }

    private static func wrap<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as SystemError { throw DaemonProcessError.system(e) }
    }

    /// The reader thread: copies stderr until EOF, then reaps the child. The child is reaped under
    /// the state lock after `waitid(WNOWAIT)`, so `signal` (which checks under the same lock) never
    /// sends a signal to a pid that was already reaped and possibly reused.
    private static func collect(readEnd: FileDescriptor, logPath: String, pid: pid_t, state: ChildState) {
        let log = try? FileDescriptor.open(logPath, flags: O_WRONLY | O_CREAT | O_TRUNC)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(readEnd.rawValue, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            state.append(buffer[0..<n])
            if let log { _ = buffer.withUnsafeBytes { Glibc.write(log.rawValue, $0.baseAddress, n) } }
        }
        state.setEOF()
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        state.reap {
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; their Linux encoding: low 7 bits = the
            // terminating signal (0 when it exited), bits 8–15 = the exit code.
            let sig = raw & 0x7f
            return sig == 0 ? .exited((raw >> 8) & 0xff) : .signaled(sig)
        }
    }

    /// Everything the daemon wrote to stderr so far.
    public var stderr: String { state.text }
    public var exitStatus: ExitStatus? { state.exitStatus }
    public var isRunning: Bool { exitStatus == nil }

    /// Waits until stderr contains `text`; false on timeout or if stderr closed (the daemon exited)
    /// without it.
    public func waitForOutput(containing text: String, timeoutMs: Int = 10_000) -> Bool {
        let needle = Array(text.utf8)
        var matched = false
        _ = state.wait(until: Deadline(milliseconds: timeoutMs)) { output, eof, _ in
            matched = Self.contains(output, needle)
            return matched || eof
        }
        return matched
    }

    /// Waits for the "listening on PATH" line the daemon prints once it accepts connections.
    public func waitUntilListening(timeoutMs: Int = 10_000) throws {
        guard waitForOutput(containing: "listening", timeoutMs: timeoutMs) else {
            throw DaemonProcessError.notReady(timeoutMs: timeoutMs, stderr: stderr)
        }
    }

    /// How many times `text` occurs in stderr so far.
    public func occurrences(of text: String) -> Int {
        let needle = Array(text.utf8), out = Array(stderr.utf8)
        guard !needle.isEmpty else { return 0 }
        var count = 0, i = 0
        while i + needle.count <= out.count {
            if out[i..<i + needle.count].elementsEqual(needle) { count += 1; i += needle.count } else { i += 1 }
        }
        return count
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if haystack[i..<i + needle.count].elementsEqual(needle) { return true }
        }
        return false
    }

    /// Sends `sig` unless the daemon already exited (and was reaped).
    public func signal(_ sig: Int32) {
        state.ifRunning { kill(pid, sig) }
    }

    /// Stops every thread of the daemon (SIGSTOP) and returns once all of them are stopped, so that
    /// what it shares with the test (rings, the in-flight log) holds still while the test reads it.
    /// A test that must kill the daemon at a chosen moment (requests taken, not yet completed) uses
    /// this instead of racing a running process: on a loaded 2-core machine the test thread can be
    /// descheduled for longer than the daemon needs to finish everything. False if the daemon
    /// exited or some thread did not stop within `timeoutMs`.
    public func freeze(timeoutMs: Int = 10_000) -> Bool {
        signal(SIGSTOP)
        let deadline = Deadline(milliseconds: timeoutMs)
        while isRunning && !deadline.expired {
            if allThreadsStopped() { return true }
            usleep(50)
        }
        return false
    }

    /// Lets a frozen daemon run again.
    public func thaw() { signal(SIGCONT) }

    /// Whether /proc shows every thread of the daemon in state T (stopped). SIGSTOP stops a thread
    /// group thread by thread, each as it next returns to user space, so the process's own state
    /// alone does not say that its workers have stopped.
    private func allThreadsStopped() -> Bool {
        guard let dir = opendir("/proc/\(pid)/task") else { return false }
        defer { closedir(dir) }
        var seen = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let tid = Int32(name) else { continue }
            guard let stat = readProcFile("/proc/\(pid)/task/\(tid)/stat") else { return false }
            // The state is the first field after the command name, which is in parentheses and may
            // itself contain spaces and parentheses; hence the last ')'.
            guard let close = stat.lastIndex(of: ")") else { return false }
            let rest = stat[stat.index(after: close)...].drop { $0 == " " }
            guard rest.first == "T" else { return false }
            seen += 1
        }
        return seen > 0
    }

    /// Waits for the daemon to exit; nil if it still runs after `timeoutMs`.
    public func waitForExit(timeoutMs: Int = 10_000) -> ExitStatus? {
        var s: ExitStatus?
        _ = state.wait(until: Deadline(milliseconds: timeoutMs)) { _, _, status in
            s = status
            return status != nil
        }
        return s
    }

    deinit {
        signal(SIGKILL)
        // SIGKILL cannot be caught, so the reader sees EOF and reaps the child promptly.
        reader?.join()
    }
}

/// A /proc file's whole text (its size is unknown until read); nil if it cannot be read, e.g. the
/// thread or process it describes is gone.
public func readProcFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { return nil }
        if n == 0 { break }
        bytes += buffer[0..<n]
    }
    return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
}
