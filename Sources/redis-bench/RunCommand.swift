import ArgumentParser
import ConnPool
import ConnPoolBenchHarness
import ConnPoolIO
import ConnPoolRedis
import ConnPoolTCP
import Dispatch
import RedisServerLauncher

#if canImport(Glibc)
import Glibc
#endif

/// Which harness mode(s) to run.
enum ModeOption: String, ExpressibleByArgument, CaseIterable {
    case sync, async, both

    var modes: [BenchMode] {
        switch self {
        case .sync: return [.sync]
        case .async: return [.async]
        case .both: return [.async, .sync]
        }
    }
}

extension Backend: ExpressibleByArgument {}

/// `--reply-spin`: the connections' ``ReplySpinPolicy``.
enum ReplySpinOption: String, ExpressibleByArgument, CaseIterable {
    case adaptive, disabled

    var policy: ReplySpinPolicy { self == .adaptive ? .adaptive : .disabled }
}

/// `redis-bench run`: the benchmark suite (the default subcommand).
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the benchmark suite (default: PING, GET, SET at concurrency 1, 8, 50, async).",
        discussion: """
            Each (workload, concurrency, mode) is measured through the pool and, unless --no-compare, \
            against a new connection per request, one shared connection (serialized), and \
            redis-benchmark at the same concurrency and request count when it is installed.
            """
    )

    /// Requests per run when neither --requests nor --duration is given. Chosen so that the default suite
    /// (3 workloads × 3 concurrency levels × pooled + shared + per-request + redis-benchmark) takes
    /// about a minute in release on a 2-core machine.
    static let defaultRequests = 50_000
    /// Warm-up requests per run when --warmup is not given.
    static let defaultWarmup = 1_000

    @Option(help: "Benchmark an existing server (redis://[user:password@]host:port[/db] or unix:///path) instead of starting one.")
    var url: String?

    @Option(
        name: .long, parsing: .singleValue,
        help: "Workload: ping, get, set, incr, mixed (80% GET / 20% SET). Repeatable or a comma list. Default: ping,get,set.")
    var workload: [String] = []

    @Option(help: "Value size in bytes for SET (and the value GET reads).")
    var valueSize: Int = 16

    @Option(name: .long, parsing: .singleValue, help: "Concurrency levels: comma list or repeatable. Default: 1,8,50.")
    var concurrency: [String] = []

    @Option(help: "Pool size (maxSize). Default: the concurrency level of each run.")
    var poolSize: Int?

    @Option(help: "Requests per run (default \(RunCommand.defaultRequests)). Exclusive with --duration.")
    var requests: Int?

    @Option(help: "Seconds per run instead of a request count.")
    var duration: Double?

    @Option(help: "Warm-up requests per run, not measured (default \(RunCommand.defaultWarmup)).")
    var warmup: Int?

    @Option(help: "Commands per request, sent as one pipeline.")
    var pipeline: Int = 1

    @Option(help: "sync (plain threads, blocking API), async (tasks, async API) or both.")
    var mode: ModeOption = .async

    @Option(help: "redis (hiredis) or tcp (raw TCPConnection, Redis inline commands).")
    var backend: Backend = .redis

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(help: "Write an SVG chart (throughput and p99 against concurrency) to this file.")
    var svg: String?

    @Flag(help: "Measure the pool only: skip the per-request, shared and redis-benchmark baselines.")
    var noCompare = false

    @Option(help: "Run each measurement this many times (interleaved with its baselines) and keep the fastest: steadier figures on a busy machine.")
    var `repeat`: Int = 1

    @Option(help: "Most requests of a per-request baseline run (it opens a connection per request).")
    var perRequestCap: Int = 2_000

    @Option(help: "hiredis backend: per-command timeout in milliseconds (default: none, like redis-benchmark). A deadline makes every async wait re-arm the I/O reactor's timer.")
    var commandTimeoutMs: Int?

    @Option(help: "The connections' reply spin: adaptive (the default) or disabled. Compare the two at --concurrency 1.")
    var replySpin: ReplySpinOption = .adaptive

    @Option(help: "While running, serve /metrics (Prometheus) and /status (JSON) for the pool under test on 127.0.0.1:PORT (0: any free port).")
    var metricsPort: Int?

    @Option(help: "Benchmark a Redis Cluster through RedisClusterClient: start a throwaway cluster of N primaries (with --url: the comma-separated seed URLs of an existing cluster, N ignored); compares with redis-benchmark --cluster.")
    var cluster: Int?

    // MARK: Validation

    func validate() throws {
        if requests != nil && duration != nil { throw ValidationError("--requests and --duration are exclusive") }
        if let requests, requests < 1 { throw ValidationError("--requests must be at least 1") }
        if let duration, !(duration > 0) { throw ValidationError("--duration must be positive") }
        if let warmup, warmup < 0 { throw ValidationError("--warmup must not be negative") }
        if valueSize < 0 { throw ValidationError("--value-size must not be negative") }
        if pipeline < 1 { throw ValidationError("--pipeline must be at least 1") }
        if let poolSize, poolSize < 1 { throw ValidationError("--pool-size must be at least 1") }
        if perRequestCap < 1 { throw ValidationError("--per-request-cap must be at least 1") }
        if `repeat` < 1 { throw ValidationError("--repeat must be at least 1") }
        if let commandTimeoutMs, commandTimeoutMs < 1 { throw ValidationError("--command-timeout-ms must be at least 1") }
        if let metricsPort, !(0...65_535).contains(metricsPort) { throw ValidationError("--metrics-port must be 0...65535 (0: any free port)") }
        _ = try parsedWorkloads()
        _ = try parsedConcurrency()
    }

    func parsedWorkloads() throws -> [Workload] {
        let names = workload.flatMap { $0.split(separator: ",") }.map { $0.trimmingSpaces.lowercased() }
        if names.isEmpty { return [.ping, .get, .set] }
        var result: [Workload] = []
        for name in names where !name.isEmpty {
            guard let value = Workload(rawValue: name) else {
                throw ValidationError("unknown workload '\(name)': use ping, get, set, incr or mixed")
            }
            if !result.contains(value) { result.append(value) }
        }
        return result
    }

    func parsedConcurrency() throws -> [Int] {
        let parts = concurrency.flatMap { $0.split(separator: ",") }.map(\.trimmingSpaces).filter { !$0.isEmpty }
        if parts.isEmpty { return [1, 8, 50] }
        var result: [Int] = []
        for part in parts {
            guard let value = Int(part), value >= 1 else {
                throw ValidationError("--concurrency: '\(part)' is not a positive integer")
            }
            if !result.contains(value) { result.append(value) }
        }
        return result
    }

    // MARK: Run

    func run() async throws {
        if let cluster { return try await ClusterBench(command: self, primaries: cluster).run() }
        let workloads = try parsedWorkloads()
        let levels = try parsedConcurrency()
        let stop: BenchStopCondition =
            duration.map { .duration(.milliseconds(Int64($0 * 1000))) } ?? .requests(requests ?? Self.defaultRequests)
        let warmupRequests = warmup ?? Self.defaultWarmup

        let metrics = try metricsPort.map { try MetricsEndpoint(port: $0) }
        defer { metrics?.stop() }
        if let metrics { print("metrics: http://127.0.0.1:\(metrics.port)/metrics and /status") }
        #if DEBUG
        print("warning: this is a debug build; measure with `swift run -c release redis-bench`")
        #endif

        let target = try startTarget()
        let signalSource = Self.stopServerOnInterrupt(target.server)
        defer {
            signalSource?.cancel()
            target.server?.stop()
        }

        let redisBenchmark = noCompare ? nil : RedisBenchmarkTool.find()
        print(header(target: target, workloads: workloads, levels: levels, stop: stop, warmup: warmupRequests,
                     redisBenchmark: redisBenchmark))
        try await prepareKeys(target)

        let rssStart = ResidentMemory.currentBytes()
        var results: [BenchResult] = []
        switch backend {
        case .redis:
            let factory = try RedisConnectionFactory(configuration: target.redisConfiguration)
            var harness = BenchHarness(
                factory: factory, connectBlocking: { try factory.makeConnectionBlocking() },
                errorCategory: ErrorCategories.categorize)
            if let metrics { harness.onPoolCreated = { metrics.observe($0) } }
            let operations = RedisOperations(valueSize: valueSize, pipeline: pipeline)
            results = try await runSuite(
                harness: harness, operation: operations.operation, workloads: workloads, levels: levels, stop: stop,
                warmup: warmupRequests, target: target, redisBenchmark: redisBenchmark)
        case .tcp:
            guard let (host, port) = target.tcpAddress else {
                throw ValidationError("--backend tcp needs a TCP server address (not a unix socket)")
            }
            let factory = try TCPConnectionFactory(
                configuration: TCPConnectionConfiguration(host: host, port: port, replySpin: replySpin.policy))
            var harness = BenchHarness(
                factory: factory, connectBlocking: { try factory.makeConnectionBlocking() },
                errorCategory: ErrorCategories.categorize)
            if let metrics { harness.onPoolCreated = { metrics.observe($0) } }
            let operations = TCPOperations(valueSize: valueSize, pipeline: pipeline)
            results = try await runSuite(
                harness: harness, operation: operations.operation, workloads: workloads, levels: levels, stop: stop,
                warmup: warmupRequests, target: target, redisBenchmark: redisBenchmark)
        }
        let rssEnd = ResidentMemory.currentBytes()

        print("")
        print(BenchReport.table(results), terminator: "")
        print("")
        let memory = BenchReport.memoryLines(results.filter { $0.baseline == .pooled })
        if !memory.isEmpty { print(memory, terminator: "") }
        print("RSS whole suite: \(ResidentMemory.describe(rssStart)) -> \(ResidentMemory.describe(rssEnd))")
        let targets = TargetReport.lines(results)
        if !targets.isEmpty {
            print("")
            print("Targets:")
            for line in targets { print("  " + line) }
        }
        if let json {
            try FileOutput.write(try BenchReport.json(results), to: json)
            print("JSON written to \(json)")
        }
        if let svg {
            let title = "redis-bench (\(backend.rawValue) backend, value \(valueSize) B"
                + (pipeline > 1 ? ", pipeline \(pipeline)" : "") + ")"
            try FileOutput.write(BenchChart.svg(results, title: title), to: svg)
            print("SVG chart written to \(svg)")
        }
        let failed = results.reduce(0) { $0 + $1.errors }
        if failed > 0 { print("note: \(failed) requests failed; see errors_by_type in the JSON output") }
    }

    /// Runs every (concurrency, workload, mode) with its baselines, in an order that keeps each pooled
    /// figure next to the figures it is compared with.
    private func runSuite<Factory: ConnectionFactory>(
        harness: BenchHarness<Factory>,
        operation: (Workload) -> BenchOperation<Factory.PooledConnectionType>,
        workloads: [Workload], levels: [Int], stop: BenchStopCondition, warmup: Int, target: Target,
        redisBenchmark: RedisBenchmarkTool?
    ) async throws -> [BenchResult] {
        var results: [BenchResult] = []
        let baselines: [BenchBaseline] = noCompare ? [.pooled] : [.shared, .pooled, .perRequest]
        for level in levels {
            for workload in workloads {
                let work = operation(workload)
                var pooledRequests = 0
                for mode in mode.modes {
                    // Best of `repeat` rounds; each round runs every baseline once, so slow phases of a busy
                    // machine hit all of them alike.
                    var best: [BenchBaseline: BenchResult] = [:]
                    for _ in 0..<`repeat` {
                        for baseline in baselines {
                            let spec = BenchRunSpec(
                                backend: backend.rawValue, workload: workload.rawValue, mode: mode,
                                baseline: baseline, concurrency: level, poolSize: poolSize ?? level, stop: stop,
                                warmupRequests: warmup, commandsPerRequest: pipeline, perRequestCap: perRequestCap)
                            let result = try await harness.run(spec, operation: work)
                            if `repeat` > 1 { print(Self.summaryLine(result) + " (round)") }
                            if best[baseline].map({ result.opsPerSecond > $0.opsPerSecond }) ?? true {
                                best[baseline] = result
                            }
                        }
                    }
                    for baseline in baselines {
                        guard let result = best[baseline] else { continue }
                        if baseline == .pooled { pooledRequests = max(pooledRequests, result.requests) }
                        print(Self.summaryLine(result))
                        results.append(result)
                    }
                }
                if let redisBenchmark, let external = try await runRedisBenchmark(
                    redisBenchmark, workload: workload, concurrency: level, requests: pooledRequests, target: target)
                {
                    print(Self.summaryLine(external))
                    results.append(external)
                }
            }
        }
        return results
    }

    private func runRedisBenchmark(
        _ tool: RedisBenchmarkTool, workload: Workload, concurrency: Int, requests: Int, target: Target
    ) async throws -> BenchResult? {
        guard let test = workload.redisBenchmarkTest(backend: backend), requests > 0 else { return nil }
        guard let connection = target.redisBenchmarkConnection else { return nil }
        let arguments = RedisBenchmarkTool.arguments(
            connection: connection, concurrency: concurrency, requests: requests * pipeline, tests: [test],
            valueSize: valueSize, pipeline: pipeline)
        var best: RedisBenchmarkRow?
        for _ in 0..<`repeat` {
            do {
                let rows = try await tool.run(arguments: arguments)
                guard let row = rows[test] else { return nil }
                if best.map({ row.requestsPerSecond > $0.requestsPerSecond }) ?? true { best = row }
            } catch {
                print("  redis-benchmark baseline skipped: \(error)")
                return nil
            }
        }
        guard let row = best else { return nil }
        return BenchResult.external(
            backend: backend.rawValue, workload: workload.rawValue, concurrency: concurrency,
            requests: requests, commandsPerRequest: pipeline, opsPerSecond: row.requestsPerSecond,
            p50Microseconds: row.p50Milliseconds.map { $0 * 1000 },
            p99Microseconds: row.p99Milliseconds.map { $0 * 1000 },
            maxMicroseconds: row.maxMilliseconds.map { $0 * 1000 },
            meanMicroseconds: row.averageMilliseconds.map { $0 * 1000 })
    }

    static func summaryLine(_ result: BenchResult) -> String {
        var line = "  \(result.backend) \(result.workload) \(result.seriesName) c=\(result.concurrency): "
            + "\(TextFormat.grouped(result.opsPerSecond)) ops/s, p50 \(TextFormat.microseconds(result.p50Microseconds)) µs, "
            + "p99 \(TextFormat.microseconds(result.p99Microseconds)) µs"
        if result.errors > 0 { line += ", \(result.errors) errors" }
        return line
    }

    // MARK: Target server

    /// The server under test: a throwaway one (stopped at the end) or the one named by --url.
    struct Target {
        var server: RedisServerProcess?
        var redisConfiguration: RedisConnectionConfiguration
        var description: String

        var tcpAddress: (String, Int)? {
            if case .tcp(let host, let port) = redisConfiguration.endpoint { return (host, port) }
            return nil
        }

        /// `-h host -p port` or `-s socket` for redis-benchmark; `nil` when it cannot be given the
        /// credentials without exposing them (redis-benchmark takes a password only on its command line).
        var redisBenchmarkConnection: [String]? {
            if redisConfiguration.password != nil || redisConfiguration.database != 0 { return nil }
            switch redisConfiguration.endpoint {
            case .tcp(let host, let port): return ["-h", host, "-p", String(port)]
            case .unixSocket(let path): return ["-s", path]
            }
        }
    }

    private func startTarget() throws -> Target {
        if let url {
            var configuration = try RedisConnectionConfiguration(url: url)
            configuration.commandTimeout = commandTimeoutMs.map { .milliseconds($0) }
            configuration.replySpin = replySpin.policy
            if backend == .tcp, configuration.password != nil || configuration.database != 0 {
                throw ValidationError("--backend tcp sends no AUTH/SELECT: use a URL without password and database")
            }
            return Target(server: nil, redisConfiguration: configuration, description: "\(configuration.endpoint) (--url)")
        }
        let server: RedisServerProcess
        do {
            server = try RedisServerProcess.start()
        } catch RedisServerLauncherError.redisServerNotInstalled {
            Self.printError("""
                redis-bench: redis-server is not installed, and no --url was given.
                Install it with `apt-get install redis-server redis-tools` (or run Scripts/install-deps.sh),
                or benchmark a running server with `redis-bench --url redis://HOST:PORT`.
                """)
            throw ExitCode(2)
        }
        var configuration = try RedisConnectionConfiguration(host: server.host, port: server.port)
        configuration.commandTimeout = commandTimeoutMs.map { .milliseconds($0) }
        configuration.replySpin = replySpin.policy
        return Target(
            server: server, redisConfiguration: configuration,
            description: "throwaway redis-server pid \(server.pid) on \(server.host):\(server.port)")
    }

    /// Writes the value GET reads (so that GET measures a hit of --value-size bytes).
    private func prepareKeys(_ target: Target) async throws {
        let connection = try await RedisConnection.connect(configuration: target.redisConfiguration)
        defer { connection.closeBlocking() }
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueSize)
        _ = try await connection.command("SET", BenchKeys.value, value)
    }

    /// Stops the throwaway server and exits on Ctrl-C (the launcher's exit hook does not run on a signal).
    private static func stopServerOnInterrupt(_ server: RedisServerProcess?) -> (any DispatchSourceSignal)? {
        guard let server else { return nil }
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler {
            print("\ninterrupted: stopping redis-server")
            server.stop(timeout: .seconds(2))
            Glibc.exit(130)
        }
        source.resume()
        return source
    }

    private func header(
        target: Target, workloads: [Workload], levels: [Int], stop: BenchStopCondition, warmup: Int,
        redisBenchmark: RedisBenchmarkTool?
    ) -> String {
        var lines = ["redis-bench: \(target.description)"]
        lines.append(
            "  backend \(backend.rawValue), workloads \(workloads.map(\.rawValue).joined(separator: ",")), "
                + "concurrency \(levels.map(String.init).joined(separator: ",")), mode \(mode.rawValue), "
                + "pool size \(poolSize.map(String.init) ?? "= concurrency"), value \(valueSize) B"
                + (pipeline > 1 ? ", pipeline \(pipeline)" : ""))
        lines.append(
            "  per run: \(stop) measured after \(warmup) warm-up requests"
                + (`repeat` > 1 ? ", best of \(`repeat`) rounds" : "")
                + (noCompare ? "" : "; per-request baseline capped at \(perRequestCap) requests"))
        if noCompare {
            lines.append("  baselines: none (--no-compare)")
        } else if redisBenchmark == nil {
            lines.append("  baselines: per-request, shared (redis-benchmark not found: apt-get install redis-tools)")
        } else if target.redisBenchmarkConnection == nil {
            lines.append("  baselines: per-request, shared (redis-benchmark skipped: it takes a password or database only on its command line)")
        } else {
            lines.append("  baselines: per-request, shared, redis-benchmark")
        }
        return lines.joined(separator: "\n")
    }

    static func printError(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// The team's performance targets, checked against whatever the run measured. Each ops/s ratio is
/// followed by the same comparison by median latency, which a busy machine disturbs far less.
enum TargetReport {
    static func lines(_ results: [BenchResult]) -> [String] {
        var lines: [String] = []
        func verdict(_ ok: Bool) -> String { ok ? "met" : "MISSED" }
        func percent(_ value: Double) -> String { TextFormat.fixed(value * 100, 1) + "%" }
        for result in results where result.baseline == .pooled {
            let comparison = BenchReport.comparison(for: result, in: results)
            let name = "pooled \(result.mode) \(result.workload) c=\(result.concurrency)"
            if result.workload == Workload.ping.rawValue, let ratio = comparison.versusRedisBenchmark {
                let goal: Double? = result.concurrency == 1 ? 0.9 : (result.concurrency == 50 ? 0.8 : nil)
                if let goal {
                    var line = "\(name): \(TextFormat.fixed(ratio, 2))x redis-benchmark ops/s (target >= \(goal)x): "
                        + verdict(ratio >= goal)
                    if let median = comparison.medianVersusRedisBenchmark {
                        line += "; by p50 latency \(TextFormat.fixed(median, 2))x"
                    }
                    lines.append(line)
                }
            }
            if result.concurrency == 1, let ratio = comparison.versusPerRequest {
                lines.append("\(name): \(TextFormat.fixed(ratio, 1))x per-request (target >= 5x): \(verdict(ratio >= 5))")
            }
            if let overhead = comparison.poolOverhead {
                var line = "\(name): pool overhead \(percent(overhead)) vs shared connection (target <= 5%): "
                    + verdict(overhead <= 0.05)
                if let median = comparison.medianPoolOverhead { line += "; by p50 latency \(percent(median))" }
                lines.append(line)
            }
        }
        return lines
    }
}

/// Writes text files.
enum FileOutput {
    struct WriteError: Error, CustomStringConvertible {
        let path: String
        let code: Int32
        var description: String { "cannot write \(path): \(String(cString: strerror(code)))" }
    }

    static func write(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw WriteError(path: path, code: errno) }
        defer { close(fd) }
        var text = text
        try text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw WriteError(path: path, code: errno)
                }
                offset += written
            }
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        var slice = self[...]
        while slice.first == " " { slice = slice.dropFirst() }
        while slice.last == " " { slice = slice.dropLast() }
        return String(slice)
    }
}
