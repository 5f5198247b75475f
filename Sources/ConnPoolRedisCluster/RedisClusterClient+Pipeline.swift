import ConnPool
public import ConnPoolRedis

/// Pipelines grouped per node, multi-key commands split by slot, and single-slot transactions.
extension RedisClusterClient {
    /// The commands of a pipeline that go to one node's pool.
    private struct NodeBatch {
        let node: ClusterNode
        let pool: ConnectionPool<ClusterNodeConnectionFactory>
        var indices: [Int]
        var hasWrite: Bool
    }

    /// Groups routed commands by the pool they go to; commands sent to several nodes (or to a slot no
    /// node serves) are sent one by one.
    private func batches(_ routes: [CommandRoute]) throws -> (batches: [NodeBatch], oneByOne: [Int]) {
        var batches = [ObjectIdentifier: NodeBatch]()
        var order = [ObjectIdentifier]()
        var oneByOne = [Int]()
        for (index, route) in routes.enumerated() {
            let chosen: (node: ClusterNode, pool: ConnectionPool<ClusterNodeConnectionFactory>)?
            switch route.target {
            case .slot(let slot): chosen = try target(forSlot: slot, readOnly: route.isReadOnly)
            case .anyPrimary: chosen = anyPrimary().map { ($0, $0.pool) }
            default: chosen = nil
            }
            guard let (node, pool) = chosen else {
                oneByOne.append(index)
                continue
            }
            let key = ObjectIdentifier(pool)
            if batches[key] == nil {
                batches[key] = NodeBatch(node: node, pool: pool, indices: [], hasWrite: false)
                order.append(key)
            }
            batches[key]!.indices.append(index)
            if !route.isReadOnly { batches[key]!.hasWrite = true }
        }
        return (order.map { batches[$0]! }, oneByOne)
    }

    /// What became of each command of a batch: its reply, an error to report, or `nil`: send it again on its
    /// own (a redirection or retryable reply, or a connection failure that allows a retry).
    private func absorb(
        _ outcome: Result<[RedisReply], any Error>, batch: NodeBatch, routes: [CommandRoute]
    ) -> [(Int, Result<RedisReply, any Error>?)] {
        switch outcome {
        case .success(let replies):
            return zip(batch.indices, replies).map { index, reply in
                guard case .error(let message) = reply, Self.isRedirectionOrBusy(message) else { return (index, .success(reply)) }
                // Apply a MOVED to the slot table now, so the command is resent to the right node.
                var budget = RetryBudget(configuration)
                _ = decide(RedisError.server(message), name: routes[index].name, readOnly: true, singleCommand: false, budget: &budget)
                return (index, nil)
            }
        case .failure(let error):
            var budget = RetryBudget(configuration)
            return batch.indices.map { index in
                let route = routes[index]
                switch decide(error, name: route.name, readOnly: route.isReadOnly, singleCommand: false, budget: &budget) {
                case .fail(let error): return (index, .failure(error))
                default: return (index, nil)
                }
            }
        }
    }

    static func isRedirectionOrBusy(_ message: String) -> Bool {
        for prefix in ["MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"] where message.hasPrefix(prefix) {
            return true
        }
        return false
    }

    private static func replies(_ results: [Result<RedisReply, any Error>?]) throws -> [RedisReply] {
        try results.map { result in
            switch result {
            case .success(let reply)?: return reply
            case .failure(RedisError.server(let message))?: return .error(message)
            case .failure(let error)?: throw error
            case nil: throw RedisError.unexpectedReply(expected: "a reply", actual: "none")
            }
        }
    }

    // MARK: Pipelines

    /// Sends several commands with as few round trips as possible: grouped per node, one pipeline per
    /// node, the nodes in parallel, and the replies put back in the commands' order. Commands that were
    /// redirected or hit a retryable error are then resent one by one, with the usual redirection and
    /// retry rules.
    ///
    /// - Returns: one reply per command, in order; a command's own error reply is an
    ///   ``RedisReply/error(_:)`` element.
    /// - Throws: ``RedisClusterError/crossSlot(command:slots:)`` and the other routing errors before
    ///   anything is sent; otherwise the first error that is not a command's own reply (a connection error
    ///   of a write whose outcome is unknown, ``RedisClusterError/retriesExhausted(command:attempts:lastError:)``, …):
    ///   commands on other nodes may have run.
    public func pipeline(_ commands: [[RedisArgument]]) async throws -> [RedisReply] {
        var routes = try commands.map { try route($0) }
        for index in routes.indices where routes[index].target == .askServer {
            routes[index] = try await resolve(routes[index], commands[index])
        }
        let (batches, oneByOne) = try batches(routes)
        let routesCopy = routes
        var results = [Result<RedisReply, any Error>?](repeating: nil, count: commands.count)
        var again = oneByOne
        let timeout = min(configuration.requestTimeout, configuration.pool.acquireTimeout)
        // Not a task group returning its children's results: see `gatherConcurrently`.
        let absorbed = await gatherConcurrently(batches.count) { position in
            let batch = batches[position]
            let outcome: Result<[RedisReply], any Error>
            do {
                outcome = .success(try await batch.pool.withConnection(timeout: timeout) { connection in
                    if batch.hasWrite && batch.node.isSuspect && connection.peerClosedWhileIdle() {
                        throw PeerClosedBeforeSend()
                    }
                    return try await connection.redis.pipeline(batch.indices.map { commands[$0] })
                })
            } catch {
                if Self.isConnectionFailure(error) { batch.node.noteConnectionError() }
                outcome = .failure(error)
            }
            return self.absorb(outcome, batch: batch, routes: routesCopy)
        }.flatMap { $0 }
        for (index, result) in absorbed {
            if let result { results[index] = result } else { again.append(index) }
        }
        if !again.isEmpty {
            let resendIndices = again
            let resent = await gatherConcurrently(resendIndices.count) { position in
                let index = resendIndices[position]
                do {
                    return Result<RedisReply, any Error>.success(try await self.execute(commands[index], route: routesCopy[index]))
                } catch {
                    return .failure(error)
                }
            }
            for (index, result) in zip(resendIndices, resent) { results[index] = result }
        }
        return try Self.replies(results)
    }

    /// ``pipeline(_:)-([[RedisArgument]])`` on the calling thread: the nodes' pipelines one after the other.
    ///
    /// - Throws: as ``pipeline(_:)-([[RedisArgument]])``.
    public func pipelineBlocking(_ commands: [[RedisArgument]]) throws -> [RedisReply] {
        var routes = try commands.map { try route($0) }
        for index in routes.indices where routes[index].target == .askServer {
            routes[index] = try resolveBlocking(routes[index], commands[index])
        }
        let (batches, oneByOne) = try batches(routes)
        var results = [Result<RedisReply, any Error>?](repeating: nil, count: commands.count)
        var again = oneByOne
        let timeout = min(configuration.requestTimeout, configuration.pool.acquireTimeout)
        for batch in batches {
            let outcome = Result<[RedisReply], any Error> {
                try batch.pool.withConnectionBlocking(timeout: timeout) { connection in
                    if batch.hasWrite && batch.node.isSuspect && connection.peerClosedWhileIdle() {
                        throw PeerClosedBeforeSend()
                    }
                    return try connection.redis.pipelineBlocking(batch.indices.map { commands[$0] })
                }
            }
            if case .failure(let error) = outcome, Self.isConnectionFailure(error) { batch.node.noteConnectionError() }
            for (index, result) in absorb(outcome, batch: batch, routes: routes) {
                if let result { results[index] = result } else { again.append(index) }
            }
        }
        for index in again {
            results[index] = Result { try executeBlocking(commands[index], route: routes[index]) }
        }
        return try Self.replies(results)
    }

    /// Typed commands in one cluster pipeline (see ``pipeline(_:)-([[RedisArgument]])``).
    ///
    /// - Returns: one result per command: a command's error reply or a reply of the wrong shape fails only
    ///   that command.
    /// - Throws: as ``pipeline(_:)-([[RedisArgument]])``.
    public func pipeline<R>(_ commands: [RedisCommand<R>]) async throws -> [Result<R, RedisError>] {
        let replies = try await pipeline(commands.map(\.arguments))
        return zip(commands, replies).map { $0.result(from: $1) }
    }

    /// ``pipeline(_:)-([RedisCommand<R>])`` on the calling thread.
    ///
    /// - Throws: as ``pipeline(_:)-([[RedisArgument]])``.
    public func pipelineBlocking<R>(_ commands: [RedisCommand<R>]) throws -> [Result<R, RedisError>] {
        let replies = try pipelineBlocking(commands.map(\.arguments))
        return zip(commands, replies).map { $0.result(from: $1) }
    }

    // MARK: Multi-key commands split by slot

    /// The keys grouped by slot, in first-seen order, with their positions.
    private static func bySlot(_ count: Int, key: (Int) -> String) -> [(slot: UInt16, positions: [Int])] {
        var groups = [UInt16: Int]()
        var result = [(slot: UInt16, positions: [Int])]()
        for position in 0..<count {
            let slot = ClusterSlot.slot(forKey: key(position))
            if let group = groups[slot] {
                result[group].positions.append(position)
            } else {
                groups[slot] = result.count
                result.append((slot, [position]))
            }
        }
        return result
    }

    private static func mgetCommands(_ keys: [String]) -> (groups: [(slot: UInt16, positions: [Int])], commands: [[RedisArgument]]) {
        let groups = bySlot(keys.count) { keys[$0] }
        return (groups, groups.map { ["MGET"] + $0.positions.map { .string(keys[$0]) } })
    }

    private static func mgetMerge(_ replies: [RedisReply], groups: [(slot: UInt16, positions: [Int])], count: Int) throws -> [[UInt8]?] {
        var values = [[UInt8]?](repeating: nil, count: count)
        for (group, reply) in zip(groups, replies) {
            for (position, value) in zip(group.positions, try reply.array) { values[position] = try value.optionalBytes }
        }
        return values
    }

    /// `MGET` of keys in any slots: one `MGET` per slot, sent per node in parallel (a pipeline), the
    /// values merged in the keys' order.
    ///
    /// - Returns: each key's value, `nil` for a missing key.
    /// - Throws: ``RedisError/server(_:)`` when a node answered an error; as ``pipeline(_:)-([[RedisArgument]])``.
    public func mget(_ keys: [String]) async throws -> [[UInt8]?] {
        guard !keys.isEmpty else { return [] }
        let (groups, commands) = Self.mgetCommands(keys)
        return try Self.mgetMerge(try await pipeline(commands), groups: groups, count: keys.count)
    }

    /// ``mget(_:)`` on the calling thread.
    ///
    /// - Throws: as ``mget(_:)``.
    public func mgetBlocking(_ keys: [String]) throws -> [[UInt8]?] {
        guard !keys.isEmpty else { return [] }
        let (groups, commands) = Self.mgetCommands(keys)
        return try Self.mgetMerge(try pipelineBlocking(commands), groups: groups, count: keys.count)
    }

    private static func msetCommands(_ pairs: [(key: String, value: RedisArgument)]) -> [[RedisArgument]] {
        bySlot(pairs.count) { pairs[$0].key }.map { group in
            ["MSET"] + group.positions.flatMap { [RedisArgument.string(pairs[$0].key), pairs[$0].value] }
        }
    }

    /// `MSET` of keys in any slots: one `MSET` per slot, sent per node in parallel. Atomic per slot only:
    /// after an error, the other slots' keys may be set.
    ///
    /// - Throws: ``RedisError/server(_:)`` when a node answered an error; as ``pipeline(_:)-([[RedisArgument]])``.
    public func mset(_ pairs: [(key: String, value: RedisArgument)]) async throws {
        guard !pairs.isEmpty else { return }
        for reply in try await pipeline(Self.msetCommands(pairs)) { try reply.expectStatus("OK") }
    }

    /// ``mset(_:)`` on the calling thread.
    ///
    /// - Throws: as ``mset(_:)``.
    public func msetBlocking(_ pairs: [(key: String, value: RedisArgument)]) throws {
        guard !pairs.isEmpty else { return }
        for reply in try pipelineBlocking(Self.msetCommands(pairs)) { try reply.expectStatus("OK") }
    }

    private static func countingCommands(_ name: String, _ keys: [String]) -> [[RedisArgument]] {
        bySlot(keys.count) { keys[$0] }.map { group in [RedisArgument.string(name)] + group.positions.map { .string(keys[$0]) } }
    }

    private func counting(_ name: String, _ keys: [String]) async throws -> Int {
        guard !keys.isEmpty else { return 0 }
        return try await pipeline(Self.countingCommands(name, keys)).reduce(0) { $0 + (try $1.int) }
    }

    private func countingBlocking(_ name: String, _ keys: [String]) throws -> Int {
        guard !keys.isEmpty else { return 0 }
        return try pipelineBlocking(Self.countingCommands(name, keys)).reduce(0) { $0 + (try $1.int) }
    }

    /// `DEL` of keys in any slots, split by slot and sent per node in parallel.
    ///
    /// - Returns: the number of keys deleted.
    /// - Throws: as ``mget(_:)``.
    public func del(_ keys: [String]) async throws -> Int { try await counting("DEL", keys) }

    /// ``del(_:)`` on the calling thread.
    ///
    /// - Throws: as ``mget(_:)``.
    public func delBlocking(_ keys: [String]) throws -> Int { try countingBlocking("DEL", keys) }

    /// `UNLINK` of keys in any slots, split by slot and sent per node in parallel.
    ///
    /// - Returns: the number of keys unlinked.
    /// - Throws: as ``mget(_:)``.
    public func unlink(_ keys: [String]) async throws -> Int { try await counting("UNLINK", keys) }

    /// ``unlink(_:)`` on the calling thread.
    ///
    /// - Throws: as ``mget(_:)``.
    public func unlinkBlocking(_ keys: [String]) throws -> Int { try countingBlocking("UNLINK", keys) }

    /// `EXISTS` of keys in any slots, split by slot and sent per node in parallel.
    ///
    /// - Returns: how many of the keys exist (a key given twice counts twice, as in Redis).
    /// - Throws: as ``mget(_:)``.
    public func exists(_ keys: [String]) async throws -> Int { try await counting("EXISTS", keys) }

    /// ``exists(_:)`` on the calling thread.
    ///
    /// - Throws: as ``mget(_:)``.
    public func existsBlocking(_ keys: [String]) throws -> Int { try countingBlocking("EXISTS", keys) }

    // MARK: Transactions

    /// The slot a transaction runs in, and whether it only reads.
    private func transactionRoute(_ routes: [CommandRoute]) throws -> (slot: UInt16, readOnly: Bool) {
        var slot: UInt16?
        for route in routes {
            guard case .slot(let commandSlot) = route.target else { continue }
            if let slot, slot != commandSlot { throw RedisClusterError.transactionSpansSlots(slots: [slot, commandSlot]) }
            slot = commandSlot
        }
        guard let slot else { throw RedisClusterError.transactionWithoutKeys }
        return (slot, routes.allSatisfy(\.isReadOnly))
    }

    /// The transaction's results from the replies to `[ASKING], MULTI, commands…, EXEC`.
    private static func transactionResult(_ replies: [RedisReply], asking: Bool) throws -> [RedisReply]? {
        let body = replies.dropFirst(asking ? 1 : 0)
        switch body.last {
        case .array(let results)?:
            return results
        case .null?:
            return nil
        case .error(let message)?:
            // EXECABORT: a command was refused while queuing (MOVED, ASK, TRYAGAIN, or its own error):
            // nothing ran; that error decides.
            for case .error(let queued) in body.dropFirst().dropLast() { throw RedisError.server(queued) }
            throw RedisError.server(message)
        default:
            throw RedisError.unexpectedReply(expected: "the reply of EXEC", actual: body.last?.kindDescription ?? "none")
        }
    }

    /// Runs `commands` as one `MULTI` … `EXEC` transaction on the primary serving their keys, which must
    /// all hash to one slot (use a `{hash tag}`). Redirections are followed (`ASKING` precedes `MULTI`
    /// under `ASK`); a transaction refused while queuing (`EXECABORT`) ran nothing and is retried like a
    /// single command. A connection error is retried only when the transaction only reads or provably
    /// was not sent.
    ///
    /// - Returns: one reply per command (a command's run-time error is an ``RedisReply/error(_:)``
    ///   element), or `nil` when the transaction was aborted.
    /// - Throws: ``RedisClusterError/transactionSpansSlots(slots:)`` or
    ///   ``RedisClusterError/transactionWithoutKeys`` before sending; ``RedisError/server(_:)`` when a
    ///   command was refused while queuing (an unknown command, a wrong arity); as ``command(_:)-([RedisArgument])``.
    public func transaction(_ commands: [[RedisArgument]]) async throws -> [RedisReply]? {
        var routes = try commands.map { try route($0) }
        for index in routes.indices where routes[index].target == .askServer {
            routes[index] = try await resolve(routes[index], commands[index])
        }
        let (slot, readOnly) = try transactionRoute(routes)
        return try await withRetries(name: "MULTI", readOnly: readOnly, slot: slot, primaryOnly: true, singleCommand: false) {
            _, connection, asking in
            let batch: [[RedisArgument]] = (asking ? [["ASKING"]] : []) + [["MULTI"]] + commands + [["EXEC"]]
            return try Self.transactionResult(try await connection.redis.pipeline(batch), asking: asking)
        }
    }

    /// ``transaction(_:)-([[RedisArgument]])`` on the calling thread.
    ///
    /// - Throws: as ``transaction(_:)-([[RedisArgument]])`` without `CancellationError`.
    public func transactionBlocking(_ commands: [[RedisArgument]]) throws -> [RedisReply]? {
        var routes = try commands.map { try route($0) }
        for index in routes.indices where routes[index].target == .askServer {
            routes[index] = try resolveBlocking(routes[index], commands[index])
        }
        let (slot, readOnly) = try transactionRoute(routes)
        return try withRetriesBlocking(name: "MULTI", readOnly: readOnly, slot: slot, primaryOnly: true, singleCommand: false) {
            _, connection, asking in
            let batch: [[RedisArgument]] = (asking ? [["ASKING"]] : []) + [["MULTI"]] + commands + [["EXEC"]]
            return try Self.transactionResult(try connection.redis.pipelineBlocking(batch), asking: asking)
        }
    }

    /// Typed commands in one single-slot transaction (see ``transaction(_:)-([[RedisArgument]])``).
    ///
    /// - Returns: one result per command, or `nil` when the transaction was aborted.
    /// - Throws: as ``transaction(_:)-([[RedisArgument]])``.
    public func transaction<R>(_ commands: [RedisCommand<R>]) async throws -> [Result<R, RedisError>]? {
        guard let replies = try await transaction(commands.map(\.arguments)) else { return nil }
        return zip(commands, replies).map { $0.result(from: $1) }
    }

    /// ``transaction(_:)-([RedisCommand<R>])`` on the calling thread.
    ///
    /// - Throws: as ``transaction(_:)-([[RedisArgument]])`` without `CancellationError`.
    public func transactionBlocking<R>(_ commands: [RedisCommand<R>]) throws -> [Result<R, RedisError>]? {
        guard let replies = try transactionBlocking(commands.map(\.arguments)) else { return nil }
        return zip(commands, replies).map { $0.result(from: $1) }
    }
}
