// `redis-bench chaos --cluster`: a load through a `RedisClusterClient` against a throwaway cluster (3
// primaries with a replica each, node timeout 1 s) while primaries are killed (SIGKILL) and restarted,
// frozen (SIGSTOP, then SIGCONT) and slots migrated. The JSON report has the keys of `redis-bench chaos`
// plus `failovers` and `redirects`.

import ArgumentParser
import ConnPool
import ConnPoolChaos
import ConnPoolRedis
import ConnPoolRedisCluster
import RedisServerLauncher
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The faults of a cluster chaos run.
enum ClusterFault: String, CaseIterable, Sendable {
    /// SIGKILL a primary; its replica is promoted; the node is restarted (it rejoins as a replica).
    case kill
    /// SIGSTOP a primary for --stop-pause-ms, then SIGCONT (longer than the node timeout: a failover).
    case stop
    /// Move a slot holding keys of the load to another primary (ASK during, MOVED after).
    case migrate
}

/// What the load saw: successes (with their slot and time) and failures by error type.
final class ClusterChaosLoad: Sendable {
    let succeeded = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
    let stopFlag = Atomic<Bool>(false)
    let failures = LockedValue<[String: Int]>([:])
    /// Per slot, the completion times of successful requests that started after `since`, in order.
    let successes = LockedValue<[UInt16: [ContinuousClock.Instant]]>([:])
    let maxRequestMs = LockedValue<Double>(0)
}

struct ClusterChaos {
    let command: ChaosCommand

    static let keySpace = 1000
    static func key(_ index: Int) -> String { "chaos:cluster:\(index)" }

    func run() async throws {
        let faults = [ClusterFault.kill, .stop, .migrate]
        let log: @Sendable (String) -> Void = { line in
            guard !command.quiet else { return }
            var text = line + "\n"
            text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        log("chaos --cluster: starting 3 primaries with a replica each (node timeout 1 s)")
        let cluster = try await RedisClusterProcess.start(primaries: 3, replicasPerPrimary: 1, nodeTimeout: .seconds(1))
        do {
            let report = try await runLoad(cluster, faults: faults, log: log)
            await cluster.stop()
            print(report.summary)
            if let json = command.json {
                try writeTextFile(json, report.json)
                print("chaos: report written to \(json)")
            }
            if !report.violations.isEmpty { throw ExitCode(1) }
        } catch {
            await cluster.stop()
            throw error
        }
    }

    private func runLoad(
        _ cluster: RedisClusterProcess, faults: [ClusterFault], log: @escaping @Sendable (String) -> Void
    ) async throws -> ClusterChaosReport {
        var configuration = RedisClusterConfiguration()
        configuration.pool = PoolConfiguration().maxSize(command.poolSize).minSize(command.minSize)
            .acquireTimeout(.milliseconds(command.acquireTimeoutMs))
            .connectTimeout(.milliseconds(command.connectTimeoutMs))
            .circuitBreakerThreshold(command.breakerThreshold > 0 ? command.breakerThreshold : nil)
            .maintenanceInterval(.seconds(1))
        configuration.defaultCommandTimeout = .milliseconds(command.commandTimeoutMs)
        configuration.requestTimeout = .seconds(5)
        configuration.refreshInterval = .seconds(1)
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: configuration)
        try await client.mset((0..<Self.keySpace).map { (Self.key($0), RedisArgument.string("0")) })

        let load = ClusterChaosLoad()
        let started = ContinuousClock.now
        let concurrency = command.concurrency
        let loadTask = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<concurrency {
                    group.addTask { await Self.work(client, load: load, worker: worker) }
                }
            }
        }

        var records = [ClusterFaultRecord]()
        let duration = Duration.milliseconds(Int64(command.duration * 1000))
        var next = started + .milliseconds(Int64(command.firstFault * 1000))
        var turn = 0
        while next + .seconds(1) < started + duration {
            try await Task.sleep(until: next)
            let fault = faults[turn % faults.count]
            turn += 1
            records.append(await inject(fault, cluster: cluster, client: client, started: started, log: log))
            next += .milliseconds(Int64(command.faultInterval * 1000))
        }
        try await Task.sleep(until: started + duration)
        // Let every fault be followed by a success (or the grace period pass).
        let graceEnd = ContinuousClock.now + .milliseconds(Int64(command.recoveryGrace * 1000))
        while ContinuousClock.now < graceEnd, records.contains(where: { recovery(of: $0, load: load, started: started) == nil }) {
            try await Task.sleep(for: .milliseconds(50))
        }
        load.stopFlag.store(true, ordering: .relaxed)
        await loadTask.value
        let elapsed = ContinuousClock.now - started

        var report = ClusterChaosReport()
        report.requests = load.requests.load(ordering: .relaxed)
        report.succeeded = load.succeeded.load(ordering: .relaxed)
        report.failed = load.failures.withLock { $0 }
        report.faults = records.map { record in
            var record = record
            record.recoveryMs = recovery(of: record, load: load, started: started)
            return record
        }
        report.concurrency = concurrency
        report.poolSize = command.poolSize
        report.acquireTimeoutMs = Double(command.acquireTimeoutMs)
        report.acquireSlackMs = Double(command.slackMs)
        report.maxRequestMs = load.maxRequestMs.withLock { $0 }
        let status = client.status()
        let pools = status.nodes.flatMap { [$0.pool] + ($0.readOnlyPool.map { [$0] } ?? []) }
        report.maxAcquireWaitMs = Double(pools.map(\.metrics.acquireWait.maxNanoseconds).max() ?? 0) / 1e6
        report.leasesHeldAfter = pools.reduce(0) { $0 + $1.metrics.inUse }
        report.waitersAfter = pools.reduce(0) { $0 + $1.metrics.waiting }
        report.poolCreated = pools.reduce(0) { $0 + $1.metrics.created }
        report.poolCreationFailures = pools.reduce(0) { $0 + $1.metrics.creationFailures }
        report.poolAcquireTimeouts = pools.reduce(0) { $0 + $1.metrics.acquireTimeouts }
        report.poolFailedFast = pools.reduce(0) { $0 + $1.metrics.failedFast }
        report.failovers = status.counters.failoversSeen
        report.redirects = status.counters.redirects
        report.counters = status.counters
        await client.shutdown()
        let after = client.status()
        report.poolConnectionsAfterShutdown = after.nodes.reduce(0) { $0 + $1.pool.metrics.total + ($1.readOnlyPool?.metrics.total ?? 0) }
        report.serverClientsAfterShutdown = await Self.serverClients(cluster)
        report.connectionsOpenAfterShutdown = max(report.poolConnectionsAfterShutdown, report.serverClientsAfterShutdown)
        report.elapsedSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        report.checkInvariants()
        return report
    }

    /// One load task: GET or SET (1 in 4) of random keys until stopped; each success is recorded with its slot.
    private static func work(_ client: RedisClusterClient, load: ClusterChaosLoad, worker: Int) async {
        var random = SplitMix(seed: UInt64(worker) &* 0x9E37_79B9 &+ 1)
        while !load.stopFlag.load(ordering: .relaxed) {
            let index = Int(random.next() % UInt64(keySpace))
            let key = Self.key(index)
            let begin = ContinuousClock.now
            load.requests.add(1, ordering: .relaxed)
            do {
                if random.next() % 4 == 0 {
                    try await client.send(.set(key, String(random.next() % 1000)))
                } else {
                    _ = try await client.send(.get(key))
                }
                let end = ContinuousClock.now
                load.succeeded.add(1, ordering: .relaxed)
                let slot = ClusterSlot.slot(forKey: key)
                load.successes.withLock { $0[slot, default: []].append(end) }
                let ms = Double((end - begin).components.attoseconds) / 1e15 + Double((end - begin).components.seconds) * 1000
                load.maxRequestMs.withLock { $0 = max($0, ms) }
            } catch {
                let category = String(describing: type(of: error)) + "." + String("\(error)".prefix { $0 != "(" && $0 != ":" })
                load.failures.withLock { $0[category, default: 0] += 1 }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// Milliseconds from the fault's end until a request on one of its slots succeeded.
    private func recovery(of record: ClusterFaultRecord, load: ClusterChaosLoad, started: ContinuousClock.Instant) -> Double? {
        guard record.error == nil else { return nil }
        let end = started + .milliseconds(Int64((record.time * 1000 + record.durationMs).rounded(.up)))
        let first = load.successes.withLock { successes in
            record.slots.compactMap { slot in successes[slot]?.first { $0 > end } }.min()
        }
        return first.map { Double(($0 - end).components.attoseconds) / 1e15 + Double(($0 - end).components.seconds) * 1000 }
    }

    private func inject(
        _ fault: ClusterFault, cluster: RedisClusterProcess, client: RedisClusterClient, started: ContinuousClock.Instant,
        log: @Sendable (String) -> Void
    ) async -> ClusterFaultRecord {
        // One fault at a time: the cluster is healthy again (every node agrees, replicas linked) first.
        try? await cluster.waitUntilHealthy(timeout: .seconds(15))
        let at = ContinuousClock.now
        var record = ClusterFaultRecord(kind: fault.rawValue, time: Self.seconds(at - started), durationMs: 0, recoveryMs: nil, detail: "", error: nil, slots: [])
        do {
            // A slot of the load's keys, and its primary.
            let slot = ClusterSlot.slot(forKey: Self.key(Int.random(in: 0..<Self.keySpace)))
            let primary = try cluster.owner(ofSlot: Int(slot))
            let ownedSlots = client.topology.shards.first { $0.primary.port == primary.port }?.slotRanges ?? []
            let loadSlots = Set((0..<Self.keySpace).map { ClusterSlot.slot(forKey: Self.key($0)) })
            record.slots = loadSlots.filter { slot in ownedSlots.contains { $0.contains(Int(slot)) } }.sorted()
            switch fault {
            case .kill:
                try await primary.kill(signal: SIGKILL)
                // The replica takes over; the node comes back as a replica (same port and nodes.conf).
                try await Task.sleep(for: .seconds(2))
                try await primary.restart()
                record.detail = "killed and restarted \(primary.port)"
            case .stop:
                try await primary.kill(signal: SIGSTOP)
                try await Task.sleep(for: .milliseconds(command.stopPauseMs))
                try await primary.kill(signal: SIGCONT)
                record.detail = "froze \(primary.port) for \(command.stopPauseMs) ms"
            case .migrate:
                let destination = cluster.primaries().first { $0.port != primary.port }
                guard let destination else { throw ChaosError.setup("no other primary to migrate to") }
                try await cluster.migrateSlot(Int(slot), to: destination, batchSize: 5)
                record.slots = [slot]
                record.detail = "slot \(slot): \(primary.port) -> \(destination.port)"
            }
        } catch {
            record.error = "\(error)"
        }
        record.durationMs = Self.seconds(ContinuousClock.now - at) * 1000
        log("chaos --cluster: t=\(Self.fixed(record.time)) s \(fault.rawValue): \(record.detail)\(record.error.map { " ERROR: \($0)" } ?? "")")
        return record
    }

    /// A `CLIENT LIST` line of a client of the load: not a replication link (`flags=S`/`M`), not the
    /// counting connection, not a node's cached `MIGRATE` connection (`cmd=restore-asking`).
    private static func isLoadClient(_ line: Substring) -> Bool {
        !line.contains("flags=S") && !line.contains("flags=M") && !line.contains("cmd=client|list")
            && !line.contains("cmd=restore-asking")
    }

    /// Clients connected to the nodes, minus the counting connection itself and replication links. A
    /// server notices a closed connection at its next event-loop turn: counted again every 20 ms for up to
    /// 2 s until none is left.
    private static func serverClients(_ cluster: RedisClusterProcess) async -> Int {
        let deadline = ContinuousClock.now + .seconds(2)
        while true {
            var total = 0
            for node in cluster.nodes {
                guard let list = try? await cluster.command(["CLIENT", "LIST"], on: node) else { continue }
                let clients = list.text.split(separator: "\n").filter(isLoadClient)
                total += clients.count
            }
            if total == 0 || ContinuousClock.now >= deadline {
                if total > 0 {
                    for node in cluster.nodes {
                        guard let list = try? await cluster.command(["CLIENT", "LIST"], on: node) else { continue }
                        for line in list.text.split(separator: "\n") where isLoadClient(line) {
                            print("chaos --cluster: client still connected to \(node.port): \(line)")
                        }
                    }
                }
                return total
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func fixed(_ value: Double) -> String { String((value * 100).rounded() / 100) }
}

/// A deterministic generator for the load's choices.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One fault of a cluster chaos run.
struct ClusterFaultRecord: Sendable {
    var kind: String
    var time: Double
    var durationMs: Double
    var recoveryMs: Double?
    var detail: String
    var error: String?
    /// The load's slots the fault affected (recovery is a success on one of them).
    var slots: [UInt16]
}

/// The cluster chaos report: the keys of `redis-bench chaos` plus `failovers` and `redirects`.
struct ClusterChaosReport {
    var requests = 0
    var succeeded = 0
    var failed: [String: Int] = [:]
    var maxAcquireWaitMs = 0.0
    var acquireTimeoutMs = 0.0
    var acquireSlackMs = 0.0
    var maxRequestMs = 0.0
    var faults: [ClusterFaultRecord] = []
    var leasesHeldAfter = 0
    var waitersAfter = 0
    var connectionsOpenAfterShutdown = 0
    var poolConnectionsAfterShutdown = 0
    var serverClientsAfterShutdown = 0
    var poolCreated = 0
    var poolCreationFailures = 0
    var poolAcquireTimeouts = 0
    var poolFailedFast = 0
    var elapsedSeconds = 0.0
    var poolSize = 0
    var concurrency = 0
    var failovers = 0
    var redirects = 0
    var counters = RedisClusterCounters()
    var violations: [String] = []

    var acquiresPastLimit: Int { maxAcquireWaitMs > acquireTimeoutMs + acquireSlackMs ? 1 : 0 }

    mutating func checkInvariants() {
        violations = []
        if acquiresPastLimit > 0 {
            violations.append("an acquire waited \(ClusterChaos.fixed(maxAcquireWaitMs)) ms, past the timeout + slack")
        }
        if leasesHeldAfter != 0 { violations.append("\(leasesHeldAfter) lease(s) still held after the load stopped") }
        if waitersAfter != 0 { violations.append("\(waitersAfter) caller(s) still waiting after the load stopped") }
        if connectionsOpenAfterShutdown != 0 {
            violations.append("\(connectionsOpenAfterShutdown) connection(s) open after shutdown (pools: \(poolConnectionsAfterShutdown), servers: \(serverClientsAfterShutdown))")
        }
        for fault in faults {
            if let error = fault.error {
                violations.append("fault \(fault.kind) at \(ClusterChaos.fixed(fault.time)) s could not be injected: \(error)")
            } else if fault.recoveryMs == nil {
                violations.append("no request on the affected slots succeeded after the \(fault.kind) fault at \(ClusterChaos.fixed(fault.time)) s")
            }
        }
        if succeeded == 0 { violations.append("no request succeeded at all") }
    }

    var summary: String {
        var lines = [String]()
        let rate = elapsedSeconds > 0 ? Double(succeeded) / elapsedSeconds : 0
        lines.append("chaos --cluster: \(succeeded)/\(requests) requests succeeded in \(ClusterChaos.fixed(elapsedSeconds)) s (\(Int(rate)) req/s); failed: \(failed.isEmpty ? "none" : failed.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: ", "))")
        lines.append("  failovers seen \(failovers), redirects \(redirects) (MOVED \(counters.movedRedirects), ASK \(counters.askRedirects)), refreshes \(counters.refreshes), retries: busy \(counters.clusterBusyRetries), connection \(counters.connectionRetries)")
        lines.append("  max acquire wait \(ClusterChaos.fixed(maxAcquireWaitMs)) ms (timeout \(ClusterChaos.fixed(acquireTimeoutMs)) ms), max request \(ClusterChaos.fixed(maxRequestMs)) ms")
        for fault in faults {
            lines.append("  t=\(ClusterChaos.fixed(fault.time)) s \(fault.kind): lasted \(ClusterChaos.fixed(fault.durationMs)) ms, recovered after \(fault.recoveryMs.map { "\(ClusterChaos.fixed($0)) ms" } ?? "NONE") (\(fault.detail))")
        }
        lines.append(violations.isEmpty ? "PASSED: every invariant held" : "FAILED:\n" + violations.map { "  - " + $0 }.joined(separator: "\n"))
        return lines.joined(separator: "\n")
    }

    var json: String {
        func string(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 {
                        out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
            return out + "\""
        }
        func number(_ value: Double) -> String { value.isFinite ? String(value) : "null" }
        let failedJSON = "{" + failed.sorted { $0.key < $1.key }.map { "\(string($0.key)): \($0.value)" }.joined(separator: ", ") + "}"
        let faultsJSON = "[" + faults.map { fault in
            "{\"kind\": \(string(fault.kind)), \"time\": \(number(fault.time)), \"duration_ms\": \(number(fault.durationMs)), "
                + "\"recovery_ms\": \(fault.recoveryMs.map(number) ?? "null"), \"detail\": \(string(fault.detail))"
                + (fault.error.map { ", \"error\": \(string($0))" } ?? "") + "}"
        }.joined(separator: ", ") + "]"
        let fields: [(String, String)] = [
            ("passed", violations.isEmpty ? "true" : "false"),
            ("requests", String(requests)),
            ("succeeded", String(succeeded)),
            ("failed", failedJSON),
            ("max_acquire_wait_ms", number(maxAcquireWaitMs)),
            ("acquire_timeout_ms", number(acquireTimeoutMs)),
            ("acquire_slack_ms", number(acquireSlackMs)),
            ("acquires_past_limit", String(acquiresPastLimit)),
            ("slow_acquires", "[]"),
            ("faults", faultsJSON),
            ("leases_held_after", String(leasesHeldAfter)),
            ("waiters_after", String(waitersAfter)),
            ("connections_open_after_shutdown", String(connectionsOpenAfterShutdown)),
            ("pool_connections_after_shutdown", String(poolConnectionsAfterShutdown)),
            ("server_clients_after_shutdown", String(serverClientsAfterShutdown)),
            ("shutdown", "{}"),
            ("pool", "{\"created\": \(poolCreated), \"creation_failures\": \(poolCreationFailures), \"acquire_timeouts\": \(poolAcquireTimeouts), \"failed_fast\": \(poolFailedFast), \"closed_by_reason\": {}}"),
            ("elapsed_s", number(elapsedSeconds)),
            ("pool_size", String(poolSize)),
            ("concurrency", String(concurrency)),
            ("violations", "[" + violations.map(string).joined(separator: ", ") + "]"),
            ("failovers", String(failovers)),
            ("redirects", String(redirects)),
        ]
        return "{" + fields.map { "\(string($0.0)): \($0.1)" }.joined(separator: ", ") + "}\n"
    }
}
