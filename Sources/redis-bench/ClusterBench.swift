// `redis-bench --cluster N`: the usual workloads through a `RedisClusterClient` (one pool per node) against
// a throwaway N-primary cluster (or the cluster at --url seeds), with per-node and total throughput, and
// `redis-benchmark --cluster` at the same concurrency and request count for comparison.

import ArgumentParser
import ConnPool
import ConnPoolRedis
import ConnPoolRedisCluster
import RedisServerLauncher
import Synchronization
import Foundation

/// One measured (workload, concurrency) through the cluster client.
struct ClusterBenchResult: Sendable {
    var workload: String
    var concurrency: Int
    var requests: Int
    var errors: Int
    var seconds: Double
    var p50Microseconds: Double
    var p99Microseconds: Double
    /// Requests per second by node address (from each node pool's acquires).
    var perNode: [(node: String, requestsPerSecond: Double)]
    var redisBenchmark: Double?

    var requestsPerSecond: Double { seconds > 0 ? Double(requests) / seconds : 0 }
    var ratio: Double? { redisBenchmark.map { $0 > 0 ? requestsPerSecond / $0 : 0 } }
}

/// Runs the cluster benchmark for a ``RunCommand`` given `--cluster N`.
struct ClusterBench {
    let command: RunCommand
    let primaries: Int

    /// Keys spread over all slots (so every node serves its share).
    static let keyCount = 1024
    static func key(_ index: Int) -> String { "connpool-bench:cluster:\(index)" }
    /// The keys, made once (a request allocates no key).
    static let keys: [String] = (0..<keyCount).map(key)

    func run() async throws {
        let workloads = try command.parsedWorkloads()
        let levels = try command.parsedConcurrency()
        let requests = command.requests ?? (command.duration == nil ? RunCommand.defaultRequests : 0)
        if command.duration != nil { throw ValidationError("--cluster measures a request count: use --requests, not --duration") }
        if command.pipeline > 1 { throw ValidationError("--cluster does not support --pipeline (use the client's pipeline(_:) yourself)") }
        let warmup = command.warmup ?? RunCommand.defaultWarmup
        #if DEBUG
        print("warning: this is a debug build; measure with `swift run -c release redis-bench`")
        #endif

        var cluster: RedisClusterProcess?
        let seeds: [String]
        if let url = command.url {
            seeds = url.split(separator: ",").map(String.init)
        } else {
            guard primaries >= 3 else { throw ValidationError("--cluster needs at least 3 primaries (redis-cli --cluster create refuses fewer)") }
            print("starting a \(primaries)-primary cluster on loopback …")
            cluster = try await RedisClusterProcess.start(primaries: primaries, replicasPerPrimary: 0)
            seeds = cluster!.seedURLs
        }
        do {
            let results = try await measure(seeds: seeds, workloads: workloads, levels: levels, requests: requests, warmup: warmup)
            print("")
            print(Self.table(results), terminator: "")
            if let json = command.json {
                try FileOutput.write(Self.json(results), to: json)
                print("JSON written to \(json)")
            }
            await cluster?.stop()
        } catch {
            await cluster?.stop()
            throw error
        }
    }

    private func measure(seeds: [String], workloads: [Workload], levels: [Int], requests: Int, warmup: Int) async throws
        -> [ClusterBenchResult]
    {
        var results = [ClusterBenchResult]()
        let redisBenchmark = command.noCompare ? nil : RedisBenchmarkTool.find()
        let seedPort = seeds.first.flatMap { try? RedisConnectionConfiguration(url: $0) }.flatMap { configuration -> Int? in
            if case .tcp(_, let port) = configuration.endpoint { return port }
            return nil
        }
        for level in levels {
            var configuration = RedisClusterConfiguration()
            configuration.pool = PoolConfiguration().maxSize(command.poolSize ?? level).minSize(0).acquireTimeout(.seconds(10))
            configuration.defaultCommandTimeout = command.commandTimeoutMs.map { .milliseconds($0) }
            let client = try await RedisClusterClient.connect(seeds: seeds, configuration: configuration)
            let value = RedisArgument.bytes([UInt8](repeating: UInt8(ascii: "x"), count: command.valueSize))
            try await client.mset((0..<Self.keyCount).map { (Self.key($0), value) })
            for workload in workloads {
              for mode in command.mode.modes {
                let blocking = mode == .sync
                _ = await drive(client, workload: workload, concurrency: level, requests: warmup, value: value, blocking: blocking)
                let before = Self.acquiresByNode(client)
                var result = await drive(client, workload: workload, concurrency: level, requests: requests, value: value, blocking: blocking)
                let after = Self.acquiresByNode(client)
                result.perNode = after.keys.sorted().map { node in
                    (node, Double((after[node] ?? 0) - (before[node] ?? 0)) / max(result.seconds, 1e-9))
                }
                if let redisBenchmark, let seedPort, let test = workload.redisBenchmarkTest(backend: .redis) {
                    let arguments = ["--cluster", "-h", "127.0.0.1", "-p", String(seedPort), "-c", String(level),
                                     "-n", String(requests), "-t", test, "-d", String(command.valueSize),
                                     "-r", String(Self.keyCount), "--csv"]
                    result.redisBenchmark = try? await redisBenchmark.run(arguments: arguments).rows.values.first?.requestsPerSecond
                }
                print(Self.line(result))
                results.append(result)
              }
            }
            _ = try await client.del((0..<Self.keyCount).map(Self.key))
            await client.shutdown()
        }
        return results
    }

    /// Every request's arguments, built before the run (a request allocates no key and no argument array,
    /// like the single-server harness's fixed command).
    struct RequestTable: Sendable {
        let get: [[RedisArgument]]
        let set: [[RedisArgument]]
        let incr: [[RedisArgument]]

        init(value: RedisArgument) {
            get = ClusterBench.keys.map { ["GET", .string($0)] }
            set = ClusterBench.keys.map { ["SET", .string($0), value] }
            incr = (0..<64).map { ["INCR", .string("connpool-bench:cluster:counter:\($0)")] }
        }

        func arguments(_ workload: Workload, index: Int, key: Int) -> [RedisArgument] {
            switch workload {
            case .ping: return ["PING"]
            case .get: return get[key]
            case .set: return set[key]
            case .incr: return incr[index % 64]
            case .mixed: return Workload.mixedIsWrite(index) ? set[key] : get[key]
            }
        }
    }

    /// The loop of one task: requests until `requests` were taken; the latency of each, in microseconds,
    /// and the number of errors.
    private static func worker(
        _ client: RedisClusterClient, _ workload: Workload, task: Int, next: RequestCounter, requests: Int,
        table: RequestTable
    ) async -> ([Double], Int) {
        var latencies = [Double]()
        var errors = 0
        while true {
            let index = next.value.add(1, ordering: .relaxed).oldValue
            if index >= requests { break }
            let arguments = table.arguments(workload, index: index, key: (index &* 7919 &+ task) % Self.keyCount)
            let begin = ContinuousClock.now
            do {
                _ = try await client.command(arguments)
                let elapsed = ContinuousClock.now - begin
                latencies.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
            } catch {
                errors += 1
            }
        }
        return (latencies, errors)
    }

    /// Runs `requests` operations of `workload` with `concurrency` tasks (async API) or plain threads
    /// (blocking API); latencies of every request.
    private func drive(
        _ client: RedisClusterClient, workload: Workload, concurrency: Int, requests: Int, value: RedisArgument,
        blocking: Bool
    ) async -> ClusterBenchResult {
        let next = RequestCounter()
        let table = RequestTable(value: value)
        let started = ContinuousClock.now
        let perTask: [([Double], Int)]
        if blocking {
            perTask = await withCheckedContinuation { continuation in
                let results = ThreadResults(count: concurrency, continuation)
                for task in 0..<concurrency {
                    Thread.detachNewThread {
                        results.finish(task, Self.blockingWorker(client, workload, task: task, next: next, requests: requests, table: table))
                    }
                }
            }
        } else {
            let executor = command.asyncExecutor.executor
            perTask = await withTaskGroup(of: ([Double], Int).self) { group in
                for task in 0..<concurrency {
                    group.addTask(executorPreference: executor) {
                        await Self.worker(client, workload, task: task, next: next, requests: requests, table: table)
                    }
                }
                var all = [([Double], Int)]()
                for await part in group { all.append(part) }
                return all
            }
        }
        let elapsed = ContinuousClock.now - started
        let latencies = perTask.flatMap(\.0).sorted()
        func percentile(_ p: Double) -> Double {
            latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]
        }
        return ClusterBenchResult(
            workload: workload.rawValue + (blocking ? " sync" : ""), concurrency: concurrency, requests: latencies.count,
            errors: perTask.reduce(0) { $0 + $1.1 },
            seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
            p50Microseconds: percentile(0.5), p99Microseconds: percentile(0.99), perNode: [], redisBenchmark: nil)
    }

    /// ``worker(_:_:task:next:requests:table:)`` for the blocking API, on a plain thread.
    private static func blockingWorker(
        _ client: RedisClusterClient, _ workload: Workload, task: Int, next: RequestCounter, requests: Int,
        table: RequestTable
    ) -> ([Double], Int) {
        var latencies = [Double]()
        var errors = 0
        while true {
            let index = next.value.add(1, ordering: .relaxed).oldValue
            if index >= requests { break }
            let arguments = table.arguments(workload, index: index, key: (index &* 7919 &+ task) % Self.keyCount)
            let begin = ContinuousClock.now
            do {
                _ = try client.commandBlocking(arguments)
                let elapsed = ContinuousClock.now - begin
                latencies.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
            } catch {
                errors += 1
            }
        }
        return (latencies, errors)
    }

    private static func acquiresByNode(_ client: RedisClusterClient) -> [String: Int] {
        var result = [String: Int]()
        for node in client.status().nodes { result[node.address.description] = node.pool.metrics.acquires }
        return result
    }

    // MARK: Output

    static func line(_ result: ClusterBenchResult) -> String {
        var text = "\(result.workload) c=\(result.concurrency): \(Int(result.requestsPerSecond)) req/s, "
            + "p50 \(Int(result.p50Microseconds)) µs, p99 \(Int(result.p99Microseconds)) µs"
        if result.errors > 0 { text += ", \(result.errors) errors" }
        if let other = result.redisBenchmark, let ratio = result.ratio {
            text += "; redis-benchmark --cluster \(Int(other)) req/s (pooled \(fixed(ratio))×)"
        }
        return text
    }

    static func table(_ results: [ClusterBenchResult]) -> String {
        var lines = ["workload  conc   pooled req/s   p50 µs   p99 µs   redis-benchmark   ratio   per node req/s"]
        for result in results {
            let perNode = result.perNode.map { "\($0.node)=\(Int($0.requestsPerSecond))" }.joined(separator: " ")
            lines.append(
                pad(result.workload, 8) + "  " + pad(String(result.concurrency), 4, left: true) + "  "
                    + pad(String(Int(result.requestsPerSecond)), 13, left: true) + "  "
                    + pad(String(Int(result.p50Microseconds)), 7, left: true) + "  "
                    + pad(String(Int(result.p99Microseconds)), 7, left: true) + "  "
                    + pad(result.redisBenchmark.map { String(Int($0)) } ?? "-", 16, left: true) + "  "
                    + pad(result.ratio.map { fixed($0) } ?? "-", 6, left: true) + "   " + perNode)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func json(_ results: [ClusterBenchResult]) -> String {
        let rows = results.map { result in
            let perNode = result.perNode.map { "\"\($0.node)\": \(fixed($0.requestsPerSecond))" }.joined(separator: ", ")
            return "  {\"workload\": \"\(result.workload)\", \"concurrency\": \(result.concurrency), "
                + "\"requests\": \(result.requests), \"errors\": \(result.errors), "
                + "\"requests_per_second\": \(fixed(result.requestsPerSecond)), "
                + "\"p50_us\": \(fixed(result.p50Microseconds)), \"p99_us\": \(fixed(result.p99Microseconds)), "
                + "\"redis_benchmark_rps\": \(result.redisBenchmark.map { fixed($0) } ?? "null"), "
                + "\"per_node_rps\": {\(perNode)}}"
        }
        return "[\n" + rows.joined(separator: ",\n") + "\n]\n"
    }

    static func fixed(_ value: Double) -> String {
        let scaled = (value * 100).rounded() / 100
        return String(scaled)
    }

    static func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return left ? padding + text : text + padding
    }
}

/// The next request's index, shared by a run's tasks.
final class RequestCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// Collects the plain threads' results and resumes the waiting task when the last one is in.
final class ThreadResults: Sendable {
    private let state: LockedValue<(results: [([Double], Int)], remaining: Int)>
    private let continuation: CheckedContinuation<[([Double], Int)], Never>

    init(count: Int, _ continuation: CheckedContinuation<[([Double], Int)], Never>) {
        state = LockedValue(([], count))
        self.continuation = continuation
    }

    func finish(_ task: Int, _ result: ([Double], Int)) {
        let done = state.withLock { state -> [([Double], Int)]? in
            state.results.append(result)
            state.remaining -= 1
            return state.remaining == 0 ? state.results : nil
        }
        if let done { continuation.resume(returning: done) }
    }
}
