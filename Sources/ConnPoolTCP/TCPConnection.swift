public import ConnPool
package import ConnPoolIO
import Glibc
import Synchronization

/// A raw TCP connection for a ``ConnectionPool``: connect with a timeout, send and read with
/// deadlines, framing by exact length or by delimiter, a cheap validity check and an optional probe.
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
/// Like every ``Connection``, a `TCPConnection` serves one borrower at a time. Two calls running at
/// the same time on one connection are a programming error and trap (a precondition checked with an
/// atomic flag, instead of a silent data race). ``close()``, ``isBroken``, ``isMidExchange`` and
/// ``isClosed`` may be called from any thread.
public final class TCPConnection: Connection, @unchecked Sendable {
    // @unchecked Sendable is safe because:
    // - `fd`, `configuration`, `expectsReply` and `remoteAddress` are immutable;
    // - `busy`, `closeState`, `descriptorClosed`, `descriptorCloses` and `health` are atomics;
    // - the test hook `onCallWokenByClose` is written before a call starts and read by that call;
    // - the read buffer behind `buffer` and the reply spin's record `spin` are touched only inside an
    //   I/O call (`spin` also by the package-only `replySpin…` readers, between calls, after an
    //   acquiring load of `busy`), and `busy` (taken with a sequentially consistent compare-exchange at
    //   the start of every call and released with a sequentially consistent store at its end) guarantees
    //   that at most one call runs at a time and that each call sees the previous call's writes; a second
    //   concurrent call traps instead of racing. Once closed, `busy` is taken for good. The buffer is
    //   freed in deinit, when no call can run.
    // - the descriptor is closed exactly once (see `closeDescriptorIfIdle()`), never while a call holds
    //   `busy`.

    /// The configuration this connection was opened with.
    public let configuration: TCPConnectionConfiguration
    /// The address actually connected to, such as `127.0.0.1:6379` or `[::1]:6379`.
    public let remoteAddress: String

    private let fd: Int32
    private let buffer: UnsafeMutablePointer<ReadBuffer>
    /// ``TCPConnectionConfiguration/expectsReplyAfterSend``, copied out for the end of every call.
    private let expectsReply: Bool
    /// Held by the call in progress, and for good once the descriptor is closed.
    private let busy = Atomic<Bool>(false)
    /// ``CloseState``: open, shutting down (inside ``close()``), or shut down.
    private let closeState = Atomic<UInt8>(CloseState.open)
    /// Set by whoever closes the descriptor (``close()``, the end of a call, or deinit).
    private let descriptorClosed = Atomic<Bool>(false)
    /// ``Health`` bits: broken for good, and mid-exchange. ``isBroken`` is one load of it.
    private let health = Atomic<UInt8>(0)
    /// How many times the descriptor was closed (0 or 1), for tests.
    private let descriptorCloses = Atomic<Int>(0)
    /// For tests: called on the call's own thread when a call in progress fails because ``close()``
    /// shut the socket down, before the call releases the descriptor. Set it before the call starts
    /// (the call's start orders the write before its read); only the failure path reads it.
    package var onCallWokenByClose: (@Sendable () -> Void)?
    /// This connection's reply spin: its count in the process' operations and its record of reply
    /// times.
    private var spin: ReplySpin.Gate

    init(fd: Int32, configuration: TCPConnectionConfiguration, remoteAddress: String) {
        self.fd = fd
        self.configuration = configuration
        self.remoteAddress = remoteAddress
        expectsReply = configuration.expectsReplyAfterSend
        spin = ReplySpin.Gate(policy: configuration.replySpin)
        buffer = .allocate(capacity: 1)
        buffer.initialize(to: ReadBuffer())
    }

    deinit {
        // No call can run and no close() can be under way (both hold a reference), and the last
        // release of the reference orders their writes before this exchange.
        if !descriptorClosed.exchange(true, ordering: .sequentiallyConsistent) {
            Glibc.close(fd)
        }
        buffer.pointee.free()
        buffer.deinitialize(count: 1)
        buffer.deallocate()
    }

    // MARK: - Connecting

    /// Opens a connection without blocking a cooperative thread.
    ///
    /// Resolves ``TCPConnectionConfiguration/host`` (a numeric address inline, a name with
    /// `getaddrinfo` on a dispatch thread), then tries each IPv4 and IPv6 address in turn with a
    /// non-blocking connect, until one accepts. ``TCPConnectionConfiguration/connectTimeout`` bounds
    /// the whole call. Sets `TCP_NODELAY` and `SO_KEEPALIVE` as configured.
    ///
    /// - Throws: ``TCPConnectionError/invalidConfiguration(field:reason:)``,
    ///   ``TCPConnectionError/resolutionFailed(host:reason:)``,
    ///   ``TCPConnectionError/connectionRefused(host:port:)`` (an address refused and none accepted),
    ///   ``TCPConnectionError/connectTimedOut(host:port:timeout:)``,
    ///   ``TCPConnectionError/connectFailed(host:port:errno:)``,
    ///   ``TCPConnectionError/systemError(operation:errno:)``, or `CancellationError` (the socket is
    ///   closed).
    public static func connect(_ configuration: TCPConnectionConfiguration) async throws -> TCPConnection {
        try configuration.validate()
        let timeout = configuration.connectTimeout
        let deadline = ContinuousClock.now + timeout
        let addresses = try await SocketSupport.resolveAsync(
            host: configuration.hostForResolution, port: configuration.port, deadline: deadline, timeout: timeout)
        var failures = ConnectFailures(configuration)
        for address in addresses {
            if ContinuousClock.now >= deadline {
                throw failures.timedOut
            }
            switch try SocketSupport.startConnect(address, configuration: configuration) {
            case .connected(let fd):
                return TCPConnection(fd: fd, configuration: configuration, remoteAddress: address.description)
            case .failed(let code):
                failures.record(code)
            case .inProgress(let fd):
                do {
                    try await IOReactor.shared.waitWritable(fd, deadline: deadline)
                } catch {
                    Glibc.close(fd)
                    throw TCPConnection.mapReactorError(error, timeoutError: failures.timedOut)
                }
                let code = SocketSupport.connectResult(fd)
                if code == 0 {
                    return TCPConnection(fd: fd, configuration: configuration, remoteAddress: address.description)
                }
                Glibc.close(fd)
                failures.record(code)
            }
        }
        throw failures.error
    }

    /// Opens a connection, blocking the calling thread (in `poll`) for at most
    /// ``TCPConnectionConfiguration/connectTimeout``. Same steps as ``connect(_:)``. Never call it from a
    /// Swift concurrency task.
    ///
    /// - Throws: the ``TCPConnectionError`` cases listed for ``connect(_:)``.
    public static func connectBlocking(_ configuration: TCPConnectionConfiguration) throws(TCPConnectionError) -> TCPConnection {
        try configuration.validate()
        let timeout = configuration.connectTimeout
        let deadline = ContinuousClock.now + timeout
        let addresses = try SocketSupport.resolveBlocking(
            host: configuration.hostForResolution, port: configuration.port, deadline: deadline, timeout: timeout)
        var failures = ConnectFailures(configuration)
        for address in addresses {
            if ContinuousClock.now >= deadline {
                throw failures.timedOut
            }
            switch try SocketSupport.startConnect(address, configuration: configuration) {
            case .connected(let fd):
                return TCPConnection(fd: fd, configuration: configuration, remoteAddress: address.description)
            case .failed(let code):
                failures.record(code)
            case .inProgress(let fd):
                switch SocketSupport.pollWait(fd, events: Int16(POLLOUT), deadline: deadline) {
                case .ready:
                    break
                case .timedOut:
                    Glibc.close(fd)
                    throw failures.timedOut
                case .failed(let code):
                    Glibc.close(fd)
                    throw .systemError(operation: "poll", errno: code)
                }
                let code = SocketSupport.connectResult(fd)
                if code == 0 {
                    return TCPConnection(fd: fd, configuration: configuration, remoteAddress: address.description)
                }
                Glibc.close(fd)
                failures.record(code)
            }
        }
        throw failures.error
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
    public var isClosed: Bool {
        closeState.load(ordering: .relaxed) != CloseState.open
    }

    /// The socket's descriptor, for tests (for example to check with `fcntl` that it is still open).
    package var fileDescriptor: Int32 { fd }

    /// Whether a call holds the connection (also `true` for good once the descriptor is closed), for
    /// tests.
    package var isInUse: Bool { busy.load(ordering: .acquiring) }

    /// How many times the descriptor has been closed so far (0 or 1; deinit's close not counted), for
    /// tests.
    package var descriptorCloseCount: Int { descriptorCloses.load(ordering: .acquiring) }

    /// What this connection's reply spin did so far (see ``ReplySpin``). For tests and diagnostics: read
    /// it between calls, from the code that uses the connection (it belongs to whoever holds the
    /// connection, like its read buffer).
    package var replySpinStatistics: ReplySpin.Statistics {
        // Acquires what the last operation released with the in-use flag, so that a read from another
        // thread after that operation ended sees its writes (and ThreadSanitizer sees the edge).
        _ = busy.load(ordering: .acquiring)
        return spin.statistics
    }

    /// Whether this connection's record of reply times lets it spin (see ``ReplySpin/Gate/isSpinning``).
    /// Read it as ``replySpinStatistics``.
    package var isReplySpinning: Bool {
        _ = busy.load(ordering: .acquiring)
        return spin.isSpinning
    }

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

    /// The values of `closeState`.
    private enum CloseState {
        static let open: UInt8 = 0
        /// ``close()`` has begun and is shutting the socket down: the descriptor must stay open.
        static let shuttingDown: UInt8 = 1
        /// The socket is shut down: the descriptor is closed as soon as no call holds `busy`.
        static let shutDown: UInt8 = 2
    }

    /// The bits of `health`.
    private enum Health {
        /// Broken for good: calls throw ``TCPConnectionError/connectionBroken``.
        static let broken: UInt8 = 1
        /// Unread bytes buffered, or a reply expected: released now, the connection must be discarded.
        static let midExchange: UInt8 = 2
    }

    // Closing mirrors RedisConnection's enter/leave/unclaim/closeNow/freeIfIdle, with `closeState` as
    // its `closeRequested`, `descriptorClosed` as its `freed`, and a shutdown step first.

    /// Closes the socket once: marks the connection closed and broken, shuts the socket down (which
    /// wakes a call in progress), then closes the descriptor if no call holds it.
    private func closeSocket() {
        // Sequentially consistent, as every access of `busy` and `closeState`: see closeDescriptorIfIdle.
        guard closeState.compareExchange(
            expected: CloseState.open, desired: CloseState.shuttingDown, ordering: .sequentiallyConsistent
        ).exchanged else { return }
        markBroken()
        // The descriptor is still open here: only closeDescriptorIfIdle() closes it, and only after the
        // store of `shutDown` below (unclaim() and this method call it only once they see that state),
        // or deinit, which cannot run while this method holds `self`. So the shutdown can never hit a
        // reused descriptor number. Its result does not matter (ENOTCONN after a reset is fine).
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        closeState.store(CloseState.shutDown, ordering: .sequentiallyConsistent)
        closeDescriptorIfIdle()
    }

    /// Takes `busy` for good (no call can start afterwards) and closes the descriptor once, if no call
    /// holds `busy`. With `unclaim()` storing `busy` (false) before loading `closeState`, and
    /// `closeSocket()` storing `closeState` (`shutDown`) before this compare-exchange, all sequentially
    /// consistent (one total order over the four), at least one of them sees the other's store: either
    /// unclaim() sees `shutDown` and calls this, or this compare-exchange sees `busy` false. So the
    /// descriptor is always closed once the call in progress ends, and never while it runs. Weaker
    /// orderings would allow both loads to miss both stores (the store-load reordering that only
    /// sequential consistency forbids), leaking the descriptor.
    private func closeDescriptorIfIdle() {
        guard busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { return }
        // Only one thread can win the compare-exchange above (`busy` is never released again); the
        // flag is for deinit.
        if !descriptorClosed.exchange(true, ordering: .sequentiallyConsistent) {
            descriptorCloses.add(1, ordering: .releasing)
            Glibc.close(fd)
        }
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
        guard closeState.load(ordering: .relaxed) != CloseState.open else { return false }
        onCallWokenByClose?()
        return true
    }

    /// Claims the connection for one call, or throws why it cannot be used, and counts the call in with
    /// its ``ReplySpin/Gate``. Pair with ``endUse()``.
    ///
    /// - Throws: ``TCPConnectionError/connectionClosed`` or ``TCPConnectionError/connectionBroken``, with
    ///   nothing claimed or counted.
    @inline(__always)
    private func beginUse() throws(TCPConnectionError) {
        // Sequentially consistent (see closeDescriptorIfIdle); it also acquires the previous call's
        // writes, which its store in unclaim() released.
        guard busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else {
            // Held for good after a close, or by a call in progress.
            if closeState.load(ordering: .sequentiallyConsistent) != CloseState.open {
                throw .connectionClosed
            }
            preconditionFailure("TCPConnection: two calls at once on one connection (it serves one borrower at a time)")
        }
        if closeState.load(ordering: .sequentiallyConsistent) != CloseState.open {
            unclaim()
            throw .connectionClosed
        }
        if health.load(ordering: .relaxed) & Health.broken != 0 {
            unclaim()
            throw .connectionBroken
        }
        spin.begin()
    }

    @inline(__always)
    private func endUse() {
        spin.end()
        unclaim()
    }

    /// Releases `busy` (sequentially consistent, which also releases this call's writes to the next
    /// one), then closes the descriptor if ``close()`` ran meanwhile (see closeDescriptorIfIdle).
    @inline(__always)
    private func unclaim() {
        busy.store(false, ordering: .sequentiallyConsistent)
        if closeState.load(ordering: .sequentiallyConsistent) == CloseState.shutDown {
            closeDescriptorIfIdle()
        }
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
        if SocketSupport.peerHasClosed(fd) {
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

    /// The async driver: steps the operation and waits for readiness through the shared reactor (for
    /// readability, after the reply spin if the connection's ``ReplySpin/Gate`` allows one). Any
    /// failure marks the connection broken.
    private nonisolated(nonsending) func drive<Operation: SocketOperation>(
        _ operation: inout Operation,
        deadline: ContinuousClock.Instant,
        timeoutError: TCPConnectionError
    ) async throws -> Operation.Output {
        while true {
            let step: SocketStep<Operation.Output>
            do {
                step = try operation.step(fd: fd, buffer: buffer)
            } catch {
                markBroken()
                throw wokenByClose() ? .connectionClosed : error
            }
            switch step {
            case .finished(let output):
                return output
            case .waitFor(let interest):
                if interest == .readable, spin.waitReadable(fd) { continue }
                do {
                    if interest == .readable {
                        try await IOReactor.shared.waitReadable(fd, deadline: deadline)
                    } else {
                        try await IOReactor.shared.waitWritable(fd, deadline: deadline)
                    }
                } catch {
                    markBroken()
                    throw wokenByClose() ? TCPConnectionError.connectionClosed : TCPConnection.mapReactorError(error, timeoutError: timeoutError)
                }
            }
        }
    }

    /// The blocking driver: steps the operation and waits for readiness in `poll` (for readability,
    /// after the reply spin if the connection's ``ReplySpin/Gate`` allows one). Any failure marks the
    /// connection broken.
    private func driveBlocking<Operation: SocketOperation>(
        _ operation: inout Operation,
        deadline: ContinuousClock.Instant,
        timeoutError: TCPConnectionError
    ) throws(TCPConnectionError) -> Operation.Output {
        while true {
            let step: SocketStep<Operation.Output>
            do {
                step = try operation.step(fd: fd, buffer: buffer)
            } catch {
                markBroken()
                throw wokenByClose() ? .connectionClosed : error
            }
            switch step {
            case .finished(let output):
                return output
            case .waitFor(let interest):
                if interest == .readable, spin.waitReadable(fd) { continue }
                let events = interest == .readable ? Int16(POLLIN) : Int16(POLLOUT)
                switch SocketSupport.pollWait(fd, events: events, deadline: deadline) {
                case .ready:
                    continue
                case .timedOut:
                    markBroken()
                    throw wokenByClose() ? .connectionClosed : timeoutError
                case .failed(let code):
                    markBroken()
                    throw wokenByClose() ? .connectionClosed : .systemError(operation: "poll", errno: code)
                }
            }
        }
    }

    /// Turns a reactor error into this module's error; `CancellationError` passes through.
    static func mapReactorError(_ error: any Error, timeoutError: TCPConnectionError) -> any Error {
        guard let reactorError = error as? IOReactorError else {
            return error
        }
        switch reactorError {
        case .timedOut:
            return timeoutError
        case .closed:
            return TCPConnectionError.systemError(operation: "IOReactor (shut down)", errno: ECANCELED)
        case .systemError(let code, let operation):
            return TCPConnectionError.systemError(operation: operation, errno: code)
        }
    }

    static func lineText(_ bytes: [UInt8]) -> String {
        if bytes.last == 0x0D {
            return String(decoding: bytes.dropLast(), as: UTF8.self)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Collects why each address failed, to report the most useful error.
private struct ConnectFailures {
    let host: String
    let port: Int
    let timeout: Duration
    var refused = false
    var lastErrno: Int32 = 0

    init(_ configuration: TCPConnectionConfiguration) {
        host = configuration.host
        port = configuration.port
        timeout = configuration.connectTimeout
    }

    mutating func record(_ code: Int32) {
        if code == ECONNREFUSED {
            refused = true
        }
        lastErrno = code
    }

    var timedOut: TCPConnectionError {
        .connectTimedOut(host: host, port: port, timeout: timeout)
    }

    /// A refusal is the most telling answer (the host is there, nothing listens); otherwise the last
    /// address's error.
    var error: TCPConnectionError {
        if refused {
            return .connectionRefused(host: host, port: port)
        }
        if lastErrno == ETIMEDOUT {
            return timedOut
        }
        return .connectFailed(host: host, port: port, errno: lastErrno)
    }
}
