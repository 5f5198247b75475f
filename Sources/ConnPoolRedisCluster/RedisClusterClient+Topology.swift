import ConnPool
import ConnPoolRedis
import Logging

extension RedisClusterClient {
    // MARK: Fetching a node's view

    /// `CLUSTER SHARDS` through `connection`, or `CLUSTER SLOTS` when the server does not know it.
    static func fetchView(_ connection: RedisConnection, host: String) async throws -> ClusterTopology {
        do {
            return try ClusterTopology.parse(shardsReply: try await connection.command("CLUSTER", "SHARDS"), askedHost: host)
        } catch RedisError.server(let message) where !message.hasPrefix("CLUSTERDOWN") {
            return try ClusterTopology.parse(slotsReply: try await connection.command("CLUSTER", "SLOTS"), askedHost: host)
        }
    }

    /// ``fetchView(_:host:)`` on the calling thread.
    static func fetchViewBlocking(_ connection: RedisConnection, host: String) throws -> ClusterTopology {
        do {
            return try ClusterTopology.parse(shardsReply: try connection.commandBlocking("CLUSTER", "SHARDS"), askedHost: host)
        } catch RedisError.server(let message) where !message.hasPrefix("CLUSTERDOWN") {
            return try ClusterTopology.parse(slotsReply: try connection.commandBlocking("CLUSTER", "SLOTS"), askedHost: host)
        }
    }

    // MARK: Refreshing

    /// Refreshes the topology now (or joins the refresh in flight) and returns when it is applied.
    ///
    /// - Throws: ``RedisClusterError/topologyUnavailable(tried:lastCause:)`` when no node answered (the
    ///   previous view stays in use); ``RedisClusterError/shutDown``.
    public func refreshTopology() async throws {
        guard let task = requestRefresh(immediately: true) else { throw RedisClusterError.shutDown }
        try await task.value.get()
    }

    /// Starts a refresh unless one is in flight (then returns that one). A refresh is delayed so that two
    /// start at least ``RedisClusterConfiguration/minimumRefreshInterval`` apart, unless `immediately`.
    /// `nil` after shutdown.
    @discardableResult
    func requestRefresh(immediately: Bool = false) -> Task<Result<Void, RedisClusterError>, Never>? {
        state.withLock { state in
            if state.isShutDown { return nil }
            if let task = state.refreshTask { return task }
            var delay = Duration.zero
            let now = ContinuousClock.now
            if !immediately, let last = state.lastRefreshStart {
                delay = max(.zero, configuration.minimumRefreshInterval - (now - last))
            }
            state.lastRefreshStart = now + delay
            let task = Task { [weak self] () -> Result<Void, RedisClusterError> in
                if delay > .zero { try? await Task.sleep(for: delay) }
                guard let self else { return .failure(.shutDown) }
                let result = await self.performRefresh()
                self.state.withLock { $0.refreshTask = nil }
                return result
            }
            state.refreshTask = task
            return task
        }
    }

    /// Starts the periodic refresh (when configured).
    func startPeriodicRefresh() {
        guard let interval = configuration.refreshInterval else { return }
        let task = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let self, !Task.isCancelled else { return }
                _ = await self.requestRefresh(immediately: true)?.value
            }
        }
        state.withLock { $0.periodicTask = task }
    }

    /// Asks up to ``RedisClusterConfiguration/refreshSampleSize`` nodes (known primaries first, then
    /// replicas, then the seeds) in parallel for their view, more when some do not answer, elects the view
    /// most share and applies it.
    func performRefresh() async -> Result<Void, RedisClusterError> {
        let (known, generation) = state.withLock { state -> ([ClusterNode], Int) in
            let replicas = state.primaries.flatMap { state.replicasByPrimary[$0.index] ?? [] }
            return (state.primaries.shuffled() + replicas.shuffled(), state.generation)
        }
        _ = generation
        enum Candidate: Sendable {
            case node(ClusterNode)
            case seed(RedisConnectionConfiguration)
            var label: String {
                switch self {
                case .node(let node): return node.address.description
                case .seed(let seed): return seed.endpoint.description
                }
            }
        }
        var candidates = known.filter { !$0.isRemoved.load(ordering: .relaxed) }.map(Candidate.node)
        let knownAddresses = Set(known.map(\.address))
        for seed in seeds {
            if case .tcp(let host, let port) = seed.endpoint, knownAddresses.contains(ClusterNodeAddress(host: host, port: port)) {
                continue
            }
            candidates.append(.seed(seed))
        }
        var views = [ClusterTopology]()
        var tried = [String]()
        var lastCause = "no node to ask"
        let sample = configuration.refreshSampleSize
        var next = 0
        while views.count < sample && next < candidates.count {
            let batch = Array(candidates[next..<min(candidates.count, next + sample - views.count)])
            next += batch.count
            tried += batch.map(\.label)
            // Not a task group returning `(Int, Result<…>)` pairs: see `gatherConcurrently`.
            let results = await gatherConcurrently(batch.count) { position in
                do {
                    switch batch[position] {
                    case .node(let node):
                        let view = try await node.pool.withConnection(timeout: .seconds(2)) { connection in
                            try await Self.fetchView(connection.redis, host: node.address.host)
                        }
                        return Result<ClusterTopology, any Error>.success(view)
                    case .seed(let seed):
                        let connection = try await RedisConnection.connect(configuration: seed, logger: self.logger)
                        do {
                            let view = try await Self.fetchView(connection, host: Self.host(of: seed))
                            await connection.close()
                            return .success(view)
                        } catch {
                            await connection.close()
                            throw error
                        }
                    }
                } catch {
                    return .failure(error)
                }
            }
            for result in results {
                switch result {
                case .success(let view): views.append(view)
                case .failure(let error): lastCause = "\(error)"
                }
            }
        }
        guard let view = ClusterTopology.elect(views) else {
            if Task.isCancelled || isShutDown { return .failure(.shutDown) }
            counterCells.refreshFailures.add(1, ordering: .relaxed)
            let error = RedisClusterError.topologyUnavailable(tried: tried, lastCause: lastCause)
            state.withLock { $0.lastRefreshError = error.description }
            logger.warning("cluster topology refresh failed: \(error)")
            return .failure(error)
        }
        apply(view)
        counterCells.refreshes.add(1, ordering: .relaxed)
        return .success(())
    }
}
