/// One Redis command as a value: its arguments (the command name first) and how its reply becomes a
/// typed result. Built once, it can be sent with the async or the blocking API, in a pipeline or in a
/// transaction, without writing any command twice.
///
/// ```swift
/// try await connection.send(.set("greeting", "hello", expiration: .after(.seconds(30))))
/// let greeting = try await connection.send(.get("greeting"))   // String?
/// let hits = try connection.sendBlocking(.incr("hits"))        // Int
/// ```
///
/// The static factories (``get(_:)``, ``set(_:_:expiration:condition:)``, ``hset(_:field:to:)``, …) cover
/// the common command families; ``init(_:decode:)`` and ``raw(_:)`` build any other command, and
/// ``RedisConnection/command(_:)-([RedisArgument])`` stays available for everything else.
public struct RedisCommand<Result: Sendable>: Sendable {
    /// The command's arguments, the command name first (`["SET", "key", "value"]`).
    public let arguments: [RedisArgument]
    /// Turns the command's reply into its result. Receives any reply, including ``RedisReply/error(_:)``
    /// (a typed send throws before calling it, but EXEC and pipeline results pass error elements through
    /// ``result(from:)``).
    public let decode: @Sendable (RedisReply) throws -> Result

    /// A command with `arguments` (the command name first) and a `decode` function for its reply.
    ///
    /// - Precondition: `arguments` is not empty.
    public init(_ arguments: [RedisArgument], decode: @escaping @Sendable (RedisReply) throws -> Result) {
        precondition(!arguments.isEmpty, "a Redis command needs at least its name")
        self.arguments = arguments
        self.decode = decode
    }

    /// The command name (the first argument), for messages. Never an argument's value.
    public var name: String {
        if case .string(let name) = arguments[0] { return name }
        return "(binary command name)"
    }

    /// The same command, with `transform` applied to its decoded result.
    public func map<T: Sendable>(_ transform: @escaping @Sendable (Result) throws -> T) -> RedisCommand<T> {
        let decode = self.decode
        return RedisCommand<T>(arguments) { try transform(decode($0)) }
    }

    /// The typed result of `reply`: `.failure(.server(message))` for an error reply, the decode error
    /// (``RedisError/unexpectedReply(expected:actual:)``) when the reply has another shape, else the value.
    public func result(from reply: RedisReply) -> Swift.Result<Result, RedisError> {
        if case .error(let message) = reply { return .failure(.server(message)) }
        do {
            return .success(try decode(reply))
        } catch let error as RedisError {
            return .failure(error)
        } catch {
            return .failure(.unexpectedReply(expected: "a reply \(name) can decode", actual: "\(error)"))
        }
    }
}

extension RedisCommand where Result == RedisReply {
    /// Any command, with its reply untouched (never an error reply when sent with
    /// ``RedisConnection/send(_:)``: that throws ``RedisError/server(_:)``).
    ///
    /// - Precondition: `arguments` is not empty.
    public static func raw(_ arguments: [RedisArgument]) -> RedisCommand<RedisReply> {
        RedisCommand(arguments) { $0 }
    }
}

// MARK: - Sending

extension RedisConnection {
    /// Sends `command` and decodes its reply, suspending without blocking a thread (as
    /// ``command(_:)-([RedisArgument])``).
    ///
    /// - Returns: the command's typed result.
    /// - Throws: what ``command(_:)-([RedisArgument])`` throws (``RedisError/server(_:)`` for an error
    ///   reply, connection errors, `CancellationError`), and ``RedisError/unexpectedReply(expected:actual:)``
    ///   when the reply does not have the shape the command expects. A server or decode error leaves the
    ///   connection usable.
    public func send<R>(_ command: RedisCommand<R>) async throws -> R {
        try command.decode(await self.command(command.arguments))
    }

    /// Sends `command` and decodes its reply on the calling thread (as
    /// ``commandBlocking(_:)-([RedisArgument])``).
    ///
    /// - Returns: the command's typed result.
    /// - Throws: as ``send(_:)``, without `CancellationError`.
    public func sendBlocking<R>(_ command: RedisCommand<R>) throws -> R {
        try command.decode(commandBlocking(command.arguments))
    }

    /// Sends `commands` in one pipeline (one write, one reply each) and decodes each reply.
    ///
    /// ```swift
    /// let values = try await connection.pipeline([.get("a"), .get("b")])  // [Result<String?, RedisError>]
    /// ```
    ///
    /// - Returns: one result per command, in order: a server error or a reply of the wrong shape fails
    ///   only its own command.
    /// - Throws: what ``pipeline(_:)-([[RedisArgument]])`` throws (connection errors, timeouts,
    ///   `CancellationError`); never a per-command error.
    public func pipeline<R>(_ commands: [RedisCommand<R>]) async throws -> [Result<R, RedisError>] {
        let replies = try await pipeline(commands.map(\.arguments))
        return zip(commands, replies).map { $0.result(from: $1) }
    }

    /// ``pipeline(_:)-([RedisCommand<R>])`` on the calling thread.
    ///
    /// - Throws: what ``pipelineBlocking(_:)-([[RedisArgument]])`` throws; never a per-command error.
    public func pipelineBlocking<R>(_ commands: [RedisCommand<R>]) throws -> [Result<R, RedisError>] {
        let replies = try pipelineBlocking(commands.map(\.arguments))
        return zip(commands, replies).map { $0.result(from: $1) }
    }

    /// Sends commands of different result types in one pipeline and returns their typed results as a
    /// tuple, in order.
    ///
    /// ```swift
    /// let (set, count) = try await connection.pipeline(.set("k", "v"), .incr("n"))
    /// let n = try count.get()
    /// ```
    ///
    /// - Returns: one result per command; a server or decode error fails only its own command.
    /// - Throws: what ``pipeline(_:)-([[RedisArgument]])`` throws; never a per-command error.
    public func pipeline<each R>(
        _ commands: repeat RedisCommand<each R>
    ) async throws -> (repeat Result<each R, RedisError>) {
        var arguments = [[RedisArgument]]()
        for command in repeat each commands { arguments.append(command.arguments) }
        let replies = try await pipeline(arguments)
        return RedisReplyCursor(replies).results(repeat each commands)
    }

    /// The tuple form of ``pipeline(_:)-(repeat RedisCommand<each R>)`` on the calling thread.
    ///
    /// - Throws: what ``pipelineBlocking(_:)-([[RedisArgument]])`` throws; never a per-command error.
    public func pipelineBlocking<each R>(
        _ commands: repeat RedisCommand<each R>
    ) throws -> (repeat Result<each R, RedisError>) {
        var arguments = [[RedisArgument]]()
        for command in repeat each commands { arguments.append(command.arguments) }
        let replies = try pipelineBlocking(arguments)
        return RedisReplyCursor(replies).results(repeat each commands)
    }
}

/// Hands out replies in order, to decode a parameter pack of commands against an array of replies.
final class RedisReplyCursor {
    private let replies: [RedisReply]
    private var index = 0

    /// - Precondition: `replies` has one reply per command later passed to ``results(_:)``.
    init(_ replies: [RedisReply]) { self.replies = replies }

    func results<each R>(_ commands: repeat RedisCommand<each R>) -> (repeat Result<each R, RedisError>) {
        (repeat next(each commands))
    }

    private func next<R>(_ command: RedisCommand<R>) -> Result<R, RedisError> {
        defer { index += 1 }
        return command.result(from: replies[index])
    }
}
