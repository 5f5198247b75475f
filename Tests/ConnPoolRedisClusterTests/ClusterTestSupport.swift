import ConnPool
import ConnPoolRedis
import ConnPoolRedisCluster
import RedisServerLauncher
import Synchronization
import Testing

/// Starts a throwaway cluster (by default 3 primaries with a replica each, node timeout 1 s), runs `body` and stops
/// the cluster whether `body` returns or throws.
func withCluster<T: Sendable>(
    primaries: Int = 3, replicasPerPrimary: Int = 1, nodeTimeout: Duration = .seconds(1),
    _ body: (RedisClusterProcess) async throws -> T
) async throws -> T {
    let cluster = try await RedisClusterProcess.start(
        primaries: primaries, replicasPerPrimary: replicasPerPrimary, nodeTimeout: nodeTimeout)
    do {
        let result = try await body(cluster)
        await cluster.stop()
        return result
    } catch {
        await cluster.stop()
        throw error
    }
}

/// A client configuration for tests: short backoffs, refresh every second.
func testConfiguration(readPolicy: RedisClusterReadPolicy = .primaryOnly) -> RedisClusterConfiguration {
    var configuration = RedisClusterConfiguration()
    configuration.readPolicy = readPolicy
    configuration.refreshInterval = .seconds(1)
    configuration.requestTimeout = .seconds(6)
    return configuration
}

/// A direct connection to one node (not through the cluster client).
func directConnection(_ node: RedisServerProcess) async throws -> RedisConnection {
    var configuration = try RedisConnectionConfiguration(port: node.port)
    configuration.commandTimeout = .seconds(5)
    return try await RedisConnection.connect(configuration: configuration)
}

/// A key whose slot is `slot`: `{tag}:suffix` with a tag found by search.
func key(inSlot slot: UInt16, _ suffix: String) -> String {
    "{\(tag(forSlot: slot))}:\(suffix)"
}

func tag(forSlot slot: UInt16) -> String {
    var candidate = 0
    while ClusterSlot.slot(forKey: "t\(candidate)") != slot { candidate += 1 }
    return "t\(candidate)"
}

/// Writers and readers through a cluster client, each owning its keys: every write sets the next
/// sequence number, every read must return the last one written. Records every failure and the last
/// acknowledged value of each key (with when it was acknowledged).
final class ClusterLoad: Sendable {
    struct Ack: Sendable {
        var value: Int
        /// When the acknowledged SET was sent, and when its reply came.
        var sentAt: ContinuousClock.Instant
        var at: ContinuousClock.Instant
    }

    let client: RedisClusterClient
    let keys: [String]
    let succeeded = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let stopFlag = Atomic<Bool>(false)
    let failures = LockedValue<[String]>([])
    let acks = LockedValue<[String: Ack]>([:])
    /// Per key, the first and last time a request on it succeeded (to measure recovery).
    let lastSuccess = LockedValue<[String: ContinuousClock.Instant]>([:])

    init(client: RedisClusterClient, keys: [String]) {
        self.client = client
        self.keys = keys
    }

    /// Runs `workers` tasks until ``stop()``.
    func run(workers: Int) async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask { await self.work(Array(self.keys[worker...].enumerated().filter { $0.offset % workers == 0 }.map(\.element))) }
            }
        }
    }

    func stop() { stopFlag.store(true, ordering: .relaxed) }

    private func work(_ mine: [String]) async {
        var sequence = [String: Int]()
        var round = 0
        while !stopFlag.load(ordering: .relaxed) {
            round += 1
            for key in mine {
                if stopFlag.load(ordering: .relaxed) { return }
                let next = (sequence[key] ?? 0) + 1
                do {
                    let sentAt = ContinuousClock.now
                    try await client.send(.set(key, String(next)))
                    sequence[key] = next
                    let now = ContinuousClock.now
                    acks.withLock { $0[key] = Ack(value: next, sentAt: sentAt, at: now) }
                    succeeded.add(1, ordering: .relaxed)
                    let value = try await client.send(.get(key))
                    if value != String(next) {
                        record("\(key): read \(value ?? "nil") after writing \(next)")
                    } else {
                        succeeded.add(1, ordering: .relaxed)
                        let now = ContinuousClock.now
                        lastSuccess.withLock { $0[key] = now }
                    }
                } catch {
                    // The outcome of a failed write is unknown: it may have been applied.
                    sequence[key] = next
                    record("\(key): \(error)")
                }
            }
        }
    }

    private func record(_ failure: String) {
        failed.add(1, ordering: .relaxed)
        failures.withLock { if $0.count < 20 { $0.append(failure) } }
    }

    var failureSummary: String { failures.withLock { $0.joined(separator: "\n") } }
}
