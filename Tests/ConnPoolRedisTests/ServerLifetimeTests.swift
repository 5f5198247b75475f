import ConnPoolTestSupport
import Glibc
import RedisServerLauncher
import Testing

/// A throwaway redis-server dies with the process that started it: on SIGKILL of that process (the
/// launcher's parent-death signal, through one long-lived spawner thread), and on SIGTERM, SIGHUP and
/// SIGINT of redis-bench (its handlers stop the server and exit with 128 + signal).
///
/// The processes under test are the build products `launcher-probe` and `redis-bench`, found next to
/// the test bundle (`swift build --build-tests` builds them). Every wait polls against a deadline.
@Suite("Server lifetime", .serialized, .processExclusive)
struct ServerLifetimeTests {
    /// The probe starts its server from a thread that exits before it prints the server's pid: the server
    /// must still answer then (it does not die with the thread that spawned it), and must be gone soon
    /// after the probe is killed with SIGKILL (which runs no handler and no atexit hook).
    @Test func aServerDiesWithItsParentOnSIGKILL() async throws {
        #expect(RedisServerProcess.parentDeathSignalEnabled)
        let probe = try await onThread { try ChildProcess.start(Self.product("launcher-probe"), []) }
        defer { probe.killAndReap() }
        let line = try await onThread { try probe.readLine(containing: "pid=", timeout: .seconds(30)) }
        let fields = Self.fields(line)
        let serverPid = try #require(fields["pid"].flatMap { Int32($0) }, "probe printed: \(line)")
        let port = try #require(fields["port"].flatMap { Int($0) }, "probe printed: \(line)")
        defer { Self.killIfRunning(serverPid) }

        // The thread that started the server has exited (the probe joined it before printing).
        #expect(Self.isAlive(serverPid))
        #expect(Self.answersPing(port: port))

        kill(probe.pid, SIGKILL)
        #expect(try await onThread { probe.waitForExit(timeout: .seconds(10)) } != nil)
        let gone = try await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(20)) {
            !Self.isAlive(serverPid) && !Self.answersPing(port: port)
        }
        #expect(gone, "redis-server pid \(serverPid) outlived the SIGKILLed probe")
        // No one could remove the killed server's directory: its log is all it holds.
        if let directory = fields["dir"], directory.contains("/connpool-redis-"), gone {
            unlink(directory + "/redis.log")
            rmdir(directory)
        }
    }

    /// redis-bench on SIGTERM (timeout, CI, process managers), SIGHUP and SIGINT: stops its throwaway
    /// server, removes nothing it should keep, and exits with 128 + signal.
    @Test(arguments: [SIGTERM, SIGHUP, SIGINT])
    func redisBenchStopsItsServerOnSignal(_ signal: Int32) async throws {
        let bench = try await onThread {
            try ChildProcess.start(
                Self.product("redis-bench"),
                ["run", "--no-compare", "--workload", "ping", "--concurrency", "1", "--warmup", "0",
                 "--requests", "1000000000"])
        }
        defer { bench.killAndReap() }
        let line = try await onThread { try bench.readLine(containing: "throwaway redis-server pid", timeout: .seconds(30)) }
        // "redis-bench: throwaway redis-server pid <pid> on 127.0.0.1:<port>"
        let words = line.split(separator: " ")
        let pidIndex = try #require(words.firstIndex(of: "pid"), "redis-bench printed: \(line)")
        let serverPid = try #require(Int32(words[pidIndex + 1]), "redis-bench printed: \(line)")
        let port = try #require(words.last?.split(separator: ":").last.flatMap { Int($0) }, "redis-bench printed: \(line)")
        defer { Self.killIfRunning(serverPid) }
        #expect(Self.isAlive(serverPid))

        kill(bench.pid, signal)
        let status = try await onThread { bench.waitForExit(timeout: .seconds(20)) }
        #expect(status == .exited(128 + signal), "redis-bench ended with \(String(describing: status))")
        // The handler stopped the server before exiting (not only the parent-death signal afterwards).
        let gone = try await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(20)) {
            !Self.isAlive(serverPid) && !Self.answersPing(port: port)
        }
        #expect(gone, "redis-server pid \(serverPid) outlived redis-bench after signal \(signal)")
    }

    // MARK: Helpers

    /// The path of a build product next to the test bundle (`.build/<triple>/<configuration>/`).
    static func product(_ name: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let executable = count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        var directory = executable
        while let last = directory.last, last != "/" { directory.removeLast() }
        // The bundle may be a directory (`….xctest/…`): look next to it.
        if let range = directory.range(of: ".xctest/") {
            directory = String(directory[..<range.lowerBound])
            while let last = directory.last, last != "/" { directory.removeLast() }
        }
        let path = directory + name
        guard access(path, X_OK) == 0 else {
            throw ChildProcess.Failure("\(path) is not built: run `swift build --build-tests` (it builds \(name))")
        }
        return path
    }

    static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for word in line.split(separator: " ") {
            let parts = word.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
        }
        return result
    }

    /// Alive: the process exists and is not a zombie (an exited server whose new parent, init here,
    /// has not reaped it yet is dead).
    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return false }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        // "pid (comm) S …": the state follows the last ')'.
        guard let close = text.lastIndex(of: ")") else { return false }
        let state = text[text.index(after: close)...].drop { $0 == " " }.first
        return state != "Z" && state != "X"
    }

    /// Whether something on 127.0.0.1:`port` answers a PING with a RESP reply.
    static func answersPing(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return false }
        let ping = Array("PING\r\n".utf8)
        guard write(fd, ping, ping.count) == ping.count else { return false }
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 1000) == 1 else { return false }
        var reply = [UInt8](repeating: 0, count: 64)
        return read(fd, &reply, reply.count) > 0
    }

    /// Cleanup after a failed expectation: a server that outlived its parent must not outlive the test.
    static func killIfRunning(_ pid: Int32) {
        if isAlive(pid) { kill(pid, SIGKILL) }
    }
}

/// A child process with its standard output (and, if asked, its standard error) on a pipe, standard
/// input and otherwise standard error on /dev/null, started with posix_spawn and reaped by its owner only.
final class ChildProcess: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    enum Status: Equatable, Sendable {
        case exited(Int32)
        case signaled(Int32)
    }

    let pid: pid_t
    private let output: Int32

    private init(pid: pid_t, output: Int32) {
        self.pid = pid
        self.output = output
    }

    deinit { close(output) }

    static func start(_ path: String, _ arguments: [String], mergeStandardError: Bool = false) throws -> ChildProcess {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw Failure("pipe: errno \(errno)") }
        // Close-on-exec: the child gets the write end through dup2 only. (A spawn on another thread
        // between pipe and fcntl could inherit it; the launcher's children close inherited descriptors.)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        if mergeStandardError {
            posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            throw Failure("posix_spawn \(path): errno \(rc)")
        }
        return ChildProcess(pid: pid, output: fds[0])
    }

    /// Reads standard output until a line containing `marker`, and returns that line.
    ///
    /// - Throws: ``Failure`` when the output ends or `timeout` passes first (with what was read).
    func readLine(containing marker: String, timeout: Duration) throws -> String {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var text = ""  // everything read, for the error
        var pending: [UInt8] = []  // the bytes after the last complete line
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                if line.contains(marker) { return line }
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw Failure("no line with '\(marker)' within \(timeout); output: \(text)") }
            var entry = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { continue }
            let count = read(output, &buffer, buffer.count)
            if count <= 0 { throw Failure("output ended before a line with '\(marker)'; output: \(text)") }
            text += String(decoding: buffer[0..<count], as: UTF8.self)
            pending += buffer[0..<count]
        }
    }

    /// Runs a program to its end (killed after `timeout`) and returns how it ended and its standard output
    /// and error, interleaved. Blocks: call it through `onThread`.
    ///
    /// - Throws: ``Failure`` when it cannot be started or does not end in time.
    static func run(_ path: String, _ arguments: [String], timeout: Duration = .seconds(30)) throws -> (status: Status, output: String) {
        let child = try start(path, arguments, mergeStandardError: true)
        defer { child.killAndReap() }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw Failure("\(path) did not end within \(timeout); output: \(String(decoding: output, as: UTF8.self))") }
            var entry = pollfd(fd: child.output, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(clamping: left.components.seconds * 1000 + 1))
            if ready <= 0 { continue }
            let count = read(child.output, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            output += buffer[0..<count]
        }
        guard let status = child.waitForExit(timeout: deadline - ContinuousClock.now) else {
            throw Failure("\(path) closed its output but did not exit within \(timeout)")
        }
        return (status, String(decoding: output, as: UTF8.self))
    }

    /// Polls for the child's exit and reaps it; `nil` when it still runs after `timeout`.
    func waitForExit(timeout: Duration) -> Status? {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                let signal = status & 0x7f
                return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
            }
            if result < 0 && errno != EINTR { return nil }
            if ContinuousClock.now >= deadline { return nil }
            usleep(10_000)  // a poll interval against the deadline above
        }
    }

    /// Kills and reaps the child if it still runs (cleanup on every path).
    func killAndReap() {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == 0 {
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }
}
