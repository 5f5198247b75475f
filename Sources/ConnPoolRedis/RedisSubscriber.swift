public import Logging
import ConnPool
import ConnPoolIO
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One message received by a ``RedisSubscriber``: a RESP2 `message` push (a channel subscription) or a
/// `pmessage` push (a pattern subscription).
public struct RedisPubSubMessage: Sendable, Hashable, CustomStringConvertible {
    /// The channel the message was published on.
    public let channel: String
    /// The pattern that matched ``channel`` for a `pmessage`; `nil` for a channel subscription.
    public let pattern: String?
    /// The published bytes, binary-safe.
    public let payload: [UInt8]

    /// Makes a message (for tests of code that consumes messages).
    public init(channel: String, pattern: String? = nil, payload: [UInt8]) {
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }

    /// ``payload`` decoded as UTF-8 (invalid sequences become U+FFFD).
    public var string: String { String(decoding: payload, as: UTF8.self) }

    /// The channel, pattern and payload size; never the payload (it may be secret).
    public var description: String {
        "RedisPubSubMessage(channel: \(channel)\(pattern.map { ", pattern: \($0)" } ?? ""), "
            + "payload: \(payload.count) bytes)"
    }
}

/// A Redis pub/sub subscriber on a dedicated connection of its own (not lent by a pool: a subscribed
/// connection can run no other command), which reconnects and restores its subscriptions when the
/// connection drops.
///
/// ```swift
/// let subscriber = try RedisSubscriber(configuration: configuration)
/// try await subscriber.subscribe(["orders"])
/// try await subscriber.psubscribe(["events.*"])
/// for try await message in subscriber.messages {
///     print(message.channel, message.string)
/// }
/// ```
///
/// ## Delivery
/// Messages arrive in the server's order through ``messages``, an `AsyncThrowingStream` with one consumer
/// (iterate it from one task only), or through ``receiveBlocking(_:)``, which runs a closure per message
/// on the calling thread; use one of them, not both. The buffer between the connection and the consumer
/// is unbounded: a consumer slower than the publishers makes it grow.
///
/// ## Reconnection and lost messages
/// When the connection drops (the server restarts, is killed, a network failure, a confirmation that
/// does not come within ``Options/confirmationTimeout``), the subscriber connects again, waiting between
/// failed attempts with an exponential backoff from ``Options/initialReconnectDelay`` up to
/// ``Options/maximumReconnectDelay``, and subscribes again to every channel and pattern it had; then the
/// messages resume in the same sequence. **Messages published while it was disconnected are lost**:
/// Redis pub/sub is at-most-once and keeps nothing for absent subscribers. ``reconnectCount`` tells a
/// consumer that a gap may have occurred. After ``Options/maximumReconnectAttempts`` failed attempts in a
/// row (when set), the sequence ends by throwing the last connect error.
///
/// ## Ending
/// ``finish()`` (or ``close()``, which also waits until the connection is closed) ends ``messages``
/// normally; so do cancelling the task that iterates ``messages`` and releasing the subscriber. The
/// subscriber's task and socket are released then. A finished subscriber cannot subscribe again.
///
/// ## Design
/// One task (the *driver*) owns the connection: it connects, sends the (P)SUBSCRIBE/(P)UNSUBSCRIBE
/// commands callers queue, reads what the server pushes and matches confirmations to commands in order.
/// It waits on ``IOReactor`` (never blocking a thread) for whichever comes first: the socket being
/// readable (or writable while a command is half sent) or a caller queueing a command. The wait for the
/// next message has no time limit; only confirmations do.
public final class RedisSubscriber: Sendable {
    /// How the subscriber waits for confirmations and reconnects.
    public struct Options: Sendable, Equatable {
        /// How long the server has to confirm a (P)SUBSCRIBE or (P)UNSUBSCRIBE (including the
        /// resubscription after a reconnect). Past it the connection counts as broken and is replaced;
        /// the caller of ``RedisSubscriber/subscribe(_:)`` gets ``RedisError/timeout(_:)``. Default 5 s.
        public var confirmationTimeout: Duration = .seconds(5)
        /// The wait after the first failed connect attempt; it doubles after each further failure.
        /// Default 50 ms. The first attempt after a drop is made at once.
        public var initialReconnectDelay: Duration = .milliseconds(50)
        /// The longest wait between two connect attempts. Default 2 s.
        public var maximumReconnectDelay: Duration = .seconds(2)
        /// How many connect attempts in a row may fail before the subscriber gives up and ``messages``
        /// throws the last error; `nil` (the default) never gives up. Values below 1 count as 1.
        public var maximumReconnectAttempts: Int?

        /// The defaults: 5 s confirmation timeout, backoff from 50 ms to 2 s, unlimited attempts.
        public init() {}

        /// Checks that every duration is positive and the maximum delay is not below the initial one.
        ///
        /// - Throws: ``RedisConfigurationError/invalidTimeout(name:value:)`` naming the bad option.
        public func validate() throws(RedisConfigurationError) {
            if confirmationTimeout <= .zero {
                throw .invalidTimeout(name: "confirmationTimeout", value: confirmationTimeout)
            }
            if initialReconnectDelay <= .zero {
                throw .invalidTimeout(name: "initialReconnectDelay", value: initialReconnectDelay)
            }
            if maximumReconnectDelay < initialReconnectDelay {
                throw .invalidTimeout(name: "maximumReconnectDelay", value: maximumReconnectDelay)
            }
        }
    }

    /// The connection settings (its password is redacted when printed).
    public let configuration: RedisConnectionConfiguration
    /// The subscriber's options.
    public let options: Options
    /// The messages of every subscription, in the server's order. One consumer only. Ends normally after
    /// ``finish()``; throws the last connect error when ``Options/maximumReconnectAttempts`` is reached.
    public let messages: AsyncThrowingStream<RedisPubSubMessage, any Error>

    private let core: SubscriberCore

    /// Makes a subscriber and starts connecting in the background (failed attempts are retried as
    /// ``Options`` says). Subscribe with ``subscribe(_:)`` or ``psubscribe(_:)``.
    ///
    /// - Throws: ``RedisConfigurationError`` when `configuration` or `options` is invalid.
    public init(
        configuration: RedisConnectionConfiguration, options: Options = Options(),
        logger: Logger = Logger(label: "ConnPoolRedis.RedisSubscriber")
    ) throws(RedisConfigurationError) {
        try configuration.validate()
        try options.validate()
        self.configuration = configuration
        self.options = options
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: RedisPubSubMessage.self)
        messages = stream
        core = SubscriberCore(configuration: configuration, options: options, logger: logger, output: continuation)
        core.start()
    }

    deinit {
        core.finish()
    }

    /// How many times the connection was made again after a drop. Each one may have lost messages.
    public var reconnectCount: Int { core.reconnects.load(ordering: .relaxed) }

    /// `true` while connected and subscribed to everything asked for so far (the last confirmation
    /// may still be on its way).
    public var isConnected: Bool { core.state.withLock { $0.connected } }

    /// Subscribes to `channels` (`SUBSCRIBE`) and returns once the server confirmed every one; from then
    /// on their messages arrive in ``messages``. The channels are kept across reconnects. While
    /// disconnected, it waits for the reconnection.
    ///
    /// - Throws: ``RedisError/timeout(_:)`` when no confirmation came within
    ///   ``Options/confirmationTimeout`` (the channels stay recorded and are subscribed on the next
    ///   connection); ``RedisError/server(_:)`` when the server refused (for example an ACL without the
    ///   channel); ``RedisError/invalidCommand(_:)`` for an empty list; ``RedisError/connectionClosedLocally``
    ///   after ``finish()``; `CancellationError`.
    public func subscribe(_ channels: [String]) async throws {
        try await core.request(.subscribe, channels)
    }

    /// Subscribes to the channels matching `patterns` (`PSUBSCRIBE`, glob-style: `news.*`); messages carry
    /// the pattern in ``RedisPubSubMessage/pattern``. Kept across reconnects.
    ///
    /// - Throws: as ``subscribe(_:)``.
    public func psubscribe(_ patterns: [String]) async throws {
        try await core.request(.psubscribe, patterns)
    }

    /// Unsubscribes from `channels` (`UNSUBSCRIBE`) and returns once the server confirmed; no message of
    /// theirs follows in ``messages`` after that (messages already on their way before may precede the
    /// return). Channels not subscribed are ignored.
    ///
    /// - Throws: as ``subscribe(_:)`` (after a timeout the channels stay unsubscribed: the connection is
    ///   replaced).
    public func unsubscribe(_ channels: [String]) async throws {
        try await core.request(.unsubscribe, channels)
    }

    /// Unsubscribes from `patterns` (`PUNSUBSCRIBE`), as ``unsubscribe(_:)`` does for channels.
    ///
    /// - Throws: as ``unsubscribe(_:)``.
    public func punsubscribe(_ patterns: [String]) async throws {
        try await core.request(.punsubscribe, patterns)
    }

    /// Ends ``messages`` (normally) and ``receiveBlocking(_:)``, fails pending subscribe calls with
    /// ``RedisError/connectionClosedLocally``, and closes the connection in the background. Never blocks;
    /// idempotent.
    public func finish() {
        core.finish()
    }

    /// ``finish()``, then waits until the subscriber's task has ended and its socket is closed.
    public func close() async {
        core.finish()
        await core.driverEnded()
    }

    /// Runs `handler` on the calling thread for each message, in order, until the subscriber is
    /// finished (``finish()`` from another thread or from `handler`): the form for code that is not
    /// async. Never call it on a cooperative thread, and do not iterate ``messages`` as well.
    ///
    /// - Throws: what `handler` throws (the subscriber is then finished); the error ``messages`` throws
    ///   when the subscriber gives up reconnecting.
    public func receiveBlocking(_ handler: (RedisPubSubMessage) throws -> Void) throws {
        let handoff = BlockingHandoff()
        let messages = self.messages
        let pump = Task {
            do {
                for try await message in messages { handoff.put(message) }
                handoff.end(nil)
            } catch {
                handoff.end(error)
            }
        }
        defer { pump.cancel() }
        while let message = try handoff.take() {
            // Messages buffered when finish() was called are not delivered.
            if core.state.withLock({ $0.finished }) { break }
            do {
                try handler(message)
            } catch {
                finish()
                throw error
            }
        }
    }
}

// MARK: - The driver

/// The state shared by ``RedisSubscriber``'s callers and its driver task.
///
/// Sendable: every mutable field is in `state` (a `LockedValue`: a pthread mutex, which ThreadSanitizer
/// understands; a contended `Synchronization.Mutex` draws false race reports) or an `Atomic`; the rest is `let` of Sendable
/// types. The connection itself is touched only by the driver task.
final class SubscriberCore: Sendable {
    enum Kind: String, Sendable {
        case subscribe, psubscribe, unsubscribe, punsubscribe

        var command: RedisArgument { .string(rawValue.uppercased()) }
    }

    /// A caller's wait for its confirmation.
    enum Waiter {
        /// Registered; the caller has not suspended yet.
        case registered
        case waiting(CheckedContinuation<Void, any Error>)
        /// Completed before the caller suspended.
        case done(Result<Void, any Error>)
    }

    struct Request {
        let kind: Kind
        let names: [String]
        let id: UInt64
    }

    struct State {
        var channels = Set<String>()
        var patterns = Set<String>()
        /// Requests not sent yet.
        var queue = [Request]()
        var waiters = [UInt64: Waiter]()
        var nextID: UInt64 = 0
        var connected = false
        var finished = false
        var driver: Task<Void, Never>?
        var driverFinished = false
        var driverEndWaiters = [CheckedContinuation<Void, Never>]()
        /// The driver waiting for a request to be queued.
        var wake: CheckedContinuation<Void, Never>?
        var wakePending = false
        /// Requests sent on a connection that dropped before confirming them: confirmed by the next
        /// connection's resubscription (the recorded channels and patterns already include them).
        var carried = [UInt64]()
    }

    /// A command sent and not fully confirmed yet.
    struct Sent {
        let kind: Kind
        var remaining: Int
        var ids: [UInt64]
        let deadline: ContinuousClock.Instant
    }

    let configuration: RedisConnectionConfiguration
    let options: Options
    let logger: Logger
    let output: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation
    let state = LockedValue(State())
    let reconnects = Atomic<Int>(0)

    typealias Options = RedisSubscriber.Options

    init(
        configuration: RedisConnectionConfiguration, options: Options, logger: Logger,
        output: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation
    ) {
        self.configuration = configuration
        self.options = options
        self.logger = logger
        self.output = output
    }

    func start() {
        output.onTermination = { [weak self] _ in self?.finish() }
        let driver = Task { [self] in await run() }
        let cancelNow = state.withLock { state in
            state.driver = driver
            return state.finished
        }
        if cancelNow { driver.cancel() }
    }

    // MARK: Callers

    func request(_ kind: Kind, _ names: [String]) async throws {
        guard !names.isEmpty else {
            throw RedisError.invalidCommand("\(kind.rawValue.uppercased()) needs at least one channel or pattern")
        }
        try Task.checkCancellation()
        let (id, wake) = try state.withLock { state in
            if state.finished { throw RedisError.connectionClosedLocally }
            switch kind {
            case .subscribe: state.channels.formUnion(names)
            case .psubscribe: state.patterns.formUnion(names)
            case .unsubscribe: state.channels.subtract(names)
            case .punsubscribe: state.patterns.subtract(names)
            }
            let id = state.nextID
            state.nextID += 1
            state.queue.append(Request(kind: kind, names: names, id: id))
            state.waiters[id] = .registered
            return (id, Self.takeWake(&state))
        }
        wake?.resume()
        let timeout = options.confirmationTimeout
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.confirmation(id) }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw RedisError.timeout(timeout)
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    private func confirmation(_ id: UInt64) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready = state.withLock { state -> Result<Void, any Error>? in
                    switch state.waiters[id] {
                    case .registered:
                        state.waiters[id] = .waiting(continuation)
                        return nil
                    case .done(let result):
                        state.waiters[id] = nil
                        return result
                    case .waiting, nil:  // cancelled before suspending
                        state.waiters[id] = nil
                        return .failure(CancellationError())
                    }
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                defer { state.waiters[id] = nil }
                if case .waiting(let continuation) = state.waiters[id] { return continuation }
                return nil
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    func finish() {
        let (driver, wake, first) = state.withLock { state in
            let first = !state.finished
            state.finished = true
            return (state.driver, Self.takeWake(&state), first)
        }
        guard first else { return }
        output.finish()
        driver?.cancel()
        wake?.resume()
    }

    func driverEnded() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state in
                if !state.driverFinished { state.driverEndWaiters.append(continuation) }
                return state.driverFinished
            }
            if done { continuation.resume() }
        }
    }

    private static func takeWake(_ state: inout State) -> CheckedContinuation<Void, Never>? {
        guard let wake = state.wake else {
            state.wakePending = true
            return nil
        }
        state.wake = nil
        return wake
    }

    private func complete(_ ids: [UInt64], _ result: Result<Void, any Error>) {
        guard !ids.isEmpty else { return }
        let continuations = state.withLock { state in
            var continuations = [CheckedContinuation<Void, any Error>]()
            for id in ids {
                switch state.waiters[id] {
                case .registered: state.waiters[id] = .done(result)
                case .waiting(let continuation):
                    continuations.append(continuation)
                    state.waiters[id] = nil
                case .done, nil: break
                }
            }
            return continuations
        }
        for continuation in continuations { continuation.resume(with: result) }
    }

    // MARK: Driver

    private func run() async {
        var failures = 0
        var everConnected = false
        var lastError: (any Error)?
        while !Task.isCancelled {
            let connection: RedisConnection
            do {
                connection = try await RedisConnection.connect(configuration: configuration, logger: logger)
            } catch {
                if Task.isCancelled { break }
                failures += 1
                lastError = error
                if let limit = options.maximumReconnectAttempts, failures >= max(1, limit) {
                    logger.error(
                        "redis subscriber gave up connecting",
                        metadata: ["endpoint": "\(configuration.endpoint)", "attempts": "\(failures)", "error": "\(error)"])
                    break
                }
                logger.debug(
                    "redis subscriber connect failed",
                    metadata: ["endpoint": "\(configuration.endpoint)", "error": "\(error)"])
                do { try await Task.sleep(for: backoff(afterFailures: failures)) } catch { break }
                continue
            }
            failures = 0
            lastError = nil
            if everConnected {
                reconnects.add(1, ordering: .relaxed)
                logger.notice(
                    "redis subscriber reconnected; messages published meanwhile are lost",
                    metadata: ["endpoint": "\(configuration.endpoint)"])
            }
            everConnected = true
            let error = await serve(connection)
            state.withLock { $0.connected = false }
            await connection.close()
            if let error, !Task.isCancelled {
                logger.warning(
                    "redis subscriber connection lost; reconnecting",
                    metadata: ["endpoint": "\(configuration.endpoint)", "error": "\(error)"])
            }
        }
        end(lastError)
    }

    private func end(_ error: (any Error)?) {
        let (waiters, endWaiters) = state.withLock { state in
            state.finished = true
            state.driverFinished = true
            state.queue.removeAll()
            var continuations = [CheckedContinuation<Void, any Error>]()
            for (id, waiter) in state.waiters {
                switch waiter {
                case .registered: state.waiters[id] = .done(.failure(RedisError.connectionClosedLocally))
                case .waiting(let continuation):
                    continuations.append(continuation)
                    state.waiters[id] = nil
                case .done: break
                }
            }
            defer { state.driverEndWaiters.removeAll() }
            return (continuations, state.driverEndWaiters)
        }
        for continuation in waiters { continuation.resume(throwing: RedisError.connectionClosedLocally) }
        output.finish(throwing: error)
        for continuation in endWaiters { continuation.resume() }
    }

    func backoff(afterFailures failures: Int) -> Duration {
        var delay = options.initialReconnectDelay
        for _ in 1..<max(1, failures) {
            delay *= 2
            if delay >= options.maximumReconnectDelay { return options.maximumReconnectDelay }
        }
        return min(delay, options.maximumReconnectDelay)
    }

    /// Subscribes `connection` to everything recorded, then sends queued requests and delivers what the
    /// server pushes until the connection fails (returns the error) or the task is cancelled (`nil`).
    private func serve(_ connection: RedisConnection) async -> (any Error)? {
        var sent = [Sent]()
        var outputPending = false
        let (channels, patterns, queued) = state.withLock { state in
            state.connected = true
            defer {
                state.queue.removeAll()
                state.carried.removeAll()
            }
            return (state.channels.sorted(), state.patterns.sorted(), state.carried + state.queue.map(\.id))
        }
        var commands = [[RedisArgument]]()
        let deadline = ContinuousClock.now.advanced(by: options.confirmationTimeout)
        for (kind, names) in [(Kind.subscribe, channels), (.psubscribe, patterns)] where !names.isEmpty {
            commands.append([kind.command] + names.map { .string($0) })
            sent.append(Sent(kind: kind, remaining: names.count, ids: [], deadline: deadline))
        }
        if sent.isEmpty {
            complete(queued, .success(()))
        } else {
            sent[sent.count - 1].ids = queued
        }
        do {
            while !Task.isCancelled {
                let requests = state.withLock { state in
                    defer { state.queue.removeAll() }
                    return state.queue
                }
                let now = ContinuousClock.now
                for request in requests {
                    commands.append([request.kind.command] + request.names.map { .string($0) })
                    sent.append(
                        Sent(
                            kind: request.kind, remaining: request.names.count, ids: [request.id],
                            deadline: now.advanced(by: options.confirmationTimeout)))
                }
                if !commands.isEmpty {
                    outputPending = try !connection.pubSubSend(commands)
                    commands.removeAll()
                } else if outputPending {
                    outputPending = try !connection.pubSubFlush()
                }
                let (replies, readError) = connection.pubSubReadAvailable()
                for reply in replies { try handle(reply, &sent) }
                if let readError { throw readError }
                if let first = sent.first, ContinuousClock.now >= first.deadline {
                    throw RedisError.timeout(options.confirmationTimeout)
                }
                try await waitForEvent(connection, writable: outputPending, deadline: sent.first?.deadline)
            }
            return nil
        } catch {
            if Task.isCancelled || error is CancellationError {
                for command in sent { complete(command.ids, .failure(RedisError.connectionClosedLocally)) }
                return nil
            }
            let ids = sent.flatMap(\.ids)
            state.withLock { $0.carried.append(contentsOf: ids) }
            return error
        }
    }

    private enum WaitOutcome: Sendable {
        case ready, woken, cancelled
        case failed(RedisError)
    }

    /// Waits for the socket (readable; writable too when `writable`) or a queued request, whichever
    /// comes first; `deadline` bounds the socket wait while a confirmation is due.
    private func waitForEvent(
        _ connection: RedisConnection, writable: Bool, deadline: ContinuousClock.Instant?
    ) async throws {
        let timeout = options.confirmationTimeout
        let outcome = await withTaskGroup(of: WaitOutcome.self) { group in
            for direction in writable ? [false, true] : [false] {
                group.addTask {
                    do {
                        try await connection.waitForPubSub(writable: direction, deadline: deadline)
                        return .ready
                    } catch let error as IOReactorError {
                        switch error {
                        case .timedOut: return .failed(.timeout(timeout))
                        case .closed: return .failed(.io(operation: "wait (the reactor was shut down)", errno: ESHUTDOWN))
                        case .systemError(let code, let operation): return .failed(.io(operation: operation, errno: code))
                        }
                    } catch {
                        return .cancelled
                    }
                }
            }
            group.addTask {
                await self.waitForRequest()
                return .woken
            }
            let first = await group.next() ?? .cancelled
            group.cancelAll()
            return first
        }
        if case .failed(let error) = outcome { throw error }
    }

    /// Internal (not private) for its regression test.
    func waitForRequest() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // `Task.isCancelled` is read under the lock that the cancellation handler takes: a wait
                // cancelled before it stored its continuation (the socket won the race) returns at once
                // instead of being left for the task group to wait on until the next request (a lost
                // wake-up, seen as a 5 s confirmation timeout in a ThreadSanitizer run).
                let now = state.withLock { state in
                    if state.wakePending || state.finished || Task.isCancelled {
                        if !Task.isCancelled { state.wakePending = false }
                        return true
                    }
                    state.wake = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let wake = state.withLock { state in
                defer { state.wake = nil }
                return state.wake
            }
            wake?.resume()
        }
    }

    /// Delivers a message, or counts a confirmation against the oldest command sent.
    private func handle(_ reply: RedisReply, _ sent: inout [Sent]) throws(RedisError) {
        if case .error(let message) = reply {
            guard !sent.isEmpty else { throw .protocolError("an error reply no command asked for: \(message)") }
            complete(sent.removeFirst().ids, .failure(RedisError.server(message)))
            return
        }
        guard case .array(let items) = reply, case .bulkString(let kindBytes)? = items.first else {
            throw .protocolError("a subscribed connection received \(reply.kindDescription), not a push array")
        }
        let kind = String(decoding: kindBytes, as: UTF8.self)
        switch (kind, items.count) {
        case ("message", 3):
            guard case .bulkString(let channel) = items[1], case .bulkString(let payload) = items[2] else { break }
            output.yield(RedisPubSubMessage(channel: String(decoding: channel, as: UTF8.self), payload: payload))
            return
        case ("pmessage", 4):
            guard case .bulkString(let pattern) = items[1], case .bulkString(let channel) = items[2],
                case .bulkString(let payload) = items[3]
            else { break }
            output.yield(
                RedisPubSubMessage(
                    channel: String(decoding: channel, as: UTF8.self), pattern: String(decoding: pattern, as: UTF8.self),
                    payload: payload))
            return
        case ("pong", _):
            return
        case (_, 3):
            guard let confirmed = Kind(rawValue: kind) else { break }
            guard let first = sent.first, first.kind == confirmed else {
                throw .protocolError("a '\(kind)' confirmation no command asked for")
            }
            sent[0].remaining -= 1
            if sent[0].remaining == 0 { complete(sent.removeFirst().ids, .success(())) }
            return
        default:
            break
        }
        throw .protocolError("a subscribed connection received an unknown push '\(kind)' of \(items.count) elements")
    }
}

// MARK: - Blocking delivery

/// Hands messages from the pump task to the thread in ``RedisSubscriber/receiveBlocking(_:)``.
///
/// Sendable: the buffer is in a `LockedValue` (a pthread mutex); the semaphore is thread-safe. Each `put` and the
/// single `end`
/// signal once, so `take` waits exactly once per item plus once for the end.
private final class BlockingHandoff: Sendable {
    private struct Buffer {
        var items = [RedisPubSubMessage]()
        var head = 0
        var ended = false
        var error: (any Error)?
    }

    private let buffer = LockedValue(Buffer())
    private let available = DispatchSemaphore(value: 0)

    func put(_ message: RedisPubSubMessage) {
        buffer.withLock { $0.items.append(message) }
        available.signal()
    }

    func end(_ error: (any Error)?) {
        buffer.withLock {
            $0.ended = true
            $0.error = error
        }
        available.signal()
    }

    /// Blocks until a message or the end; `nil` at a normal end.
    func take() throws -> RedisPubSubMessage? {
        available.wait()
        return try buffer.withLock { buffer throws -> RedisPubSubMessage? in
            if buffer.head < buffer.items.count {
                let message = buffer.items[buffer.head]
                buffer.head += 1
                if buffer.head == buffer.items.count {
                    buffer.items.removeAll(keepingCapacity: true)
                    buffer.head = 0
                }
                return message
            }
            if let error = buffer.error { throw error }
            return nil
        }
    }
}
