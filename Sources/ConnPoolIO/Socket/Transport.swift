import ConnPool
import Glibc
import Synchronization

/// What a non-blocking step waits for before it can go on.
package enum SocketInterest: Sendable, Hashable {
    case readable
    case writable

    @inline(__always)
    var pollEvents: Int16 { self == .readable ? Int16(POLLIN) : Int16(POLLOUT) }
}

/// The outcome of one non-blocking read or write.
package enum TransferResult: Sendable, Hashable {
    /// This many bytes were read or written (more than zero).
    case transferred(Int)
    /// Nothing could be done now; wait for the socket to become readable or writable (TLS may need to
    /// write to read, or read to write).
    case wouldBlock(SocketInterest)
    /// The peer closed the connection (a read of zero bytes, or TLS close_notify).
    case endOfStream
}

/// One connected, non-blocking stream socket, plain or TLS: the transport both backends speak through.
/// Redis is "hiredis codec over a transport", TCP is "framing over a transport".
///
/// ## What it does
/// - **Connect** (``connect(to:options:tls:deadline:)``, ``connectBlocking(to:options:tls:deadline:)``):
///   resolve, connect and the TLS handshake, all within one deadline.
/// - **Read and write without waiting** (``receive(into:count:)``, ``send(from:count:)``): through TLS
///   when it has a ``TLSContext``, else `recv`/`send` (`MSG_NOSIGNAL`: no SIGPIPE).
/// - **Wait with a deadline** (``waitBlocking(for:deadline:)`` with `poll()` for threads,
///   ``wait(for:deadline:)`` on the ``IOReactor`` for tasks), after the reply spin (``ReplySpin``) for
///   readability, and never while TLS already holds input.
/// - **One user at a time** (``begin()`` / ``end()``): an atomic in-use flag; a second call at the same
///   time gets ``TransportError/concurrentUse``, in both backends.
/// - **Close from any thread** (``close()``): never closes the descriptor under a call in progress (the
///   number would be reused at once and the call could read another connection's bytes): it wakes the
///   call with `shutdown(SHUT_RDWR)`, and the descriptor (and the TLS object) are freed when the call
///   ends, exactly once.
///
/// ## Sendable
/// `@unchecked Sendable` is safe because:
/// - `fd`, `address`, `tls` (a pointer value) and `tlsContext` are immutable after init;
/// - `registeredWithReactor` is touched only by the holder of `busy` (see below), and by the one that
///   frees the socket (holding `busy` for good, or in deinit);
/// - `handshakeSummary` is written by the connect before the transport is returned, and only read after;
/// - `busy`, `closeState`, `freed` and `descriptorCloses` are atomics;
/// - `spin` and OpenSSL's `SSL` object behind `tls` are touched only by the holder of `busy`, which is
///   taken with a sequentially consistent compare-exchange before any access and released with a
///   sequentially consistent store after the last one, so each holder's accesses happen before the next
///   holder's; the connect path touches them before the transport is shared. The package-only spin
///   readers load `busy` with acquiring order first, pairing with the last holder's release;
/// - the descriptor and the `SSL` object are freed exactly once, by whoever wins the `freed` exchange
///   while holding `busy` for good (``close()`` or the end of the call it interrupted), or by `deinit`.
package final class Transport: @unchecked Sendable {
    /// The socket. Valid while the transport lives and is not freed; use it for `poll`-style checks only.
    package let fd: Int32
    /// The address connected to, such as `127.0.0.1:6379`, `[::1]:6379` or `unix:/tmp/redis.sock`.
    package let remoteAddress: String
    private let tls: TLSSession?
    /// Keeps the TLS context (and its session cache) alive while `tls` exists.
    private let tlsContext: TLSContext?
    private let busy = Atomic<Bool>(false)
    private let closeState = Atomic<UInt8>(CloseState.open)
    private let freed = Atomic<Bool>(false)
    /// How many times the descriptor was closed (0 or 1), for tests.
    private let descriptorCloses = Atomic<Int>(0)
    /// The reply spin's per-connection record; touched only by the holder of `busy`.
    private var spin: ReplySpin.Gate
    /// Whether a read returned data yet; touched only by the holder of `busy`.
    private var hasReceivedData = false
    /// What the TLS handshake negotiated, recorded by the connect before the transport is handed out
    /// (read-only afterwards, so reading it never touches the TLS object, which may be freed by then).
    private var handshakeSummary: (sessionReused: Bool, version: String)?
    /// Whether the socket is registered with the shared reactor for good (edge-triggered: no
    /// `epoll_ctl` per wait), which happens at its first async wait; touched only by the holder of `busy`.
    private var registeredWithReactor = false

    private enum CloseState {
        static let open: UInt8 = 0
        /// ``close()`` has begun and is shutting the socket down: the descriptor must stay open.
        static let shuttingDown: UInt8 = 1
        /// Shut down: the descriptor is closed as soon as no call holds `busy`.
        static let shutDown: UInt8 = 2
    }

    private init(fd: Int32, remoteAddress: String, tls: TLSSession?, tlsContext: TLSContext?, replySpin: ReplySpinPolicy) {
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.tls = tls
        self.tlsContext = tlsContext
        spin = ReplySpin.Gate(policy: replySpin)
    }

    deinit {
        // No call can run and no close() can be under way (both hold a reference).
        if !freed.exchange(true, ordering: .sequentiallyConsistent) {
            freeResources()
        }
    }

    /// Frees the TLS object, ends the reactor registration (before the number can be reused) and closes
    /// the descriptor. Called once, by whoever wins `freed`.
    private func freeResources() {
        tls?.free()
        if registeredWithReactor { IOReactor.shared.deregister(fd) }
        Glibc.close(fd)
    }

    // MARK: - Connecting

    /// Connects to `endpoint` and, with `tls`, completes the TLS handshake, without blocking a
    /// cooperative thread, all before `deadline`.
    ///
    /// - Parameters:
    ///   - tls: the TLS context to use; `nil` for plain text. The server is checked against
    ///     ``TLSConfiguration/serverName`` or else the endpoint's host.
    ///   - replySpin: the reply spin policy of the connection.
    /// - Throws: the ``TransportError`` cases of ``SocketConnector/connect(to:options:deadline:)``,
    ///   ``TransportError/tls(_:)`` for a failed handshake, ``TransportError/connectTimedOut`` when the
    ///   handshake does not finish in time, `CancellationError`. Nothing is left open.
    package static func connect(
        to endpoint: SocketEndpoint, options: SocketOptions, tls: TLSContext?,
        replySpin: ReplySpinPolicy = .adaptive, deadline: ContinuousClock.Instant
    ) async throws -> Transport {
        let connected = try await SocketConnector.connect(to: endpoint, options: options, deadline: deadline)
        let transport = try make(connected, endpoint: endpoint, tls: tls, replySpin: replySpin)
        do {
            while let interest = try transport.tls?.handshakeStep() {
                try await transport.waitWithoutSpin(for: interest, deadline: deadline, timeout: .connectTimedOut)
            }
            transport.recordHandshake()
        } catch let error as TransportError {
            let reported = transport.handshakeError(error)  // before close(): it reads the TLS object
            transport.close()
            throw reported
        } catch {
            transport.close()
            throw error  // CancellationError
        }
        return transport
    }

    /// ``connect(to:options:tls:replySpin:deadline:)`` for threads: waits in `poll()`. Never call it from
    /// a Swift concurrency task.
    ///
    /// - Throws: the ``TransportError`` cases of the async variant.
    package static func connectBlocking(
        to endpoint: SocketEndpoint, options: SocketOptions, tls: TLSContext?,
        replySpin: ReplySpinPolicy = .adaptive, deadline: ContinuousClock.Instant
    ) throws(TransportError) -> Transport {
        let connected = try SocketConnector.connectBlocking(to: endpoint, options: options, deadline: deadline)
        let transport = try make(connected, endpoint: endpoint, tls: tls, replySpin: replySpin)
        do throws(TransportError) {
            while let interest = try transport.tls?.handshakeStep() {
                do {
                    try SocketPoll.wait(fd: transport.fd, interest, deadline: deadline)
                } catch {
                    throw error == .timedOut ? .connectTimedOut : error
                }
            }
            transport.recordHandshake()
        } catch {
            let reported = transport.handshakeError(error)  // before close(): it reads the TLS object
            transport.close()
            throw reported
        }
        return transport
    }

    /// Records what the handshake negotiated (see `handshakeSummary`).
    private func recordHandshake() {
        if let tls { handshakeSummary = (tls.isSessionReused, tls.protocolVersion) }
    }

    /// A timeout, an end of stream or a reset during the TLS handshake, said in TLS terms: the server
    /// is frozen or went away, or does not speak TLS on this port.
    private func handshakeError(_ error: TransportError) -> TransportError {
        switch error {
        case .connectTimedOut:
            return .tls(.handshakeTimedOut(serverAnswered: tls?.hasReceivedBytes ?? false))
        case .endOfStream, .connectionReset:
            return .tls(
                .handshakeFailed(
                    detail: "the server closed the connection during the handshake (was it stopped, or is this port "
                        + "not a TLS port?)"))
        default:
            return error
        }
    }

    private static func make(
        _ connected: SocketConnector.Connected, endpoint: SocketEndpoint, tls: TLSContext?, replySpin: ReplySpinPolicy
    ) throws(TransportError) -> Transport {
        var session: TLSSession?
        if let tls {
            let host: String
            switch endpoint {
            case .tcp(let name, _): host = name
            case .unixSocket: host = "localhost"
            }
            do {
                session = try TLSSession(context: tls, fd: connected.fd, host: host)
            } catch {
                Glibc.close(connected.fd)
                throw .tls(error)
            }
        }
        return Transport(
            fd: connected.fd, remoteAddress: connected.address.description, tls: session, tlsContext: tls,
            replySpin: replySpin)
    }

    /// How many times the descriptor was closed: 0 or 1 (for tests).
    package var descriptorCloseCount: Int { descriptorCloses.load(ordering: .acquiring) }

    /// A plain transport over a socket that is already connected (a socket pair in tests and fuzzing).
    /// The transport owns `fd` from now on and closes it.
    ///
    /// - Precondition: `fd` is a connected, non-blocking stream socket.
    package static func adopting(connectedSocket fd: Int32, remoteAddress: String = "adopted") -> Transport {
        Transport(fd: fd, remoteAddress: remoteAddress, tls: nil, tlsContext: nil, replySpin: .disabled)
    }

    /// Whether this transport speaks TLS.
    package var isTLS: Bool { tls != nil }

    /// Whether the TLS handshake resumed a stored session (always `false` without TLS).
    package var isTLSSessionReused: Bool { handshakeSummary?.sessionReused ?? false }

    /// The negotiated TLS version (`TLSv1.3`), or `nil` without TLS.
    package var tlsProtocolVersion: String? { handshakeSummary?.version }

    // MARK: - One user at a time

    /// Claims the transport for one call, and counts the call in with the reply spin. Pair with
    /// ``end()``.
    ///
    /// - Throws: ``TransportError/closedLocally`` after ``close()``, ``TransportError/concurrentUse`` while
    ///   another call holds it; nothing is claimed then.
    @inline(__always)
    package func begin() throws(TransportError) {
        // Sequentially consistent (see freeIfIdle); it also acquires the previous call's writes, which
        // its store in unclaim() released.
        guard busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged else {
            // Held for good after a close, or by a call in progress.
            if closeState.load(ordering: .sequentiallyConsistent) != CloseState.open { throw .closedLocally }
            throw .concurrentUse
        }
        if closeState.load(ordering: .sequentiallyConsistent) != CloseState.open {
            unclaim()
            throw .closedLocally
        }
        spin.begin()
    }

    /// Ends the call ``begin()`` started; frees the socket if ``close()`` came meanwhile.
    @inline(__always)
    package func end() {
        spin.end()
        unclaim()
    }

    /// Releases `busy` (sequentially consistent, which also releases this call's writes to the next
    /// one), then frees the socket if ``close()`` ran meanwhile (see freeIfIdle).
    @inline(__always)
    private func unclaim() {
        busy.store(false, ordering: .sequentiallyConsistent)
        if closeState.load(ordering: .sequentiallyConsistent) == CloseState.shutDown { freeIfIdle() }
    }

    /// Whether a call holds the transport (also `true` for good once it is freed), for tests.
    package var isInUse: Bool { busy.load(ordering: .acquiring) }

    /// `true` once ``close()`` began: a call that fails now failed because of it.
    package var isClosing: Bool { closeState.load(ordering: .relaxed) != CloseState.open }

    /// Closes the transport once, from any thread: shuts the socket down (which wakes a call in
    /// progress), then frees the descriptor and the TLS object if no call holds the transport, or when
    /// that call ends. Never blocks; idempotent.
    package func close() {
        guard closeState.compareExchange(
            expected: CloseState.open, desired: CloseState.shuttingDown, ordering: .sequentiallyConsistent
        ).exchanged else { return }
        // The descriptor is still open here: only freeIfIdle() closes it, after the store of `shutDown`
        // below, or deinit, which cannot run while this method holds `self`. So the shutdown never hits a
        // reused descriptor number. Its result does not matter (ENOTCONN after a reset is fine).
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        closeState.store(CloseState.shutDown, ordering: .sequentiallyConsistent)
        freeIfIdle()
    }

    /// Takes `busy` for good (no call can start afterwards) and frees the socket once, if no call holds
    /// `busy`. With `unclaim()` storing `busy` (false) before loading `closeState`, and `close()` storing
    /// `closeState` before this compare-exchange, all sequentially consistent (one total order over the
    /// four), at least one of them sees the other's store: either unclaim() sees `shutDown` and calls
    /// this, or this compare-exchange sees `busy` false. So the socket is always freed once the call in
    /// progress ends, and never while it runs. Weaker orderings would allow both loads to miss both
    /// stores (the store-load reordering only sequential consistency forbids), leaking the descriptor.
    private func freeIfIdle() {
        guard busy.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { return }
        if !freed.exchange(true, ordering: .sequentiallyConsistent) {
            descriptorCloses.add(1, ordering: .releasing)
            freeResources()
        }
    }

    // MARK: - Reading and writing (holder of begin() only)

    /// Reads what is available, without waiting.
    ///
    /// - Throws: ``TransportError/connectionReset``, ``TransportError/io(operation:errno:)``, or
    ///   ``TransportError/tls(_:)`` for a bad TLS record.
    @inline(__always)
    package func receive(into pointer: UnsafeMutableRawPointer, count: Int) throws(TransportError) -> TransferResult {
        if let tls {
            let result: TransferResult
            do {
                result = try tls.receive(into: pointer, count: count)
            } catch {
                throw firstReadError(error)
            }
            if !hasReceivedData, case .transferred = result { hasReceivedData = true }
            if result == .endOfStream { return hasReceivedData ? result : try endOfFirstRead() }
            return result
        }
        while true {
            let n = recv(fd, pointer, count, 0)
            if n > 0 { return .transferred(n) }
            if n == 0 { return .endOfStream }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock(.readable)
            case ECONNRESET: throw .connectionReset
            default: throw .io(operation: "recv", errno: code)
            }
        }
    }

    /// With TLS 1.3 a server refuses a missing client certificate after the client's handshake is done,
    /// with an alert that a reset often destroys in flight (the server closes while the client's first
    /// request is unread; the first write can fail as well as the first read). When the server asked for a
    /// certificate we do not have, an end of stream or a reset before any data is that refusal.
    private func firstReadError(_ error: TransportError) -> TransportError {
        guard !hasReceivedData, error == .endOfStream || error == .connectionReset,
            tls?.serverAskedForMissingCertificate == true
        else { return error }
        return .tls(
            .clientCertificateRequired(
                detail: "the server asked for a client certificate, none is configured, and it closed the connection"))
    }

    private func endOfFirstRead() throws(TransportError) -> TransferResult {
        let error = firstReadError(.endOfStream)
        if error == .endOfStream { return .endOfStream }
        throw error
    }

    /// Writes what the socket takes now (possibly a part), without waiting and without SIGPIPE.
    ///
    /// - Throws: ``TransportError/endOfStream`` (`EPIPE`: the peer closed), ``TransportError/connectionReset``,
    ///   ``TransportError/io(operation:errno:)`` or ``TransportError/tls(_:)``.
    @inline(__always)
    package func send(from pointer: UnsafeRawPointer, count: Int) throws(TransportError) -> TransferResult {
        if let tls {
            do {
                return try tls.send(from: pointer, count: count)
            } catch {
                throw firstReadError(error)
            }
        }
        while true {
            let n = Glibc.send(fd, pointer, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .transferred(n) }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock(.writable)
            case EPIPE: throw .endOfStream
            case ECONNRESET: throw .connectionReset
            default: throw .io(operation: "send", errno: code)
            }
        }
    }

    /// Whether a read may return data without the socket becoming readable (TLS holds decrypted bytes or
    /// undecrypted records).
    @inline(__always)
    package var hasBufferedInput: Bool { tls?.hasBufferedInput ?? false }

    /// Whether the peer has closed or reset the connection, found without a round trip.
    package func peerHasClosed() -> Bool {
        if hasBufferedInput { return false }
        return SocketPoll.peerHasClosed(fd)
    }

    // MARK: - Waiting (holder of begin() only)

    /// Blocks the calling thread until the socket is ready for `interest` or `deadline` passes. For
    /// readability it returns at once when TLS holds input, and first tries the reply spin.
    ///
    /// - Throws: ``TransportError/timedOut`` at the deadline, ``TransportError/io(operation:errno:)``.
    @inline(__always)
    package func waitBlocking(for interest: SocketInterest, deadline: ContinuousClock.Instant?) throws(TransportError) {
        if interest == .readable {
            if hasBufferedInput || spin.waitReadable(fd) { return }
        }
        try SocketPoll.wait(fd: fd, interest, deadline: deadline)
    }

    /// Suspends the task until the socket is ready for `interest` or `deadline` passes, on
    /// ``IOReactor/shared``; never blocks a thread. For readability it returns at once when TLS holds
    /// input, and first tries the reply spin.
    ///
    /// - Precondition: the last read or write found the socket not ready (`EAGAIN`), or a request was
    ///   just sent (for its reply): the socket is registered with the reactor edge-triggered, so a wait
    ///   must follow one of those. It may then, rarely, return early (an edge already consumed): read
    ///   until `EAGAIN` and wait again.
    /// - Throws: ``TransportError/timedOut``, ``TransportError/reactorShutDown``,
    ///   ``TransportError/io(operation:errno:)``, or `CancellationError`.
    package func wait(for interest: SocketInterest, deadline: ContinuousClock.Instant?) async throws {
        if interest == .readable {
            if hasBufferedInput || spin.waitReadable(fd) { return }
        }
        try await waitOnReactor(for: interest, deadline: deadline, timeout: .timedOut)
    }

    /// A wait during the connect (the socket's state unknown): a zero-timeout `poll()` first skips the
    /// reactor when it is ready already.
    private func waitWithoutSpin(
        for interest: SocketInterest, deadline: ContinuousClock.Instant?, timeout: TransportError
    ) async throws {
        if SocketPoll.isReady(fd, events: interest.pollEvents) { return }
        try await waitOnReactor(for: interest, deadline: deadline, timeout: timeout)
    }

    private func waitOnReactor(
        for interest: SocketInterest, deadline: ContinuousClock.Instant?, timeout: TransportError
    ) async throws {
        if !registeredWithReactor {
            // Registered at the first async wait, not at connect: a connection used only through the
            // blocking API never wakes the reactor thread with its readiness edges.
            do {
                try IOReactor.shared.register(fd)
            } catch {
                throw Self.mapWaitError(error, timeout: timeout)
            }
            registeredWithReactor = true
        }
        do {
            defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
            if interest == .readable {
                try await IOReactor.shared.waitReadable(fd, deadline: deadline)
            } else {
                try await IOReactor.shared.waitWritable(fd, deadline: deadline)
            }
        } catch {
            throw Self.mapWaitError(error, timeout: timeout)
        }
    }

    /// Turns an ``IOReactorError`` into a ``TransportError`` (`timeout` for a deadline); other errors
    /// (`CancellationError`) pass through.
    package static func mapWaitError(_ error: any Error, timeout: TransportError) -> any Error {
        guard let reactorError = error as? IOReactorError else { return error }
        switch reactorError {
        case .timedOut: return timeout
        case .closed: return TransportError.reactorShutDown
        case .systemError(let code, let operation): return TransportError.io(operation: operation, errno: code)
        }
    }

    // MARK: - The reply spin's record (tests, diagnostics)

    /// What the reply spin did so far. Read it between calls.
    package var replySpinStatistics: ReplySpin.Statistics {
        // Acquires what the last call released with the in-use flag.
        _ = busy.load(ordering: .acquiring)
        return spin.statistics
    }

    /// Whether the reply spin's record lets this transport spin.
    package var isReplySpinning: Bool {
        _ = busy.load(ordering: .acquiring)
        return spin.isSpinning
    }
}

extension SocketPoll {
    /// ``wait(_:events:deadline:)`` for an interest.
    @inline(__always)
    static func wait(fd: Int32, _ interest: SocketInterest, deadline: ContinuousClock.Instant?) throws(TransportError) {
        try wait(fd, events: interest.pollEvents, deadline: deadline)
    }
}
