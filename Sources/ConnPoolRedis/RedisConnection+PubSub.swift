import ConnPool
import ConnPoolIO

// PUBLISH through a pooled connection, and the steps ``RedisSubscriber`` drives its dedicated connection
// with: it reads replies the server pushes without sending a command first, so it cannot use
// `command`/`receive` (one reply per command, bounded by the command timeout).

extension RedisConnection {
    // MARK: - PUBLISH

    /// Publishes `message` on `channel` (`PUBLISH`), suspending on ``IOReactor`` like
    /// ``command(_:)-(repeat each Argument)``. Pub/sub is at-most-once: a subscriber that is not connected
    /// at this moment never sees the message.
    ///
    /// ```swift
    /// let receivers = try await pool.withConnection { try await $0.publish("news", "hello") }
    /// ```
    ///
    /// - Returns: the number of clients that received the message (subscribers of the channel and of
    ///   matching patterns, on this server).
    /// - Throws: as ``command(_:)-(repeat each Argument)``; ``RedisError/unexpectedReply(expected:actual:)``
    ///   if the reply is not an integer.
    public func publish(_ channel: String, _ message: some RedisArgumentConvertible) async throws -> Int {
        try await command("PUBLISH", channel, message).int
    }

    /// ``publish(_:_:)`` on the calling thread (never call it on a cooperative thread).
    ///
    /// - Returns: the number of clients that received the message.
    /// - Throws: as ``commandBlocking(_:)-(repeat each Argument)``;
    ///   ``RedisError/unexpectedReply(expected:actual:)`` if the reply is not an integer.
    public func publishBlocking(_ channel: String, _ message: some RedisArgumentConvertible) throws -> Int {
        try commandBlocking("PUBLISH", channel, message).int
    }

    // MARK: - Subscriber steps (never suspend while holding the in-use flag)

    /// Appends `commands` to the output buffer and writes as much as the socket takes, without waiting.
    ///
    /// - Returns: `true` when the output buffer is empty afterwards; `false` when the caller must wait
    ///   writable (``waitForPubSub(writable:deadline:)``) and call ``pubSubFlush()``.
    /// - Throws: the no-I/O errors of ``enter()``; an I/O ``RedisError`` (the connection is then broken).
    func pubSubSend(_ commands: [[RedisArgument]]) throws(RedisError) -> Bool {
        try enter()
        defer { leave() }
        for command in commands { try appendCommand(command) }
        return try flushOnce() == nil
    }

    /// Writes as much of the output buffer as the socket takes. Returns `true` once it is empty.
    ///
    /// - Throws: as ``pubSubSend(_:)``.
    func pubSubFlush() throws(RedisError) -> Bool {
        try enter()
        defer { leave() }
        return try flushOnce() == nil
    }

    /// Reads everything the socket has now, without waiting, and returns the whole replies parsed.
    ///
    /// - Returns: the replies, and the error that ended reading (end of stream, an I/O or protocol error;
    ///   the connection is then broken) or `nil` when the socket simply had nothing more. The replies
    ///   parsed before an error are returned with it, so that no message is dropped.
    func pubSubReadAvailable() -> (replies: [RedisReply], error: RedisError?) {
        var replies = [RedisReply]()
        do {
            try enter()
            defer { leave() }
            while true {
                while let reply = try takeReply() { replies.append(reply) }
                if case .wouldBlock = try readOnce() { return (replies, nil) }
            }
        } catch {
            return (replies, error)
        }
    }

    /// Suspends on ``IOReactor`` until the socket is readable (`writable == false`) or writable, or
    /// `deadline` passes (`nil`: no time limit, the idle wait for the next message). Takes no in-use
    /// flag and breaks nothing: the caller decides what a timeout or a cancellation means.
    ///
    /// - Throws: ``IOReactorError`` (`timedOut` when `deadline` passes); `CancellationError`.
    func waitForPubSub(writable: Bool, deadline: ContinuousClock.Instant?) async throws {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        if writable {
            try await IOReactor.shared.waitWritable(transport.fd, deadline: deadline)
        } else {
            try await IOReactor.shared.waitReadable(transport.fd, deadline: deadline)
        }
    }
}
