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

/// Where async workers run: plain tasks on the global concurrent executor, or tasks that prefer the I/O
/// reactor as their executor (resumed in place on its thread).
enum AsyncExecutorOption: String, ExpressibleByArgument, CaseIterable {
    case global, reactor

    var executor: (any TaskExecutor)? { self == .reactor ? IOReactor.shared : nil }
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

            --tls: the throwaway server also listens with TLS (certificates made for the run with \
            openssl, removed at the end); the pool and every baseline connect to the TLS port with \
            the run's CA trusted, and each pooled measurement is also taken over plain TCP to the \
            same server's plain port, in the same rounds (series "pooled … TLS" and "pooled …", JSON \
            "tls": true / false). With --url, --tls needs a rediss:// URL (its ?ca=… names a private \
            CA) and measures TLS only: there is no plain port to compare with.
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

    @Option(help: "Async workers: global (plain tasks, the default) or reactor (tasks that prefer IOReactor.shared as their executor: waits resume on the I/O thread, no hand-off).")
    var asyncExecutor: AsyncExecutorOption = .global

    @Flag(help: "Speak TLS: the throwaway server gets a TLS port and certificates made for the run, and the pooled figures are also measured over plain TCP in the same rounds. With --url, the URL must be rediss://.")
    var tls = false

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
        if tls, let url, !url.lowercased().hasPrefix("rediss://") {
            throw ValidationError(
                "--tls with --url needs a rediss:// URL (for a private CA: rediss://HOST:PORT?ca=/path/to/ca.crt); "
                    + "redis:// and unix:// URLs speak plain text")
        }
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
        if let cluster {
            // The throwaway cluster's servers stop on Ctrl-C, SIGTERM and SIGHUP too.
            try RedisServerProcess.stopAllAndExitOnSignals([SIGINT, SIGTERM, SIGHUP])
            return try await ClusterBench(command: self, primaries: cluster).run()
        }
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

        // Ctrl-C, SIGTERM (timeout, CI, process managers) and SIGHUP stop the throwaway server and exit
        // with 128 + signal. Installed before the server starts; a SIGKILL is covered by the launcher's
        // parent-death signal.
        try RedisServerProcess.stopAllAndExitOnSignals([SIGINT, SIGTERM, SIGHUP])
        let target = try startTarget()
        defer {
            target.server?.stop()
            target.certificates?.remove()  // after the server, which reads them
        }

        let redisBenchmark = noCompare ? nil : RedisBenchmarkTool.find()
        print(header(target: target, workloads: workloads, levels: levels, stop: stop, warmup: warmupRequests,
                     redisBenchmark: redisBenchmark))
        fflush(nil)  // the server's pid and port, for whoever reads a pipe (tests, scripts)
        try await prepareKeys(target)

        let rssStart = ResidentMemory.currentBytes()
        var results: [BenchResult] = []
        switch backend {
        case .redis:
            // The pool under test gets the metrics endpoint; the plain pool of a --tls run is the comparison.
            func harness(_ configuration: RedisConnectionConfiguration, observed: Bool) throws
                -> BenchHarness<RedisConnectionFactory>
            {
                let factory = try RedisConnectionFactory(configuration: configuration)
                var harness = BenchHarness(
                    factory: factory, connectBlocking: { try factory.makeConnectionBlocking() },
                    errorCategory: ErrorCategories.categorize)
                if observed, let metrics { harness.onPoolCreated = { metrics.observe($0) } }
                harness.taskExecutor = asyncExecutor.executor
                return harness
            }
            let operations = RedisOperations(valueSize: valueSize, pipeline: pipeline)
            results = try await runSuite(
                harness: try harness(target.redisConfiguration, observed: true),
                plainHarness: try target.plainConfiguration.map { try harness($0, observed: false) },
                operation: operations.operation, workloads: workloads, levels: levels, stop: stop,
                warmup: warmupRequests, target: target, redisBenchmark: redisBenchmark)
        case .tcp:
            func harness(_ configuration: RedisConnectionConfiguration, observed: Bool) throws
                -> BenchHarness<TCPConnectionFactory>
            {
                guard let (host, port) = Target.tcpAddress(configuration) else {
                    throw ValidationError("--backend tcp needs a TCP server address (not a unix socket)")
                }
                let factory = try TCPConnectionFactory(
                    configuration: TCPConnectionConfiguration(
                        host: host, port: port, replySpin: replySpin.policy, tls: configuration.tls))
                var harness = BenchHarness(
                    factory: factory, connectBlocking: { try factory.makeConnectionBlocking() },
                    errorCategory: ErrorCategories.categorize)
                if observed, let metrics { harness.onPoolCreated = { metrics.observe($0) } }
                harness.taskExecutor = asyncExecutor.executor
                return harness
            }
            let operations = TCPOperations(valueSize: valueSize, pipeline: pipeline)
            results = try await runSuite(
                harness: try harness(target.redisConfiguration, observed: true),
                plainHarness: try target.plainConfiguration.map { try harness($0, observed: false) },
                operation: operations.operation, workloads: workloads, levels: levels, stop: stop,
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
            let title = "redis-bench (\(backend.rawValue) backend\(target.isTLS ? ", TLS" : ""), value \(valueSize) B"
                + (pipeline > 1 ? ", pipeline \(pipeline)" : "") + ")"
            try FileOutput.write(BenchChart.svg(results, title: title), to: svg)
            print("SVG chart written to \(svg)")
        }
        let failed = results.reduce(0) { $0 + $1.errors }
        if failed > 0 { print("note: \(failed) requests failed; see errors_by_type in the JSON output") }
    }

    /// Runs every (concurrency, workload, mode) with its baselines, in an order that keeps each pooled
    /// figure next to the figures it is compared with. `harness` measures the target's connections (TLS
    /// with --tls); `plainHarness`, when given (--tls on a throwaway server), measures the pooled runs once
    /// more over plain TCP, right after the TLS pooled run of the same round.
    private func runSuite<Factory: ConnectionFactory>(
        harness: BenchHarness<Factory>,
        plainHarness: BenchHarness<Factory>?,
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
                    // Each round: shared, pooled (TLS with --tls), pooled plain (--tls only), per-request.
                    var runs: [(baseline: BenchBaseline, tls: Bool, harness: BenchHarness<Factory>)] = []
                    for baseline in baselines {
                        runs.append((baseline, target.isTLS, harness))
                        if baseline == .pooled, let plainHarness { runs.append((baseline, false, plainHarness)) }
                    }
                    var best: [Int: BenchResult] = [:]
                    for _ in 0..<`repeat` {
                        for (index, run) in runs.enumerated() {
                            let spec = BenchRunSpec(
                                backend: backend.rawValue, workload: workload.rawValue, mode: mode,
                                baseline: run.baseline, concurrency: level, poolSize: poolSize ?? level, stop: stop,
                                warmupRequests: warmup, commandsPerRequest: pipeline, perRequestCap: perRequestCap)
                            var result = try await run.harness.run(spec, operation: work)
                            result.tls = run.tls
                            if `repeat` > 1 { print(Self.summaryLine(result) + " (round)") }
                            if best[index].map({ result.opsPerSecond > $0.opsPerSecond }) ?? true {
                                best[index] = result
                            }
                        }
                    }
                    for index in runs.indices {
                        guard let result = best[index] else { continue }
                        if result.baseline == .pooled { pooledRequests = max(pooledRequests, result.requests) }
                        print(Self.summaryLine(result))
                        results.append(result)
                    }
                }
                if let redisBenchmark {
                    for external in try await runRedisBenchmark(
                        redisBenchmark, workload: workload, concurrency: level, requests: pooledRequests, target: target)
                    {
                        print(Self.summaryLine(external))
                        results.append(external)
                    }
                }
            }
        }
        return results
    }

    /// redis-benchmark against the target (over TLS with --tls) and, in a --tls run on a throwaway server,
    /// against its plain port too, interleaved round by round; the best round of each.
    private func runRedisBenchmark(
        _ tool: RedisBenchmarkTool, workload: Workload, concurrency: Int, requests: Int, target: Target
    ) async throws -> [BenchResult] {
        guard let test = workload.redisBenchmarkTest(backend: backend), requests > 0 else { return [] }
        var connections: [(arguments: [String], tls: Bool)] = []
        if let connection = Target.redisBenchmarkConnection(target.redisConfiguration) {
            connections.append((connection, target.isTLS))
        }
        if let plain = target.plainConfiguration, let connection = Target.redisBenchmarkConnection(plain) {
            connections.append((connection, false))
        }
        var best: [Int: (row: RedisBenchmarkRow, cpu: Double?)] = [:]
        var failed: Set<Int> = []
        for _ in 0..<`repeat` {
            for (index, connection) in connections.enumerated() where !failed.contains(index) {
                let arguments = RedisBenchmarkTool.arguments(
                    connection: connection.arguments, concurrency: concurrency, requests: requests * pipeline,
                    tests: [test], valueSize: valueSize, pipeline: pipeline)
                do {
                    let (rows, cpu) = try await tool.run(arguments: arguments)
                    guard let row = rows[test] else {
                        failed.insert(index)
                        continue
                    }
                    if best[index].map({ row.requestsPerSecond > $0.row.requestsPerSecond }) ?? true {
                        best[index] = (row, cpu)
                    }
                } catch {
                    print("  redis-benchmark\(connection.tls ? " TLS" : "") baseline skipped: \(error)")
                    failed.insert(index)
                }
            }
        }
        return connections.indices.compactMap { index in
            guard !failed.contains(index), let (row, cpu) = best[index] else { return nil }
            return external(row, cpu: cpu, tls: connections[index].tls, workload: workload, concurrency: concurrency,
                            requests: requests)
        }
    }

    private func external(
        _ row: RedisBenchmarkRow, cpu bestCPU: Double?, tls: Bool, workload: Workload, concurrency: Int, requests: Int
    ) -> BenchResult {
        BenchResult.external(
            backend: backend.rawValue, workload: workload.rawValue, concurrency: concurrency,
            requests: requests, commandsPerRequest: pipeline, opsPerSecond: row.requestsPerSecond,
            p50Microseconds: row.p50Milliseconds.map { $0 * 1000 },
            p99Microseconds: row.p99Milliseconds.map { $0 * 1000 },
            maxMicroseconds: row.maxMilliseconds.map { $0 * 1000 },
            meanMicroseconds: row.averageMilliseconds.map { $0 * 1000 },
            // Its whole process (start-up and connecting included) ÷ the same request count as ours: it
            // ran `requests × pipeline` commands, `pipeline` per request.
            clientCPUMicrosecondsPerOp: ProcessCPU.perRequest(cpuMicroseconds: bestCPU, requests: requests), tls: tls)
    }

    static func summaryLine(_ result: BenchResult) -> String {
        var line = "  \(result.backend) \(result.workload) \(result.seriesName) c=\(result.concurrency): "
            + "\(TextFormat.grouped(result.opsPerSecond)) ops/s, p50 \(TextFormat.microseconds(result.p50Microseconds)) µs, "
            + "p99 \(TextFormat.microseconds(result.p99Microseconds)) µs"
            + (result.clientCPUMicrosecondsPerOp.map { ", cpu \(TextFormat.fixed($0, 2)) µs/req" } ?? "")
        if result.errors > 0 { line += ", \(result.errors) errors" }
        return line
    }

    // MARK: Target server

    /// The server under test: a throwaway one (stopped at the end) or the one named by --url.
    struct Target {
        var server: RedisServerProcess?
        /// The certificates of a --tls run's throwaway server (removed at the end).
        var certificates: TestCertificates?
        /// The connections under test (TLS with --tls).
        var redisConfiguration: RedisConnectionConfiguration
        /// --tls on a throwaway server: the same server's plain port, for the side-by-side pooled figures.
        var plainConfiguration: RedisConnectionConfiguration?
        var description: String

        /// Whether the connections under test speak TLS.
        var isTLS: Bool { redisConfiguration.tls != nil }

        static func tcpAddress(_ configuration: RedisConnectionConfiguration) -> (String, Int)? {
            if case .tcp(let host, let port) = configuration.endpoint { return (host, port) }
            return nil
        }

        /// `-h host -p port` or `-s socket` for redis-benchmark, plus `--tls [--cacert FILE] [--sni NAME]
        /// [--insecure]` for TLS; `nil` when it cannot be given the credentials without exposing them
        /// (redis-benchmark takes a password only on its command line), or the TLS settings cannot be
        /// expressed (trusted roots as PEM text, a client certificate).
        static func redisBenchmarkConnection(_ configuration: RedisConnectionConfiguration) -> [String]? {
            if configuration.password != nil || configuration.database != 0 { return nil }
            var arguments: [String]
            switch configuration.endpoint {
            case .tcp(let host, let port): arguments = ["-h", host, "-p", String(port)]
            case .unixSocket(let path): arguments = ["-s", path]
            }
            if let tls = configuration.tls {
                if tls.clientCertificate != nil { return nil }
                arguments.append("--tls")
                switch tls.trustRoots {
                case .system: break
                case .certificateFile(let path): arguments += ["--cacert", path]
                case .certificatePEM: return nil
                }
                if let serverName = tls.serverName { arguments += ["--sni", serverName] }
                if tls.certificateVerification == .none { arguments.append("--insecure") }
            }
            return arguments
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
            return Target(
                server: nil, redisConfiguration: configuration,
                description: "\(configuration.endpoint)\(configuration.tls != nil ? " (TLS)" : "") (--url)")
        }
        var certificates: TestCertificates?
        if tls {
            do {
                certificates = try TestCertificates.create()
            } catch {
                Self.printError("redis-bench: --tls could not make the run's certificates: \(error)")
                throw ExitCode(2)
            }
            certificates?.removeOnTerminationSignal()
        }
        let server: RedisServerProcess
        do {
            server = try RedisServerProcess.start(tls: certificates.map { .init(certificates: $0) })
        } catch RedisServerLauncherError.redisServerNotInstalled {
            certificates?.remove()
            Self.printError("""
                redis-bench: redis-server is not installed, and no --url was given.
                Install it with `apt-get install redis-server redis-tools` (or run Scripts/install-deps.sh),
                or benchmark a running server with `redis-bench --url redis://HOST:PORT`.
                """)
            throw ExitCode(2)
        } catch {
            certificates?.remove()
            throw error
        }
        var configuration = try RedisConnectionConfiguration(host: server.host, port: server.port)
        configuration.commandTimeout = commandTimeoutMs.map { .milliseconds($0) }
        configuration.replySpin = replySpin.policy
        var target = Target(
            server: server, certificates: certificates, redisConfiguration: configuration,
            description: "throwaway redis-server pid \(server.pid) on \(server.host):\(server.port)")
        if let certificates, let tlsPort = server.tlsPort {
            // The server's certificate names 127.0.0.1 (and localhost): full verification against the CA.
            var secure = configuration
            secure.endpoint = .tcp(host: server.host, port: tlsPort)
            secure.tls = TLSConfiguration(trustRoots: .certificateFile(certificates.caCertificatePath))
            target.plainConfiguration = configuration
            target.redisConfiguration = secure
        }
        return target
    }

    /// Writes the value GET reads (so that GET measures a hit of --value-size bytes).
    private func prepareKeys(_ target: Target) async throws {
        let connection = try await RedisConnection.connect(configuration: target.redisConfiguration)
        defer { connection.closeBlocking() }
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueSize)
        _ = try await connection.command("SET", BenchKeys.value, value)
    }

    private func header(
        target: Target, workloads: [Workload], levels: [Int], stop: BenchStopCondition, warmup: Int,
        redisBenchmark: RedisBenchmarkTool?
    ) -> String {
        var lines = ["redis-bench: \(target.description)"]
        if let server = target.server, let tlsPort = server.tlsPort, let certificates = target.certificates {
            lines.append(
                "  tls: TLS port \(tlsPort) (CA \(certificates.caCertificatePath), certificates made for this run); "
                    + "pooled also over plain TCP to port \(server.port) in the same rounds; per-request TLS "
                    + "connections share one TLS context, so they resume sessions (abbreviated handshakes)")
        } else if target.isTLS {
            lines.append("  tls: yes (--url); no plain side-by-side (needs the throwaway server's plain port)")
        }
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
        } else if Target.redisBenchmarkConnection(target.redisConfiguration) == nil {
            lines.append("  baselines: per-request, shared (redis-benchmark skipped: it takes a password or database only on its command line)")
        } else {
            lines.append("  baselines: per-request, shared, redis-benchmark" + (target.isTLS ? " (--tls --cacert)" : ""))
        }
        return lines.joined(separator: "\n")
    }

    static func printError(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
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
