// Starts and stops throwaway `redis-server` processes on free loopback ports, for tests, benchmarks and
// examples. Nothing beyond the C library and the package's own `LockedValue` (a pthread mutex: a contended
// `Synchronization.Mutex` draws false ThreadSanitizer reports here, and servers start in parallel): the
// child is started with posix_spawn and reaped with waitpid by this file alone, so nothing else in the
// process can steal its exit status. On Linux every child is started through `setpriv --pdeathsig KILL`
// (util-linux) from one long-lived spawner thread, so that it dies with this process however this process
// ends (see `spawn`); `stopAllAndExitOnSignals` lets a program stop its servers on SIGINT/SIGTERM/SIGHUP.
// (`Synchronization.Atomic`, used only for the signal handler's descriptor, is lock-free and draws no
// such report.)

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ConnPool
import Synchronization

/// Why a ``RedisServerProcess`` could not be started or restarted.
///
/// The text of these errors never repeats the extra arguments given to the server (they may hold a
/// `--requirepass` secret); it may quote the tail of the server's own log.
public enum RedisServerLauncherError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No `redis-server` executable was found in `PATH` (or at `REDIS_SERVER_PATH` when that is set).
    case redisServerNotInstalled(searched: [String])
    /// A system call needed to start or watch the server failed.
    case systemError(operation: String, errno: Int32)
    /// The server process exited while starting; `logTail` is the end of its log.
    case exitedDuringStartup(status: String, logTail: String)
    /// The server did not answer a PING within the start deadline; it has been killed.
    case startTimedOut(after: Duration, logTail: String)
    /// Every attempt found its port taken by someone else (a race between picking a free port and the
    /// server binding it).
    case portCollision(attempts: Int)
    /// ``RedisServerProcess/restart(timeout:)`` could not bind the same port again (someone else took it).
    case portTakenOnRestart(port: Int, logTail: String)

    /// A readable explanation (with the install hint when redis-server is missing); never quotes the
    /// extra arguments.
    public var description: String {
        switch self {
        case .redisServerNotInstalled(let searched):
            return "redis-server is not installed (looked in \(searched.joined(separator: ":"))): "
                + "install it with `apt-get install redis-server`, or set REDIS_SERVER_PATH"
        case .systemError(let operation, let errno):
            return "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case .exitedDuringStartup(let status, let logTail):
            return "redis-server exited while starting (\(status)); log tail:\n\(logTail)"
        case .startTimedOut(let after, let logTail):
            return "redis-server did not answer PING within \(after); log tail:\n\(logTail)"
        case .portCollision(let attempts):
            return "could not start redis-server: the chosen free port was taken each time (\(attempts) attempts)"
        case .portTakenOnRestart(let port, let logTail):
            return "could not restart redis-server on port \(port): the port is taken; log tail:\n\(logTail)"
        }
    }
}

/// A throwaway `redis-server` listening on `127.0.0.1` at a free port (and optionally on a unix socket),
/// with persistence off (`--save '' --appendonly no`) and its working directory and log in a fresh
/// temporary directory that ``stop(timeout:)`` removes.
///
/// The process is stopped by ``stop(timeout:)``, by `deinit` as a last resort, by an `atexit` hook for
/// servers still running when the process exits normally, and by the handlers of
/// ``stopAllAndExitOnSignals(_:)`` when a program installs them (SIGINT, SIGTERM, SIGHUP). A process
/// that dies in any other way (SIGKILL, a crash, the default action of a signal) cannot run any of these;
/// on Linux its servers are then killed by the kernel all the same: each server is started with a parent-
/// death signal (`PR_SET_PDEATHSIG`, SIGKILL) through `setpriv` from one long-lived thread, so it dies
/// with the process that started it (its temporary directory is then left behind). See
/// ``parentDeathSignalEnabled``.
///
/// All members are safe to call from any thread: the mutable state (the child's pid) is behind a mutex.
///
/// Starting, stopping, restarting and `SIGKILL` wait for the process (polling its log, a PING, `waitpid`),
/// for tens of milliseconds to seconds. Each has an `async` twin of the same name, which the compiler picks
/// in async code: it runs the wait on a thread of its own and suspends the caller, so that no cooperative
/// thread blocks (with two cores there are two, and one blocked stalls every task of the process).
/// `defer` bodies cannot `await` and pick the blocking form: in async code, use
/// ``withServer(extraArguments:unixSocket:tls:startTimeout:executablePath:isolation:_:)`` or call
/// `await server.stop()` on every path instead.
public final class RedisServerProcess: Sendable, CustomStringConvertible {
    /// The loopback address the server listens on: always `127.0.0.1`.
    public let host: String = "127.0.0.1"
    /// The TCP port the server listens on (the same after ``restart(timeout:)``).
    public let port: Int
    /// The unix socket path, when started with `unixSocket: true`.
    public let unixSocketPath: String?
    /// The TLS port, when started with `tls:` (the server then also listens with TLS there, next to the
    /// plain ``port``; the same after ``restart(timeout:)``).
    public let tlsPort: Int?
    /// The TLS options the server was started with, if any.
    public let tls: TLSOptions?
    /// The temporary directory holding the server's log (and unix socket); removed by ``stop(timeout:)``.
    public let directory: String
    /// Path of the server's log file, inside ``directory``.
    public let logPath: String

    private let executable: String
    private let extraArguments: [String]
    private let state: LockedValue<State>

    private struct State {
        var pid: pid_t
        var running: Bool
        var removedDirectory = false
    }

    /// `redis://127.0.0.1:<port>`: the server's TCP URL, without credentials.
    public var url: String { "redis://\(host):\(port)" }

    /// `rediss://127.0.0.1:<tlsPort>` when the server listens with TLS, else `nil`.
    public var tlsURL: String? { tlsPort.map { "rediss://\(host):\($0)" } }

    /// `unix://<path>` when the server listens on a unix socket, else `nil`.
    public var unixSocketURL: String? { unixSocketPath.map { "unix://\($0)" } }

    /// The pid of the current (or, once stopped, the last) server process.
    public var pid: Int32 { state.withLock { $0.pid } }

    /// `true` until the process has been seen to exit (and been reaped). A process stopped with SIGSTOP is
    /// still running.
    public var isRunning: Bool {
        state.withLock { state in
            if state.running, Self.reapNoHang(state.pid) != nil { state.running = false }
            return state.running
        }
    }

    /// `RedisServerProcess(pid: …, port: …)`.
    public var description: String { "RedisServerProcess(pid: \(pid), port: \(port))" }

    private init(
        port: Int, unixSocketPath: String?, tlsPort: Int?, tls: TLSOptions?, directory: String, executable: String,
        extraArguments: [String], pid: pid_t
    ) {
        self.port = port
        self.unixSocketPath = unixSocketPath
        self.tlsPort = tlsPort
        self.tls = tls
        self.directory = directory
        self.logPath = directory + "/redis.log"
        self.executable = executable
        self.extraArguments = extraArguments
        self.state = LockedValue(State(pid: pid, running: true))
    }

    deinit {
        stop(timeout: .seconds(2))
    }

    // MARK: Starting

    /// Starts a server on a free loopback port and returns once it answers PING.
    ///
    /// - Parameters:
    ///   - extraArguments: more `redis-server` arguments, for example `["--requirepass", "secret"]` or
    ///     `["--user", "alice", "on", ">pw", "~*", "&*", "+@all"]`. They are never quoted in errors.
    ///   - unixSocket: also listen on a unix socket in the temporary directory (``unixSocketPath``).
    ///   - tls: also listen with TLS on a second free port (``tlsPort``, ``tlsURL``) with these
    ///     certificate files (for example ``TLSOptions/init(certificates:clientAuthentication:)`` with
    ///     ``TestCertificates``). Readiness is still checked on the plain ``port``. The redis-server must
    ///     be built with TLS (Debian's is); a bad file makes it exit: see the log tail in the error.
    ///   - startTimeout: how long to wait for the server to answer.
    ///   - executablePath: the `redis-server` to run; `nil` looks at `REDIS_SERVER_PATH`, then `PATH`.
    /// - Throws: ``RedisServerLauncherError/redisServerNotInstalled(searched:)`` when `redis-server` is
    ///   missing; ``RedisServerLauncherError/exitedDuringStartup(status:logTail:)``,
    ///   ``RedisServerLauncherError/startTimedOut(after:logTail:)``,
    ///   ``RedisServerLauncherError/portCollision(attempts:)`` or
    ///   ``RedisServerLauncherError/systemError(operation:errno:)`` when it could not be started.
    public static func start(
        extraArguments: [String] = [],
        unixSocket: Bool = false,
        tls: TLSOptions? = nil,
        startTimeout: Duration = .seconds(10),
        executablePath: String? = nil
    ) throws -> RedisServerProcess {
        let executable: String
        if let executablePath {
            guard access(executablePath, X_OK) == 0 else {
                throw RedisServerLauncherError.redisServerNotInstalled(searched: [executablePath])
            }
            executable = executablePath
        } else {
            executable = try findExecutable()
        }
        let attempts = 8
        for _ in 0..<attempts {
            let port = try pickFreePort()
            var tlsPort: Int?
            if tls != nil {
                // Two distinct ports (the kernel may hand out the same free port twice in a row).
                var candidate = try pickFreePort()
                while candidate == port { candidate = try pickFreePort() }
                tlsPort = candidate
            }
            let directory = try makeTemporaryDirectory()
            let socketPath = unixSocket ? directory + "/redis.sock" : nil
            let pid: pid_t
            do {
                pid = try spawn(
                    executable: executable, port: port, directory: directory, unixSocketPath: socketPath,
                    tlsPort: tlsPort, tls: tls, extraArguments: extraArguments)
            } catch {
                removeDirectory(directory)
                throw error
            }
            let server = RedisServerProcess(
                port: port, unixSocketPath: socketPath, tlsPort: tlsPort, tls: tls, directory: directory,
                executable: executable, extraArguments: extraArguments, pid: pid)
            switch server.waitUntilReady(timeout: startTimeout) {
            case .ready:
                LiveServers.shared.insert(server)
                return server
            case .portInUse:
                server.stop(timeout: .seconds(1))
                continue
            case .failed(let error):
                server.stop(timeout: .seconds(1))
                throw error
            }
        }
        throw RedisServerLauncherError.portCollision(attempts: attempts)
    }

    // MARK: Stopping, signals, restart

    /// Stops the server: SIGTERM (plus SIGCONT in case it was stopped with SIGSTOP), then SIGKILL if it
    /// has not exited within `timeout`; reaps it and removes ``directory``. Idempotent; never throws.
    public func stop(timeout: Duration = .seconds(5)) {
        terminateProcess(timeout: timeout)
        state.withLock { state in
            if !state.removedDirectory {
                state.removedDirectory = true
                Self.removeDirectory(directory)
            }
        }
        LiveServers.shared.remove(self)
    }

    /// Sends `signal` to the server process, for fault tests: `SIGKILL` (crash), `SIGSTOP` (hang),
    /// `SIGCONT` (resume). After `SIGKILL`, the process is reaped before this returns.
    ///
    /// - Throws: ``RedisServerLauncherError/systemError(operation:errno:)`` when the process is not
    ///   running (already exited) or the signal could not be sent.
    public func kill(signal: Int32) throws {
        try state.withLock { state in
            guard state.running else {
                throw RedisServerLauncherError.systemError(operation: "kill(\(signal))", errno: ESRCH)
            }
            #if canImport(Glibc) || canImport(Musl)
            let result = Glibc.kill(state.pid, signal)
            #else
            let result = Darwin.kill(state.pid, signal)
            #endif
            if result != 0 {
                throw RedisServerLauncherError.systemError(operation: "kill(\(signal))", errno: errno)
            }
            if signal == SIGKILL {
                _ = Self.reapBlocking(state.pid)
                state.running = false
            }
        }
    }

    /// Waits until the server process has exited (for example after SHUTDOWN or a signal) and reaps it.
    ///
    /// - Returns: `true` when it exited within `timeout`.
    public func waitForExit(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            if !isRunning { return true }
            if ContinuousClock.now >= deadline { return false }
            Self.pause()
        }
    }

    /// Stops the server if it runs (or after ``stop(timeout:)``), then starts it again on the same port,
    /// unix socket and TLS port with the same arguments (data is not kept: persistence is off). Returns once it
    /// answers PING.
    ///
    /// - Throws: ``RedisServerLauncherError/portTakenOnRestart(port:logTail:)`` when another process took
    ///   the port meanwhile; the other start errors otherwise.
    public func restart(timeout: Duration = .seconds(10)) throws {
        terminateProcess(timeout: .seconds(5))
        // After stop() the temporary directory is gone: make it again (same path, for the unix socket).
        try state.withLock { state in
            if state.removedDirectory {
                if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                    throw RedisServerLauncherError.systemError(operation: "mkdir \(directory)", errno: errno)
                }
                state.removedDirectory = false
            }
        }
        let pid = try Self.spawn(
            executable: executable, port: port, directory: directory, unixSocketPath: unixSocketPath,
            tlsPort: tlsPort, tls: tls, extraArguments: extraArguments)
        state.withLock { state in
            state.pid = pid
            state.running = true
        }
        LiveServers.shared.insert(self)
        switch waitUntilReady(timeout: timeout) {
        case .ready:
            return
        case .portInUse:
            terminateProcess(timeout: .seconds(1))
            throw RedisServerLauncherError.portTakenOnRestart(port: port, logTail: logTail())
        case .failed(let error):
            terminateProcess(timeout: .seconds(1))
            throw error
        }
    }

    /// The last `maxBytes` bytes of the server's log (empty when it cannot be read).
    public func logTail(maxBytes: Int = 2048) -> String {
        Self.readFile(logPath, tail: maxBytes)
    }

    private func terminateProcess(timeout: Duration) {
        state.withLock { state in
            guard state.running else { return }
            if Self.reapNoHang(state.pid) != nil {
                state.running = false
                return
            }
            #if canImport(Glibc) || canImport(Musl)
            _ = Glibc.kill(state.pid, SIGTERM)
            _ = Glibc.kill(state.pid, SIGCONT)
            #else
            _ = Darwin.kill(state.pid, SIGTERM)
            _ = Darwin.kill(state.pid, SIGCONT)
            #endif
            let deadline = ContinuousClock.now.advanced(by: timeout)
            while Self.reapNoHang(state.pid) == nil {
                if ContinuousClock.now >= deadline {
                    #if canImport(Glibc) || canImport(Musl)
                    _ = Glibc.kill(state.pid, SIGKILL)
                    #else
                    _ = Darwin.kill(state.pid, SIGKILL)
                    #endif
                    _ = Self.reapBlocking(state.pid)
                    break
                }
                Self.pause()
            }
            state.running = false
        }
    }

    // MARK: Readiness

    private enum Readiness {
        case ready
        case portInUse
        case failed(RedisServerLauncherError)
    }

    /// Ready means: our own log says it accepts connections (so the answering server is ours, not another
    /// one that won a port race) and a PING on the port gets any RESP reply (`+PONG`, or `-NOAUTH` when a
    /// password is required).
    private func waitUntilReady(timeout: Duration) -> Readiness {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let exitStatus: String? = state.withLock { state in
                guard let status = Self.reapNoHang(state.pid) else { return nil }
                state.running = false
                return status
            }
            if let exitStatus {
                let log = logTail(maxBytes: 4096)
                if log.contains("Address already in use") { return .portInUse }
                return .failed(.exitedDuringStartup(status: exitStatus, logTail: log))
            }
            if Self.readFile(logPath, tail: 1 << 16).contains("Ready to accept connections"),
                Self.pingAnswers(port: port)
            {
                return .ready
            }
            if ContinuousClock.now >= deadline {
                return .failed(.startTimedOut(after: timeout, logTail: logTail()))
            }
            Self.pause()
        }
    }

    private static func pingAnswers(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = loopbackAddress(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return false }
        let ping = Array("PING\r\n".utf8)
        guard write(fd, ping, ping.count) == ping.count else { return false }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, 1000) == 1 else { return false }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return false }
        let reply = String(decoding: buffer[0..<n], as: UTF8.self)
        return (reply.hasPrefix("+") || reply.hasPrefix("-")) && !reply.hasPrefix("-LOADING")
    }

    // MARK: Process plumbing

    private static func findExecutable() throws -> String {
        if let override = getenv("REDIS_SERVER_PATH").map({ String(cString: $0) }), !override.isEmpty {
            if access(override, X_OK) == 0 { return override }
            throw RedisServerLauncherError.redisServerNotInstalled(searched: [override])
        }
        var directories = getenv("PATH").map { String(cString: $0).split(separator: ":").map(String.init) } ?? []
        for extra in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"] where !directories.contains(extra) {
            directories.append(extra)
        }
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/redis-server"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw RedisServerLauncherError.redisServerNotInstalled(searched: directories)
    }

    /// Binds port 0 on 127.0.0.1, reads the port the kernel chose, and closes the socket.
    private static func pickFreePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RedisServerLauncherError.systemError(operation: "socket", errno: errno) }
        defer { close(fd) }
        var address = loopbackAddress(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw RedisServerLauncherError.systemError(operation: "bind", errno: errno) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            throw RedisServerLauncherError.systemError(operation: "getsockname", errno: errno)
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private static func loopbackAddress(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        return address
    }

    private static func makeTemporaryDirectory() throws -> String {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array((base + "/connpool-redis-XXXXXX").utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard result != nil else {
            throw RedisServerLauncherError.systemError(operation: "mkdtemp", errno: errno)
        }
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    private static func removeDirectory(_ path: String) {
        // Only the files this launcher (or redis-server with persistence off) can create there.
        for name in ["redis.log", "redis.sock", "dump.rdb", "appendonly.aof", "nodes.conf", "temp.rdb"] {
            unlink(path + "/" + name)
        }
        if rmdir(path) != 0, errno == ENOTEMPTY {
            // Unexpected files (for example an appendonlydir from a test that enabled AOF): leave the
            // directory rather than delete recursively.
        }
    }

    /// Starts the server process. On Linux with `setpriv` (util-linux), the server dies with this process:
    ///
    /// - `PR_SET_PDEATHSIG` cannot be set by `posix_spawn`, so the child is `setpriv --pdeathsig KILL`,
    ///   which sets it and then executes the rest of the command line (the death signal survives `execve`
    ///   of a program that is not set-user-ID and has no file capabilities: redis-server, /bin/sh).
    /// - The kernel sends the death signal when the *thread* that spawned the child exits, not the process
    ///   (the child is then handed to another thread of the process, and signalled). Servers are started
    ///   from arbitrary threads here, some short-lived (``OwnThread``, a test's thread), so every spawn
    ///   runs on ``SpawnerThread``, one thread that lives as long as the process: the signal then comes
    ///   exactly when the process dies, by whatever cause (SIGKILL included). `waitpid` still works from
    ///   any thread: on Linux the threads of a process share their children.
    /// - The process could die after `posix_spawn` and before `setpriv` sets the signal (the child would
    ///   then be handed to init without a signal): so `setpriv` runs `/bin/sh`, which checks that its
    ///   parent (`$PPID`, read after the signal is set) is still this process, and only then `exec`s
    ///   redis-server; else it exits. The pid is the same through the three `execve`s, so ``pid``,
    ///   `kill` and `waitpid` address the server itself.
    ///
    /// Without `setpriv` (not Linux, or util-linux missing) the server is started directly, and outlives
    /// a process that is killed (``parentDeathSignalEnabled`` is then `false`).
    private static func spawn(
        executable: String, port: Int, directory: String, unixSocketPath: String?, tlsPort: Int?, tls: TLSOptions?,
        extraArguments: [String]
    ) throws -> pid_t {
        let result = SpawnerThread.shared.run {
            Result {
                try spawnNow(
                    executable: executable, port: port, directory: directory, unixSocketPath: unixSocketPath,
                    tlsPort: tlsPort, tls: tls, extraArguments: extraArguments)
            }.mapError { $0 as? RedisServerLauncherError ?? .systemError(operation: "posix_spawn", errno: EIO) }
        }
        return try result.get()
    }

    /// Whether servers are started with a parent-death signal, so that they die with this process even
    /// when it is killed with SIGKILL: `true` on Linux when `setpriv` (util-linux) and `/bin/sh` exist.
    public static var parentDeathSignalEnabled: Bool { deathSignalWrapper != nil }

    /// `setpriv --pdeathsig KILL -- /bin/sh -c <guard> redis-server-guard <our pid>`, to which the server's
    /// own command line is appended; `nil` where that cannot be used (see ``spawn(executable:port:directory:unixSocketPath:tlsPort:tls:extraArguments:)``).
    private static let deathSignalWrapper: (path: String, arguments: [String])? = {
        #if os(Linux)
        let candidates: [String] = ["/usr/bin/setpriv", "/bin/setpriv"]
        guard let setpriv = candidates.first(where: { access($0, X_OK) == 0 }),
            access("/bin/sh", X_OK) == 0
        else { return nil }
        // $1 is the pid of this process; the server's argv follows. `$PPID` is the parent's pid as the
        // shell read it at startup, after setpriv set the death signal: if it is not us, we died before
        // the signal was set and no one would ever kill the server.
        let script = #"[ "$PPID" = "$1" ] || exit 97; shift; exec "$@""#
        return (
            setpriv,
            [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", script, "redis-server-guard", String(getpid())]
        )
        #else
        return nil
        #endif
    }()

    private static func spawnNow(
        executable: String, port: Int, directory: String, unixSocketPath: String?, tlsPort: Int?, tls: TLSOptions?,
        extraArguments: [String]
    ) throws -> pid_t {
        var arguments = [
            executable,
            "--port", String(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", directory,
            "--logfile", directory + "/redis.log",
            "--loglevel", "notice",
        ]
        if let unixSocketPath {
            arguments += ["--unixsocket", unixSocketPath, "--unixsocketperm", "700"]
        }
        if let tlsPort, let tls {
            arguments += [
                "--tls-port", String(tlsPort),
                "--tls-cert-file", tls.certificatePath,
                "--tls-key-file", tls.keyPath,
                "--tls-ca-cert-file", tls.caCertificatePath,
                "--tls-auth-clients", tls.clientAuthentication.rawValue,
            ]
            if let passphrase = tls.keyPassphrase { arguments += ["--tls-key-file-pass", passphrase] }
        }
        arguments += extraArguments

        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 2, "/dev/null", O_WRONLY, 0)
        // Nothing else of this process goes to the server: without this, every descriptor the process
        // has open without O_CLOEXEC at the moment of the spawn (a test's socket, the pipe of a
        // `Foundation.Process` started at the same time on another thread) stays open in the server
        // until it exits, so a peer never sees that socket close and a reader of that pipe never sees
        // its end.
        Self.closeInheritedDescriptors(&fileActions)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Default signal dispositions and an empty mask in the child, whatever the test runner set.
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var program = executable
        if let wrapper = deathSignalWrapper {
            program = wrapper.path
            arguments = wrapper.arguments + arguments
        }
        let cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, program, &fileActions, &attributes, cArguments, environ)
        guard result == 0 else {
            throw RedisServerLauncherError.systemError(operation: "posix_spawn \(program)", errno: result)
        }
        return pid
    }

    private typealias CloseFromFunction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

    /// glibc 2.34+'s `posix_spawn_file_actions_addclosefrom_np`, looked up once (Swift's `Glibc` module
    /// does not declare it: it is a GNU extension).
    private static let addCloseFrom: CloseFromFunction? = {
        guard let process = dlopen(nil, RTLD_NOW),
            let symbol = dlsym(process, "posix_spawn_file_actions_addclosefrom_np")
        else { return nil }
        return unsafeBitCast(symbol, to: CloseFromFunction.self)
    }()

    /// Adds the file actions that close every descriptor from 3 up in the child: one `closefrom`
    /// action where the C library has it, else a close action per descriptor open now (listed from
    /// `/proc/self/fd`, or every number below the descriptor limit where that is not mounted).
    static func closeInheritedDescriptors(_ fileActions: inout posix_spawn_file_actions_t) {
        if let addCloseFrom, addCloseFrom(&fileActions, 3) == 0 { return }
        var descriptors: [Int32] = []
        if let directory = opendir("/proc/self/fd") {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if let fd = Int32(name), fd >= 3, fd != dirfd(directory) { descriptors.append(fd) }
            }
            closedir(directory)
        } else {
            descriptors = Array(3..<Int32(clamping: min(sysconf(Int32(_SC_OPEN_MAX)), 65_536)))
        }
        // A close action for a descriptor that is closed by the time of the spawn is ignored.
        for fd in descriptors { posix_spawn_file_actions_addclose(&fileActions, fd) }
    }

    /// Reaps `pid` if it has exited; returns a description of its status, or `nil` while it runs.
    private static func reapNoHang(_ pid: pid_t) -> String? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid { return describe(status: status) }
        if result < 0 && errno == ECHILD { return "already reaped" }
        return nil
    }

    private static func reapBlocking(_ pid: pid_t) -> String {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, 0)
            if result == pid { return describe(status: status) }
            if result < 0 && errno == EINTR { continue }
            return "already reaped"
        }
    }

    private static func describe(status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exit code \((status >> 8) & 0xff)" }
        return "killed by signal \(signal)"
    }

    private static func readFile(_ path: String, tail: Int) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return "" }
        let start = max(0, Int(size) - tail)
        lseek(fd, off_t(start), SEEK_SET)
        var buffer = [UInt8](repeating: 0, count: Int(size) - start)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n <= 0 { break }
            filled += n
        }
        return String(decoding: buffer[0..<filled], as: UTF8.self)
    }

    /// The interval of the polling loops that wait for start and exit (a poll interval, not a wait for an
    /// event: every loop re-checks its condition against a deadline).
    private static func pause() {
        usleep(5_000)
    }
}

// MARK: - TLS

extension RedisServerProcess {
    /// The TLS listener of a server started with `tls:`: the certificate files (PEM) and whether clients
    /// must present a certificate. The paths must stay readable while the server runs (and for a
    /// ``RedisServerProcess/restart(timeout:)``); the key passphrase, if any, goes on the server's command
    /// line (test material only).
    public struct TLSOptions: Sendable, Hashable {
        /// `--tls-auth-clients`: whether the server asks clients for a certificate signed by the CA.
        public enum ClientAuthentication: String, Sendable, Hashable, CaseIterable {
            /// `yes`: a client without a valid certificate is refused (mutual TLS).
            case required = "yes"
            /// `no`: clients are not asked for a certificate.
            case off = "no"
            /// `optional`: a certificate is asked for and verified if given, but not required.
            case optional = "optional"
        }

        /// The server's certificate (`--tls-cert-file`).
        public var certificatePath: String
        /// The server's private key (`--tls-key-file`).
        public var keyPath: String
        /// The passphrase of an encrypted ``keyPath`` (`--tls-key-file-pass`), `nil` for a plain key.
        public var keyPassphrase: String?
        /// The CA certificates that verify client certificates (`--tls-ca-cert-file`; redis-server
        /// requires one whenever TLS is on).
        public var caCertificatePath: String
        /// `--tls-auth-clients`.
        public var clientAuthentication: ClientAuthentication

        /// Options from explicit files; see the properties.
        public init(
            certificatePath: String, keyPath: String, caCertificatePath: String,
            clientAuthentication: ClientAuthentication = .off, keyPassphrase: String? = nil
        ) {
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.caCertificatePath = caCertificatePath
            self.clientAuthentication = clientAuthentication
            self.keyPassphrase = keyPassphrase
        }

        /// The valid localhost server certificate of `certificates` (``TestCertificates/serverCertificatePath``,
        /// ``TestCertificates/serverKeyPath``), trusting its CA for client certificates.
        public init(certificates: TestCertificates, clientAuthentication: ClientAuthentication = .off) {
            self.init(
                certificatePath: certificates.serverCertificatePath, keyPath: certificates.serverKeyPath,
                caCertificatePath: certificates.caCertificatePath, clientAuthentication: clientAuthentication)
        }
    }
}

// MARK: - Async forms

extension RedisServerProcess {
    /// ``start(extraArguments:unixSocket:tls:startTimeout:executablePath:)`` on a thread of its own: the
    /// caller suspends while the server starts, and no cooperative thread blocks.
    public static func start(
        extraArguments: [String] = [],
        unixSocket: Bool = false,
        tls: TLSOptions? = nil,
        startTimeout: Duration = .seconds(10),
        executablePath: String? = nil
    ) async throws -> RedisServerProcess {
        try await OwnThread.run {
            try start(
                extraArguments: extraArguments, unixSocket: unixSocket, tls: tls, startTimeout: startTimeout,
                executablePath: executablePath)
        }
    }

    /// Starts a server, runs `body` with it, and stops it (``stop(timeout:)``, awaited) whether `body`
    /// returns or throws: the async replacement for `defer { server.stop() }`.
    ///
    /// - Throws: what ``start(extraArguments:unixSocket:tls:startTimeout:executablePath:)`` or `body` throws.
    public static func withServer<Result>(
        extraArguments: [String] = [],
        unixSocket: Bool = false,
        tls: TLSOptions? = nil,
        startTimeout: Duration = .seconds(10),
        executablePath: String? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RedisServerProcess) async throws -> sending Result
    ) async throws -> sending Result {
        let server = try await start(
            extraArguments: extraArguments, unixSocket: unixSocket, tls: tls, startTimeout: startTimeout,
            executablePath: executablePath)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            throw error
        }
    }

    /// ``stop(timeout:)`` on a thread of its own.
    public func stop(timeout: Duration = .seconds(5)) async {
        await OwnThread.run { self.stop(timeout: timeout) }
    }

    /// ``restart(timeout:)`` on a thread of its own.
    public func restart(timeout: Duration = .seconds(10)) async throws {
        try await OwnThread.run { try self.restart(timeout: timeout) }
    }

    /// ``kill(signal:)`` on a thread of its own (after `SIGKILL` it waits to reap the process).
    public func kill(signal: Int32) async throws {
        try await OwnThread.run { try self.kill(signal: signal) }
    }

    /// ``waitForExit(timeout:)`` on a thread of its own.
    public func waitForExit(timeout: Duration) async -> Bool {
        await OwnThread.run { self.waitForExit(timeout: timeout) }
    }
}

/// Runs blocking work on a new detached pthread and suspends the caller until it returns. Not
/// `BlockingOffload` (a dispatch queue): on Linux, dispatch's global queues and the Swift cooperative pool
/// share their few threads, and dispatch adds one only about once a second when they are all blocked.
/// A thread per call costs tens of microseconds, nothing next to starting or stopping a process.
enum OwnThread {
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        return try await withCheckedThrowingContinuation { continuation in
            start { continuation.resume(with: Result { try body() }) }
        }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        return await withCheckedContinuation { continuation in
            start { continuation.resume(returning: body()) }
        }
    }

    private final class Job: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private static func start(_ body: @escaping @Sendable () -> Void) {
        let context = Unmanaged.passRetained(Job(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            Unmanaged<Job>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }
}

/// The one thread that spawns every server process, for the lifetime of the process (it is never asked
/// to exit). A child started with a parent-death signal is signalled when the *thread* that spawned it
/// exits; spawning from this thread only makes that the moment the process dies. See
/// `RedisServerProcess.spawn`.
///
/// `@unchecked Sendable` is safe because `queue` and every ``Job``'s `result` are only read or written
/// with `mutex` held, `condition` is only waited on with it, and both pthread objects live at fixed
/// addresses for the lifetime of the process (the one instance is a global that is never released).
private final class SpawnerThread: @unchecked Sendable {
    static let shared = SpawnerThread()

    private final class Job {
        let body: @Sendable () -> Result<pid_t, RedisServerLauncherError>
        var result: Result<pid_t, RedisServerLauncherError>?
        init(_ body: @escaping @Sendable () -> Result<pid_t, RedisServerLauncherError>) { self.body = body }
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var queue: [Job] = []

    private init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let spawner = Unmanaged<SpawnerThread>.fromOpaque(context!).takeRetainedValue()
            // Signals are for the other threads (a program's handlers, a `sigwait` thread): this one only
            // spawns. The children get an empty mask and default dispositions from posix_spawn.
            var all = sigset_t()
            sigfillset(&all)
            pthread_sigmask(SIG_BLOCK, &all, nil)
            spawner.loop()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// Runs `body` on the spawner thread and returns its result; blocks the calling thread meanwhile
    /// (for the time of a `posix_spawn`, about a millisecond).
    func run(_ body: @escaping @Sendable () -> Result<pid_t, RedisServerLauncherError>) -> Result<pid_t, RedisServerLauncherError> {
        let job = Job(body)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        queue.append(job)
        pthread_cond_broadcast(condition)
        while true {
            if let result = job.result { return result }
            pthread_cond_wait(condition, mutex)
        }
    }

    private func loop() -> Never {
        pthread_mutex_lock(mutex)
        while true {
            while queue.isEmpty { pthread_cond_wait(condition, mutex) }
            let job = queue.removeFirst()
            pthread_mutex_unlock(mutex)
            let result = job.body()
            pthread_mutex_lock(mutex)
            job.result = result
            pthread_cond_broadcast(condition)
        }
    }
}

// MARK: - Termination signals

extension RedisServerProcess {
    /// SIGINT (Ctrl-C), SIGTERM (`timeout`, CI, process managers) and SIGHUP (a closed terminal): the
    /// default signals of ``stopAllAndExitOnSignals(_:)``.
    public static let terminationSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    /// Makes `signals` stop every server this process started and still runs, then exit the process with
    /// the conventional status 128 + signal (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP): for
    /// programs (redis-bench, the examples) that are stopped with Ctrl-C, by `timeout`, CI or a process
    /// manager, whose servers and temporary directories would otherwise be left behind (on Linux the
    /// parent-death signal still kills the servers, but cannot remove their directories).
    ///
    /// The handler only writes the signal number to a pipe (async-signal-safe); a thread of the
    /// launcher's reads it, prints `interrupted by signal N: stopping redis-server` to standard error
    /// when there is a server to stop, stops the servers (``stop(timeout:)`` with 2 s each), flushes
    /// standard output and calls `_exit`. Works whichever thread the signal is delivered to; replaces any
    /// handler installed for these signals before. Call it once, early (calling it again adds signals).
    ///
    /// Preconditions: the program does not need its own handler for these signals.
    /// - Throws: ``RedisServerLauncherError/systemError(operation:errno:)`` when the pipe, the thread or a
    ///   handler cannot be set up.
    public static func stopAllAndExitOnSignals(_ signals: [Int32] = terminationSignals) throws {
        try TerminationSignals.install(signals)
    }
}

extension TestCertificates {
    /// Makes the handlers of ``RedisServerProcess/stopAllAndExitOnSignals(_:)`` also delete this set's
    /// directory (after stopping the servers, which may still read the files), so that a program stopped
    /// by Ctrl-C or `timeout` leaves no private keys behind. Call ``remove()`` as usual on the normal path
    /// (removing twice is harmless). Has no effect on a process that installs no such handlers.
    public func removeOnTerminationSignal() {
        TerminationSignals.directoriesToRemove.withLock { $0.append(directory) }
    }
}

/// The state behind ``RedisServerProcess/stopAllAndExitOnSignals(_:)``.
private enum TerminationSignals {
    /// Directories (``TestCertificates``) the signal thread deletes after stopping the servers.
    static let directoriesToRemove = LockedValue<[String]>([])
    /// The pipe's write end, for the signal handler; -1 until installed. Lock-free (a handler must not
    /// take a lock), and initialized (by `install`'s store) before any handler exists, so the handler's
    /// access is a plain atomic load, never the global's lazy initialization.
    static let writeEnd = Atomic<Int32>(-1)
    private static let installed = LockedValue(false)

    static func install(_ signals: [Int32]) throws {
        try installed.withLock { installed in
            if !installed {
                var fds: [Int32] = [-1, -1]
                guard pipe(&fds) == 0 else {
                    throw RedisServerLauncherError.systemError(operation: "pipe", errno: errno)
                }
                // Close-on-exec (no child needs them; a spawn racing this is harmless: the launcher's
                // children close every inherited descriptor). A burst of signals must never block the
                // handler: the write end does not block.
                for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
                _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
                let readEnd = fds[0]
                let context = UnsafeMutableRawPointer(bitPattern: Int(readEnd) + 1)
                var thread = pthread_t()
                let rc = pthread_create(&thread, nil, { context in
                    TerminationSignals.waitAndExit(readEnd: Int32(Int(bitPattern: context) - 1))
                }, context)
                guard rc == 0 else {
                    close(fds[0])
                    close(fds[1])
                    throw RedisServerLauncherError.systemError(operation: "pthread_create", errno: rc)
                }
                pthread_detach(thread)
                writeEnd.store(fds[1], ordering: .releasing)
                installed = true
            }
            for signal in signals {
                var action = sigaction()
                action.__sigaction_handler.sa_handler = { signal in
                    let fd = TerminationSignals.writeEnd.load(ordering: .acquiring)
                    guard fd >= 0 else { return }
                    let savedErrno = errno
                    var byte = UInt8(truncatingIfNeeded: signal)
                    _ = write(fd, &byte, 1)
                    errno = savedErrno
                }
                sigemptyset(&action.sa_mask)
                action.sa_flags = SA_RESTART
                guard sigaction(signal, &action, nil) == 0 else {
                    throw RedisServerLauncherError.systemError(operation: "sigaction(\(signal))", errno: errno)
                }
            }
        }
    }

    private static func waitAndExit(readEnd: Int32) -> Never {
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 { break }
            if count < 0 && errno == EINTR { continue }
            // The write end is never closed; a failing read leaves the signals unhandled rather than
            // exiting for no reason.
            while true { pause() }
        }
        let signal = Int32(byte)
        LiveServers.shared.stopAll(announce: "interrupted by signal \(signal): stopping redis-server\n")
        for directory in directoriesToRemove.withLock({ $0 }) { TestCertificates.removeTree(directory) }
        fflush(nil)
        _exit(128 + signal)
    }
}

/// Servers still running, stopped by an `atexit` hook when the process exits normally (a test runner
/// that ends without releasing every server).
private final class LiveServers: Sendable {
    static let shared: LiveServers = {
        let servers = LiveServers()
        atexit { LiveServers.shared.stopAll() }
        return servers
    }()

    private let servers = LockedValue<[ObjectIdentifier: Weak]>([:])

    private struct Weak: @unchecked Sendable {
        // Only read or written inside `servers`' lock, and the referenced object is Sendable.
        weak var server: RedisServerProcess?
    }

    func insert(_ server: RedisServerProcess) {
        servers.withLock { $0[ObjectIdentifier(server)] = Weak(server: server) }
    }

    func remove(_ server: RedisServerProcess) {
        servers.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(server)) }
    }

    /// Stops every server still running (2 s each); writes `announce` to standard error first when there
    /// is one.
    func stopAll(announce: String? = nil) {
        let all = servers.withLock { servers in
            let all = servers.values.compactMap(\.server)
            servers.removeAll()
            return all
        }
        if var announce, !all.isEmpty {
            announce.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
        for server in all { server.stop(timeout: .seconds(2)) }
    }
}
