public import ConnPool
public import Logging
internal import CHiredis
package import ConnPoolIO
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A connection to one Redis server, plain or TLS, with hiredis 0.14.1 as its codec, and a blocking and
/// an async API over the same socket.
///
/// ## Design
/// - **hiredis codec over the shared transport.** The socket is a ConnPoolIO `Transport` (the socket
///   layer the TCP backend uses too): a non-blocking connect bounded by
///   ``RedisConnectionConfiguration/connectTimeout``, TLS through OpenSSL when
///   ``RedisConnectionConfiguration/tls`` is set, reads and writes without SIGPIPE. hiredis owns no
///   socket: `redisAppendCommandArgv` formats binary-safe commands into its output buffer, which the
///   connection writes through the transport; received bytes are fed to its reader
///   (`redisReaderFeed`) and `redisGetReplyFromReader` takes whole replies out. Only the waiting differs:
///   - the blocking API (`…Blocking`) waits with `poll()` and a deadline on the calling thread;
///   - the async API suspends the task on ``IOReactor`` (one epoll thread for the whole process), so no
///     cooperative thread ever blocks and hundreds of connections need no thread each. The alternative,
///     running the blocking call through `BlockingOffload`, holds one of dispatch's few worker threads
///     for the whole round trip and pays two thread hand-offs per command. Measured here (2 cores, debug
///     build, a machine shared with other builds; `throughputOf200ConnectionsDoingPings` in the tests):
///     200 connections doing PINGs reach 40–70 k ops/s either way (the server and the two cores are the
///     limit) with ~10 µs of client CPU per PING through the reactor against ~11–15 µs offloaded; but
///     while 32 connections wait 300 ms in BLPOP, 1,670 PINGs on 167 others take 20–30 ms through the
///     reactor and 80–220 ms offloaded, because the waiting commands hold the dispatch threads.
///   When a command is the only one under way in the process (concurrency 1), it first polls for its
///   reply for up to 100 µs before sleeping in `poll()` or suspending on the reactor: a loopback or LAN
///   reply usually comes in that time, and the caller then skips the thread wake-ups. The spin adapts to
///   the connection (``ReplySpin``): it stops while this connection's replies come too late, and
///   ``RedisConnectionConfiguration/replySpin`` turns it off.
///   hiredis' own blocking mode is not used, so its pitfalls do not apply: `redisSetTimeout` (a per-socket
///   `SO_RCVTIMEO`) is replaced by a deadline per command covering send and all replies, and
///   `redisReconnect` (which drops that timeout) is never called: a broken connection is discarded by
///   the pool and the factory makes a new one.
/// - **Broken after any I/O failure.** After an I/O error, a timeout, a protocol error or a cancelled
///   wait, the protocol state is unknown (a reply may still be on its way), so ``isBroken`` turns `true`
///   and every later call throws ``RedisError/connectionBroken(cause:)``. An error *reply* from the server
///   does not break the connection.
/// - **One borrower at a time.** A pool lends a connection to one borrower at a time. Each operation
///   also takes an atomic in-use flag, so that a caller who shares one connection between tasks gets
///   ``RedisError/concurrentUse`` instead of corrupted buffers.
///
/// ## Sendable
/// `@unchecked Sendable` is safe because the mutable state (`brokenCause`, `scratch`, `hasReceived`, the
/// bytes behind `readBuffer`, and hiredis' context behind `context`) is read and written only by the thread
/// or task that holds the transport's in-use flag (``Transport/begin()`` / ``Transport/end()``): it is taken
/// with a sequentially consistent compare-exchange before any access and released with a sequentially
/// consistent store after the last one, which orders every access of one holder before every access of the
/// next. The context and the read buffer are freed only in `deinit`, when no operation can run. The socket
/// (and its TLS object) belong to the ``Transport``, which frees them exactly once and never under an
/// operation in progress. Every other stored property is a `let` of a Sendable type or an `Atomic`.
public final class RedisConnection: Connection, @unchecked Sendable, CustomStringConvertible {
    /// The configuration this connection was made with (its password is redacted when printed).
    public let configuration: RedisConnectionConfiguration

    /// hiredis as a codec: its output buffer and its reply reader; it owns no socket.
    private let context: UnsafeMutablePointer<redisContext>
    /// The socket (plain or TLS), its in-use flag, its deferred close and its reply spin.
    let transport: Transport
    private let logger: Logger
    /// ``StateFlags``: broken, and what a borrower changed in the session. Written only by the holder of
    /// the transport (or by the pool's reset, which holds the connection alone); read by ``isBroken`` and
    /// ``reuseCondition`` on release, which the releasing thread does after its last operation.
    private let stateFlags = Atomic<UInt8>(0)
    /// Set when `RESET` turned out to be unknown (a server before 6.2).
    private let serverLacksReset = Atomic<Bool>(false)
    // Touched only by the holder of the transport (see the Sendable note above).
    private var brokenCause: RedisError?
    private var scratch = ArgvScratch()
    /// Whether any byte was received yet (the first ones tell a TLS port answering plain text).
    private var hasReceived = false
    /// Whether the last read left the socket empty: it found `EAGAIN`, or (plain TCP) returned fewer
    /// bytes than it asked for, so the kernel had nothing more at that moment and any later byte brings a
    /// new readiness edge. The socket's reactor registration is edge-triggered: a wait is only right after
    /// such a read (or a new request sent after one). After a read that filled the buffer, more may be
    /// waiting (a pipeline's later replies), and the next receive reads first. Over TLS a short read
    /// proves nothing (OpenSSL returns one record's bytes while later records wait in the socket, their
    /// edge already seen), so there only `EAGAIN` counts. Without the short-read rule every request cost a
    /// `recv` that found `EAGAIN`: 2 `recv` per request through the cluster client at concurrency 50
    /// (`perf stat -e syscalls:sys_enter_recvfrom`), 1 with it.
    private var readDrained = true
    /// Received bytes on their way to hiredis' reader: one buffer per connection, allocated once.
    private let readBuffer: UnsafeMutableRawPointer

    /// The read chunk: a read that returns this many bytes probably left more in the socket.
    private static let readChunk = 16 * 1024

    private init(
        context: UnsafeMutablePointer<redisContext>, transport: Transport, configuration: RedisConnectionConfiguration,
        logger: Logger
    ) {
        self.context = context
        self.transport = transport
        self.configuration = configuration
        self.logger = logger
        readBuffer = .allocate(byteCount: Self.readChunk, alignment: 16)
    }

    deinit {
        // No operation can run (each holds a reference); the transport closes the socket in its own
        // deinit if close() was never called.
        redisFree(context)
        readBuffer.deallocate()
        scratch.deallocate()
    }

    /// `RedisConnection(endpoint: …, tls: …, fd: …, broken: …)`; never includes the password.
    public var description: String {
        "RedisConnection(endpoint: \(configuration.endpoint), database: \(configuration.database), "
            + "tls: \(transport.isTLS), fd: \(transport.fd), broken: \(isBroken), closed: \(transport.isClosing))"
    }

    /// `true` once an I/O error, a timeout, a protocol error or a cancelled wait left the connection's
    /// protocol state unknown. A pool closes a broken connection instead of reusing it. A plain atomic
    /// load: no I/O.
    public var isBroken: Bool { stateFlags.load(ordering: .relaxed) & StateFlags.broken != 0 }

    /// What a pool must do with this connection when it is returned, from one atomic load:
    /// ``ReuseCondition/broken`` after an I/O failure (see ``isBroken``); ``ReuseCondition/dirty`` when a
    /// command changed the session state a later borrower would inherit (an open `MULTI`, `WATCH`ed keys,
    /// `SELECT`, `CLIENT SETNAME`, `AUTH`, `HELLO`, `READONLY`, `CLIENT TRACKING`, a subscription,
    /// `MONITOR`, …), so the pool calls ``resetSession(timeout:)`` first; ``ReuseCondition/clean``
    /// otherwise. Commands are recognized by their name's bytes as they are sent, without allocating.
    public var reuseCondition: ReuseCondition {
        let flags = stateFlags.load(ordering: .relaxed)
        if flags == 0 { return .clean }
        return flags & StateFlags.broken != 0 ? .broken : .dirty
    }

    /// `true` once ``close()`` (or ``closeBlocking()``) was called.
    public var isClosed: Bool { transport.isClosing }

    /// Whether this connection speaks TLS.
    public var isTLS: Bool { transport.isTLS }

    /// Whether this connection's TLS handshake resumed an earlier session of its factory (an abbreviated
    /// handshake); `false` without TLS.
    public var isTLSSessionReused: Bool { transport.isTLSSessionReused }

    /// What this connection's reply spin did so far (see ``ReplySpin``). For tests and diagnostics: read
    /// it between operations, from the code that uses the connection (it belongs to whoever holds the
    /// connection, like the connection's buffers).
    package var replySpinStatistics: ReplySpin.Statistics { transport.replySpinStatistics }

    /// Whether this connection's record of reply times lets it spin (see ``ReplySpin/Gate/isSpinning``).
    /// Read it as ``replySpinStatistics``.
    package var isReplySpinning: Bool { transport.isReplySpinning }

    // MARK: - Connecting

    /// Opens a connection without blocking a cooperative thread: resolves the host (a name with
    /// `getaddrinfo` on a dispatch thread), connects without blocking (the ``IOReactor`` waits), completes
    /// the TLS handshake when ``RedisConnectionConfiguration/tls`` is set, then sends AUTH, SELECT and
    /// CLIENT SETNAME (as configured; a PING instead when none is and
    /// ``RedisConnectionConfiguration/pingOnConnect`` is set) as one pipeline. All of it is bounded by
    /// ``RedisConnectionConfiguration/connectTimeout``.
    ///
    /// Each call makes its own TLS context: connections made by a ``RedisConnectionFactory`` share one,
    /// and resume each other's TLS sessions.
    ///
    /// - Throws: ``RedisConfigurationError`` for an invalid configuration; ``RedisError/connectionRefused(endpoint:)``,
    ///   ``RedisError/connectTimeout(endpoint:timeout:)``, ``RedisError/connectFailed(endpoint:operation:errno:)``,
    ///   ``RedisError/hostNotFound(host:detail:)``, ``RedisError/tls(_:)`` (a certificate that fails
    ///   verification, a plain port, a missing client certificate, …), ``RedisError/authenticationFailed(_:)``,
    ///   ``RedisError/handshakeFailed(command:message:)`` or an I/O ``RedisError``; `CancellationError` if
    ///   the task is cancelled.
    public static func connect(
        configuration: RedisConnectionConfiguration,
        logger: Logger = Logger(label: "ConnPoolRedis")
    ) async throws -> RedisConnection {
        try configuration.validate()
        return try await connect(configuration: configuration, tlsContext: makeTLSContext(configuration, logger: logger), logger: logger)
    }

    /// ``connect(configuration:logger:)`` with a TLS context shared by the caller's connections (the
    /// factory's), for session resumption.
    static func connect(
        configuration: RedisConnectionConfiguration, tlsContext: TLSContext?, logger: Logger
    ) async throws -> RedisConnection {
        try Task.checkCancellation()
        let deadline = ContinuousClock.now.advanced(by: configuration.connectTimeout)
        let transport: Transport
        do {
            transport = try await Transport.connect(
                to: configuration.socketEndpoint, options: configuration.socketOptions, tls: tlsContext,
                replySpin: configuration.replySpin, deadline: deadline)
        } catch let error as TransportError {
            throw connectError(error, configuration)
        }
        let connection = try makeConnection(transport: transport, configuration: configuration, logger: logger)
        do {
            try await connection.handshake(deadline: deadline)
        } catch {
            connection.closeNow()
            throw error
        }
        logger.debug("redis connection opened", metadata: ["endpoint": "\(configuration.endpoint)", "tls": "\(transport.isTLS)"])
        return connection
    }

    /// Opens a connection, blocking the calling thread (never call it on a cooperative thread): the same
    /// steps as ``connect(configuration:logger:)``, waiting with `poll()`, all bounded by
    /// ``RedisConnectionConfiguration/connectTimeout``.
    ///
    /// - Throws: the errors of ``connect(configuration:logger:)`` except `CancellationError`.
    public static func connectBlocking(
        configuration: RedisConnectionConfiguration,
        logger: Logger = Logger(label: "ConnPoolRedis")
    ) throws -> RedisConnection {
        try configuration.validate()
        return try connectBlocking(configuration: configuration, tlsContext: makeTLSContext(configuration, logger: logger), logger: logger)
    }

    /// ``connectBlocking(configuration:logger:)`` with a shared TLS context.
    static func connectBlocking(
        configuration: RedisConnectionConfiguration, tlsContext: TLSContext?, logger: Logger
    ) throws -> RedisConnection {
        let deadline = ContinuousClock.now.advanced(by: configuration.connectTimeout)
        let transport: Transport
        do {
            transport = try Transport.connectBlocking(
                to: configuration.socketEndpoint, options: configuration.socketOptions, tls: tlsContext,
                replySpin: configuration.replySpin, deadline: deadline)
        } catch {
            throw connectError(error, configuration)
        }
        let connection = try makeConnection(transport: transport, configuration: configuration, logger: logger)
        do {
            try connection.handshakeBlocking(deadline: deadline)
        } catch {
            connection.closeNow()
            throw error
        }
        logger.debug("redis connection opened", metadata: ["endpoint": "\(configuration.endpoint)", "tls": "\(transport.isTLS)"])
        return connection
    }

    /// A TLS context for `configuration`, or `nil` when it does not use TLS.
    ///
    /// - Throws: ``RedisError/tls(_:)`` with ``TLSError/invalidConfiguration(field:reason:)``.
    static func makeTLSContext(_ configuration: RedisConnectionConfiguration, logger: Logger) throws(RedisError) -> TLSContext? {
        guard let tls = configuration.tls else { return nil }
        do {
            return try TLSContext(configuration: tls, logger: logger)
        } catch {
            throw .tls(error)
        }
    }

    /// The ``RedisError`` for a failed connect.
    private static func connectError(_ error: TransportError, _ configuration: RedisConnectionConfiguration) -> RedisError {
        let endpoint = configuration.endpoint.description
        switch error {
        case .hostNotFound(let host, let detail): return .hostNotFound(host: host, detail: detail)
        case .connectionRefused: return .connectionRefused(endpoint: endpoint)
        case .connectTimedOut, .timedOut: return .connectTimeout(endpoint: endpoint, timeout: configuration.connectTimeout)
        case .connectFailed(let operation, let code), .io(let operation, let code):
            return .connectFailed(endpoint: endpoint, operation: operation, errno: code)
        case .tls(let tlsError): return .tls(tlsError)
        case .endOfStream, .connectionReset:
            return .connectFailed(endpoint: endpoint, operation: "connect (the server closed the connection)", errno: ECONNRESET)
        case .reactorShutDown:
            return .connectFailed(endpoint: endpoint, operation: "wait (the reactor was shut down)", errno: ESHUTDOWN)
        case .closedLocally, .concurrentUse:
            return .connectFailed(endpoint: endpoint, operation: "connect", errno: ECANCELED)
        }
    }

    private static func makeConnection(
        transport: Transport, configuration: RedisConnectionConfiguration, logger: Logger
    ) throws(RedisError) -> RedisConnection {
        // hiredis gets no socket (-1): it only formats commands and parses replies.
        guard let context = redisConnectFd(-1) else {
            transport.close()
            throw .connectFailed(endpoint: configuration.endpoint.description, operation: "redisConnectFd", errno: ENOMEM)
        }
        return RedisConnection(context: context, transport: transport, configuration: configuration, logger: logger)
    }

    // MARK: Handshake

    private struct HandshakeStep {
        let name: String
        let arguments: [RedisArgument]
    }

    private var handshakeSteps: [HandshakeStep] {
        var steps = [HandshakeStep]()
        if let password = configuration.password {
            if let username = configuration.username {
                steps.append(HandshakeStep(name: "AUTH", arguments: ["AUTH", .string(username), .string(password)]))
            } else {
                steps.append(HandshakeStep(name: "AUTH", arguments: ["AUTH", .string(password)]))
            }
        }
        if configuration.database != 0 {
            steps.append(
                HandshakeStep(
                    name: "SELECT \(configuration.database)", arguments: ["SELECT", .integer(configuration.database)]))
        }
        if let clientName = configuration.clientName {
            steps.append(HandshakeStep(name: "CLIENT SETNAME", arguments: ["CLIENT", "SETNAME", .string(clientName)]))
        }
        // Over TLS a PING always goes: with TLS 1.3 the server refuses a missing or wrong client
        // certificate only after the client's handshake has finished, so without a round trip such a
        // connection would look made and fail at its first command.
        if steps.isEmpty && (configuration.pingOnConnect || configuration.tls != nil) {
            steps.append(HandshakeStep(name: "PING", arguments: ["PING"]))
        }
        return steps
    }

    private func handshake(deadline: ContinuousClock.Instant) async throws {
        let steps = handshakeSteps
        guard !steps.isEmpty else { return }
        let replies: [RedisReply]
        do {
            replies = try await pipelineWithDeadline(steps.map(\.arguments), deadline: deadline)
        } catch let error as RedisError {
            throw handshakeError(error)
        }
        try checkHandshake(steps, replies)
    }

    private func handshakeBlocking(deadline: ContinuousClock.Instant) throws {
        let steps = handshakeSteps
        guard !steps.isEmpty else { return }
        let replies: [RedisReply]
        do {
            replies = try pipelineBlockingWithDeadline(steps.map(\.arguments), deadline: deadline)
        } catch let error as RedisError {
            throw handshakeError(error)
        }
        try checkHandshake(steps, replies)
    }

    /// The connect's error for a failed handshake pipeline: a timeout is the connect's; a plain
    /// connection that the server drops before answering anything is most likely talking to a TLS-only
    /// port (redis-server resets a client whose bytes are not TLS), and the error says so.
    private func handshakeError(_ error: RedisError) -> RedisError {
        if error.isTimeout {
            return .connectTimeout(endpoint: configuration.endpoint.description, timeout: configuration.connectTimeout)
        }
        let dropped: Bool
        switch error {
        case .connectionClosed, .io(_, ECONNRESET): dropped = true
        default: dropped = false
        }
        if dropped, !transport.isTLS, !hasReceived {
            return .connectFailed(
                endpoint: configuration.endpoint.description,
                operation: "handshake (the server closed the connection without answering: if this is a TLS port, "
                    + "connect with rediss:// or set tls)",
                errno: ECONNRESET)
        }
        return error
    }

    /// Checks the handshake's replies; the connection's session is then as configured (the steps'
    /// commands do not count as a borrower's changes).
    private func checkHandshake(_ steps: [HandshakeStep], _ replies: [RedisReply]) throws(RedisError) {
        defer { forgetSessionChanges() }
        for (step, reply) in zip(steps, replies) {
            guard case .error(var message) = reply else { continue }
            if let password = configuration.password, !password.isEmpty {
                message = message.replacing(password, with: "<redacted>")
            }
            if step.name == "AUTH" || message.hasPrefix("NOAUTH") { throw .authenticationFailed(message) }
            throw .handshakeFailed(command: step.name, message: message)
        }
    }

    // MARK: - Session state

    /// The bits of `stateFlags`.
    private enum StateFlags {
        static let broken: UInt8 = 1 << 0
        static let transaction: UInt8 = 1 << 1
        static let watching: UInt8 = 1 << 2
        static let database: UInt8 = 1 << 3
        static let clientName: UInt8 = 1 << 4
        /// State only `RESET` undoes (AUTH, HELLO, READONLY, CLIENT TRACKING, …).
        static let otherState: UInt8 = 1 << 5
        /// Subscribed, MONITOR or QUIT: not resettable, closed on release.
        static let unresettable: UInt8 = 1 << 6
        static let session: UInt8 = ~broken
    }

    /// Notes what a command just appended changes in the session. Called by the holder of `inUse`.
    private func noteSessionChange(_ effect: SessionTracking.Effect) {
        var flags = stateFlags.load(ordering: .relaxed)
        switch effect {
        case .none, .refused, .refusedResp3: return
        case .opensTransaction: flags |= StateFlags.transaction
        case .endsTransaction: flags &= ~(StateFlags.transaction | StateFlags.watching)
        case .watches: flags |= StateFlags.watching
        case .unwatches: flags &= ~StateFlags.watching
        case .selectsDatabase: flags |= StateFlags.database
        case .namesClient: flags |= StateFlags.clientName
        case .changesOtherState: flags |= StateFlags.otherState
        case .leavesUnresettable: flags |= StateFlags.unresettable
        }
        stateFlags.store(flags, ordering: .relaxed)
    }

    /// The session is as configured again (after the handshake or a reset).
    private func forgetSessionChanges() {
        stateFlags.store(stateFlags.load(ordering: .relaxed) & StateFlags.broken, ordering: .relaxed)
    }

    /// Restores the session state of a new connection after a borrower changed it (see
    /// ``reuseCondition``). Called by a pool, on a task of its own, when the connection was returned
    /// ``ReuseCondition/dirty``; call it yourself to reuse a connection you hold outside a pool.
    ///
    /// Sends `RESET` (Redis 6.2 and later: leaves a transaction, forgets watched keys, turns tracking
    /// off, selects database 0, clears the client name, `READWRITE`, authenticates as the default user)
    /// and, in the same write, the configured `AUTH`, `SELECT` and `CLIENT SETNAME` again. On an older
    /// server (no `RESET`) it sends `DISCARD`, `UNWATCH`, `SELECT` and `CLIENT SETNAME` instead, and gives
    /// up when the borrower changed anything else. Never resets a connection that subscribed, ran
    /// `MONITOR` or `QUIT`, or is broken: those return `false`.
    ///
    /// - Returns: `true` when the session is as configured again; `false` when it could not be reset
    ///   within `timeout` (the connection is then broken, or was already), and the pool closes it
    ///   (``CloseReason/dirty``). Never throws; never blocks a thread.
    public func resetSession(timeout: Duration) async -> Bool {
        let flags = stateFlags.load(ordering: .relaxed)
        if flags == 0 { return true }
        if flags & (StateFlags.broken | StateFlags.unresettable) != 0 { return false }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let restore = handshakeSteps.filter { $0.name != "PING" }
        do {
            if !serverLacksReset.load(ordering: .relaxed) {
                let replies = try await pipelineWithDeadline([["RESET"]] + restore.map(\.arguments), deadline: deadline)
                if replies.first == .status("RESET") {
                    try checkHandshake(restore, Array(replies.dropFirst()))
                    return true
                }
                guard case .error(let message)? = replies.first, message.contains("unknown command") else { return false }
                serverLacksReset.store(true, ordering: .relaxed)
            }
            // A server without RESET: undo what can be undone without it.
            guard flags & StateFlags.otherState == 0 else { return false }
            var commands: [[RedisArgument]] = [["DISCARD"], ["UNWATCH"], ["SELECT", .integer(configuration.database)]]
            if flags & StateFlags.clientName != 0 {
                commands.append(["CLIENT", "SETNAME", .string(configuration.clientName ?? "")])
            }
            let replies = try await pipelineWithDeadline(commands, deadline: deadline)
            // DISCARD without MULTI is an error reply; every other command must succeed.
            guard !replies.dropFirst().contains(where: { if case .error = $0 { true } else { false } }) else { return false }
            forgetSessionChanges()
            return true
        } catch {
            return false
        }
    }

    // MARK: - Blocking API

    /// Sends one command and waits for its reply on the calling thread (never call it on a cooperative
    /// thread), bounded by ``RedisConnectionConfiguration/commandTimeout``.
    ///
    /// ```swift
    /// try connection.commandBlocking("SET", key, bytes)
    /// let value = try connection.commandBlocking("GET", key).optionalBytes
    /// ```
    ///
    /// - Returns: the reply; never ``RedisReply/error(_:)``, which is thrown instead.
    /// - Throws: ``RedisError/server(_:)`` for an error reply (the connection stays usable);
    ///   ``RedisError/timeout(_:)``, ``RedisError/connectionClosed``, ``RedisError/io(operation:errno:)`` or
    ///   ``RedisError/protocolError(_:)`` after which the connection is broken;
    ///   ``RedisError/connectionBroken(cause:)``, ``RedisError/connectionClosedLocally``,
    ///   ``RedisError/concurrentUse`` or ``RedisError/invalidCommand(_:)`` without any I/O.
    public func commandBlocking<each Argument: RedisArgumentConvertible>(
        _ arguments: repeat each Argument
    ) throws -> RedisReply {
        try enter()
        defer { leave() }
        scratch.reset()
        for argument in repeat each arguments {
            argument.withRedisArgumentBytes { scratch.add($0) }
        }
        try appendScratch()
        let deadline = commandDeadline()
        try flushBlocking(deadline: deadline)
        return try Self.throwingErrorReply(receiveBlocking(deadline: deadline))
    }

    /// ``commandBlocking(_:)-(repeat each Argument)`` with the arguments in an array, for commands built
    /// at run time: `try connection.commandBlocking(["MSET", "a", "1", .bytes(value)])`.
    ///
    /// - Throws: as ``commandBlocking(_:)-(repeat each Argument)``.
    public func commandBlocking(_ arguments: [RedisArgument]) throws -> RedisReply {
        try enter()
        defer { leave() }
        try appendCommand(arguments)
        let deadline = commandDeadline()
        try flushBlocking(deadline: deadline)
        return try Self.throwingErrorReply(receiveBlocking(deadline: deadline))
    }

    /// Sends several commands in one write and reads one reply per command (pipelining), on the calling
    /// thread. One ``RedisConnectionConfiguration/commandTimeout`` bounds the whole pipeline.
    ///
    /// - Returns: one reply per command, in order; server errors are ``RedisReply/error(_:)`` elements,
    ///   not thrown.
    /// - Throws: I/O errors, timeouts and the no-I/O errors listed at ``commandBlocking(_:)-(repeat each Argument)``
    ///   (never ``RedisError/server(_:)``).
    public func pipelineBlocking(_ commands: [[RedisArgument]]) throws -> [RedisReply] {
        try pipelineBlockingWithDeadline(commands, deadline: commandDeadline())
    }

    /// Checks the connection with a PING on the calling thread: `true` when PONG comes back within
    /// `timeout`. A broken, closed or busy connection is not valid; a timeout breaks the connection.
    public func isValidBlocking(timeout: Duration) -> Bool {
        guard (try? enter()) != nil else { return false }
        defer { leave() }
        do {
            scratch.reset()
            "PING".withRedisArgumentBytes { scratch.add($0) }
            try appendScratch()
            let deadline = ContinuousClock.now.advanced(by: timeout)
            try flushBlocking(deadline: deadline, budget: timeout)
            return try receiveBlocking(deadline: deadline, budget: timeout) == .status("PONG")
        } catch {
            return false
        }
    }

    /// Closes the connection (frees hiredis' context and the socket). Never blocks for long: no QUIT is
    /// sent. If an operation is in progress (a misuse the pool never makes), the context is freed when it
    /// ends. Idempotent.
    public func closeBlocking() {
        closeNow()
    }

    private func pipelineBlockingWithDeadline(
        _ commands: [[RedisArgument]], deadline: ContinuousClock.Instant?
    ) throws -> [RedisReply] {
        try enter()
        defer { leave() }
        guard !commands.isEmpty else { return [] }
        try validatePipeline(commands)
        for command in commands { try appendCommand(command) }
        try flushBlocking(deadline: deadline)
        var replies = [RedisReply]()
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try receiveBlocking(deadline: deadline)) }
        return replies
    }

    private func flushBlocking(deadline: ContinuousClock.Instant?, budget: Duration? = nil) throws(RedisError) {
        while let interest = try flushOnce() {
            do { try transport.waitBlocking(for: interest, deadline: deadline) } catch { throw breakWith(ioError(error, budget: budget)) }
        }
    }

    /// Reads until a whole reply is parsed, waiting for the socket with the reply spin (``ReplySpin``)
    /// and then `poll()`.
    private func receiveBlocking(
        deadline: ContinuousClock.Instant?, budget: Duration? = nil
    ) throws(RedisError) -> RedisReply {
        // Wait before the first read when the socket was drained: a reply is never there a microsecond
        // after its request was sent, so a read would only find EAGAIN (a system call per command for
        // nothing); the wait spins first when the request is alone. Read first otherwise (see
        // `readDrained`).
        var next: SocketInterest? = readDrained ? .readable : nil
        while true {
            if let reply = try takeReply() { return reply }
            if let interest = next {
                do { try transport.waitBlocking(for: interest, deadline: deadline) } catch { throw breakWith(ioError(error, budget: budget)) }
            }
            next = try readOnce().nextWait
        }
    }

    // MARK: - Async API

    /// Sends one command and suspends until its reply arrives, without blocking a thread (the socket is
    /// waited on by ``IOReactor``), bounded by ``RedisConnectionConfiguration/commandTimeout``.
    ///
    /// ```swift
    /// let hits = try await connection.command("INCR", "hits").int
    /// ```
    ///
    /// - Returns: the reply; never ``RedisReply/error(_:)``, which is thrown instead.
    /// - Throws: ``RedisError/server(_:)`` for an error reply (the connection stays usable);
    ///   ``RedisError/timeout(_:)``, ``RedisError/connectionClosed``, ``RedisError/io(operation:errno:)`` or
    ///   ``RedisError/protocolError(_:)`` after which the connection is broken; `CancellationError` when the
    ///   task is cancelled (before sending: the connection stays usable; while waiting: it is broken);
    ///   ``RedisError/connectionBroken(cause:)``, ``RedisError/connectionClosedLocally``,
    ///   ``RedisError/concurrentUse`` or ``RedisError/invalidCommand(_:)`` without any I/O.
    public func command<each Argument: RedisArgumentConvertible>(
        _ arguments: repeat each Argument
    ) async throws -> RedisReply {
        try Task.checkCancellation()
        try enter()
        defer { leave() }
        scratch.reset()
        for argument in repeat each arguments {
            argument.withRedisArgumentBytes { scratch.add($0) }
        }
        try appendScratch()
        let deadline = commandDeadline()
        try await flush(deadline: deadline)
        return try Self.throwingErrorReply(await receive(deadline: deadline))
    }

    /// ``command(_:)-(repeat each Argument)`` with the arguments in an array, for commands built at run
    /// time.
    ///
    /// - Throws: as ``command(_:)-(repeat each Argument)``.
    public func command(_ arguments: [RedisArgument]) async throws -> RedisReply {
        try Task.checkCancellation()
        try enter()
        defer { leave() }
        try appendCommand(arguments)
        let deadline = commandDeadline()
        try await flush(deadline: deadline)
        return try Self.throwingErrorReply(await receive(deadline: deadline))
    }

    /// Sends several commands in one write and reads one reply per command (pipelining), suspending on
    /// ``IOReactor`` instead of blocking. One ``RedisConnectionConfiguration/commandTimeout`` bounds the
    /// whole pipeline.
    ///
    /// - Returns: one reply per command, in order; server errors are ``RedisReply/error(_:)`` elements,
    ///   not thrown.
    /// - Throws: I/O errors, timeouts, `CancellationError` and the no-I/O errors listed at
    ///   ``command(_:)-(repeat each Argument)`` (never ``RedisError/server(_:)``).
    public func pipeline(_ commands: [[RedisArgument]]) async throws -> [RedisReply] {
        try await pipelineWithDeadline(commands, deadline: commandDeadline())
    }

    /// Checks the connection with a PING: `true` when PONG comes back within `timeout`. Suspends on
    /// ``IOReactor``; never throws. A broken, closed or busy connection is not valid; a timeout or
    /// cancellation breaks the connection.
    public func isValid(timeout: Duration) async -> Bool {
        guard !Task.isCancelled, (try? enter()) != nil else { return false }
        defer { leave() }
        do {
            scratch.reset()
            "PING".withRedisArgumentBytes { scratch.add($0) }
            try appendScratch()
            let deadline = ContinuousClock.now.advanced(by: timeout)
            try await flush(deadline: deadline, budget: timeout)
            return try await receive(deadline: deadline, budget: timeout) == .status("PONG")
        } catch {
            return false
        }
    }

    /// Closes the connection (frees hiredis' context and the socket) without blocking. If an operation
    /// is in progress (a misuse the pool never makes), the context is freed when it ends. Idempotent.
    public func close() async {
        closeNow()
    }

    private func pipelineWithDeadline(
        _ commands: [[RedisArgument]], deadline: ContinuousClock.Instant?
    ) async throws -> [RedisReply] {
        try Task.checkCancellation()
        try enter()
        defer { leave() }
        guard !commands.isEmpty else { return [] }
        try validatePipeline(commands)
        for command in commands { try appendCommand(command) }
        try await flush(deadline: deadline)
        var replies = [RedisReply]()
        replies.reserveCapacity(commands.count)
        for _ in commands { replies.append(try await receive(deadline: deadline)) }
        return replies
    }

    private func flush(deadline: ContinuousClock.Instant?, budget: Duration? = nil) async throws {
        // On the reactor's thread (a task that prefers IOReactor as its executor), the requests of one
        // round of wake-ups go out together: this task lets the others of the round read their replies
        // and append their next commands first, then they all send, back to back. The server then finds
        // a batch of requests per wake-up instead of one (redis-benchmark gets the same effect from its
        // event loop's separate write phase); measured in Benchmarks/README.md.
        // (Task.yield would do the same but allocates once per call; measured in Benchmarks/README.md.)
        if IOReactor.shared.isCurrentThread { await IOReactor.shared.waitForEndOfRound() }
        while let interest = try flushOnce() {
            try await wait(for: interest, deadline: deadline, budget: budget)
        }
    }

    /// Reads until a whole reply is parsed, waiting for the socket with the reply spin (``ReplySpin``)
    /// and then the reactor.
    private func receive(
        deadline: ContinuousClock.Instant?, budget: Duration? = nil
    ) async throws -> RedisReply {
        // Wait before the first read only when the socket was drained (see receiveBlocking).
        var next: SocketInterest? = readDrained ? .readable : nil
        while true {
            if let reply = try takeReply() { return reply }
            if let interest = next { try await wait(for: interest, deadline: deadline, budget: budget) }
            next = try readOnce().nextWait
        }
    }

    /// Suspends until the socket is ready (``Transport/wait(for:deadline:)``: TLS input first, then the
    /// reply spin for readability, a zero-timeout `poll()`, then the reactor); breaks the connection on
    /// any failure.
    private func wait(for interest: SocketInterest, deadline: ContinuousClock.Instant?, budget: Duration?) async throws {
        do {
            try await transport.wait(for: interest, deadline: deadline)
        } catch let error as TransportError {
            throw breakWith(ioError(error, budget: budget))
        } catch {
            // CancellationError: the command may be half sent or its reply still coming.
            _ = breakWith(.cancelled)
            throw error
        }
    }

    // MARK: - Shared steps (called only while holding `inUse`)

    /// Claims the connection for one operation (the transport's in-use flag, and its reply spin's
    /// count). Pair with ``leave()``.
    ///
    /// - Throws: ``RedisError/concurrentUse``, ``RedisError/connectionClosedLocally`` or
    ///   ``RedisError/connectionBroken(cause:)``, with nothing claimed or counted.
    func enter() throws(RedisError) {
        do {
            try transport.begin()
        } catch {
            throw error == .concurrentUse ? .concurrentUse : .connectionClosedLocally
        }
        if let brokenCause {
            transport.end()
            throw .connectionBroken(cause: brokenCause)
        }
    }

    func leave() {
        transport.end()
    }

    /// Closes the socket (waking an operation in progress, which then throws
    /// ``RedisError/connectionClosedLocally``); the socket is freed when that operation ends.
    private func closeNow() {
        if !transport.isClosing {
            logger.trace("redis connection closed", metadata: ["endpoint": "\(configuration.endpoint)"])
        }
        transport.close()
    }

    private func commandDeadline() -> ContinuousClock.Instant? {
        configuration.commandTimeout.map { ContinuousClock.now.advanced(by: $0) }
    }

    private static func throwingErrorReply(_ reply: RedisReply) throws(RedisError) -> RedisReply {
        if case .error(let message) = reply { throw .server(message) }
        return reply
    }

    func appendCommand(_ arguments: [RedisArgument]) throws(RedisError) {
        scratch.reset()
        for argument in arguments {
            argument.withRedisArgumentBytes { scratch.add($0) }
        }
        try appendScratch()
    }

    /// Appends the command in `scratch` to hiredis' output buffer and notes what it changes in the
    /// session (see ``SessionTracking``). Nothing is appended when it throws ``RedisError/invalidCommand(_:)``.
    private func appendScratch() throws(RedisError) {
        guard scratch.argumentCount > 0 else {
            throw .invalidCommand("a command needs at least one argument (its name)")
        }
        let effect = SessionTracking.effect(of: scratch)
        if let refusal = SessionTracking.refusal(effect) { throw .invalidCommand(refusal) }
        if scratch.append(to: context) != REDIS_OK {
            throw breakWith(.io(operation: "redisAppendCommandArgv", errno: ENOMEM))
        }
        if effect != .none { noteSessionChange(effect) }
    }

    /// Checks every command of a pipeline before any is appended: a pipeline that throws
    /// ``RedisError/invalidCommand(_:)`` sent nothing, and a reply is never left for the next caller.
    private func validatePipeline(_ commands: [[RedisArgument]]) throws(RedisError) {
        for (position, command) in commands.enumerated() {
            guard !command.isEmpty else {
                throw .invalidCommand(
                    "command \(position) of the pipeline has no arguments (every command needs at least its name); "
                        + "nothing was sent")
            }
            scratch.reset()
            for argument in command.prefix(3) { argument.withRedisArgumentBytes { scratch.add($0) } }
            if let refusal = SessionTracking.refusal(SessionTracking.effect(of: scratch)) {
                throw .invalidCommand("command \(position) of the pipeline: \(refusal); nothing was sent")
            }
        }
    }

    /// Writes as much of the output buffer as the socket takes.
    ///
    /// - Returns: `nil` once the buffer is empty; otherwise what the socket must become before the next
    ///   try.
    func flushOnce() throws(RedisError) -> SocketInterest? {
        while true {
            var length = 0
            guard let bytes = connpool_redisOutput(context, &length), length > 0 else { return nil }
            let result: TransferResult
            do { result = try transport.send(from: bytes, count: length) } catch { throw breakWith(ioError(error, budget: nil)) }
            switch result {
            case .transferred(let count): connpool_redisConsumeOutput(context, count)
            case .wouldBlock(let interest): return interest
            case .endOfStream: throw breakWith(transport.isClosing ? .connectionClosedLocally : .connectionClosed)
            }
        }
    }

    /// What one read did.
    enum ReadProgress {
        /// This many bytes went to the reader.
        case read(Int)
        /// Nothing was available: wait for this before reading again.
        case wouldBlock(SocketInterest)

        /// What to wait for before the next read: nothing after a read that returned data (read again
        /// until `EAGAIN`: the socket's reactor registration is edge-triggered, so a wait must follow a
        /// read that found nothing, and a reply's rest may be there already).
        var nextWait: SocketInterest? {
            switch self {
            case .read: nil
            case .wouldBlock(let interest): interest
            }
        }
    }

    /// Reads once from the transport into hiredis' reader.
    ///
    /// - Throws: ``RedisError/connectionClosed`` at the end of the stream, an I/O or TLS error, or
    ///   ``RedisError/tls(_:)`` with ``TLSError/serverRequiresTLS`` when a plain connection's first bytes
    ///   are a TLS record (a TLS-only port); each breaks the connection.
    func readOnce() throws(RedisError) -> ReadProgress {
        let result: TransferResult
        do { result = try transport.receive(into: readBuffer, count: Self.readChunk) } catch { throw breakWith(ioError(error, budget: nil)) }
        switch result {
        case .transferred(let count):
            if !hasReceived {
                hasReceived = true
                // A TLS alert (0x15) or handshake record (0x16) where a RESP reply was expected.
                let first = readBuffer.load(as: UInt8.self)
                if !transport.isTLS, first == 0x15 || first == 0x16 { throw breakWith(.tls(.serverRequiresTLS)) }
            }
            if connpool_redisFeed(context, readBuffer.assumingMemoryBound(to: CChar.self), count) != REDIS_OK {
                throw breakWith(.io(operation: "read", errno: ENOMEM))
            }
            readDrained = count < Self.readChunk && !transport.isTLS
            return .read(count)
        case .wouldBlock(let interest):
            readDrained = true
            return .wouldBlock(interest)
        case .endOfStream:
            throw breakWith(transport.isClosing ? .connectionClosedLocally : .connectionClosed)
        }
    }

    /// The ``RedisError`` for a transport failure during an operation (`budget`: the timeout reported).
    private func ioError(_ error: TransportError, budget: Duration?) -> RedisError {
        if transport.isClosing { return .connectionClosedLocally }
        switch error {
        case .timedOut, .connectTimedOut: return .timeout(budget ?? configuration.commandTimeout ?? .zero)
        case .io(let operation, let code), .connectFailed(let operation, let code): return .io(operation: operation, errno: code)
        case .endOfStream: return .connectionClosed
        case .connectionReset: return .io(operation: "recv", errno: ECONNRESET)
        case .reactorShutDown: return .io(operation: "wait (the reactor was shut down)", errno: ESHUTDOWN)
        case .closedLocally: return .connectionClosedLocally
        case .concurrentUse: return .concurrentUse
        case .tls(let tlsError): return .tls(tlsError)
        case .connectionRefused, .hostNotFound: return .io(operation: "connect", errno: ECONNREFUSED)
        }
    }

    /// Takes one whole reply out of the reader, if one is buffered (``RedisReply/take(from:)``).
    func takeReply() throws(RedisError) -> RedisReply? {
        guard let taken = RedisReply.take(from: context) else {
            throw breakWith(contextError(operation: "parse", errno: 0))
        }
        return taken.reply
    }

    private func contextError(operation: String, errno code: Int32) -> RedisError {
        switch context.pointee.err {
        case REDIS_ERR_EOF:
            return .connectionClosed
        case REDIS_ERR_IO:
            return .io(operation: operation, errno: code)
        case REDIS_ERR_OOM:
            return .io(operation: operation, errno: ENOMEM)
        default:
            let text = withUnsafeBytes(of: context.pointee.errstr) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            return .protocolError(text)
        }
    }

    /// Marks the connection broken (the first cause is kept) and returns `error` for throwing.
    private func breakWith(_ error: RedisError) -> RedisError {
        if brokenCause == nil {
            brokenCause = error
            stateFlags.store(stateFlags.load(ordering: .relaxed) | StateFlags.broken, ordering: .releasing)
            logger.debug(
                "redis connection broken",
                metadata: ["endpoint": "\(configuration.endpoint)", "error": "\(error)"])
        }
        return error
    }
}
