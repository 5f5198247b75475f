import ConnPool
import ConnPoolRedis

/// Where one command goes, decided from its name and keys before anything is sent.
struct CommandRoute: Sendable {
    enum Target: Sendable, Equatable {
        /// The node serving this slot (its replica for reads, by the read policy).
        case slot(UInt16)
        /// Any one primary (a keyless command).
        case anyPrimary
        /// Every primary, replies merged.
        case allPrimaries
        /// Every node, replicas included, replies merged.
        case allNodes
        /// The key positions are not in the specs: ask a node with `COMMAND GETKEYS`.
        case askServer
    }

    var target: Target
    /// The server flags the command `readonly`: it may go to a replica and is retried after a
    /// connection error.
    var isReadOnly: Bool
    var response: ResponsePolicy
    /// The command name, uppercased, for errors (never an argument).
    var name: String
}

extension RedisClusterClient {
    /// Commands that change a connection's session, which a cluster client cannot honour (each command
    /// may use another connection), by their lowercase server name, with what to use instead.
    static let refusedCommands: [String: String] = [
        "select": "a cluster has only database 0",
        "multi": "use transaction(_:), which runs MULTI … EXEC on the slot's node",
        "exec": "use transaction(_:)",
        "discard": "use transaction(_:)",
        "watch": "WATCH needs one connection across commands: use a RedisConnection to the slot's node",
        "unwatch": "use transaction(_:)",
        "auth": "give the credentials in the seed URL",
        "hello": "the client speaks RESP2 with the seed URL's credentials",
        "reset": "connections are reset by their pools",
        "readonly": "choose a read policy in RedisClusterConfiguration",
        "readwrite": "choose a read policy in RedisClusterConfiguration",
        "asking": "the client sends ASKING itself when it follows an ASK redirection",
        "quit": "use shutdown()",
        "monitor": "MONITOR takes a connection over: use a RedisConnection to one node",
        "subscribe": "use a RedisSubscriber",
        "psubscribe": "use a RedisSubscriber",
        "ssubscribe": "use a RedisSubscriber on the channel's node",
        "unsubscribe": "use a RedisSubscriber",
        "punsubscribe": "use a RedisSubscriber",
        "sunsubscribe": "use a RedisSubscriber",
        "sync": "replication commands take a connection over",
        "psync": "replication commands take a connection over",
        "client|setname": "it changes the connection's session, and each command may use another connection",
        "client|tracking": "it changes the connection's session, and each command may use another connection",
        "client|caching": "it changes the connection's session, and each command may use another connection",
        "client|reply": "it changes the connection's session, and each command may use another connection",
        "client|no-evict": "it changes the connection's session, and each command may use another connection",
        "client|no-touch": "it changes the connection's session, and each command may use another connection",
        "client|setinfo": "it changes the connection's session, and each command may use another connection",
    ]

    /// Decides where `arguments` go: by the slot of their keys (all must share it), or to one or all
    /// primaries for a keyless command. No I/O.
    ///
    /// - Throws: ``RedisClusterError/crossSlot(command:slots:)``,
    ///   ``RedisClusterError/unsupportedCommand(command:reason:)``, or ``RedisError/invalidCommand(_:)``
    ///   for an empty command.
    func route(_ arguments: [RedisArgument]) throws -> CommandRoute {
        guard !arguments.isEmpty else { throw RedisError.invalidCommand("a command needs at least its name") }
        guard let info = commands.info(for: arguments) else {
            // Unknown to the server's table: one primary; its reply (MOVED included) decides.
            let name = CommandTable.text(arguments[0]).uppercased()
            return CommandRoute(target: .anyPrimary, isReadOnly: false, response: .default, name: name)
        }
        let name = info.displayName
        if let reason = Self.refusedCommands[info.name] {
            throw RedisClusterError.unsupportedCommand(command: name, reason: reason)
        }
        // The slot all keys share, found without allocating.
        var slot: UInt16?
        let complete = try CommandTable.forEachKeyPosition(arguments, info: info) { (position: Int) throws(RedisClusterError) in
            let keySlot = arguments[position].withRedisArgumentBytes { ClusterSlot.slot(forKeyBytes: $0) }
            if let slot, slot != keySlot { throw .crossSlot(command: name, slots: [slot, keySlot]) }
            slot = keySlot
        }
        guard complete else {
            return CommandRoute(target: .askServer, isReadOnly: info.isReadOnly, response: info.responsePolicy, name: name)
        }
        if let slot {
            return CommandRoute(target: .slot(slot), isReadOnly: info.isReadOnly, response: info.responsePolicy, name: name)
        }
        let target: CommandRoute.Target
        switch info.requestPolicy {
        case .allShards: target = .allPrimaries
        case .allNodes: target = .allNodes
        default: target = .anyPrimary
        }
        return CommandRoute(target: target, isReadOnly: info.isReadOnly, response: info.responsePolicy, name: name)
    }

    /// The slot all the keys at `positions` share, `nil` without keys.
    ///
    /// - Throws: ``RedisClusterError/crossSlot(command:slots:)`` when they do not share one.
    static func commonSlot(_ arguments: [RedisArgument], positions: [Int], name: String) throws(RedisClusterError) -> UInt16? {
        var slot: UInt16?
        for position in positions {
            let keySlot = arguments[position].withRedisArgumentBytes { ClusterSlot.slot(forKeyBytes: $0) }
            if let slot, slot != keySlot { throw .crossSlot(command: name, slots: [slot, keySlot]) }
            slot = keySlot
        }
        return slot
    }

    /// The route of a command whose keys `COMMAND GETKEYS` returned.
    func route(_ route: CommandRoute, keysReply: Result<RedisReply, any Error>) throws -> CommandRoute {
        var route = route
        guard case .success(let reply) = keysReply, let keys = try? reply.array else {
            // GETKEYS refuses a keyless form ("The command has no key arguments"): any primary.
            route.target = .anyPrimary
            return route
        }
        let arguments = try keys.map { RedisArgument.bytes(try $0.bytes) }
        if let slot = try Self.commonSlot(arguments, positions: Array(arguments.indices), name: route.name) {
            route.target = .slot(slot)
        } else {
            route.target = .anyPrimary
        }
        return route
    }

    /// The node and pool for an attempt at `slot`: its primary, or by the read policy one of its
    /// replicas for a read. `nil` when no node serves the slot.
    ///
    /// - Throws: ``RedisClusterError/noReplicaAvailable(slot:)`` under ``RedisClusterReadPolicy/replicaOnly``.
    func target(forSlot slot: UInt16, readOnly: Bool, primaryOnly: Bool = false) throws(RedisClusterError)
        -> (node: ClusterNode, pool: ConnectionPool<ClusterNodeConnectionFactory>)?
    {
        guard let primary = routing.node(forSlot: slot) else { return nil }
        let policy = configuration.readPolicy
        guard readOnly, !primaryOnly, policy != .primaryOnly else { return (primary, primary.pool) }
        let replicas = state.withLock { $0.replicasByPrimary[primary.index] ?? [] }
        let turn = Int(roundRobin.add(1, ordering: .relaxed).newValue % UInt(max(1, replicas.count + 1)))
        switch policy {
        case .primaryOnly:
            return (primary, primary.pool)
        case .preferReplica:
            guard !replicas.isEmpty else { return (primary, primary.pool) }
            let replica = replicas[turn % replicas.count]
            return (replica, replica.readOnlyPool ?? replica.pool)
        case .replicaOnly:
            guard !replicas.isEmpty else { throw .noReplicaAvailable(slot: slot) }
            let replica = replicas[turn % replicas.count]
            return (replica, replica.readOnlyPool ?? replica.pool)
        case .roundRobin:
            if turn == replicas.count { return (primary, primary.pool) }
            let replica = replicas[turn]
            return (replica, replica.readOnlyPool ?? replica.pool)
        }
    }

    // MARK: Merging the replies of a command sent to several nodes

    /// Merges per-node results by the command's response policy.
    ///
    /// - Throws: the first error (a server error as ``RedisError/server(_:)``) when the policy needs every
    ///   node to succeed, or when none did.
    static func merge(_ results: [Result<RedisReply, any Error>], policy: ResponsePolicy) throws -> RedisReply {
        var replies = [RedisReply]()
        var firstError: (any Error)?
        for result in results {
            switch result {
            case .success(.error(let message)): firstError = firstError ?? RedisError.server(message)
            case .success(let reply): replies.append(reply)
            case .failure(let error): firstError = firstError ?? error
            }
        }
        if policy == .oneSucceeded {
            if let reply = replies.first { return reply }
            throw firstError ?? RedisError.unexpectedReply(expected: "a reply", actual: "none")
        }
        if let firstError { throw firstError }
        guard let first = replies.first else { throw RedisError.unexpectedReply(expected: "a reply", actual: "none") }
        switch policy {
        case .sum:
            return .integer(try replies.reduce(0) { $0 + (try $1.int) })
        case .minimum:
            return .integer(try replies.map { try $0.int }.min() ?? 0)
        case .maximum:
            return .integer(try replies.map { try $0.int }.max() ?? 0)
        case .logicalAnd, .logicalOr:
            let and = policy == .logicalAnd
            if case .array = first {
                let arrays = try replies.map { try $0.array.map { try $0.int } }
                let count = arrays.map(\.count).min() ?? 0
                return .array((0..<count).map { index in
                    let bits = arrays.map { $0[index] != 0 }
                    return .integer((and ? bits.allSatisfy { $0 } : bits.contains(true)) ? 1 : 0)
                })
            }
            let bits = try replies.map { try $0.int != 0 }
            return .integer((and ? bits.allSatisfy { $0 } : bits.contains(true)) ? 1 : 0)
        case .allSucceeded, .special, .oneSucceeded:
            return first
        case .default:
            if replies.allSatisfy({ if case .array = $0 { return true } else { return false } }) {
                return .array(try replies.flatMap { try $0.array })
            }
            return replies.first { !$0.isNull } ?? first
        }
    }
}
