import ConnPool
import ConnPoolRedis

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thrown inside an attempt when the pooled connection was closed by its node before anything was sent.
struct PeerClosedBeforeSend: Error {}

/// The retry state of one request: its deadline, backoff, attempts and redirections.
struct RetryBudget {
    let deadline: ContinuousClock.Instant
    var backoff: Duration
    let maxBackoff: Duration
    var attempts = 0
    var redirects = 0
    var lastError = "none"

    init(_ configuration: RedisClusterConfiguration) {
        deadline = .now + configuration.requestTimeout
        backoff = configuration.retryInitialBackoff
        maxBackoff = configuration.retryMaxBackoff
    }

    var remaining: Duration { deadline - .now }

    /// The pause before the next retry, doubling each time; `nil` when it would end past the deadline.
    mutating func nextPause() -> Duration? {
        let pause = backoff
        guard ContinuousClock.now + pause < deadline else { return nil }
        backoff = min(backoff * 2, maxBackoff)
        return pause
    }
}

/// What to do after an attempt failed.
enum RetryDecision {
    /// Throw this.
    case fail(any Error)
    /// Send to the node at this address (`MOVED`: with the slot re-pointed first; `ASK`: with `ASKING`).
    case redirect(ClusterNodeAddress, asking: Bool)
    /// Pause (backoff), then route again; refresh the topology first when `refresh`.
    case retry(refresh: Bool)
    /// Route again at once (a stale pooled connection was discarded; nothing was sent).
    case retryNow
}

extension RedisClusterClient {
    /// What a failed attempt means.
    ///
    /// - Parameters:
    ///   - readOnly: the request only reads: retried after any connection error.
    ///   - singleCommand: the request is one command (a failed write of it means it was not sent).
    func decide(
        _ error: any Error, name: String, readOnly: Bool, singleCommand: Bool, fixedNode: Bool = false,
        budget: inout RetryBudget
    ) -> RetryDecision {
        budget.lastError = "\(error)"
        switch error {
        case RedisError.server(let message):
            let words = message.split(separator: " ", maxSplits: 3)
            switch words.first {
            case "MOVED", "ASK":
                let asking = words.first == "ASK"
                guard words.count >= 3, let slot = UInt16(words[1]), Int(slot) < ClusterSlot.count,
                    let address = ClusterNodeAddress(parsing: words[2])
                else { return .fail(error) }
                budget.redirects += 1
                if budget.redirects > configuration.maxRedirects {
                    return .fail(RedisClusterError.tooManyRedirects(command: name, limit: configuration.maxRedirects, lastRedirect: message))
                }
                if asking {
                    counterCells.ask.add(1, ordering: .relaxed)
                } else {
                    counterCells.moved.add(1, ordering: .relaxed)
                    _ = reassign(slot: slot, to: address)
                    requestRefresh()
                }
                return .redirect(address, asking: asking)
            case "TRYAGAIN", "LOADING":
                counterCells.busyRetries.add(1, ordering: .relaxed)
                return .retry(refresh: false)
            case "CLUSTERDOWN", "MASTERDOWN":
                counterCells.busyRetries.add(1, ordering: .relaxed)
                return .retry(refresh: true)
            case "READONLY" where !fixedNode:
                // A keyless write reached a node that is a replica now: the view is stale (a failover).
                counterCells.busyRetries.add(1, ordering: .relaxed)
                return .retry(refresh: true)
            default:
                return .fail(error)
            }
        case is PeerClosedBeforeSend:
            counterCells.staleConnections.add(1, ordering: .relaxed)
            requestRefresh()
            return .retryNow
        case let poolError as ConnectionPoolError:
            // The pool lent no connection: nothing was sent.
            if case .shutDown = poolError, isShutDown { return .fail(RedisClusterError.shutDown) }
            counterCells.connectionRetries.add(1, ordering: .relaxed)
            return .retry(refresh: true)
        case let redisError as RedisError where redisError.isConnectionError:
            requestRefresh()
            if readOnly || Self.provablyNotSent(redisError, singleCommand: singleCommand) {
                counterCells.connectionRetries.add(1, ordering: .relaxed)
                return .retry(refresh: true)
            }
            return .fail(error)
        case let clusterError as RedisClusterError:
            switch clusterError {
            case .slotNotServed: return .retry(refresh: true)
            default: return .fail(error)
            }
        default:
            return .fail(error)
        }
    }

    /// A failure to talk to the node (not a reply): the node's pooled connections may be stale.
    static func isConnectionFailure(_ error: any Error) -> Bool {
        switch error {
        case let redisError as RedisError: return redisError.isConnectionError
        case is ConnectionPoolError, is PeerClosedBeforeSend: return true
        default: return false
        }
    }

    /// Errors raised before the request's bytes reached the server: the connection could not be made, was
    /// already broken or closed, or (for one command) its write failed, so the server saw at most an
    /// incomplete command, which it never executes.
    static func provablyNotSent(_ error: RedisError, singleCommand: Bool) -> Bool {
        switch error {
        case .connectionRefused, .connectTimeout, .connectFailed, .hostNotFound, .connectionBroken,
            .connectionClosedLocally, .concurrentUse, .invalidCommand:
            return true
        case .io(let operation, _):
            return singleCommand && operation == "send"
        default:
            return false
        }
    }

    /// The error to throw when the budget is spent.
    func exhausted(_ name: String, _ budget: RetryBudget) -> RedisClusterError {
        .retriesExhausted(command: name, attempts: budget.attempts, lastError: budget.lastError)
    }

    // MARK: The retry loop, async

    /// Runs `attempt` on a connection of the node the request routes to, following redirections and
    /// retrying as ``decide(_:name:readOnly:singleCommand:budget:)`` says, within the request timeout.
    ///
    /// - Parameters:
    ///   - slot: route by this slot (`nil`: `fixedNode`, else any primary).
    ///   - fixedNode: always this node (a command sent to every node).
    ///   - primaryOnly: ignore the read policy (scans follow one node per shard).
    ///   - attempt: sends the request on the connection (`asking`: precede it with `ASKING` in the same
    ///     write) and returns its result; a redirection or retryable error reply must be thrown as
    ///     ``RedisError/server(_:)``.
    func withRetries<T>(
        name: String, readOnly: Bool, slot: UInt16?, fixedNode: ClusterNode? = nil, primaryOnly: Bool = false,
        singleCommand: Bool,
        _ attempt: (ClusterNode, ClusterNodeConnection, _ asking: Bool) async throws -> T
    ) async throws -> T {
        var budget = RetryBudget(configuration)
        var redirect: (node: ClusterNode, asking: Bool)?
        while true {
            budget.attempts += 1
            var chosen: (node: ClusterNode, pool: ConnectionPool<ClusterNodeConnectionFactory>)?
            if let redirect {
                chosen = (redirect.node, redirect.node.pool)
            } else if let fixedNode {
                chosen = (fixedNode, fixedNode.pool)
            } else if let slot {
                chosen = try target(forSlot: slot, readOnly: readOnly, primaryOnly: primaryOnly)
            } else if let node = anyPrimary() {
                chosen = (node, node.pool)
            }
            let asking = redirect?.asking ?? false
            redirect = nil
            let decision: RetryDecision
            if let chosen {
                let remaining = budget.remaining
                guard remaining > .zero else { throw exhausted(name, budget) }
                do {
                    return try await chosen.pool.withConnection(timeout: min(remaining, configuration.pool.acquireTimeout)) {
                        connection in
                        if !readOnly && chosen.node.isSuspect && connection.peerClosedWhileIdle() {
                            throw PeerClosedBeforeSend()
                        }
                        return try await attempt(chosen.node, connection, asking)
                    }
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    if Self.isConnectionFailure(error) { chosen.node.noteConnectionError() }
                    decision = decide(
                        error, name: name, readOnly: readOnly, singleCommand: singleCommand, fixedNode: fixedNode != nil,
                        budget: &budget)
                }
            } else {
                if isShutDown { throw RedisClusterError.shutDown }
                decision = decide(
                    RedisClusterError.slotNotServed(slot: slot ?? 0), name: name, readOnly: readOnly,
                    singleCommand: singleCommand, budget: &budget)
            }
            switch decision {
            case .fail(let error):
                throw error
            case .redirect(let address, let asking):
                guard let node = node(at: address) else { throw RedisClusterError.shutDown }
                redirect = (node, asking)
            case .retryNow:
                if budget.remaining <= .zero { throw exhausted(name, budget) }
            case .retry(let refresh):
                if refresh { requestRefresh() }
                guard let pause = budget.nextPause() else { throw exhausted(name, budget) }
                try await Task.sleep(for: pause)
            }
        }
    }

    // MARK: The retry loop, blocking

    /// ``withRetries(name:readOnly:slot:fixedNode:primaryOnly:singleCommand:_:)`` on the calling thread.
    func withRetriesBlocking<T>(
        name: String, readOnly: Bool, slot: UInt16?, fixedNode: ClusterNode? = nil, primaryOnly: Bool = false,
        singleCommand: Bool,
        _ attempt: (ClusterNode, ClusterNodeConnection, _ asking: Bool) throws -> T
    ) throws -> T {
        var budget = RetryBudget(configuration)
        var redirect: (node: ClusterNode, asking: Bool)?
        while true {
            budget.attempts += 1
            var chosen: (node: ClusterNode, pool: ConnectionPool<ClusterNodeConnectionFactory>)?
            if let redirect {
                chosen = (redirect.node, redirect.node.pool)
            } else if let fixedNode {
                chosen = (fixedNode, fixedNode.pool)
            } else if let slot {
                chosen = try target(forSlot: slot, readOnly: readOnly, primaryOnly: primaryOnly)
            } else if let node = anyPrimary() {
                chosen = (node, node.pool)
            }
            let asking = redirect?.asking ?? false
            redirect = nil
            let decision: RetryDecision
            if let chosen {
                let remaining = budget.remaining
                guard remaining > .zero else { throw exhausted(name, budget) }
                do {
                    return try chosen.pool.withConnectionBlocking(timeout: min(remaining, configuration.pool.acquireTimeout)) {
                        connection in
                        if !readOnly && chosen.node.isSuspect && connection.peerClosedWhileIdle() {
                            throw PeerClosedBeforeSend()
                        }
                        return try attempt(chosen.node, connection, asking)
                    }
                } catch {
                    if Self.isConnectionFailure(error) { chosen.node.noteConnectionError() }
                    decision = decide(
                        error, name: name, readOnly: readOnly, singleCommand: singleCommand, fixedNode: fixedNode != nil,
                        budget: &budget)
                }
            } else {
                if isShutDown { throw RedisClusterError.shutDown }
                decision = decide(
                    RedisClusterError.slotNotServed(slot: slot ?? 0), name: name, readOnly: readOnly,
                    singleCommand: singleCommand, budget: &budget)
            }
            switch decision {
            case .fail(let error):
                throw error
            case .redirect(let address, let asking):
                guard let node = node(at: address) else { throw RedisClusterError.shutDown }
                redirect = (node, asking)
            case .retryNow:
                if budget.remaining <= .zero { throw exhausted(name, budget) }
            case .retry(let refresh):
                if refresh { requestRefresh() }
                guard let pause = budget.nextPause() else { throw exhausted(name, budget) }
                let (seconds, attoseconds) = pause.components
                usleep(useconds_t(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
            }
        }
    }

    // MARK: One command

    /// Sends one routed command (not a fan-out) and returns its reply.
    func executeRouted(_ arguments: [RedisArgument], route: CommandRoute, fixedNode: ClusterNode? = nil) async throws
        -> RedisReply
    {
        let slot: UInt16? = if case .slot(let slot) = route.target { slot } else { nil }
        return try await withRetries(
            name: route.name, readOnly: route.isReadOnly, slot: slot, fixedNode: fixedNode, singleCommand: true
        ) { _, connection, asking in
            guard asking else { return try await connection.redis.command(arguments) }
            let replies = try await connection.redis.pipeline([["ASKING"], arguments])
            if case .error(let message) = replies[1] { throw RedisError.server(message) }
            return replies[1]
        }
    }

    /// ``executeRouted(_:route:fixedNode:)`` on the calling thread.
    func executeRoutedBlocking(_ arguments: [RedisArgument], route: CommandRoute, fixedNode: ClusterNode? = nil) throws
        -> RedisReply
    {
        let slot: UInt16? = if case .slot(let slot) = route.target { slot } else { nil }
        return try withRetriesBlocking(
            name: route.name, readOnly: route.isReadOnly, slot: slot, fixedNode: fixedNode, singleCommand: true
        ) { _, connection, asking in
            guard asking else { return try connection.redis.commandBlocking(arguments) }
            let replies = try connection.redis.pipelineBlocking([["ASKING"], arguments])
            if case .error(let message) = replies[1] { throw RedisError.server(message) }
            return replies[1]
        }
    }

    /// Resolves a route that needs `COMMAND GETKEYS`.
    func resolve(_ route: CommandRoute, _ arguments: [RedisArgument]) async throws -> CommandRoute {
        guard route.target == .askServer else { return route }
        let keysRoute = CommandRoute(target: .anyPrimary, isReadOnly: true, response: .default, name: "COMMAND GETKEYS")
        let keys: Result<RedisReply, any Error>
        do {
            keys = .success(try await executeRouted(["COMMAND", "GETKEYS"] + arguments, route: keysRoute))
        } catch let error as RedisError where !error.isConnectionError {
            keys = .failure(error)
        }
        return try self.route(route, keysReply: keys)
    }

    /// ``resolve(_:_:)`` on the calling thread.
    func resolveBlocking(_ route: CommandRoute, _ arguments: [RedisArgument]) throws -> CommandRoute {
        guard route.target == .askServer else { return route }
        let keysRoute = CommandRoute(target: .anyPrimary, isReadOnly: true, response: .default, name: "COMMAND GETKEYS")
        let keys: Result<RedisReply, any Error>
        do {
            keys = .success(try executeRoutedBlocking(["COMMAND", "GETKEYS"] + arguments, route: keysRoute))
        } catch let error as RedisError where !error.isConnectionError {
            keys = .failure(error)
        }
        return try self.route(route, keysReply: keys)
    }

    /// Sends `arguments` by `route`: to its node, or to every primary (node) with the replies merged.
    func execute(_ arguments: [RedisArgument], route: CommandRoute) async throws -> RedisReply {
        switch route.target {
        case .slot, .anyPrimary:
            return try await executeRouted(arguments, route: route)
        case .askServer:
            return try await executeRouted(arguments, route: try await resolve(route, arguments))
        case .allPrimaries, .allNodes:
            var fanOut = FanOut(allNodes: route.target == .allNodes)
            var budget = RetryBudget(configuration)
            while let pending = try fanOut.nextRound(self) {
                // Not a task group returning `(ClusterNode, Result<…>)`: see `gatherConcurrently`.
                let outcomes = await gatherConcurrently(pending.count) { index in
                    do {
                        return Result<RedisReply, any Error>.success(
                            try await self.executeRouted(arguments, route: route, fixedNode: pending[index]))
                    } catch {
                        return .failure(error)
                    }
                }
                let results = Array(zip(pending, outcomes))
                if fanOut.absorb(results) {
                    guard let pause = budget.nextPause() else {
                        fanOut.giveUp()
                        break
                    }
                    try await Task.sleep(for: pause)
                    _ = await requestRefresh(immediately: true)?.value
                }
            }
            return try Self.merge(fanOut.results, policy: route.response)
        }
    }

    /// A command sent to every primary (or node), in rounds: a node that answers `READONLY` was a
    /// primary in a stale view (a failover the client has not seen yet): after a pause (the retry backoff)
    /// and a refresh, the command is sent to the primaries it has not reached yet, until the request
    /// timeout; then the `READONLY` is thrown (the command did not reach every shard: never a silent gap).
    struct FanOut {
        let allNodes: Bool
        private var answered: [ClusterNodeAddress: Result<RedisReply, any Error>] = [:]
        private var order: [ClusterNodeAddress] = []
        private var staleAnswers: [ClusterNodeAddress: Result<RedisReply, any Error>] = [:]
        private var round = 0

        init(allNodes: Bool) { self.allNodes = allNodes }

        /// The nodes to send to in the next round, `nil` when done.
        ///
        /// - Throws: ``RedisClusterError/slotNotServed(slot:)`` when the view has no primary.
        mutating func nextRound(_ client: RedisClusterClient) throws -> [ClusterNode]? {
            guard round == 0 || !staleAnswers.isEmpty else { return nil }
            round += 1
            staleAnswers = [:]
            let nodes = client.fanOutTargets(allNodes: allNodes).filter { answered[$0.address] == nil }
            if round == 1 && nodes.isEmpty { throw RedisClusterError.slotNotServed(slot: 0) }
            return nodes.isEmpty ? nil : nodes
        }

        /// Records a round's results; `true` when a node answered `READONLY` (pause, refresh, next round).
        mutating func absorb(_ results: [(ClusterNode, Result<RedisReply, any Error>)]) -> Bool {
            for (node, result) in results {
                if case .failure(RedisError.server(let message)) = result, message.hasPrefix("READONLY"), !allNodes {
                    staleAnswers[node.address] = result
                    continue
                }
                if answered[node.address] == nil { order.append(node.address) }
                answered[node.address] = result
            }
            return !staleAnswers.isEmpty
        }

        /// No more rounds: the `READONLY` answers of the last round count as answers (the merge throws them).
        mutating func giveUp() {
            for (address, result) in staleAnswers {
                order.append(address)
                answered[address] = result
            }
            staleAnswers = [:]
        }

        /// Every answer, in the order the nodes answered.
        var results: [Result<RedisReply, any Error>] { order.compactMap { answered[$0] } }
    }

    /// ``execute(_:route:)`` on the calling thread (a fan-out visits the nodes one after the other).
    func executeBlocking(_ arguments: [RedisArgument], route: CommandRoute) throws -> RedisReply {
        switch route.target {
        case .slot, .anyPrimary:
            return try executeRoutedBlocking(arguments, route: route)
        case .askServer:
            return try executeRoutedBlocking(arguments, route: try resolveBlocking(route, arguments))
        case .allPrimaries, .allNodes:
            var fanOut = FanOut(allNodes: route.target == .allNodes)
            var budget = RetryBudget(configuration)
            while let pending = try fanOut.nextRound(self) {
                let results = pending.map { node in
                    (node, Result<RedisReply, any Error> { try executeRoutedBlocking(arguments, route: route, fixedNode: node) })
                }
                if fanOut.absorb(results) {
                    guard let pause = budget.nextPause() else {
                        fanOut.giveUp()
                        break
                    }
                    let (seconds, attoseconds) = pause.components
                    usleep(useconds_t(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
                    blockingWait { _ = await self.requestRefresh(immediately: true)?.value }
                }
            }
            return try Self.merge(fanOut.results, policy: route.response)
        }
    }
}
