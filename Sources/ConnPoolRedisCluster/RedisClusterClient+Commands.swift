public import ConnPoolRedis

extension RedisClusterClient {
    /// Sends one command to the node serving its keys (or to one or all primaries for a keyless command,
    /// see the type's Routing section), following redirections and retrying as described in the type's
    /// documentation, and returns its reply.
    ///
    /// ```swift
    /// try await cluster.command(["SET", "user:{42}:name", "Ada"])
    /// let size = try await cluster.command(["DBSIZE"]).int   // summed over the primaries
    /// ```
    ///
    /// - Returns: the reply (never ``RedisReply/error(_:)``: thrown instead).
    /// - Throws: ``RedisError/server(_:)`` for the command's own error reply;
    ///   ``RedisClusterError/crossSlot(command:slots:)`` or ``RedisClusterError/unsupportedCommand(command:reason:)``
    ///   before sending; ``RedisClusterError/tooManyRedirects(command:limit:lastRedirect:)``,
    ///   ``RedisClusterError/retriesExhausted(command:attempts:lastError:)``,
    ///   ``RedisClusterError/noReplicaAvailable(slot:)`` or ``RedisClusterError/shutDown``; a connection
    ///   ``RedisError`` for a write whose outcome is unknown; `CancellationError`.
    public func command(_ arguments: [RedisArgument]) async throws -> RedisReply {
        try await execute(arguments, route: route(arguments))
    }

    /// ``command(_:)-([RedisArgument])`` with the arguments as a list: `try await cluster.command("GET", key)`.
    ///
    /// - Throws: as ``command(_:)-([RedisArgument])``.
    public func command<each Argument: RedisArgumentConvertible>(_ arguments: repeat each Argument) async throws
        -> RedisReply
    {
        var list = [RedisArgument]()
        for argument in repeat each arguments { list.append(Self.argument(argument)) }
        return try await command(list)
    }

    /// ``command(_:)-([RedisArgument])`` on the calling thread, blocking it (never call it on a
    /// cooperative thread). A command sent to every primary visits them one after the other.
    ///
    /// - Throws: as ``command(_:)-([RedisArgument])`` without `CancellationError`.
    public func commandBlocking(_ arguments: [RedisArgument]) throws -> RedisReply {
        try executeBlocking(arguments, route: route(arguments))
    }

    /// ``commandBlocking(_:)-([RedisArgument])`` with the arguments as a list.
    ///
    /// - Throws: as ``commandBlocking(_:)-([RedisArgument])``.
    public func commandBlocking<each Argument: RedisArgumentConvertible>(_ arguments: repeat each Argument) throws
        -> RedisReply
    {
        var list = [RedisArgument]()
        for argument in repeat each arguments { list.append(Self.argument(argument)) }
        return try commandBlocking(list)
    }

    /// Sends a typed command (see ``RedisCommand``) and decodes its reply.
    ///
    /// ```swift
    /// try await cluster.send(.set("greeting", "hello"))
    /// let greeting = try await cluster.send(.get("greeting"))   // String?
    /// ```
    ///
    /// - Throws: as ``command(_:)-([RedisArgument])``, and ``RedisError/unexpectedReply(expected:actual:)``
    ///   when the reply does not have the command's shape.
    public func send<R>(_ command: RedisCommand<R>) async throws -> R {
        try command.decode(await self.command(command.arguments))
    }

    /// ``send(_:)`` on the calling thread.
    ///
    /// - Throws: as ``send(_:)`` without `CancellationError`.
    public func sendBlocking<R>(_ command: RedisCommand<R>) throws -> R {
        try command.decode(commandBlocking(command.arguments))
    }

    /// The slot of `key` (what `CLUSTER KEYSLOT` answers), and the address of the node that serves it in
    /// the client's current view (`nil` when none does).
    public func route(forKey key: String) -> (slot: UInt16, primary: ClusterNodeAddress?) {
        let slot = ClusterSlot.slot(forKey: key)
        return (slot, routing.node(forSlot: slot)?.address)
    }

    static func argument<A: RedisArgumentConvertible>(_ value: A) -> RedisArgument {
        switch value {
        case let argument as RedisArgument: return argument
        case let string as String: return .string(string)
        case let integer as Int: return .integer(integer)
        default: return .bytes(value.withRedisArgumentBytes { Array($0) })
        }
    }
}
