public import ConnPool
import ConnPoolRedis
public import Logging
import Synchronization
import Dispatch

/// A Redis Cluster client: one ``ConnectionPool`` per node and a router in front, with a blocking and an
/// async API.
///
/// ```swift
/// let cluster = try await RedisClusterClient.connect(seeds: ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
/// try await cluster.send(.set("user:{42}:name", "Ada"))
/// let name = try await cluster.send(.get("user:{42}:name"))
/// let values = try await cluster.mget(["a", "b", "c"])   // split by slot, in parallel, in order
/// await cluster.shutdown()
/// ```
///
/// ## Routing
/// Each command goes to the node serving its keys' slot (`CRC16(key) mod 16384`, hashing only a
/// `{hash tag}`). The key positions come from the server's own `COMMAND` key specifications, read once when
/// the client connects, so every command the server knows routes, including subcommands (`OBJECT ENCODING
/// key`), keyword-introduced keys (`XREAD … STREAMS k1 k2`) and counted keys (`EVAL s 2 k1 k2`); where the
/// specification cannot tell (`SORT … BY`), the client asks the server with `COMMAND GETKEYS`. A command
/// whose keys span slots fails with ``RedisClusterError/crossSlot(command:slots:)`` before it is sent.
/// Keyless commands go to one primary, or to every primary (every node) when the server's
/// `request_policy` tip says so, with the replies merged by its `response_policy` (`DBSIZE` summed,
/// `KEYS` concatenated, `FLUSHALL` and `SCRIPT LOAD` everywhere).
///
/// The slot table is 16,384 atomics naming nodes; a command reads its slot's entry and the node's
/// entry with two acquiring loads, without a lock or a reference count (see `RoutingTable`).
///
/// ## Redirections and failures
/// - `MOVED`: the slot is re-pointed at once, the command retried on the new owner, and a topology
///   refresh scheduled. At most ``RedisClusterConfiguration/maxRedirects`` redirections per command.
/// - `ASK`: `ASKING` and the command, pipelined, on the importing node; the table is not changed.
/// - `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`: retried with exponential backoff until
///   ``RedisClusterConfiguration/requestTimeout`` passes.
/// - A connection error schedules a refresh. A **read** (a command the server flags `readonly`) is
///   retried. A **write** is retried only when it provably was not sent: the pool could not lend a
///   connection (connect refused or timed out, circuit open, node shut down), the connection was broken
///   or closed before the command was written, the write of the command itself failed (an incomplete
///   command is never executed), or the pooled connection was found closed by its node before sending
///   (for 10 s after a connection error on a node, each write checks its pooled connection with a
///   zero-timeout `poll()` before sending). Any other failure of a write (no reply after it
///   was sent) is thrown as is, a ``RedisError``: its outcome is unknown.
///
/// ## Topology
/// Refreshed every ``RedisClusterConfiguration/refreshInterval``, after `MOVED`, `CLUSTERDOWN` and
/// connection errors (at most one refresh in flight, at most one per
/// ``RedisClusterConfiguration/minimumRefreshInterval``), and by ``refreshTopology()``. A refresh asks
/// ``RedisClusterConfiguration/refreshSampleSize`` nodes for `CLUSTER SHARDS` (`CLUSTER SLOTS` on
/// servers before 7) and applies the view most of them share. Nodes that appear get pools; nodes that
/// leave have theirs drained (borrowed connections finish within
/// ``RedisClusterConfiguration/drainGracePeriod``).
///
/// ## Commands the client refuses
/// Commands that change a connection's session cannot be sent through a cluster client (each command may
/// use another connection): `SELECT`, `MULTI`/`EXEC`/`DISCARD` (use ``transaction(_:)``), `WATCH`,
/// `UNWATCH`, `AUTH`, `HELLO`, `RESET`, `READONLY`, `READWRITE`, `ASKING`, `QUIT`, `MONITOR`, the
/// subscribe commands (use a ``RedisSubscriber`` on one node), and `CLIENT SETNAME|TRACKING|CACHING|
/// REPLY|NO-EVICT|NO-TOUCH|SETINFO`. They throw ``RedisClusterError/unsupportedCommand(command:reason:)``.
public final class RedisClusterClient: Sendable {
    /// The configuration the client was created with.
    public let configuration: RedisClusterConfiguration
    /// The seeds' connection configurations (the first one's credentials, database and timeouts are used
    /// for every node).
    let seeds: [RedisConnectionConfiguration]
    let logger: Logger
    let routing = RoutingTable()
    let state: LockedValue<ClientState>
    let commands: CommandTable
    let counterCells = ClusterCounterCells()
    let roundRobin = Atomic<UInt>(0)

    /// What the topology lock guards.
    struct ClientState: Sendable {
        var byAddress: [ClusterNodeAddress: ClusterNode] = [:]
        var nextIndex = 0
        var topology = ClusterTopology(shards: [])
        var primaries: [ClusterNode] = []
        var replicasByPrimary: [UInt16: [ClusterNode]] = [:]
        var generation = 0
        var lastRefreshError: String?
        var refreshTask: Task<Result<Void, RedisClusterError>, Never>?
        var lastRefreshStart: ContinuousClock.Instant?
        var periodicTask: Task<Void, Never>?
        var isShutDown = false
        /// Pools of nodes that left, draining, by node index (removed when done).
        var draining: [UInt16: Task<Void, Never>] = [:]
    }

    private init(
        seeds: [RedisConnectionConfiguration], configuration: RedisClusterConfiguration, commands: CommandTable,
        logger: Logger
    ) {
        self.seeds = seeds
        self.configuration = configuration
        self.commands = commands
        self.logger = logger
        self.state = LockedValue(ClientState())
    }

    deinit {
        let (periodic, nodes) = state.withLock { state in
            state.isShutDown = true
            return (state.periodicTask, Array(state.byAddress.values))
        }
        periodic?.cancel()
        // A client dropped without shutdown(): its pools shut themselves down when released (see ConnectionPool).
        _ = nodes
    }

    // MARK: Connecting

    /// Connects to a cluster through `seeds`: asks up to ``RedisClusterConfiguration/refreshSampleSize``
    /// of them for the topology (`CLUSTER SHARDS`, else `CLUSTER SLOTS`) and the first one for the command
    /// table (`COMMAND`), applies the view most of them share, creates a pool per node and starts the
    /// periodic refresh.
    ///
    /// - Parameters:
    ///   - seeds: `redis://` URLs of one or more cluster nodes. The first URL's user, password and
    ///     timeouts are used for every node; its database must be 0.
    ///   - configuration: routing, retries, refresh and per-node pool settings.
    ///   - logger: where the client and its pools log (never a password).
    /// - Throws: ``RedisClusterError/invalidConfiguration(reason:)`` for a bad URL or configuration;
    ///   ``RedisClusterError/topologyUnavailable(tried:lastCause:)`` when no seed answered;
    ///   `CancellationError`.
    public static func connect(
        seeds: [String], configuration: RedisClusterConfiguration = RedisClusterConfiguration(),
        logger: Logger = Logger(label: "ConnPoolRedisCluster")
    ) async throws -> RedisClusterClient {
        let seedConfigurations = try parseSeeds(seeds)
        try configuration.validate()
        var views = [ClusterTopology]()
        var commands: CommandTable?
        var tried = [String]()
        var lastCause = "no seed"
        for seed in seedConfigurations where views.count < configuration.refreshSampleSize {
            tried.append(seed.endpoint.description)
            do {
                let connection = try await RedisConnection.connect(configuration: seed, logger: logger)
                do {
                    views.append(try await fetchView(connection, host: host(of: seed)))
                    if commands == nil { commands = try CommandTable(commandReply: try await connection.command("COMMAND")) }
                    await connection.close()
                } catch {
                    await connection.close()
                    throw error
                }
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                lastCause = "\(error)"
            }
        }
        guard let commands, let view = ClusterTopology.elect(views) else {
            throw RedisClusterError.topologyUnavailable(tried: tried, lastCause: lastCause)
        }
        let client = RedisClusterClient(seeds: seedConfigurations, configuration: configuration, commands: commands, logger: logger)
        client.apply(view)
        client.startPeriodicRefresh()
        return client
    }

    /// ``connect(seeds:configuration:logger:)`` on the calling thread, blocking it (never call it on a
    /// cooperative thread).
    ///
    /// - Throws: as ``connect(seeds:configuration:logger:)`` except `CancellationError`.
    public static func connectBlocking(
        seeds: [String], configuration: RedisClusterConfiguration = RedisClusterConfiguration(),
        logger: Logger = Logger(label: "ConnPoolRedisCluster")
    ) throws -> RedisClusterClient {
        let seedConfigurations = try parseSeeds(seeds)
        try configuration.validate()
        var views = [ClusterTopology]()
        var commands: CommandTable?
        var tried = [String]()
        var lastCause = "no seed"
        for seed in seedConfigurations where views.count < configuration.refreshSampleSize {
            tried.append(seed.endpoint.description)
            do {
                let connection = try RedisConnection.connectBlocking(configuration: seed, logger: logger)
                defer { connection.closeBlocking() }
                views.append(try fetchViewBlocking(connection, host: host(of: seed)))
                if commands == nil { commands = try CommandTable(commandReply: try connection.commandBlocking("COMMAND")) }
            } catch {
                lastCause = "\(error)"
            }
        }
        guard let commands, let view = ClusterTopology.elect(views) else {
            throw RedisClusterError.topologyUnavailable(tried: tried, lastCause: lastCause)
        }
        let client = RedisClusterClient(seeds: seedConfigurations, configuration: configuration, commands: commands, logger: logger)
        client.apply(view)
        client.startPeriodicRefresh()
        return client
    }

    private static func parseSeeds(_ seeds: [String]) throws(RedisClusterError) -> [RedisConnectionConfiguration] {
        guard !seeds.isEmpty else { throw .invalidConfiguration(reason: "at least one seed URL is needed") }
        var result = [RedisConnectionConfiguration]()
        for (position, url) in seeds.enumerated() {
            let seed: RedisConnectionConfiguration
            do {
                seed = try RedisConnectionConfiguration(url: url)
            } catch {
                throw .invalidConfiguration(reason: "seed \(position + 1): \(error)")
            }
            guard case .tcp = seed.endpoint else {
                throw .invalidConfiguration(reason: "seed \(position + 1): a cluster is reached over TCP (redis://), not a unix socket")
            }
            guard seed.database == 0 else {
                throw .invalidConfiguration(reason: "seed \(position + 1): a cluster has only database 0")
            }
            result.append(seed)
        }
        return result
    }

    static func host(of configuration: RedisConnectionConfiguration) -> String {
        if case .tcp(let host, _) = configuration.endpoint { return host }
        return "127.0.0.1"
    }

    // MARK: Shutting down

    /// Stops the periodic refresh and shuts every node's pool down (borrowed connections finish within
    /// ``RedisClusterConfiguration/drainGracePeriod``). Later requests throw ``RedisClusterError/shutDown``.
    /// Idempotent.
    public func shutdown() async {
        let (periodic, refresh, nodes, draining) = state.withLock { state in
            state.isShutDown = true
            let nodes = Array(state.byAddress.values)
            state.byAddress = [:]
            return (state.periodicTask, state.refreshTask, nodes, state.draining)
        }
        periodic?.cancel()
        refresh?.cancel()
        _ = await refresh?.value
        await withTaskGroup(of: Void.self) { group in
            for node in nodes { group.addTask { await node.drain(gracePeriod: self.configuration.drainGracePeriod) } }
        }
        for task in draining.values { await task.value }
    }

    /// ``shutdown()`` on the calling thread, blocking it (never call it on a cooperative thread).
    public func shutdownBlocking() {
        blockingWait { await self.shutdown() }
    }

    // MARK: Inspection

    /// The client's current view of the cluster.
    public var topology: ClusterTopology { state.withLock { $0.topology } }

    /// The counters (redirects, refreshes, failovers seen, retries).
    public var counters: RedisClusterCounters { counterCells.snapshot }

    /// The client's view, counters and every node's pool status, labelled by node address. Holds no secret.
    public func status() -> RedisClusterStatus {
        let (topology, generation, lastError, nodes) = state.withLock { state in
            (state.topology, state.generation, state.lastRefreshError, Array(state.byAddress.values))
        }
        let primaries = Dictionary(topology.shards.map { ($0.primary, $0.slotCount) }, uniquingKeysWith: +)
        let replicas = Set(topology.shards.flatMap(\.replicas))
        let statuses = nodes.map { node in
            RedisClusterStatus.Node(
                address: node.address,
                role: primaries[node.address] != nil ? "primary" : replicas.contains(node.address) ? "replica" : "no slots",
                slots: primaries[node.address] ?? 0, pool: node.pool.status(), readOnlyPool: node.readOnlyPool?.status())
        }.sorted { ($0.role, $0.address) < ($1.role, $1.address) }
        return RedisClusterStatus(
            nodes: statuses, topology: topology, topologyGeneration: generation, counters: counterCells.snapshot,
            lastRefreshError: lastError)
    }

    /// The node pools (read-write and read-only) keyed by their label (`cluster:<host>:<port>`), to
    /// register with a metrics exporter.
    public func nodePoolStatuses() -> [String: PoolStatus] {
        let nodes = state.withLock { Array($0.byAddress.values) }
        var result = [String: PoolStatus]()
        for node in nodes {
            result[node.pool.configuration.name] = node.pool.status()
            if let pool = node.readOnlyPool { result[pool.configuration.name] = pool.status() }
        }
        return result
    }

    // MARK: Nodes (under the topology lock)

    /// The node at `address`, created (with its pools) when the client has none: a `MOVED`/`ASK` target
    /// the last refresh did not know. `nil` when the node table is full or the client is shut down.
    func node(at address: ClusterNodeAddress) -> ClusterNode? {
        state.withLock { state in
            if state.isShutDown { return nil }
            return ensureNode(address, in: &state)
        }
    }

    private func ensureNode(_ address: ClusterNodeAddress, in state: inout ClientState) -> ClusterNode? {
        if let node = state.byAddress[address] { return node }
        guard state.nextIndex < RoutingTable.nodeCapacity else {
            logger.error("the cluster client's node table is full: \(address) gets no pool", metadata: [:])
            return nil
        }
        do {
            let node = try ClusterNode(
                index: UInt16(state.nextIndex), address: address, seed: seeds[0], configuration: configuration,
                logger: logger)
            state.nextIndex += 1
            routing.publish(node)
            state.byAddress[address] = node
            return node
        } catch {
            logger.error("could not create the pool of cluster node \(address): \(error)")
            return nil
        }
    }

    /// Applies a view: pools for new nodes, the slot table, replicas, and draining for nodes that left.
    func apply(_ topology: ClusterTopology) {
        let removed: [ClusterNode] = state.withLock { state in
            guard !state.isShutDown else { return [] }
            var kept = [ClusterNodeAddress: ClusterNode]()
            for address in topology.allNodes {
                if let node = ensureNode(address, in: &state) { kept[address] = node }
            }
            // Failovers: a shard now served by what was its replica.
            for shard in topology.shards {
                guard let first = shard.slotRanges.first?.lowerBound,
                    let old = state.topology.shard(forSlot: first), old.primary != shard.primary,
                    old.replicas.contains(shard.primary)
                else { continue }
                counterCells.failovers.add(1, ordering: .relaxed)
                logger.info("cluster failover seen: \(old.primary) -> \(shard.primary)")
            }
            var owner = [ClusterNode?](repeating: nil, count: ClusterSlot.count)
            var replicas = [UInt16: [ClusterNode]]()
            var primaries = [ClusterNode]()
            for shard in topology.shards {
                guard let primary = kept[shard.primary] else { continue }
                primaries.append(primary)
                replicas[primary.index] = shard.replicas.compactMap { kept[$0] }
                for range in shard.slotRanges {
                    for slot in range where slot >= 0 && slot < ClusterSlot.count { owner[slot] = primary }
                }
            }
            for slot in 0..<ClusterSlot.count { routing.assign(slot, to: owner[slot]) }
            let removed = state.byAddress.filter { kept[$0.key] == nil }.map(\.value)
            for node in removed { node.isRemoved.store(true, ordering: .relaxed) }
            state.byAddress = kept
            state.topology = topology
            state.primaries = primaries
            state.replicasByPrimary = replicas
            state.generation += 1
            state.lastRefreshError = nil
            return removed
        }
        for node in removed {
            logger.info("cluster node \(node.address) left the topology: draining its pools")
            let grace = configuration.drainGracePeriod
            let task = Task { [weak self] in
                await node.drain(gracePeriod: grace)
                _ = self?.state.withLock { $0.draining.removeValue(forKey: node.index) }
            }
            state.withLock { $0.draining[node.index] = task }
        }
    }

    /// Points `slot` at the node at `address` (after `MOVED`).
    func reassign(slot: UInt16, to address: ClusterNodeAddress) -> ClusterNode? {
        state.withLock { state in
            guard !state.isShutDown, let node = ensureNode(address, in: &state) else { return nil }
            routing.assign(Int(slot), to: node)
            return node
        }
    }

    /// The primaries, or every node, in the current view (for commands sent to all of them).
    func fanOutTargets(allNodes: Bool) -> [ClusterNode] {
        state.withLock { state in
            guard allNodes else { return state.primaries }
            return state.primaries + state.primaries.flatMap { state.replicasByPrimary[$0.index] ?? [] }
        }
    }

    /// One primary for a keyless command, round-robin.
    func anyPrimary() -> ClusterNode? {
        let primaries = state.withLock { $0.primaries }
        guard !primaries.isEmpty else { return nil }
        return primaries[Int(roundRobin.add(1, ordering: .relaxed).newValue % UInt(primaries.count))]
    }

    var isShutDown: Bool { state.withLock { $0.isShutDown } }
}

/// Runs async work to completion from a plain thread, blocking it (cold paths only: shutdown).
func blockingWait(_ body: @escaping @Sendable () async -> Void) {
    let semaphore = DispatchSemaphore(value: 0)
    Task.detached {
        await body()
        semaphore.signal()
    }
    semaphore.wait()
}
