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

/// A connection to one Redis server through hiredis 0.14.1, with a blocking and an async API over the
/// same socket.
///
/// ## Design
/// - **One non-blocking socket for both APIs.** The connection opens the socket itself (non-blocking
///   connect bounded by ``RedisConnectionConfiguration/connectTimeout``), hands it to hiredis with
///   `redisConnectFd` and clears hiredis' blocking flag. hiredis is then a protocol codec with buffers:
///   `redisAppendCommandArgv` formats binary-safe commands into its output buffer, a `send()` twin of
///   `redisBufferWrite` flushes it (no SIGPIPE when the server has gone), `redisBufferRead` feeds the reader
///   and `redisGetReplyFromReader` takes whole replies out. Only the waiting differs:
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
///   reply for up to 30 µs before sleeping in `poll()` or suspending on the reactor: a loopback or LAN
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
/// `@unchecked Sendable` is safe because the mutable state (`brokenCause`, `scratch`, `spin`, and hiredis'
/// context behind `context`) is read and written only by the thread or task that holds the in-use flag
/// `inUse`: it is taken with a sequentially consistent compare-exchange before any access and released with a
/// sequentially consistent store after the last one, which orders every access of one holder before every
/// access of the next. The context is freed exactly once, by whoever wins the `freed` compare-exchange while
/// holding `inUse` (close, the end of an operation during which close was requested, or `deinit`). The
/// package-only `replySpin…` readers read `spin` between operations, after an acquiring load of `inUse` that
/// pairs with the last holder's release. Every other stored property is a `let` of a Sendable type or an
/// `Atomic`.
public final class RedisConnection: Connection, @unchecked Sendable, CustomStringConvertible {
    /// The configuration this connection was made with (its password is redacted when printed).
    public let configuration: RedisConnectionConfiguration

    private let context: UnsafeMutablePointer<redisContext>
    let fd: Int32
    private let logger: Logger
    private let inUse = Atomic<Bool>(false)
    /// ``StateFlags``: broken, and what a borrower changed in the session. Written only by the holder of
    /// `inUse` (or by the pool's reset, which holds the connection alone); read by ``isBroken`` and
    /// ``reuseCondition`` on release, which the releasing thread does after its last operation.
    private let stateFlags = Atomic<UInt8>(0)
    /// Set when `RESET` turned out to be unknown (a server before 6.2).
    private let serverLacksReset = Atomic<Bool>(false)
    private let closeRequested = Atomic<Bool>(false)
    private let freed = Atomic<Bool>(false)
    // Touched only by the holder of `inUse` (see the Sendable note above).
    private var brokenCause: RedisError?
    private var scratch = ArgvScratch()
    /// This connection's reply spin: its count in the process' operations and its record of reply
    /// times.
    private var spin: ReplySpin.Gate

    /// hiredis' read chunk: a read that returns this many bytes probably left more in the socket.
    private static let readChunk = 16 * 1024

    private init(
        context: UnsafeMutablePointer<redisContext>, configuration: RedisConnectionConfiguration, logger: Logger
    ) {
        self.context = context
        self.fd = context.pointee.fd
        self.configuration = configuration
        self.logger = logger
        spin = ReplySpin.Gate(policy: configuration.replySpin)
    }

    deinit {
        if freed.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged {
            redisFree(context)
        }
        scratch.deallocate()
    }

    /// `RedisConnection(endpoint: …, fd: …, broken: …)`; never includes the password.
    public var description: String {
        "RedisConnection(endpoint: \(configuration.endpoint), database: \(configuration.database), fd: \(fd), "
            + "broken: \(isBroken), closed: \(closeRequested.load(ordering: .relaxed)))"
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
    public var isClosed: Bool { closeRequested.load(ordering: .relaxed) }

    /// What this connection's reply spin did so far (see ``ReplySpin``). For tests and diagnostics: read
    /// it between operations, from the code that uses the connection (it belongs to whoever holds the
    /// connection, like the connection's buffers).
    package var replySpinStatistics: ReplySpin.Statistics {
        // Acquires what the last operation released with the in-use flag, so that a read from another
        // thread after that operation ended sees its writes (and ThreadSanitizer sees the edge).
        _ = inUse.load(ordering: .acquiring)
        return spin.statistics
    }

    /// Whether this connection's record of reply times lets it spin (see ``ReplySpin/Gate/isSpinning``).
    /// Read it as ``replySpinStatistics``.
    package var isReplySpinning: Bool {
        _ = inUse.load(ordering: .acquiring)
        return spin.isSpinning
    }

    // MARK: - Connecting

    /// Opens a connection without blocking a cooperative thread: a non-blocking connect waited on the
    /// ``IOReactor``, then AUTH, SELECT and CLIENT SETNAME (as configured; a PING instead when none is and
    /// ``RedisConnectionConfiguration/pingOnConnect`` is set) sent as one pipeline. All of it is bounded by
    /// ``RedisConnectionConfiguration/connectTimeout``. A host name (not an IP literal) is
    /// resolved with `getaddrinfo` on a dispatch thread (``BlockingOffload``); that lookup is not bounded
    /// by the timeout.
    ///
    /// - Throws: ``RedisConfigurationError`` for an invalid configuration; ``RedisError/connectionRefused(endpoint:)``,
    ///   ``RedisError/connectTimeout(endpoint:timeout:)``, ``RedisError/connectFailed(endpoint:operation:errno:)``,
    ///   ``RedisError/hostNotFound(host:detail:)``, ``RedisError/authenticationFailed(_:)``,
    ///   ``RedisError/handshakeFailed(command:message:)`` or an I/O ``RedisError``; `CancellationError` if
    ///   the task is cancelled.
    public static func connect(
        configuration: RedisConnectionConfiguration,
        logger: Logger = Logger(label: "ConnPoolRedis")
    ) async throws -> RedisConnection {
        try configuration.validate()
        try Task.checkCancellation()
        let endpoint = configuration.endpoint.description
        let deadline = ContinuousClock.now.advanced(by: configuration.connectTimeout)
        let addresses: [SocketAddress]
        switch configuration.endpoint {
        case .tcp(let host, let port):
            if let numeric = SocketAddress.numeric(host: host, port: port) {
                addresses = [numeric]
            } else {
                defer { Self.tsanAcquireCurrentTask() }
                addresses = try await BlockingOffload.run { try SocketAddress.resolve(host: host, port: port) }
            }
        case .unixSocket(let path):
            addresses = [.unix(path: path)]
        }

        var lastError: any Error = RedisError.connectionRefused(endpoint: endpoint)
        var socketFD: Int32?
        addressLoop: for address in addresses {
            do {
                while true {
                    switch try Sockets.startConnect(address, endpoint: endpoint) {
                    case .connected(let fd):
                        socketFD = fd
                        break addressLoop
                    case .inProgress(let fd):
                        do {
                            if !Sockets.isReady(fd, events: Int16(POLLOUT)) {
                                defer { Self.tsanAcquireCurrentTask() }
                                try await IOReactor.shared.waitWritable(fd, deadline: deadline)
                            }
                        } catch let error as IOReactorError {
                            closeDescriptor(fd)
                            switch error {
                            case .timedOut:
                                throw RedisError.connectTimeout(
                                    endpoint: endpoint, timeout: configuration.connectTimeout)
                            case .closed:
                                throw RedisError.connectFailed(
                                    endpoint: endpoint, operation: "wait (the reactor was shut down)", errno: ESHUTDOWN)
                            case .systemError(let code, let operation):
                                throw RedisError.connectFailed(endpoint: endpoint, operation: operation, errno: code)
                            }
                        } catch {
                            closeDescriptor(fd)  // CancellationError
                            throw error
                        }
                        try Sockets.finishConnect(fd, endpoint: endpoint)
                        socketFD = fd
                        break addressLoop
                    case .retryLater:
                        if ContinuousClock.now >= deadline {
                            throw RedisError.connectTimeout(endpoint: endpoint, timeout: configuration.connectTimeout)
                        }
                        try await Task.sleep(for: .milliseconds(1))
                    }
                }
            } catch let error as RedisError {
                if error.isTimeout { throw error }
                lastError = error
            }
        }
        guard let socketFD else { throw lastError }

        let connection = try makeConnection(fd: socketFD, configuration: configuration, logger: logger)
        do {
            try await connection.handshake(deadline: deadline)
        } catch {
            connection.closeNow()
            throw error
        }
        logger.debug("redis connection opened", metadata: ["endpoint": "\(endpoint)"])
        return connection
    }

    /// Opens a connection, blocking the calling thread (never call it on a cooperative thread): a
    /// non-blocking connect waited with `poll()`, then AUTH, SELECT and CLIENT SETNAME (as configured; a
    /// PING instead when none is and ``RedisConnectionConfiguration/pingOnConnect`` is set) sent as one
    /// pipeline, all bounded by ``RedisConnectionConfiguration/connectTimeout`` (a host-name
    /// lookup excepted).
    ///
    /// - Throws: the errors of ``connect(configuration:logger:)`` except `CancellationError`.
    public static func connectBlocking(
        configuration: RedisConnectionConfiguration,
        logger: Logger = Logger(label: "ConnPoolRedis")
    ) throws -> RedisConnection {
        try configuration.validate()
        let endpoint = configuration.endpoint.description
        let deadline = ContinuousClock.now.advanced(by: configuration.connectTimeout)
        let addresses: [SocketAddress]
        switch configuration.endpoint {
        case .tcp(let host, let port): addresses = try SocketAddress.resolve(host: host, port: port)
        case .unixSocket(let path): addresses = [.unix(path: path)]
        }

        var lastError: RedisError = .connectionRefused(endpoint: endpoint)
        var socketFD: Int32?
        addressLoop: for address in addresses {
            do {
                while true {
                    switch try Sockets.startConnect(address, endpoint: endpoint) {
                    case .connected(let fd):
                        socketFD = fd
                        break addressLoop
                    case .inProgress(let fd):
                        let ready: Bool
                        do {
                            ready = try Sockets.poll(fd, events: Int16(POLLOUT), deadline: deadline)
                        } catch {
                            closeDescriptor(fd)
                            throw error
                        }
                        guard ready else {
                            closeDescriptor(fd)
                            throw RedisError.connectTimeout(endpoint: endpoint, timeout: configuration.connectTimeout)
                        }
                        try Sockets.finishConnect(fd, endpoint: endpoint)
                        socketFD = fd
                        break addressLoop
                    case .retryLater:
                        if ContinuousClock.now >= deadline {
                            throw RedisError.connectTimeout(endpoint: endpoint, timeout: configuration.connectTimeout)
                        }
                        usleep(1000)
                    }
                }
            } catch let error as RedisError {
                if error.isTimeout { throw error }
                lastError = error
            }
        }
        guard let socketFD else { throw lastError }

        let connection = try makeConnection(fd: socketFD, configuration: configuration, logger: logger)
        do {
            try connection.handshakeBlocking(deadline: deadline)
        } catch {
            connection.closeNow()
            throw error
        }
        logger.debug("redis connection opened", metadata: ["endpoint": "\(endpoint)"])
        return connection
    }

    private static func makeConnection(
        fd: Int32, configuration: RedisConnectionConfiguration, logger: Logger
    ) throws(RedisError) -> RedisConnection {
        if case .tcp = configuration.endpoint {
            Sockets.configureTCP(fd, keepAlive: configuration.tcpKeepAlive)
        }
        guard let context = redisConnectFd(fd) else {
            closeDescriptor(fd)
            throw .connectFailed(endpoint: configuration.endpoint.description, operation: "redisConnectFd", errno: ENOMEM)
        }
        connpool_redisSetNonBlockingFlag(context)
        return RedisConnection(context: context, configuration: configuration, logger: logger)
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
        if steps.isEmpty && configuration.pingOnConnect {
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
        } catch let error as RedisError where error.isTimeout {
            throw RedisError.connectTimeout(
                endpoint: configuration.endpoint.description, timeout: configuration.connectTimeout)
        }
        try checkHandshake(steps, replies)
    }

    private func handshakeBlocking(deadline: ContinuousClock.Instant) throws {
        let steps = handshakeSteps
        guard !steps.isEmpty else { return }
        let replies: [RedisReply]
        do {
            replies = try pipelineBlockingWithDeadline(steps.map(\.arguments), deadline: deadline)
        } catch let error as RedisError where error.isTimeout {
            throw RedisError.connectTimeout(
                endpoint: configuration.endpoint.description, timeout: configuration.connectTimeout)
        }
        try checkHandshake(steps, replies)
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
        while try !flushOnce() {
            let ready: Bool
            do { ready = try Sockets.poll(fd, events: Int16(POLLOUT), deadline: deadline) } catch { throw breakWith(error) }
            if !ready { throw breakWith(.timeout(budget ?? configuration.commandTimeout ?? .zero)) }
        }
    }

    /// Reads until a whole reply is parsed, waiting for the socket with the reply spin (``ReplySpin``)
    /// and then `poll()`.
    private func receiveBlocking(
        deadline: ContinuousClock.Instant?, budget: Duration? = nil
    ) throws(RedisError) -> RedisReply {
        var mayHaveMore = false
        while true {
            if let reply = try takeReply() { return reply }
            if !mayHaveMore, !spin.waitReadable(fd) {
                let ready: Bool
                do { ready = try Sockets.poll(fd, events: Int16(POLLIN), deadline: deadline) } catch { throw breakWith(error) }
                if !ready { throw breakWith(.timeout(budget ?? configuration.commandTimeout ?? .zero)) }
            }
            mayHaveMore = try readOnce() == Self.readChunk
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
        while try !flushOnce() {
            try await wait(writable: true, deadline: deadline, budget: budget)
        }
    }

    /// Reads until a whole reply is parsed, waiting for the socket with the reply spin (``ReplySpin``)
    /// and then the reactor.
    private func receive(
        deadline: ContinuousClock.Instant?, budget: Duration? = nil
    ) async throws -> RedisReply {
        var mayHaveMore = false
        while true {
            if let reply = try takeReply() { return reply }
            if !mayHaveMore, !spin.waitReadable(fd) {
                try await wait(writable: false, deadline: deadline, budget: budget)
            }
            mayHaveMore = try readOnce() == Self.readChunk
        }
    }

    /// Suspends on the reactor until the socket is ready; maps its errors to ``RedisError`` and breaks the
    /// connection on any of them.
    ///
    /// A zero-timeout `poll()` first skips the reactor when the socket is already ready (a reply that
    /// arrived while the previous one was parsed, a loopback connect that completed at once): one cheap
    /// syscall instead of arming epoll and suspending.
    private func wait(writable: Bool, deadline: ContinuousClock.Instant?, budget: Duration?) async throws {
        if Sockets.isReady(fd, events: writable ? Int16(POLLOUT) : Int16(POLLIN)) { return }
        do {
            defer { Self.tsanAcquireCurrentTask() }
            if writable {
                try await IOReactor.shared.waitWritable(fd, deadline: deadline)
            } else {
                try await IOReactor.shared.waitReadable(fd, deadline: deadline)
            }
        } catch let error as IOReactorError {
            switch error {
            case .timedOut:
                throw breakWith(.timeout(budget ?? configuration.commandTimeout ?? .zero))
            case .closed:
                throw breakWith(.io(operation: "wait (the reactor was shut down)", errno: ESHUTDOWN))
            case .systemError(let code, let operation):
                throw breakWith(.io(operation: operation, errno: code))
            }
        } catch {
            // CancellationError: the command may be half sent or its reply still coming.
            _ = breakWith(.cancelled)
            throw error
        }
    }

    // MARK: - Shared steps (called only while holding `inUse`)

    /// Tells ThreadSanitizer that whoever resumed the current task happened before what follows (see
    /// `connpool_tsan_acquire` in the CHiredis shim: the Swift runtime omits this annotation when a
    /// continuation is resumed before its task suspends). A no-op without TSan.
    static func tsanAcquireCurrentTask() {
        withUnsafeCurrentTask { task in
            guard let task else { return }
            connpool_tsan_acquire(unsafeBitCast(task, to: UnsafeRawPointer.self))
        }
    }

    /// Claims the connection for one operation, and counts the operation in with its ``ReplySpin/Gate``.
    /// Pair with ``leave()``.
    ///
    /// - Throws: ``RedisError/concurrentUse``, ``RedisError/connectionClosedLocally`` or
    ///   ``RedisError/connectionBroken(cause:)``, with nothing claimed or counted.
    func enter() throws(RedisError) {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else {
            if closeRequested.load(ordering: .sequentiallyConsistent) { throw .connectionClosedLocally }
            throw .concurrentUse
        }
        if closeRequested.load(ordering: .sequentiallyConsistent) {
            unclaim()
            throw .connectionClosedLocally
        }
        if let brokenCause {
            unclaim()
            throw .connectionBroken(cause: brokenCause)
        }
        spin.begin()
    }

    func leave() {
        spin.end()
        unclaim()
    }

    private func unclaim() {
        inUse.store(false, ordering: .sequentiallyConsistent)
        if closeRequested.load(ordering: .sequentiallyConsistent) { freeIfIdle() }
    }

    private func closeNow() {
        closeRequested.store(true, ordering: .sequentiallyConsistent)
        freeIfIdle()
    }

    /// Takes the in-use flag for good (no operation can start afterwards) and frees the context once.
    /// With `unclaim()` storing `inUse` before loading `closeRequested`, and `closeNow()` storing
    /// `closeRequested` before this compare-exchange (all sequentially consistent), at least one of them
    /// sees the other, so the context is always freed once an in-progress operation ends.
    private func freeIfIdle() {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { return }
        if freed.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged {
            redisFree(context)
            logger.trace("redis connection closed", metadata: ["endpoint": "\(configuration.endpoint)"])
        }
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

    /// Writes as much of the output buffer as the socket takes. Returns `true` once it is empty.
    func flushOnce() throws(RedisError) -> Bool {
        var done: Int32 = 0
        var code: Int32 = 0
        if connpool_redisBufferWriteNoSignal(context, &done, &code) != REDIS_OK {
            throw breakWith(contextError(operation: "send", errno: code))
        }
        return done != 0
    }

    /// Reads once from the socket into hiredis' reader. Returns the number of bytes read (0 when the socket
    /// had nothing: EAGAIN).
    func readOnce() throws(RedisError) -> Int {
        let before = connpool_redisReaderLength(context)
        if redisBufferRead(context) != REDIS_OK {
            throw breakWith(contextError(operation: "read", errno: errno))
        }
        return connpool_redisReaderLength(context) &- before
    }

    /// Takes one whole reply out of the reader, if one is buffered; copies and frees it.
    func takeReply() throws(RedisError) -> RedisReply? {
        var raw: UnsafeMutableRawPointer?
        if redisGetReplyFromReader(context, &raw) != REDIS_OK {
            throw breakWith(contextError(operation: "parse", errno: 0))
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return RedisReply(copying: raw.assumingMemoryBound(to: redisReply.self))
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
