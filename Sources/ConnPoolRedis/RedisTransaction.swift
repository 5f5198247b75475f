/// Why a Redis transaction (`MULTI` … `EXEC`) failed as a whole.
public enum RedisTransactionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server rejected a command when it was queued (an unknown command, a wrong number of
    /// arguments, …), so `EXEC` answered `EXECABORT` and *no* command ran. `index` is the command's
    /// position in the transaction (0 for the first), `command` its name, `message` the server's error.
    /// Fix the command; the connection is usable (nothing stays queued or watched).
    case commandRejected(index: Int, command: String, message: String)
    /// ``RedisConnection/withWatch(_:maxAttempts:_:)`` aborted `attempts` times because a watched key
    /// changed each time between `WATCH` and `EXEC`. Retry later, or allow more attempts.
    case watchConflict(attempts: Int)

    /// A readable explanation; never contains a command's arguments.
    public var description: String {
        switch self {
        case .commandRejected(let index, let command, let message):
            return "Redis transaction not executed: command \(index) (\(command)) was rejected when queued: \(message)"
        case .watchConflict(let attempts):
            return "Redis transaction aborted \(attempts) times: a watched key changed before EXEC each time"
        }
    }
}

/// Commands to run atomically as one `MULTI` … `EXEC` transaction, with their typed results.
///
/// ```swift
/// let transaction = RedisTransaction(.set("k", "v"), .incr("n"))
/// if let (set, n) = try await connection.send(transaction) { print(try n.get()) }
/// ```
///
/// `MULTI`, the commands and `EXEC` are written as one pipeline, so nothing is left open on the
/// connection whatever happens (short of a connection error, which breaks the connection).
public struct RedisTransaction<each R: Sendable>: Sendable {
    /// The commands, in the order they run.
    public let commands: (repeat RedisCommand<each R>)

    /// A transaction running `commands` in order.
    public init(_ commands: repeat RedisCommand<each R>) {
        self.commands = (repeat each commands)
    }

    /// `[MULTI, commands…, EXEC]` and the commands' names.
    fileprivate var pipeline: (arguments: [[RedisArgument]], names: [String]) {
        var arguments: [[RedisArgument]] = [["MULTI"]]
        var names = [String]()
        for command in repeat each commands {
            arguments.append(command.arguments)
            names.append(command.name)
        }
        arguments.append(["EXEC"])
        return (arguments, names)
    }

    /// The typed results from the pipeline's replies, `nil` when `EXEC` aborted.
    fileprivate func outcome(_ replies: [RedisReply], names: [String]) throws -> (repeat Result<each R, RedisError>)? {
        guard let elements = try execElements(replies, names: names) else { return nil }
        let results: (repeat Result<each R, RedisError>) = RedisReplyCursor(elements).results(repeat each commands)
        return results
    }
}

/// `EXEC`'s elements from the replies to `[MULTI, commands…, EXEC]`, or `nil` when EXEC answered nil (a
/// watched key changed).
///
/// - Throws: ``RedisTransactionError/commandRejected(index:command:message:)`` for `EXECABORT`;
///   ``RedisError/server(_:)`` when `MULTI` or `EXEC` failed otherwise;
///   ``RedisError/unexpectedReply(expected:actual:)`` for an `EXEC` reply of the wrong shape.
private func execElements(_ replies: [RedisReply], names: [String]) throws -> [RedisReply]? {
    if case .error(let message) = replies[0] { throw RedisError.server(message) }
    switch replies[replies.count - 1] {
    case .null:
        return nil
    case .array(let elements) where elements.count == names.count:
        return elements
    case .error(let message):
        let queued = replies[1..<replies.count - 1]
        if let rejected = queued.firstIndex(where: { if case .error = $0 { true } else { false } }),
            case .error(let reason) = queued[rejected]
        {
            throw RedisTransactionError.commandRejected(index: rejected - 1, command: names[rejected - 1], message: reason)
        }
        throw RedisError.server(message)
    case let other:
        throw RedisError.unexpectedReply(expected: "EXEC's array of \(names.count) replies", actual: other.kindDescription)
    }
}

extension RedisCommand {
    /// `WATCH key [key …]`: a later `EXEC` on this connection aborts (answers nil) if any of the keys
    /// changes first. Prefer ``RedisConnection/withWatch(_:maxAttempts:_:)``, which also unwatches on error.
    ///
    /// - Precondition: `keys` is not empty.
    public static func watch(_ keys: [String]) -> RedisCommand<Void> {
        precondition(!keys.isEmpty, "WATCH needs at least one key")
        return RedisCommand<Void>(["WATCH"] + RedisArgument.keys(keys), decode: RedisReply.ok)
    }

    /// `UNWATCH`: forgets every watched key of the connection.
    public static func unwatch() -> RedisCommand<Void> {
        RedisCommand<Void>(["UNWATCH"], decode: RedisReply.ok)
    }
}

extension RedisConnection {
    /// Runs `transaction` atomically (`MULTI`, its commands, `EXEC`, written as one pipeline).
    ///
    /// - Returns: one result per command, in order, or `nil` when the transaction was aborted because a
    ///   key watched on this connection (``RedisCommand/watch(_:)``) changed. A command failing at run
    ///   time (for example `WRONGTYPE`) fails only its own result; the others still ran.
    /// - Throws: ``RedisTransactionError/commandRejected(index:command:message:)`` when the server
    ///   rejected a command when queued (nothing ran); ``RedisError/server(_:)`` when `MULTI` itself
    ///   failed (for example inside another `MULTI`); what ``pipeline(_:)-([[RedisArgument]])`` throws.
    public func send<each R>(_ transaction: RedisTransaction<repeat each R>) async throws -> (repeat Result<each R, RedisError>)? {
        let (arguments, names) = transaction.pipeline
        return try transaction.outcome(await pipeline(arguments), names: names)
    }

    /// ``send(_:)-(RedisTransaction<repeat each R>)`` on the calling thread.
    ///
    /// - Throws: as ``send(_:)-(RedisTransaction<repeat each R>)``, without `CancellationError`.
    public func sendBlocking<each R>(_ transaction: RedisTransaction<repeat each R>) throws -> (repeat Result<each R, RedisError>)? {
        let (arguments, names) = transaction.pipeline
        return try transaction.outcome(pipelineBlocking(arguments), names: names)
    }

    /// Runs `commands` as one transaction: `send(RedisTransaction(commands…))`.
    ///
    /// ```swift
    /// guard let (_, count) = try await connection.transaction(.set("k", "v"), .incr("n")) else { return }
    /// ```
    ///
    /// - Returns and throws: as ``send(_:)-(RedisTransaction<repeat each R>)``.
    public func transaction<each R>(_ commands: repeat RedisCommand<each R>) async throws -> (repeat Result<each R, RedisError>)? {
        try await send(RedisTransaction(repeat each commands))
    }

    /// ``transaction(_:)-(repeat RedisCommand<each R>)`` on the calling thread.
    public func transactionBlocking<each R>(_ commands: repeat RedisCommand<each R>) throws -> (repeat Result<each R, RedisError>)? {
        try sendBlocking(RedisTransaction(repeat each commands))
    }

    /// Runs a transaction of any number of commands with one result type (for example built in a loop).
    ///
    /// - Returns and throws: as ``send(_:)-(RedisTransaction<repeat each R>)``.
    public func transaction<R>(_ commands: [RedisCommand<R>]) async throws -> [Result<R, RedisError>]? {
        let names = commands.map(\.name)
        let replies = try await pipeline([["MULTI"]] + commands.map(\.arguments) + [["EXEC"]])
        return try execElements(replies, names: names).map { zip(commands, $0).map { $0.result(from: $1) } }
    }

    /// ``transaction(_:)-([RedisCommand<R>])`` on the calling thread.
    public func transactionBlocking<R>(_ commands: [RedisCommand<R>]) throws -> [Result<R, RedisError>]? {
        let names = commands.map(\.name)
        let replies = try pipelineBlocking([["MULTI"]] + commands.map(\.arguments) + [["EXEC"]])
        return try execElements(replies, names: names).map { zip(commands, $0).map { $0.result(from: $1) } }
    }

    /// Optimistic locking: `WATCH`es `keys`, calls `body` (which reads what it needs through the
    /// connection and returns the transaction to run), and runs that transaction; when it aborts because
    /// a watched key changed in between, starts again, up to `maxAttempts` times.
    ///
    /// ```swift
    /// let (set) = try await connection.withWatch([key]) { connection in
    ///     let value = try await connection.send(.get(key)).flatMap { Int($0) } ?? 0
    ///     return RedisTransaction(.set(key, value * 2))
    /// }
    /// ```
    ///
    /// When `body` throws, the keys are unwatched (even when the task is cancelled) and the error is
    /// rethrown, so nothing stays watched on the connection.
    ///
    /// - Precondition: `keys` is not empty; `maxAttempts >= 1`.
    /// - Returns: the results of the transaction that ran.
    /// - Throws: ``RedisTransactionError/watchConflict(attempts:)`` when every attempt aborted; what
    ///   `body` throws; what ``send(_:)-(RedisTransaction<repeat each R>)`` throws.
    public nonisolated(nonsending) func withWatch<each R>(
        _ keys: [String], maxAttempts: Int = 5,
        _ body: nonisolated(nonsending) (RedisConnection) async throws -> RedisTransaction<repeat each R>
    ) async throws -> (repeat Result<each R, RedisError>) {
        precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
        for _ in 0..<maxAttempts {
            try await send(.watch(keys))
            let transaction: RedisTransaction<repeat each R>
            do {
                transaction = try await body(self)
            } catch {
                // A cancelled task cannot send; an unstructured task is not cancelled, and is awaited, so the
                // connection still has one user at a time.
                await Task { try? await self.send(.unwatch()) }.value
                throw error
            }
            if let results = try await send(transaction) { return results }
        }
        throw RedisTransactionError.watchConflict(attempts: maxAttempts)
    }

    /// ``withWatch(_:maxAttempts:_:)`` on the calling thread.
    ///
    /// - Precondition: `keys` is not empty; `maxAttempts >= 1`.
    /// - Throws: as ``withWatch(_:maxAttempts:_:)``.
    public func withWatchBlocking<each R>(
        _ keys: [String], maxAttempts: Int = 5,
        _ body: (RedisConnection) throws -> RedisTransaction<repeat each R>
    ) throws -> (repeat Result<each R, RedisError>) {
        precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
        for _ in 0..<maxAttempts {
            try sendBlocking(.watch(keys))
            let transaction: RedisTransaction<repeat each R>
            do {
                transaction = try body(self)
            } catch {
                try? sendBlocking(.unwatch())
                throw error
            }
            if let results = try sendBlocking(transaction) { return results }
        }
        throw RedisTransactionError.watchConflict(attempts: maxAttempts)
    }
}
