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
/// ## Exclusive use
/// Like every ``Connection``, a `TCPConnection` serves one borrower at a time. Two calls running at
/// the same time on one connection are a programming error and trap (a precondition checked with an
/// atomic flag, instead of a silent data race). ``close()`` and ``isBroken`` may be called from any
/// thread.
public final class TCPConnection: Connection, @unchecked Sendable {
    // @unchecked Sendable is safe because:
    // - `fd`, `configuration` and `remoteAddress` are immutable;
    // - `closedFlag`, `brokenFlag` and `busy` are atomics;
    // - the read buffer behind `buffer` and the reply spin's record `spin` are touched only inside an
    //   I/O call (`spin` also by the package-only `replySpin…` readers, between calls, after an
    //   acquiring load of `busy`), and `busy` (an atomic exchange with acquire/release ordering at the
    //   start and end of every call) guarantees that at most one call runs at a time and that each call
    //   sees the previous call's writes; a second concurrent call traps instead of racing. The buffer is
    //   freed in deinit, when no call can run.

    /// The configuration this connection was opened with.
    public let configuration: TCPConnectionConfiguration
    /// The address actually connected to, such as `127.0.0.1:6379` or `[::1]:6379`.
    public let remoteAddress: String

    private let fd: Int32
    private let buffer: UnsafeMutablePointer<ReadBuffer>
    private let closedFlag = Atomic<Bool>(false)
    private let brokenFlag = Atomic<Bool>(false)
    private let busy = Atomic<Bool>(false)
    /// This connection's reply spin: its count in the process' operations and its record of reply
    /// times.
    private var spin: ReplySpin.Gate

    init(fd: Int32, configuration: TCPConnectionConfiguration, remoteAddress: String) {
        self.fd = fd
        self.configuration = configuration
        self.remoteAddress = remoteAddress
        spin = ReplySpin.Gate(policy: configuration.replySpin)
        buffer = .allocate(capacity: 1)
        buffer.initialize(to: ReadBuffer())
    }

    deinit {
        if !closedFlag.load(ordering: .acquiring) {
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

    /// `true` after an I/O error, a timeout, a cancelled call, a failed validation or ``close()``. Reading
    /// it costs one relaxed atomic load.
    public var isBroken: Bool {
        brokenFlag.load(ordering: .relaxed)
    }

    /// `true` after ``close()`` or ``closeBlocking()``.
    public var isClosed: Bool {
        closedFlag.load(ordering: .relaxed)
    }

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
    public func close() async {
        closeSocket()
    }

    /// Same as ``close()``, for plain threads.
    public func closeBlocking() {
        closeSocket()
    }

    // MARK: - Internals

    private func closeSocket() {
        if !closedFlag.exchange(true, ordering: .acquiringAndReleasing) {
            brokenFlag.store(true, ordering: .relaxed)
            Glibc.close(fd)
        }
    }

    private func markBroken() {
        brokenFlag.store(true, ordering: .relaxed)
    }

    /// Claims the connection for one call, or throws why it cannot be used, and counts the call in with
    /// its ``ReplySpin/Gate``. Pair with ``endUse()``.
    ///
    /// - Throws: ``TCPConnectionError/connectionClosed`` or ``TCPConnectionError/connectionBroken``, with
    ///   nothing claimed or counted.
    @inline(__always)
    private func beginUse() throws(TCPConnectionError) {
        if closedFlag.load(ordering: .relaxed) {
            throw .connectionClosed
        }
        if brokenFlag.load(ordering: .relaxed) {
            throw .connectionBroken
        }
        let (exchanged, _) = busy.compareExchange(expected: false, desired: true, ordering: .acquiring)
        precondition(exchanged, "TCPConnection: two calls at once on one connection (it serves one borrower at a time)")
        spin.begin()
    }

    @inline(__always)
    private func endUse() {
        spin.end()
        busy.store(false, ordering: .releasing)
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

    private func probeMatched(_ response: [UInt8], _ probe: TCPValidationProbe) -> Bool {
        if response == probe.expectedResponse {
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
        return try await drive(&operation, deadline: ContinuousClock.now + timeout, timeoutError: timeoutError)
    }

    private func runBlocking<Operation: SocketOperation>(
        _ operation: inout Operation,
        timeout: Duration,
        timeoutError: TCPConnectionError
    ) throws(TCPConnectionError) -> Operation.Output {
        try beginUse()
        defer { endUse() }
        return try driveBlocking(&operation, deadline: ContinuousClock.now + timeout, timeoutError: timeoutError)
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
                throw error
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
                    throw TCPConnection.mapReactorError(error, timeoutError: timeoutError)
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
                throw error
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
                    throw timeoutError
                case .failed(let code):
                    markBroken()
                    throw .systemError(operation: "poll", errno: code)
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
