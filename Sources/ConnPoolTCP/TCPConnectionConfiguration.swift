public import ConnPoolIO

/// A request/response exchange that proves a connection works, run by
/// ``TCPConnection/isValid(timeout:)`` after the cheap peer-close check.
///
/// The probe sends ``request`` and expects exactly ``expectedResponse`` back; any other bytes, a
/// timeout or an error make the connection invalid (and broken).
public struct TCPValidationProbe: Sendable, Hashable {
    /// The bytes to send, for example `PING\r\n`. Must not be empty.
    public var request: [UInt8]
    /// The exact bytes the server answers, for example `+PONG\r\n`. Must not be empty.
    public var expectedResponse: [UInt8]

    /// Creates a probe from bytes.
    public init(request: [UInt8], expectedResponse: [UInt8]) {
        self.request = request
        self.expectedResponse = expectedResponse
    }

    /// Creates a probe from UTF-8 text, for example `TCPValidationProbe(request: "PING\r\n",
    /// expectedResponse: "+PONG\r\n")`.
    public init(request: String, expectedResponse: String) {
        self.init(request: Array(request.utf8), expectedResponse: Array(expectedResponse.utf8))
    }
}

/// Where and how a ``TCPConnection`` connects, and its I/O time limits.
///
/// Validated by ``validate()`` (also called by ``TCPConnectionFactory/init(configuration:)`` and by
/// ``TCPConnection/connect(_:)``): the host must not be empty, the port must be in 1...65535, and the
/// timeouts must be positive.
public struct TCPConnectionConfiguration: Sendable, Hashable {
    /// A host name (resolved with `getaddrinfo`, IPv4 and IPv6), or a numeric IPv4 or IPv6 address
    /// (`127.0.0.1`, `::1`, also `[::1]`).
    public var host: String
    /// The TCP port, 1...65535.
    public var port: Int
    /// The limit for a whole connect: name resolution and every address tried. Default 5 s.
    public var connectTimeout: Duration
    /// The limit for one read call (``TCPConnection/read(exactly:)`` and friends), however many
    /// packets it takes. Default 30 s.
    public var readTimeout: Duration
    /// The limit for one send call, however many partial writes it takes. Default 30 s.
    public var writeTimeout: Duration
    /// Sets `TCP_NODELAY` (no Nagle delay for small writes). Default `true`.
    public var noDelay: Bool
    /// Sets `SO_KEEPALIVE` (the kernel probes idle connections). Default `true`.
    public var keepAlive: Bool
    /// An optional round trip run by ``TCPConnection/isValid(timeout:)``. Default `nil` (only the
    /// peer-close check).
    public var validationProbe: TCPValidationProbe?
    /// Whether a read that is the only socket operation under way in the process polls for its data for
    /// up to 100 µs (``ReplySpin/budget``) before it sleeps in `poll` or suspends on the reactor (``ReplySpin``).
    /// ``ReplySpinPolicy/adaptive`` spins only while this connection's recent replies came within that
    /// time (a server 300 µs away, or one that speaks only when it has something to say, soon costs no
    /// spin); ``ReplySpinPolicy/disabled`` never spins, for a process whose spare CPU matters more than
    /// the latency of a lone request. Default ``ReplySpinPolicy/adaptive``.
    public var replySpin: ReplySpinPolicy
    /// Whether every send expects a reply. When `true` (the default), a connection whose last call was
    /// a successful send, with no read after it, stands mid-exchange: ``TCPConnection/isBroken`` is
    /// `true`, so a pool discards it on release instead of lending it out with a reply still on its
    /// way to the next borrower. Set it to `false` for a protocol whose messages get no reply
    /// (fire-and-forget), where that rule would discard every connection; unread buffered bytes still
    /// count as mid-exchange.
    public var expectsReplyAfterSend: Bool
    /// TLS for the connection (OpenSSL: server verification, SNI, mutual TLS, session resumption across
    /// a factory's connections); `nil` speaks plain TCP. Default `nil`.
    public var tls: TLSConfiguration?

    /// Creates a configuration; see the properties for the meaning and defaults of each setting.
    /// Nothing is checked here: see ``validate()``.
    public init(
        host: String,
        port: Int,
        connectTimeout: Duration = .seconds(5),
        readTimeout: Duration = .seconds(30),
        writeTimeout: Duration = .seconds(30),
        noDelay: Bool = true,
        keepAlive: Bool = true,
        validationProbe: TCPValidationProbe? = nil,
        replySpin: ReplySpinPolicy = .adaptive,
        expectsReplyAfterSend: Bool = true,
        tls: TLSConfiguration? = nil
    ) {
        self.host = host
        self.port = port
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
        self.noDelay = noDelay
        self.keepAlive = keepAlive
        self.validationProbe = validationProbe
        self.replySpin = replySpin
        self.expectsReplyAfterSend = expectsReplyAfterSend
        self.tls = tls
    }

    /// Checks the settings.
    ///
    /// - Throws: ``TCPConnectionError/invalidConfiguration(field:reason:)`` for an empty host (or one
    ///   containing a NUL byte), a port outside 1...65535, a timeout that is zero or negative, or a
    ///   probe with an empty request or response; ``TCPConnectionError/tls(_:)`` for inconsistent TLS
    ///   settings.
    public func validate() throws(TCPConnectionError) {
        if host.isEmpty || host == "[]" {
            throw .invalidConfiguration(field: "host", reason: "is empty")
        }
        if host.utf8.contains(0) {
            throw .invalidConfiguration(field: "host", reason: "contains a NUL byte")
        }
        if !(1...65535).contains(port) {
            throw .invalidConfiguration(field: "port", reason: "is \(port), must be in 1...65535")
        }
        for (field, value) in [("connectTimeout", connectTimeout), ("readTimeout", readTimeout), ("writeTimeout", writeTimeout)] {
            if value <= .zero {
                throw .invalidConfiguration(field: field, reason: "is \(value), must be positive")
            }
        }
        if let probe = validationProbe {
            if probe.request.isEmpty {
                throw .invalidConfiguration(field: "validationProbe.request", reason: "is empty")
            }
            if probe.expectedResponse.isEmpty {
                throw .invalidConfiguration(field: "validationProbe.expectedResponse", reason: "is empty")
            }
        }
        if let tls {
            do {
                try tls.validate()
            } catch {
                throw .tls(error)
            }
        }
    }

    /// The endpoint in the socket layer's terms.
    var socketEndpoint: SocketEndpoint { .tcp(host: hostForResolution, port: port) }

    /// `TCP_NODELAY` and `SO_KEEPALIVE` as configured.
    var socketOptions: SocketOptions { SocketOptions(noDelay: noDelay, keepAlive: keepAlive) }

    /// The host without the brackets of an IPv6 literal such as `[::1]`.
    var hostForResolution: String {
        if host.hasPrefix("["), host.hasSuffix("]"), host.count >= 2 {
            return String(host.dropFirst().dropLast())
        }
        return host
    }
}
