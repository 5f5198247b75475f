import ConnPool
import Glibc

/// Socket options applied to a TCP socket before it connects.
package struct SocketOptions: Sendable, Hashable {
    /// `TCP_NODELAY`: send small writes at once (request/response protocols want it).
    package var noDelay: Bool
    /// `SO_KEEPALIVE`: let the kernel probe an idle connection.
    package var keepAlive: Bool
    /// With ``keepAlive``: the idle time before the first probe (probes then every third of it, three of
    /// them); `nil` keeps the system's settings.
    package var keepAliveIdle: Duration?

    package init(noDelay: Bool = true, keepAlive: Bool = false, keepAliveIdle: Duration? = nil) {
        self.noDelay = noDelay
        self.keepAlive = keepAlive
        self.keepAliveIdle = keepAliveIdle
    }
}

/// Opens a connected, non-blocking stream socket to an endpoint within a deadline: resolves it
/// (``Resolver``), then tries each address in turn with a non-blocking connect waited on the
/// ``IOReactor`` (async) or in `poll()` (blocking), until one accepts.
package enum SocketConnector {
    /// A connected socket and the address it reached.
    package struct Connected: Sendable {
        package var fd: Int32
        package var address: SocketAddress
    }

    /// Connects without blocking a cooperative thread.
    ///
    /// - Throws: ``TransportError/hostNotFound(host:detail:)``, ``TransportError/connectionRefused``
    ///   (an address refused and none accepted), ``TransportError/connectTimedOut``,
    ///   ``TransportError/connectFailed(operation:errno:)``, ``TransportError/reactorShutDown``, or
    ///   `CancellationError` (no socket is left open).
    package static func connect(
        to endpoint: SocketEndpoint, options: SocketOptions, deadline: ContinuousClock.Instant
    ) async throws -> Connected {
        let addresses = try await Resolver.resolve(endpoint, deadline: deadline)
        var failures = Failures()
        for address in addresses {
            while true {
                if ContinuousClock.now >= deadline { throw TransportError.connectTimedOut }
                switch try start(address, options: options) {
                case .connected(let fd):
                    return Connected(fd: fd, address: address)
                case .failed(let code):
                    failures.record(code)
                case .retryLater:
                    try await Task.sleep(for: .milliseconds(1))
                    continue
                case .inProgress(let fd):
                    do {
                        if !SocketPoll.isReady(fd, events: Int16(POLLOUT)) {
                            defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
                            try await IOReactor.shared.waitWritable(fd, deadline: deadline)
                        }
                    } catch {
                        Glibc.close(fd)
                        throw Transport.mapWaitError(error, timeout: .connectTimedOut)
                    }
                    let code = result(fd)
                    if code == 0 { return Connected(fd: fd, address: address) }
                    Glibc.close(fd)
                    failures.record(code)
                }
                break
            }
        }
        throw failures.error
    }

    /// Connects, blocking the calling thread in `poll()`. Never call it from a Swift concurrency task.
    ///
    /// - Throws: the ``TransportError`` cases of ``connect(to:options:deadline:)``.
    package static func connectBlocking(
        to endpoint: SocketEndpoint, options: SocketOptions, deadline: ContinuousClock.Instant
    ) throws(TransportError) -> Connected {
        let addresses = try Resolver.resolveBlocking(endpoint, deadline: deadline)
        var failures = Failures()
        for address in addresses {
            while true {
                if ContinuousClock.now >= deadline { throw .connectTimedOut }
                switch try start(address, options: options) {
                case .connected(let fd):
                    return Connected(fd: fd, address: address)
                case .failed(let code):
                    failures.record(code)
                case .retryLater:
                    usleep(1000)
                    continue
                case .inProgress(let fd):
                    do {
                        try SocketPoll.wait(fd, events: Int16(POLLOUT), deadline: deadline)
                    } catch {
                        Glibc.close(fd)
                        throw error == .timedOut ? .connectTimedOut : error
                    }
                    let code = result(fd)
                    if code == 0 { return Connected(fd: fd, address: address) }
                    Glibc.close(fd)
                    failures.record(code)
                }
                break
            }
        }
        throw failures.error
    }

    private enum Start {
        case connected(Int32)
        case inProgress(Int32)
        case failed(errno: Int32)
        /// A unix socket whose backlog is full (EAGAIN): try again shortly.
        case retryLater
    }

    /// Creates a non-blocking socket for `address`, applies the options and starts connecting.
    private static func start(_ address: SocketAddress, options: SocketOptions) throws(TransportError) -> Start {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(address.family, type, 0)
        guard fd >= 0 else {
            let code = errno
            if code == EAFNOSUPPORT { return .failed(errno: code) }  // no IPv6 (or IPv4) here: next address
            throw .connectFailed(operation: "socket", errno: code)
        }
        if address.family != AF_UNIX { configure(fd, options) }
        var storage = address.storage
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, address.length) }
        }
        if status == 0 { return .connected(fd) }
        let code = errno
        if code == EINPROGRESS || code == EINTR { return .inProgress(fd) }  // after EINTR it goes on
        Glibc.close(fd)
        if code == EAGAIN {
            return address.family == AF_UNIX ? .retryLater : .failed(errno: code)
        }
        return .failed(errno: code)
    }

    /// TCP_NODELAY and keepalive as configured (failures are ignored: the socket works without them).
    private static func configure(_ fd: Int32, _ options: SocketOptions) {
        let size = socklen_t(MemoryLayout<Int32>.size)
        var one: Int32 = 1
        if options.noDelay { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, size) }
        guard options.keepAlive else { return }
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, size)
        guard let idle = options.keepAliveIdle else { return }
        var idleSeconds = max(1, Int32(clamping: idle.components.seconds))
        var interval = max(1, idleSeconds / 3)
        var count: Int32 = 3
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idleSeconds, size)
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, size)
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, size)
    }

    /// The outcome of a connect that reported writable: 0 or an errno (`SO_ERROR`).
    private static func result(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) != 0 { return errno }
        return value
    }

    /// Why each address failed, to report the most useful error.
    private struct Failures {
        var refused = false
        var lastErrno: Int32 = 0

        mutating func record(_ code: Int32) {
            if code == ECONNREFUSED || code == ENOENT { refused = true }
            lastErrno = code
        }

        /// A refusal is the most telling answer (the host is there, nothing listens); otherwise the last
        /// address's error.
        var error: TransportError {
            if refused { return .connectionRefused }
            if lastErrno == ETIMEDOUT { return .connectTimedOut }
            return .connectFailed(operation: "connect", errno: lastErrno)
        }
    }
}
