public import ConnPool
package import ConnPoolIO
import Glibc
import Synchronization

/// A raw TCP connection, plain or TLS, for a ``ConnectionPool``: connect with a timeout, send and read with
/// deadlines, framing by exact length or by delimiter, a cheap validity check and an optional probe.
///
/// The socket is ConnPoolIO's `Transport`, the layer the Redis backend speaks through too; with
/// ``TCPConnectionConfiguration/tls`` set, the bytes go through TLS (OpenSSL), the framing is the same.
///
/// ## Two APIs, one socket
/// The socket is always non-blocking. Every I/O call exists twice, with the same behaviour:
/// - **async** (`send(_:)`, `read(exactly:)`, `read(until:maxLength:includeDelimiter:)`,
///   `readLine(maxLength:)`, ``isValid(timeout:)``): waits for readiness through ``IOReactor/shared``,
///   so it never blocks a cooperative thread. It honours task cancellation (the connection is then
///   broken, since a partial exchange may have happened) and throws ``TCPConnectionError`` or
///   `CancellationError`.
/// - **blocking** (the same names with a `Blocking` suffix): waits in `poll()` on the calling thread,
///   for plain threads and the pool's blocking interface. Never call these from a Swift concurrency
///   task. They throw ``TCPConnectionError`` only.
///
/// Each call has a deadline: ``TCPConnectionConfiguration/readTimeout`` for a read call and
/// ``TCPConnectionConfiguration/writeTimeout`` for a send call, measured from the start of the call
/// over all the partial reads or writes it takes.
///
/// ## Buffering
/// Reads go through a read-ahead buffer (16 KiB, grown for long delimited frames), so bytes that
/// arrive after a delimiter are kept for the next read. Large exact reads bypass it.
///
/// ## Broken connections
/// Any I/O error, timeout or cancellation sets ``isBroken``: the position in the byte stream is unknown,
/// so a pool closes the connection instead of lending it again, and later calls throw
/// ``TCPConnectionError/connectionBroken``.
///
/// ## Safe reuse: never lent again mid-exchange
/// A pool reads ``isBroken`` on every release. Besides a real failure, it is also `true` while the
/// connection stands *mid-exchange* (``isMidExchange``), where the next borrower would read bytes meant
/// for this one:
/// - bytes are left in the read-ahead buffer that no read consumed (a reply read only in part, or
///   bytes the server sent after the delimiter a caller stopped at);
/// - the last call was a successful send with no read after it (a request whose reply was never
///   read: the caller returned the connection early, or threw between its send and its read), unless
///   ``TCPConnectionConfiguration/expectsReplyAfterSend`` is `false` (a protocol without replies);
/// - a call was interrupted between a send and its reply (timeout, cancellation, I/O error): that one
///   breaks the connection for good, as above.
///
/// Mid-exchange is not a failure: the holder may go on reading, and once a read leaves the buffer
/// empty the flag clears. The connection does not drain (it cannot tell where the protocol's reply
/// ends); a pool closes a mid-exchange connection on release and opens a fresh one. The state is
/// recorded at the end of each call (an atomic write only when it changes, no allocation), so the
/// pool's check on release stays one relaxed atomic load. Bytes still in the kernel (a reply that
/// arrives after its caller stopped reading, which the caller cannot have seen either) are not
/// visible without a system call: a ``TCPConnectionConfiguration/validationProbe`` catches them at the
/// next health check.
///
/// ## Closing during a call
/// ``close()`` may be called from any thread, also while a call is in progress (for example a pool
/// giving up on a health check). It never closes the descriptor under that call (the number would be
/// reused at once, and the waiting call could read another connection's bytes): it wakes the call with
/// `shutdown(fd, SHUT_RDWR)` (a blocking `poll` and a reactor wait both see the hang-up), the call ends
/// with ``TCPConnectionError/connectionClosed``, and the descriptor is closed when it ends, exactly once.
///
/// ## Exclusive use
/// Like every ``Connection``, a `TCPConnection` serves one borrower at a time. A call made while another
/// runs on the same connection throws ``TCPConnectionError/concurrentUse`` without touching the socket
/// (the transport's atomic in-use flag; the Redis backend answers the same way). ``close()``,
/// ``isBroken``, ``isMidExchange`` and ``isClosed`` may be called from any thread.
public final class TCPConnection: Connection, @unchecked Sendable {
    // @unchecked Sendable is safe because:
    // - `transport`, `configuration`, `expectsReply` and `remoteAddress` are immutable, `health` is an
    //   atomic, and the Transport is Sendable (see its note);
    // - the test hook `onCallWokenByClose` is written before a call starts and read by that call;
    // - the read buffer behind `buffer` is touched only inside an I/O call, between the transport's
    //   begin() and end(), whose in-use flag (a sequentially consistent compare-exchange and store)
    //   guarantees that at most one call runs at a time and that each call sees the previous call's
    //   writes; it is freed in deinit, when no call can run;
    // - the descriptor belongs to the transport, which closes it exactly once, never under a call.

    /// The configuration this connection was opened with.
    public let configuration: TCPConnectionConfiguration
    /// The address actually connected to, such as `127.0.0.1:6379` or `[::1]:6379`.
    public let remoteAddress: String

    private let transport: Transport
    private let buffer: UnsafeMutablePointer<ReadBuffer>
    /// ``TCPConnectionConfiguration/expectsReplyAfterSend``, copied out for the end of every call.
    private let expectsReply: Bool
    /// ``Health`` bits: broken for good, and mid-exchange. ``isBroken`` is one load of it.
    private let health = Atomic<UInt8>(0)
    /// For tests: called on the call's own thread when a call in progress fails because ``close()``
    /// shut the socket down, before the call releases the descriptor. Set it before the call starts
    /// (the call's start orders the write before its read); only the failure path reads it.
    package var onCallWokenByClose: (@Sendable () -> Void)?

    init(transport: Transport, configuration: TCPConnectionConfiguration) {
        self.transport = transport
        self.configuration = configuration
        self.remoteAddress = transport.remoteAddress
        expectsReply = configuration.expectsReplyAfterSend
        buffer = .allocate(capacity: 1)
        buffer.initialize(to: ReadBuffer())
    }

    deinit {
        // No call can run (each holds a reference); the transport closes the socket in its own deinit.
        buffer.pointee.free()
        buffer.deinitialize(count: 1)
        buffer.deallocate()
    }

    /// Whether this connection speaks TLS.
    public var isTLS: Bool { transport.isTLS }

    /// Whether this connection's TLS handshake resumed an earlier session of its factory; `false`
    /// without TLS.
    public var isTLSSessionReused: Bool { transport.isTLSSessionReused }

    // MARK: - Connecting

    /// Opens a connection without blocking a cooperative thread.
    ///
    /// Resolves ``TCPConnectionConfiguration/host`` (a numeric address inline, a name with
    /// `getaddrinfo` on a dispatch thread), then tries each IPv4 and IPv6 address in turn with a
    /// non-blocking connect, until one accepts, then completes the TLS handshake when
    /// ``TCPConnectionConfiguration/tls`` is set. ``TCPConnectionConfiguration/connectTimeout`` bounds
    /// the whole call. Sets `TCP_NODELAY` and `SO_KEEPALIVE` as configured. Each call makes its own TLS
    /// context; the connections of one ``TCPConnectionFactory`` share one (session resumption).
    ///
    /// - Throws: ``TCPConnectionError/invalidConfiguration(field:reason:)``,
    ///   ``TCPConnectionError/resolutionFailed(host:reason:)``,
    ///   ``TCPConnectionError/connectionRefused(host:port:)`` (an address refused and none accepted),
    ///   ``TCPConnectionError/connectTimedOut(host:port:timeout:)``,
    ///   ``TCPConnectionError/connectFailed(host:port:errno:)``, ``TCPConnectionError/tls(_:)``,
    ///   ``TCPConnectionError/systemError(operation:errno:)``, or `CancellationError` (the socket is
    ///   closed).
    public static func connect(_ configuration: TCPConnectionConfiguration) async throws -> TCPConnection {
        try configuration.validate()
        return try await connect(configuration, tlsContext: makeTLSContext(configuration))
    }

    /// ``connect(_:)`` with a TLS context shared by a factory's connections.
    static func connect(_ configuration: TCPConnectionConfiguration, tlsContext: TLSContext?) async throws -> TCPConnection {
        let deadline = ContinuousClock.now + configuration.connectTimeout
        do {
            let transport = try await Transport.connect(
                to: configuration.socketEndpoint, options: configuration.socketOptions, tls: tlsContext,
                replySpin: configuration.replySpin, deadline: deadline)
            return TCPConnection(transport: transport, configuration: configuration)
        } catch let error as TransportError {
            throw connectError(error, configuration)
        }
    }

    /// Opens a connection, blocking the calling thread (in `poll`) for at most
    /// ``TCPConnectionConfiguration/connectTimeout``. Same steps as ``connect(_:)``. Never call it from a
    /// Swift concurrency task.
    ///
    /// - Throws: the ``TCPConnectionError`` cases listed for ``connect(_:)``.
    public static func connectBlocking(_ configuration: TCPConnectionConfiguration) throws(TCPConnectionError) -> TCPConnection {
        try configuration.validate()
        return try connectBlocking(configuration, tlsContext: makeTLSContext(configuration))
    }

    /// ``connectBlocking(_:)`` with a shared TLS context.
    static func connectBlocking(
        _ configuration: TCPConnectionConfiguration, tlsContext: TLSContext?
    ) throws(TCPConnectionError) -> TCPConnection {
        let deadline = ContinuousClock.now + configuration.connectTimeout
        do {
            let transport = try Transport.connectBlocking(
                to: configuration.socketEndpoint, options: configuration.socketOptions, tls: tlsContext,
                replySpin: configuration.replySpin, deadline: deadline)
            return TCPConnection(transport: transport, configuration: configuration)
        } catch {
            throw connectError(error, configuration)
        }
    }

    /// A TLS context for `configuration`, or `nil` when it does not use TLS.
    static func makeTLSContext(_ configuration: TCPConnectionConfiguration) throws(TCPConnectionError) -> TLSContext? {
        guard let tls = configuration.tls else { return nil }
        do {
            return try TLSContext(configuration: tls)
        } catch {
            throw .tls(error)
        }
    }

    /// The ``TCPConnectionError`` for a failed connect.
    private static func connectError(_ error: TransportError, _ configuration: TCPConnectionConfiguration) -> TCPConnectionError {
        let host = configuration.host
        let port = configuration.port
        switch error {
        case .connectionRefused: return .connectionRefused(host: host, port: port)
        case .connectTimedOut, .timedOut: return .connectTimedOut(host: host, port: port, timeout: configuration.connectTimeout)
        case .connectFailed(_, let code): return .connectFailed(host: host, port: port, errno: code)
        default: return TCPConnectionError(error)
        }
    }

    // MARK: - Async I/O

    /// Sends every byte of `bytes` (as many partial writes as it takes), waiting through the reactor
    /// while the socket's send buffer is full.
    ///
    /// - Throws: ``TCPConnectionError/writeTimedOut(timeout:)`` after
    ///   ``TCPConnectionConfiguration/writeTimeout``, ``TCPConnectionError/peerClosed``,
    ///   ``TCPConnectionError/connectionReset``, ``TCPConnectionError/systemError(operation:errno:)``,
    ///   ``TCPConnectionError/connectionClosed`` or ``TCPConnectionError/connectionBroken`` (unusable
    ///   before the call), or `CancellationError`. Every error but the last two marks the connection
    ///   broken.
    public nonisolated(nonsending) func send(_ bytes: [UInt8]) async throws {
        var operation = SendOperation(bytes)
        try await runAsync(&operation, timeout: configuration.writeTimeout, timeoutError: .writeTimedOut(timeout: configuration.writeTimeout))
    }

    /// Sends the UTF-8 bytes of `text`. See ``send(_:)-([UInt8])``.
    public nonisolated(nonsending) func send(_ text: String) async throws {
        try await send(Array(text.utf8))
    }

    /// Reads exactly `count` bytes, waiting through the reactor as needed.
    ///
    /// - Precondition: `count >= 0`.
    /// - Throws: ``TCPConnectionError/readTimedOut(timeout:)`` after
    ///   ``TCPConnectionConfiguration/readTimeout``, ``TCPConnectionError/peerClosed`` (end of stream
    ///   before `count` bytes), ``TCPConnectionError/connectionReset``,
    ///   ``TCPConnectionError/systemError(operation:errno:)``, ``TCPConnectionError/connectionClosed``,
    ///   ``TCPConnectionError/connectionBroken``, or `CancellationError`.
    public nonisolated(nonsending) func read(exactly count: Int) async throws -> [UInt8] {
        precondition(count >= 0, "read(exactly:) needs a count >= 0")
        var operation = ReadExactlyOperation(count: count)
        return try await runAsync(&operation, timeout: configuration.readTimeout, timeoutError: .readTimedOut(timeout: configuration.readTimeout))
    }

    /// Reads up to the first occurrence of `delimiter` and consumes it; bytes after it stay buffered
    /// for the next read.
    ///
    /// - Parameters:
    ///   - delimiter: the frame terminator, for example `[0x0D, 0x0A]`. Must not be empty.
    ///   - maxLength: the most bytes allowed before the delimiter; must be >= 0.
    ///   - includeDelimiter: whether the returned bytes end with the delimiter. Default `false`.
    /// - Returns: the frame's bytes.
    /// - Throws: ``TCPConnectionError/delimiterNotFound(maxLength:)`` when more than `maxLength` bytes
    ///   arrive without the delimiter, and the errors of ``read(exactly:)``.
    public nonisolated(nonsending) func read(until delimiter: [UInt8], maxLength: Int, includeDelimiter: Bool = false) async throws -> [UInt8] {
        precondition(!delimiter.isEmpty, "read(until:) needs a non-empty delimiter")
        precondition(maxLength >= 0, "read(until:) needs maxLength >= 0")
        var operation = ReadUntilOperation(delimiter: delimiter, maxLength: maxLength, includeDelimiter: includeDelimiter)
        return try await runAsync(&operation, timeout: configuration.readTimeout, timeoutError: .readTimedOut(timeout: configuration.readTimeout))
    }

    /// Reads one `\n`-terminated line and returns it as UTF-8 text (invalid bytes replaced) without the
    /// `\n` and without a `\r` before it.
    ///
    /// - Parameter maxLength: the most bytes allowed before the `\n` (a `\r` counts). Must be >= 0.
    /// - Throws: the errors of ``read(until:maxLength:includeDelimiter:)``.
    public nonisolated(nonsending) func readLine(maxLength: Int = 64 * 1024) async throws -> String {
        TCPConnection.lineText(try await read(until: [0x0A], maxLength: maxLength))
    }

    // MARK: - Blocking I/O

    /// Blocking form of ``send(_:)-([UInt8])``: waits in `poll` on the calling thread. Never call it
    /// from a Swift concurrency task.
    ///
    /// - Throws: the ``TCPConnectionError`` cases of ``send(_:)-([UInt8])``.
    public func sendBlocking(_ bytes: [UInt8]) throws(TCPConnectionError) {
        var operation = SendOperation(bytes)
        try runBlocking(&operation, timeout: configuration.writeTimeout, timeoutError: .writeTimedOut(timeout: configuration.writeTimeout))
    }

    /// Sends the UTF-8 bytes of `text`, blocking. See ``sendBlocking(_:)-([UInt8])``.
    public func sendBlocking(_ text: String) throws(TCPConnectionError) {
        try sendBlocking(Array(text.utf8))
    }

    /// Blocking form of ``read(exactly:)``: waits in `poll` on the calling thread.
    ///
    /// - Precondition: `count >= 0`.
    /// - Throws: the ``TCPConnectionError`` cases of ``read(exactly:)``.
    public func readBlocking(exactly count: Int) throws(TCPConnectionError) -> [UInt8] {
        precondition(count >= 0, "readBlocking(exactly:) needs a count >= 0")
        var operation = ReadExactlyOperation(count: count)
        return try runBlocking(&operation, timeout: configuration.readTimeout, timeoutError: .readTimedOut(timeout: configuration.readTimeout))
    }

    /// Blocking form of ``read(until:maxLength:includeDelimiter:)``.
    ///
    /// - Precondition: `delimiter` is not empty and `maxLength >= 0`.
    /// - Throws: the ``TCPConnectionError`` cases of ``read(until:maxLength:includeDelimiter:)``.
    public func readBlocking(until delimiter: [UInt8], maxLength: Int, includeDelimiter: Bool = false) throws(TCPConnectionError) -> [UInt8] {
        precondition(!delimiter.isEmpty, "readBlocking(until:) needs a non-empty delimiter")
        precondition(maxLength >= 0, "readBlocking(until:) needs maxLength >= 0")
        var operation = ReadUntilOperation(delimiter: delimiter, maxLength: maxLength, includeDelimiter: includeDelimiter)
        return try runBlocking(&operation, timeout: configuration.readTimeout, timeoutError: .readTimedOut(timeout: configuration.readTimeout))
    }

    /// Blocking form of ``readLine(maxLength:)``.
    ///
    /// - Throws: the ``TCPConnectionError`` cases of ``read(until:maxLength:includeDelimiter:)``.
    public func readLineBlocking(maxLength: Int = 64 * 1024) throws(TCPConnectionError) -> String {
        TCPConnection.lineText(try readBlocking(until: [0x0A], maxLength: maxLength))
    }

    // MARK: - Connection

    /// `true` after an I/O error, a timeout, a cancelled call, a failed validation or ``close()`` (for
    /// good), and also while the connection is mid-exchange (``isMidExchange``: unread bytes buffered,
    /// or a reply expected), so that a pool never lends it again in that state (see "Safe reuse" above).
    /// Reading it costs one relaxed atomic load.
    public var isBroken: Bool {
        // Relaxed: a hint that publishes no data. The pool reads it after the borrower's release,
        // which the pool's own synchronization orders after the borrower's last call.
        health.load(ordering: .relaxed) != 0
    }

    /// `true` while the last call left bytes in the read buffer that no read consumed, or was a send
    /// with no read after it (when ``TCPConnectionConfiguration/expectsReplyAfterSend``). Clears when
    /// a later read leaves the buffer empty. Read it between calls.
    public var isMidExchange: Bool {
        health.load(ordering: .relaxed) & Health.midExchange != 0
    }

    /// `true` after ``close()`` or ``closeBlocking()``.
    public var isClosed: Bool { transport.isClosing }

    /// The socket's descriptor, for tests (for example to check with `fcntl` that it is still open).
    package var fileDescriptor: Int32 { transport.fd }

    /// Whether a call holds the connection (also `true` for good once the descriptor is closed), for
    /// tests.
    package var isInUse: Bool { transport.isInUse }

    /// How many times the descriptor has been closed so far (0 or 1; deinit's close not counted), for
    /// tests.
    package var descriptorCloseCount: Int { transport.descriptorCloseCount }

    /// What this connection's reply spin did so far (see ``ReplySpin``). For tests and diagnostics: read
    /// it between calls.
    package var replySpinStatistics: ReplySpin.Statistics { transport.replySpinStatistics }

    /// Whether this connection's record of reply times lets it spin (see ``ReplySpin/Gate/isSpinning``).
    package var isReplySpinning: Bool { transport.isReplySpinning }

    /// Checks the connection without blocking a cooperative thread.
    ///
    /// First, with no round trip: `poll` with a zero timeout and, if the socket is readable,
    /// `recv(MSG_PEEK | MSG_DONTWAIT)`; zero bytes means the peer closed. Then, if
    /// ``TCPConnectionConfiguration/validationProbe`` is set, sends its request and expects exactly its
    /// response, all within `timeout` (through the reactor).
    ///
    /// Unread data left by an earlier borrower counts as alive for the first check, but makes a probe
    /// fail (its response would not match).
    ///
    /// - Returns: `false` if the connection is closed or broken, the peer closed or reset it, or the
    ///   probe failed or did not finish within `timeout`; in all these cases but the first the
    ///   connection is now broken. Never throws.
    public func isValid(timeout: Duration) async -> Bool {
        guard beginValidation() else { return false }
        defer { endUse() }
        guard let probe = configuration.validationProbe else { return true }
        let deadline = ContinuousClock.now + timeout
        do {
            var send = SendOperation(probe.request)
            try await drive(&send, deadline: deadline, timeoutError: .writeTimedOut(timeout: timeout))
            var read = ReadExactlyOperation(count: probe.expectedResponse.count)
            let response = try await drive(&read, deadline: deadline, timeoutError: .readTimedOut(timeout: timeout))
            return probeMatched(response, probe)
        } catch {
            return false  // already marked broken
        }
    }

    /// Blocking form of ``isValid(timeout:)``: the probe waits in `poll` on the calling thread, at most
    /// `timeout`.
    public func isValidBlocking(timeout: Duration) -> Bool {
        guard beginValidation() else { return false }
        defer { endUse() }
        guard let probe = configuration.validationProbe else { return true }
        let deadline = ContinuousClock.now + timeout
        do {
            var send = SendOperation(probe.request)
            try driveBlocking(&send, deadline: deadline, timeoutError: .writeTimedOut(timeout: timeout))
            var read = ReadExactlyOperation(count: probe.expectedResponse.count)
            let response = try driveBlocking(&read, deadline: deadline, timeoutError: .readTimedOut(timeout: timeout))
            return probeMatched(response, probe)
        } catch {
            return false
        }
    }

    /// Closes the socket (exactly once, however often and from however many threads this is called)
    /// and marks the connection broken. Never blocks: `close` on a TCP socket without `SO_LINGER`
    /// returns at once.
    ///
    /// If a call is in progress, the descriptor is not closed under it: `shutdown(fd, SHUT_RDWR)`
    /// wakes it, it throws ``TCPConnectionError/connectionClosed``, and the descriptor is closed as it
    /// ends. Calls made afterwards throw ``TCPConnectionError/connectionClosed``.
    public func close() async {
        closeSocket()
    }

    /// Same as ``close()``, for plain threads.
    public func closeBlocking() {
        closeSocket()
    }

    // MARK: - Internals

    /// The bits of `health`.
    private enum Health {
        /// Broken for good: calls throw ``TCPConnectionError/connectionBroken``.
        static let broken: UInt8 = 1
        /// Unread bytes buffered, or a reply expected: released now, the connection must be discarded.
        static let midExchange: UInt8 = 2
    }

    /// Closes the socket once: marks the connection broken and closes the transport (which wakes a call
    /// in progress and frees the descriptor when it ends).
    private func closeSocket() {
        guard !transport.isClosing else { return }
        markBroken()
        transport.close()
    }

    private func markBroken() {
        // Relaxed: a hint that publishes no data (see isBroken); an atomic OR, because close() may set
        // it from another thread while the holder updates the mid-exchange bit.
        health.bitwiseOr(Health.broken, ordering: .relaxed)
    }

    /// Records, at the end of a call that succeeded, whether the connection stands mid-exchange: bytes
    /// in the read buffer that no read consumed, or (`afterSend`, when replies are expected) a send with
    /// no read after it. Writes the atomic only when the state changes: one relaxed load otherwise.
    @inline(__always)
    private func recordExchangeState(afterSend: Bool) {
        let midExchange = buffer.pointee.count != 0 || (afterSend && expectsReply)
        let current = health.load(ordering: .relaxed) & Health.midExchange != 0
        if current != midExchange {
            // Relaxed, as markBroken(); an atomic OR/AND keeps a concurrent close()'s broken bit.
            if midExchange {
                health.bitwiseOr(Health.midExchange, ordering: .relaxed)
            } else {
                health.bitwiseAnd(~Health.midExchange, ordering: .relaxed)
            }
        }
    }

    /// Whether a call failed because ``close()`` shut the socket down under it, in which case it throws
    /// ``TCPConnectionError/connectionClosed`` instead of the error it saw (end of stream, `EPIPE`, …).
    /// Calls the test hook `onCallWokenByClose` then.
    private func wokenByClose() -> Bool {
        guard transport.isClosing else { return false }
        onCallWokenByClose?()
        return true
    }

    /// Claims the connection for one call (the transport's in-use flag and reply spin count), or throws
    /// why it cannot be used. Pair with ``endUse()``.
    ///
    /// - Throws: ``TCPConnectionError/connectionClosed``, ``TCPConnectionError/concurrentUse`` or
    ///   ``TCPConnectionError/connectionBroken``, with nothing claimed.
    @inline(__always)
    private func beginUse() throws(TCPConnectionError) {
        do {
            try transport.begin()
        } catch {
            throw error == .concurrentUse ? .concurrentUse : .connectionClosed
        }
        if health.load(ordering: .relaxed) & Health.broken != 0 {
            transport.end()
            throw .connectionBroken
        }
    }

    @inline(__always)
    private func endUse() {
        transport.end()
    }

    /// The first part of a validation: usable, claimed, and the peer has not closed.
    ///
    /// - Returns: `false` when the connection is not valid (nothing claimed); `true` with the connection
    ///   claimed.
    private func beginValidation() -> Bool {
        do {
            try beginUse()
        } catch {
            return false
        }
        if transport.peerHasClosed() {
            markBroken()
            endUse()
            return false
        }
        return true
    }

    /// Whether the probe's response matched, with nothing after it: bytes left over would be read by
    /// the next borrower. Otherwise marks the connection broken.
    private func probeMatched(_ response: [UInt8], _ probe: TCPValidationProbe) -> Bool {
        if response == probe.expectedResponse, buffer.pointee.count == 0 {
            recordExchangeState(afterSend: false)
            return true
        }
        markBroken()
        return false
    }

    private nonisolated(nonsending) func runAsync<Operation: SocketOperation>(
        _ operation: inout Operation,
        timeout: Duration,
        timeoutError: TCPConnectionError
    ) async throws -> Operation.Output {
        try beginUse()
        defer { endUse() }
        let output = try await drive(&operation, deadline: ContinuousClock.now + timeout, timeoutError: timeoutError)
        recordExchangeState(afterSend: Operation.isSend)
        return output
    }

    private func runBlocking<Operation: SocketOperation>(
        _ operation: inout Operation,
        timeout: Duration,
        timeoutError: TCPConnectionError
    ) throws(TCPConnectionError) -> Operation.Output {
        try beginUse()
        defer { endUse() }
        let output = try driveBlocking(&operation, deadline: ContinuousClock.now + timeout, timeoutError: timeoutError)
        recordExchangeState(afterSend: Operation.isSend)
        return output
    }

    /// The async driver: steps the operation and waits for readiness through the transport (the
    /// shared reactor, after the reply spin for readability). Any failure marks the connection broken.
    private nonisolated(nonsending) func drive<Operation: SocketOperation>(
        _ operation: inout Operation,
        deadline: ContinuousClock.Instant,
        timeoutError: TCPConnectionError
    ) async throws -> Operation.Output {
        while true {
            let step: SocketStep<Operation.Output>
            do {
                step = try operation.step(transport: transport, buffer: buffer)
            } catch {
                markBroken()
                throw wokenByClose() ? .connectionClosed : error
            }
            switch step {
            case .finished(let output):
                return output
            case .waitFor(let interest):
                do {
                    try await transport.wait(for: interest, deadline: deadline)
                } catch let error as TransportError {
                    markBroken()
                    throw wokenByClose() ? .connectionClosed : TCPConnectionError(error, timeoutError: timeoutError)
                } catch {
                    markBroken()  // CancellationError
                    throw error
                }
            }
        }
    }

    /// The blocking driver: steps the operation and waits for readiness in `poll` (after the reply spin
    /// for readability). Any failure marks the connection broken.
    private func driveBlocking<Operation: SocketOperation>(
        _ operation: inout Operation,
        deadline: ContinuousClock.Instant,
        timeoutError: TCPConnectionError
    ) throws(TCPConnectionError) -> Operation.Output {
        while true {
            let step: SocketStep<Operation.Output>
            do {
                step = try operation.step(transport: transport, buffer: buffer)
            } catch {
                markBroken()
                throw wokenByClose() ? .connectionClosed : error
            }
            switch step {
            case .finished(let output):
                return output
            case .waitFor(let interest):
                do {
                    try transport.waitBlocking(for: interest, deadline: deadline)
                } catch {
                    markBroken()
                    throw wokenByClose() ? .connectionClosed : TCPConnectionError(error, timeoutError: timeoutError)
                }
            }
        }
    }

    static func lineText(_ bytes: [UInt8]) -> String {
        if bytes.last == 0x0D {
            return String(decoding: bytes.dropLast(), as: UTF8.self)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
