import ConnPool
import ConnPoolRedis
import ConnPoolRedisCluster
import ConnPoolRedisClusterMetrics
import ConnPoolTestSupport
import MetricsTestKit
import RedisServerLauncher
import Testing

/// One cluster for the routing tests (they do not change its topology), started by the first test
/// that asks; its servers are stopped by the launcher's exit hook.
enum SharedCluster {
    private static let cluster = Task { try await RedisClusterProcess.start(primaries: 3, replicasPerPrimary: 1) }
    static func get() async throws -> RedisClusterProcess { try await cluster.value }
}

/// The number of calls of `command` every primary has served (`INFO commandstats`).
func calls(of command: String, on nodes: [RedisServerProcess]) async throws -> Int {
    var total = 0
    for node in nodes {
        let connection = try await directConnection(node)
        defer { connection.closeBlocking() }
        let stats = try await connection.command("INFO", "commandstats").string
        for line in stats.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_\(command):calls=") {
            total += Int(line.dropFirst("cmdstat_\(command):calls=".count).prefix { $0.isNumber }) ?? 0
        }
    }
    return total
}

@Suite("Redis Cluster routing", .serialized, .processExclusive)
struct ClusterRoutingTests {
    /// 10,000 keys written through the client: each is in the slot `CLUSTER KEYSLOT` names, and a direct
    /// read on the primary owning that slot returns its value.
    @Test func tenThousandKeysLandOnTheRightNode() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: [cluster.seedURLs[0]], configuration: testConfiguration())
        let keys = (0..<10_000).map { "route:\($0)" }
        for batch in stride(from: 0, to: keys.count, by: 1000) {
            let replies = try await client.pipeline(keys[batch..<(batch + 1000)].map { ["SET", .string($0), .string("v-\($0)")] })
            #expect(replies.allSatisfy { $0 == .status("OK") })
        }
        #expect(client.counters.redirects == 0)

        // The client's slot is the server's.
        let some = try await directConnection(cluster.nodes[0])
        defer { some.closeBlocking() }
        let serverSlots = try await some.pipeline(keys.map { ["CLUSTER", "KEYSLOT", .string($0)] })
        let mismatches = zip(keys, serverSlots).filter { key, reply in (try? reply.int) != Int(ClusterSlot.slot(forKey: key)) }
        #expect(mismatches.isEmpty, "\(mismatches.count) keys with another slot than CLUSTER KEYSLOT")

        // Each key is on the primary that owns its slot, read directly.
        let topology = client.topology
        #expect(topology.coveredSlots == 16_384)
        var byOwner = [Int: [String]]()
        for key in keys {
            let owner = try #require(topology.shard(forSlot: Int(ClusterSlot.slot(forKey: key)))?.primary.port)
            byOwner[owner, default: []].append(key)
        }
        #expect(byOwner.count == 3)
        for (port, ownedKeys) in byOwner {
            let node = try #require(cluster.nodes.first { $0.port == port })
            let connection = try await directConnection(node)
            defer { connection.closeBlocking() }
            let values = try await connection.pipeline(ownedKeys.map { ["GET", .string($0)] })
            let wrong = zip(ownedKeys, values).filter { key, value in (try? value.string) != "v-\(key)" }
            #expect(wrong.isEmpty, "\(wrong.count) keys not found on their slot's primary \(port)")
        }
        let deleted = try await client.del(keys)
        #expect(deleted == keys.count)
        await client.shutdown()
    }

    /// Keys in two slots fail with CROSSSLOT before anything is sent; a hash tag keeps them together.
    @Test func crossSlotFailsBeforeSending() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let primaries = cluster.primaries()
        let before = try await calls(of: "mget", on: primaries)
        #expect(ClusterSlot.slot(forKey: "a") != ClusterSlot.slot(forKey: "b"))
        do {
            _ = try await client.command("MGET", "a", "b")
            Issue.record("MGET a b should fail with CROSSSLOT")
        } catch let error as RedisClusterError {
            guard case .crossSlot(let command, let slots) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(command == "MGET")
            #expect(Set(slots) == [ClusterSlot.slot(forKey: "a"), ClusterSlot.slot(forKey: "b")])
        }
        let after = try await calls(of: "mget", on: primaries)
        #expect(after == before, "the MGET reached a node")
        let sameSlot = try await client.command("MGET", "{x}a", "{x}b")
        #expect(sameSlot == .array([.null, .null]))
        await client.shutdown()
    }

    /// Keyless commands: DBSIZE is summed over the primaries, SCRIPT LOAD reaches every node, KEYS is
    /// concatenated, PING goes to one primary.
    @Test func keylessCommandsGoToOneOrAllNodes() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let keys = (0..<60).map { "keyless:\($0)" }
        try await client.mset(keys.map { ($0, RedisArgument.string("x")) })
        var direct = 0
        for primary in cluster.primaries() {
            let connection = try await directConnection(primary)
            direct += try await connection.command("DBSIZE").int
            connection.closeBlocking()
        }
        let summed = try await client.command("DBSIZE").int
        #expect(summed == direct)
        #expect(summed >= 60)
        let listed = try await client.command("KEYS", "keyless:*").array.map { try $0.string }
        #expect(Set(listed) == Set(keys))
        #expect(try await client.command("PING").string == "PONG")

        let sha = try await client.command("SCRIPT", "LOAD", "return 42").string
        for node in cluster.nodes {
            let connection = try await directConnection(node)
            let exists = try await connection.command("SCRIPT", "EXISTS", sha)
            #expect(exists == .array([.integer(1)]), "the script is not on \(node.port)")
            connection.closeBlocking()
        }
        // EVALSHA with a key routes by the key.
        #expect(try await client.command("EVALSHA", sha, "1", "keyless:0").int == 42)
        #expect(try await client.del(keys) == 60)
        await client.shutdown()
    }

    /// MGET/MSET/DEL/EXISTS/UNLINK split by slot and merged in the caller's order; a pipeline of mixed
    /// commands returns the replies in order, errors in place.
    @Test func multiKeyCommandsAndPipelines() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let keys = (0..<200).map { "multi:\($0)" }
        #expect(Set(keys.map { ClusterSlot.slot(forKey: $0) }).count > 100)
        try await client.mset(keys.enumerated().map { ($1, RedisArgument.integer($0)) })
        let asked = ["multi:missing"] + keys.reversed() + ["multi:5"]
        let values = try await client.mget(asked)
        #expect(values.count == asked.count)
        #expect(values[0] == nil)
        #expect(values[1].map { String(decoding: $0, as: UTF8.self) } == "199")
        #expect(values.last??.isEmpty == false)
        #expect(values.last!.map { String(decoding: $0, as: UTF8.self) } == "5")
        #expect(try await client.exists(keys + ["multi:missing"]) == 200)

        let replies = try await client.pipeline([
            ["INCR", "multi:counter"], ["GET", "multi:7"], ["LPUSH", "multi:7", "x"], ["INCR", "multi:counter"], ["PING"],
        ])
        #expect(replies[0] == .integer(1))
        #expect(replies[1] == .bulkString(Array("7".utf8)))
        guard case .error(let message) = replies[2] else {
            Issue.record("expected WRONGTYPE, got \(replies[2])")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(replies[3] == .integer(2))
        #expect(replies[4] == .status("PONG"))
        let typed = try await client.pipeline(keys.prefix(3).map { RedisCommand<String?>.get($0) })
        #expect(try typed.map { try $0.get() } == ["0", "1", "2"])

        #expect(try await client.unlink(Array(keys.prefix(100))) == 100)
        #expect(try await client.del(Array(keys.dropFirst(100)) + ["multi:counter"]) == 101)
        await client.shutdown()
    }

    /// Every path that runs one child task per node (a fan-out to all primaries, a pipeline over several
    /// nodes, the split MGET, a topology refresh), from 8 tasks at once, each reply checked. In a release
    /// build this crashed when the children returned `(ClusterNode, Result<…>)` tuples (see
    /// `gatherConcurrently`); `Scripts/release-smoke.sh` runs it with `-c release`.
    @Test func fanOutPathsUnderConcurrency() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let keys = (0..<30).map { "fanout:\($0)" }
        try await client.mset(keys.map { ($0, RedisArgument.string("v-\($0)")) })
        let wrong = LockedValue<[String]>([])
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for round in 0..<150 {
                        do {
                            switch (worker + round) % 4 {
                            case 0:
                                let reply = try await client.command("PING")
                                if reply != .status("PONG") { wrong.withLock { $0.append("PING: \(reply)") } }
                            case 1:
                                let replies = try await client.pipeline(keys.map { ["GET", .string($0)] })
                                if replies != keys.map({ .bulkString(Array("v-\($0)".utf8)) }) { wrong.withLock { $0.append("pipeline: \(replies)") } }
                            case 2:
                                let values = try await client.mget(keys)
                                let strings = values.map { $0.map { String(decoding: $0, as: UTF8.self) } }
                                if strings != keys.map({ "v-\($0)" }) { wrong.withLock { $0.append("MGET: \(strings)") } }
                            default:
                                if round % 20 == 3 { try await client.refreshTopology() }
                                let size = try await client.command("DBSIZE").int
                                if size < keys.count { wrong.withLock { $0.append("DBSIZE: \(size)") } }
                            }
                        } catch {
                            wrong.withLock { $0.append("\(error)") }
                        }
                    }
                }
            }
        }
        let failures = wrong.withLock { $0 }
        #expect(failures.isEmpty, "\(failures.count) of 1,200 requests failed or got a wrong reply: \(failures.prefix(3))")
        #expect(try await client.del(keys) == keys.count)
        await client.shutdown()
    }

    /// A transaction runs on its slot's primary; one spanning slots, or without keys, is refused
    /// before sending.
    @Test func transactionsStayWithinOneSlot() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let results = try await client.transaction([["SET", "{tx}a", "1"], ["INCR", "{tx}a"], ["GET", "{tx}a"], ["PING"]])
        #expect(results == [.status("OK"), .integer(2), .bulkString(Array("2".utf8)), .status("PONG")])
        let typed = try await client.transaction([RedisCommand<Int>.incr("{tx}n"), .incr("{tx}n")])
        #expect(try typed?.map { try $0.get() } == [1, 2])
        await #expect(throws: RedisClusterError.transactionSpansSlots(slots: [ClusterSlot.slot(forKey: "a"), ClusterSlot.slot(forKey: "b")])) {
            _ = try await client.transaction([["SET", "a", "1"], ["SET", "b", "1"]])
        }
        await #expect(throws: RedisClusterError.transactionWithoutKeys) {
            _ = try await client.transaction([["PING"]])
        }
        _ = try await client.del(["{tx}a", "{tx}n"])
        await client.shutdown()
    }

    /// The cluster-wide SCAN returns every key of every primary, async and blocking.
    @Test func scanVisitsEveryPrimary() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let keys = Set((0..<500).map { "scan:\($0)" })
        try await client.mset(keys.map { ($0, RedisArgument.string("v")) })
        var seen = Set<String>()
        for try await key in client.scan(match: "scan:*", count: 50) { seen.insert(key) }
        #expect(seen == keys)
        let blockingSeen = try await onThread {
            var seen = Set<String>()
            try client.scanBlocking(match: "scan:*", count: 50) { seen.insert($0) }
            return seen
        }
        #expect(blockingSeen == keys)
        _ = try await client.del(Array(keys))
        await client.shutdown()
    }

    /// The blocking API on a plain thread: connect, commands, multi-key, pipeline, transaction, shutdown.
    @Test func blockingAPI() async throws {
        let cluster = try await SharedCluster.get()
        let seeds = cluster.seedURLs
        try await onThread {
            let client = try RedisClusterClient.connectBlocking(seeds: seeds, configuration: testConfiguration())
            try client.sendBlocking(.set("blocking:a", "1"))
            #expect(try client.sendBlocking(.get("blocking:a")) == "1")
            #expect(try client.commandBlocking("INCR", "blocking:a").int == 2)
            try client.msetBlocking([("blocking:b", "x"), ("blocking:c", "y")])
            let values = try client.mgetBlocking(["blocking:c", "blocking:b", "blocking:none"])
            #expect(values.map { $0.map { String(decoding: $0, as: UTF8.self) } } == ["y", "x", nil])
            let replies = try client.pipelineBlocking([["GET", "blocking:b"], ["DBSIZE"]])
            #expect(replies[0] == .bulkString(Array("x".utf8)))
            let tx = try client.transactionBlocking([["SET", "{b}1", "v"], ["GET", "{b}1"]])
            #expect(tx?.last == .bulkString(Array("v".utf8)))
            #expect(try client.delBlocking(["blocking:a", "blocking:b", "blocking:c", "{b}1"]) == 4)
            #expect(try client.existsBlocking(["blocking:a"]) == 0)
            client.shutdownBlocking()
        }
    }

    /// Reads under the replica policies go to READONLY connections on replicas.
    @Test func replicaReads() async throws {
        let cluster = try await SharedCluster.get()
        let writer = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let reader = try await RedisClusterClient.connect(
            seeds: cluster.seedURLs, configuration: testConfiguration(readPolicy: .replicaOnly))
        let key = "replica:read"
        try await writer.send(.set(key, "hello"))
        let primaryPort = try #require(writer.route(forKey: key).primary?.port)
        let primary = try #require(cluster.nodes.first { $0.port == primaryPort })
        let replicas = cluster.replicas(of: primary)
        #expect(replicas.count == 1)
        let replicaGetsBefore = try await calls(of: "get", on: replicas)
        let primaryGetsBefore = try await calls(of: "get", on: [primary])
        let replicated = try await eventually(pollingEvery: .milliseconds(10)) {
            try await reader.send(.get(key)) == "hello"
        }
        #expect(replicated)
        #expect(try await calls(of: "get", on: replicas) > replicaGetsBefore)
        #expect(try await calls(of: "get", on: [primary]) == primaryGetsBefore)
        // A write through the replica-reading client still goes to the primary.
        try await reader.send(.set(key, "again"))
        #expect(try await writer.send(.get(key)) == "again")
        #expect(reader.counters.redirects == 0)
        #expect(reader.status().nodes.contains { $0.readOnlyPool?.metrics.created ?? 0 > 0 })

        // preferReplica reads on the replica; roundRobin alternates between the primary and the replica.
        let readerSeesIt = try await eventually(pollingEvery: .milliseconds(10)) { try await reader.send(.get(key)) == "again" }
        #expect(readerSeesIt)
        for (policy, expectPrimary) in [(RedisClusterReadPolicy.preferReplica, false), (.roundRobin, true)] {
            let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration(readPolicy: policy))
            let replicaBefore = try await calls(of: "get", on: replicas)
            let primaryBefore = try await calls(of: "get", on: [primary])
            for _ in 0..<20 { #expect(try await client.send(.get(key)) == "again") }
            let replicaServed = try await calls(of: "get", on: replicas) - replicaBefore
            let primaryServed = try await calls(of: "get", on: [primary]) - primaryBefore
            #expect(replicaServed >= (expectPrimary ? 5 : 20), "\(policy): replica served \(replicaServed)")
            #expect(expectPrimary ? primaryServed >= 5 : primaryServed == 0, "\(policy): primary served \(primaryServed)")
            await client.shutdown()
        }
        _ = try await writer.del([key])
        await reader.shutdown()
        await writer.shutdown()
    }

    /// Status: every node labelled by address, slots summing to 16,384, counters in Prometheus text.
    @Test func statusAndMetrics() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        try await client.send(.set("status:k", "v"))
        try await client.refreshTopology()
        let status = client.status()
        #expect(status.nodes.count == 6)
        #expect(status.nodes.filter { $0.role == "primary" }.count == 3)
        #expect(status.nodes.reduce(0) { $0 + $1.slots } == 16_384)
        #expect(status.allSlotsCovered)
        #expect(status.counters.refreshes >= 1)
        for node in status.nodes { #expect(node.pool.name == "cluster:\(node.address)") }
        #expect(Set(client.nodePoolStatuses().keys) == Set(status.nodes.map { "cluster:\($0.address)" }))
        let text = status.prometheusText
        #expect(text.contains("connpool_cluster_redirects_total{kind=\"moved\"} 0"))
        #expect(text.contains("connpool_cluster_refreshes_total"))
        #expect(text.contains("connpool_cluster_failovers_seen_total 0"))
        _ = try await client.del(["status:k"])
        await client.shutdown()
    }

    /// The swift-metrics exporter: cluster counters, slots per node, each node pool labelled by address.
    @Test func metricsThroughSwiftMetrics() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        let metrics = TestMetrics()
        let exporter = ClusterMetricsExporter(client: client, every: .seconds(3600), factory: metrics)
        try await client.refreshTopology()
        for index in 0..<30 { try await client.send(.set("metrics:\(index)", "v")) }
        exporter.exportNow()
        try await client.refreshTopology()
        exporter.stop()
        let refreshes = try metrics.expectCounter("connpool_cluster_refreshes_total", []).totalValue
        #expect(refreshes == Int64(client.counters.refreshes))
        #expect(refreshes >= 2)
        var slots = 0.0
        var acquires: Int64 = 0
        for node in client.status().nodes {
            slots += try metrics.expectGauge("connpool_cluster_slots", [("node", node.address.description)]).lastValue ?? 0
            if node.role == "primary" {
                acquires += try metrics.expectCounter("connpool_acquires_total", [("pool", "cluster:\(node.address)")]).totalValue
            }
        }
        #expect(slots == 16_384)
        #expect(acquires >= 30)
        // The Prometheus exposition: every node pool's series and the cluster's.
        let exposition = client.prometheusExposition()
        for node in client.status().nodes {
            #expect(exposition.contains("connpool_connections{pool=\"cluster:\(node.address)\""), "no series for \(node.address)")
        }
        #expect(exposition.contains("connpool_cluster_refreshes_total \(client.counters.refreshes)"))
        _ = try await client.del((0..<30).map { "metrics:\($0)" })
        await client.shutdown()
    }

    /// Session-changing commands are refused with a typed error; an unknown command is the server's error.
    @Test func refusedAndUnknownCommands() async throws {
        let cluster = try await SharedCluster.get()
        let client = try await RedisClusterClient.connect(seeds: cluster.seedURLs, configuration: testConfiguration())
        for command in [["SELECT", "1"], ["MULTI"], ["SUBSCRIBE", "c"], ["CLIENT", "SETNAME", "x"]] as [[RedisArgument]] {
            do {
                _ = try await client.command(command)
                Issue.record("\(command[0]) should be refused")
            } catch let error as RedisClusterError {
                guard case .unsupportedCommand = error else {
                    Issue.record("unexpected \(error)")
                    continue
                }
            }
        }
        do {
            _ = try await client.command("NOSUCHCOMMAND", "x")
            Issue.record("an unknown command should fail")
        } catch let error as RedisError {
            guard case .server(let message) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(message.contains("unknown command"))
        }
        #expect(try await client.command("CLIENT", "ID").int > 0)
        await client.shutdown()
    }

    /// No seed answers: a typed error naming the seeds and the last cause.
    @Test func unreachableSeedsFailWithTheLastCause() async throws {
        do {
            _ = try await RedisClusterClient.connect(seeds: ["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
            Issue.record("connecting to nothing should fail")
        } catch let error as RedisClusterError {
            guard case .topologyUnavailable(let tried, let lastCause) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(tried == ["127.0.0.1:1", "127.0.0.1:2"])
            #expect(lastCause.contains("refused"))
        }
        await #expect(throws: RedisClusterError.self) {
            _ = try await RedisClusterClient.connect(seeds: ["redis://127.0.0.1:1/3"])
        }
    }
}
