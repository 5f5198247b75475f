import ConnPoolBenchHarness
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// One row of `redis-benchmark --csv` (redis-tools 7.x):
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
struct RedisBenchmarkRow: Sendable, Equatable {
    var test: String
    var requestsPerSecond: Double
    var averageMilliseconds: Double?
    var p50Milliseconds: Double?
    var p95Milliseconds: Double?
    var p99Milliseconds: Double?
    var maxMilliseconds: Double?
}

/// Runs `redis-benchmark` (from redis-tools) as the external baseline and parses its CSV output.
struct RedisBenchmarkTool: Sendable {
    /// The executable's path.
    let path: String

    /// Finds `redis-benchmark` in `PATH` (and the usual system directories); `nil` when not installed.
    static func find() -> RedisBenchmarkTool? {
        var directories = getenv("PATH").map { String(cString: $0).split(separator: ":").map(String.init) } ?? []
        for extra in ["/usr/bin", "/usr/local/bin", "/bin"] where !directories.contains(extra) {
            directories.append(extra)
        }
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/redis-benchmark"
            if access(candidate, X_OK) == 0 { return RedisBenchmarkTool(path: candidate) }
        }
        return nil
    }

    /// The arguments of one run: `CONNECTION -c C -n N -t TESTS -d SIZE [-P N] --csv`, where `connection` is
    /// `-h HOST -p PORT` or `-s SOCKET`.
    static func arguments(
        connection: [String], concurrency: Int, requests: Int, tests: [String], valueSize: Int, pipeline: Int
    ) -> [String] {
        var arguments = connection + [
            "-c", String(concurrency), "-n", String(requests),
            "-t", tests.joined(separator: ","), "-d", String(valueSize),
        ]
        if pipeline > 1 { arguments += ["-P", String(pipeline)] }
        arguments.append("--csv")
        return arguments
    }

    /// Runs redis-benchmark and returns its rows, keyed by lower-cased test name (`ping_mbulk`, `get`, …),
    /// and the CPU time (user + system, µs) its process used, from `wait4` (`nil` if not known).
    ///
    /// - Throws: ``RedisBenchmarkToolError`` when it cannot be started, fails, or prints no CSV.
    func run(arguments: [String]) async throws -> (rows: [String: RedisBenchmarkRow], cpuMicroseconds: Double?) {
        let path = self.path
        let output: Subprocess.Output = try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try Subprocess.run(path, arguments) })
            }
        }
        let rows = Self.parseCSV(output.stdout)
        if output.status != 0 || rows.isEmpty {
            let detail = (output.stderr + output.stdout).split(separator: "\n").suffix(3).joined(separator: " | ")
            throw RedisBenchmarkToolError.failed(status: output.status, detail: detail)
        }
        return (rows, output.cpuMicroseconds)
    }

    /// Parses `redis-benchmark --csv` output; ignores the header and any line that is not a data row.
    static func parseCSV(_ text: String) -> [String: RedisBenchmarkRow] {
        var rows: [String: RedisBenchmarkRow] = [:]
        var columns: [String] = []
        for rawLine in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let fields = rawLine.split(separator: ",", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: " \"")
            }
            guard fields.count >= 2 else { continue }
            if fields[0] == "test" {
                columns = fields
                continue
            }
            func value(_ name: String, fallback: Int) -> Double? {
                let index = columns.firstIndex(of: name) ?? fallback
                return index < fields.count ? Double(fields[index]) : nil
            }
            guard let rps = value("rps", fallback: 1) else { continue }
            rows[fields[0].lowercased()] = RedisBenchmarkRow(
                test: fields[0], requestsPerSecond: rps,
                averageMilliseconds: value("avg_latency_ms", fallback: 2),
                p50Milliseconds: value("p50_latency_ms", fallback: 4),
                p95Milliseconds: value("p95_latency_ms", fallback: 5),
                p99Milliseconds: value("p99_latency_ms", fallback: 6),
                maxMilliseconds: value("max_latency_ms", fallback: 7))
        }
        return rows
    }
}

enum RedisBenchmarkToolError: Error, CustomStringConvertible {
    case failed(status: Int32, detail: String)

    var description: String {
        switch self {
        case .failed(let status, let detail): return "redis-benchmark failed (status \(status)): \(detail)"
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var slice = self[...]
        while let first = slice.first, set.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, set.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}

/// Runs a program to completion with `posix_spawn`, capturing its standard output and error.
enum Subprocess {
    struct SpawnError: Error, CustomStringConvertible {
        let operation: String
        let code: Int32
        var description: String { "\(operation) failed: \(String(cString: strerror(code)))" }
    }

    /// What a run printed and how it ended.
    struct Output {
        /// The exit code, or 128 + signal when a signal ended it.
        var status: Int32
        var stdout: String
        var stderr: String
        /// User + system CPU time of the program (its own, from `wait4`), in µs; `nil` if unknown.
        var cpuMicroseconds: Double?
    }

    /// Blocks the calling thread (call it on a dispatch thread, not a cooperative one) until the program exits.
    static func run(_ path: String, _ arguments: [String]) throws -> Output {
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        guard pipe(&outPipe) == 0 else { throw SpawnError(operation: "pipe", code: errno) }
        guard pipe(&errPipe) == 0 else {
            close(outPipe[0]); close(outPipe[1])
            throw SpawnError(operation: "pipe", code: errno)
        }
        // Close-on-exec: the child gets them through dup2 only (a concurrent spawn elsewhere must not
        // inherit them, or our read would never see end-of-file).
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw SpawnError(operation: "posix_spawn \(path)", code: rc)
        }
        // Drain both pipes (poll, so that neither can fill up and stall the child).
        var out: [UInt8] = []
        var err: [UInt8] = []
        var open = [outPipe[0], errPipe[0]]
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    if entry.fd == outPipe[0] { out += buffer[0..<count] } else { err += buffer[0..<count] }
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    close(entry.fd)
                    open.removeAll { $0 == entry.fd }
                }
            }
        }
        // wait4 rather than waitpid: the child's own resource usage comes with its status (a
        // RUSAGE_CHILDREN difference would also count any other child reaped meanwhile).
        var status: Int32 = 0
        var usage = rusage()
        var reaped: pid_t
        repeat { reaped = wait4(pid, &status, 0, &usage) } while reaped < 0 && errno == EINTR
        let exitCode = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let cpu: Double? = reaped == pid
            ? ProcessCPU.microseconds(
                userSeconds: Int(usage.ru_utime.tv_sec), userMicroseconds: Int(usage.ru_utime.tv_usec),
                systemSeconds: Int(usage.ru_stime.tv_sec), systemMicroseconds: Int(usage.ru_stime.tv_usec))
            : nil
        return Output(
            status: exitCode, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self),
            cpuMicroseconds: cpu)
    }
}
