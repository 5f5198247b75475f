public import ConnPool
public import ConnPoolIO

/// Why a ``RedisConnectionConfiguration`` (or a Redis URL) was rejected.
///
/// The text never contains the password, nor the URL it was parsed from (which may hold one).
public enum RedisConfigurationError: Error, Sendable, Equatable, CustomStringConvertible, ConnectErrorClassifying {
    /// Always `true`: an invalid configuration fails every attempt the same way, so a pool fails
    /// acquires at once instead of retrying (see `ConnectErrorClassifying`).
    public var isPermanent: Bool { true }

    /// The URL does not have the expected shape; `reason` says what is wrong.
    case malformedURL(reason: String)
    /// The scheme is neither `redis` nor `unix`. `rediss` (TLS) is not supported by hiredis 0.14.1.
    case unknownScheme(String)
    /// The host is empty.
    case emptyHost
    /// The port is not a decimal number.
    case invalidPort(String)
    /// The port is outside 1...65535.
    case portOutOfRange(Int)
    /// The database index is not a decimal number.
    case invalidDatabase(String)
    /// The database index is negative.
    case databaseOutOfRange(Int)
    /// The unix socket path is empty or not absolute.
    case invalidSocketPath(reason: String)
    /// The URL has a query parameter other than `db`.
    case unsupportedQueryParameter(String)
    /// A timeout is zero or negative.
    case invalidTimeout(name: String, value: Duration)
    /// The client name contains a space or a newline (CLIENT SETNAME refuses those) or is empty.
    case invalidClientName
    /// A password was given without a user name where one is required, or the reverse.
    case invalidCredentials(reason: String)
    /// The TLS settings are inconsistent (`reason` says which and how to fix it), or a `rediss://` query
    /// parameter has a value that is not allowed.
    case invalidTLS(reason: String)

    /// A readable explanation naming the problem; never quotes the password or the URL.
    public var description: String {
        switch self {
        case .malformedURL(let reason):
            return "malformed Redis URL: \(reason) (expected redis://[user:password@]host[:port][/db], "
                + "rediss://… for TLS, or unix:///path/to/socket[?db=N])"
        case .unknownScheme(let scheme):
            return "unknown Redis URL scheme '\(scheme)': use redis://, rediss:// (TLS) or unix://"
        case .emptyHost:
            return "Redis host is empty"
        case .invalidPort(let text):
            return "Redis port '\(text)' is not a number"
        case .portOutOfRange(let port):
            return "Redis port \(port) is out of range 1...65535"
        case .invalidDatabase(let text):
            return "Redis database index '\(text)' is not a non-negative number"
        case .databaseOutOfRange(let index):
            return "Redis database index \(index) is negative"
        case .invalidSocketPath(let reason):
            return "Redis unix socket path is invalid: \(reason)"
        case .unsupportedQueryParameter(let name):
            return "unsupported Redis URL query parameter '\(name)' (redis:// and unix:// take 'db'; rediss:// also "
                + "takes 'ca', 'server_name', 'verify', 'cert' and 'key')"
        case .invalidTimeout(let name, let value):
            return "Redis \(name) must be positive, got \(value)"
        case .invalidClientName:
            return "Redis client name must be non-empty without spaces or newlines"
        case .invalidCredentials(let reason):
            return "invalid Redis credentials: \(reason)"
        case .invalidTLS(let reason):
            return "invalid Redis TLS settings: \(reason)"
        }
    }
}

/// Where and how to connect to Redis: endpoint, timeouts, credentials, database and client name.
///
/// Build one with ``init(host:port:)`` or ``init(unixSocketPath:)`` and set the other properties, or
/// parse a URL with ``init(url:)``. ``RedisConnection/connect(configuration:logger:)`` validates it again
/// (``validate()``), so properties changed after init are checked too.
///
/// The password never appears in ``description``, ``debugDescription`` or reflection (`dump`, `Mirror`):
/// those show `<redacted>`.
///
/// Database index: only negative values are rejected here. How many databases a server has is its own
/// setting (`databases`, 16 by default), so a larger index is sent and the server's refusal is reported
/// as ``RedisError/handshakeFailed(command:message:)`` ("ERR DB index is out of range").
public struct RedisConnectionConfiguration: Sendable, Hashable {
    /// Where the server listens.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host (name, IPv4 or IPv6 literal) and port.
        case tcp(host: String, port: Int)
        /// A unix domain socket path.
        case unixSocket(path: String)

        /// `host:port` (`[v6]:port`) or `unix:<path>`.
        public var description: String {
            switch self {
            case .tcp(let host, let port):
                return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path):
                return "unix:\(path)"
            }
        }
    }

    /// Where the server listens.
    public var endpoint: Endpoint
    /// Bounds the whole connect: the TCP (or unix socket) connect plus the AUTH/SELECT/CLIENT SETNAME
    /// handshake. Default 5 s.
    public var connectTimeout: Duration = .seconds(5)
    /// Bounds each command or pipeline (send plus all replies). `nil` waits indefinitely (hiredis'
    /// default); set one in production so that a hung server breaks the connection instead of the
    /// borrower. A command that times out leaves the connection broken. Default `nil`.
    public var commandTimeout: Duration? = nil
    /// The TCP keepalive idle time (probes every third of it, 3 probes), as hiredis does with 15 s.
    /// `nil` disables keepalive. Ignored for unix sockets. Default 15 s.
    public var tcpKeepAlive: Duration? = .seconds(15)
    /// The ACL user name for `AUTH username password` (Redis 6+); `nil` authenticates as `default` with
    /// `AUTH password` when a password is set.
    public var username: String?
    /// The password sent with AUTH, or `nil` for none. Never printed or reflected.
    public var password: String? {
        get { secret?.value }
        set { secret = newValue.map(RedisSecret.init) }
    }
    /// The database index sent with SELECT when not 0. Default 0.
    public var database: Int = 0
    /// The name set with CLIENT SETNAME (visible in CLIENT LIST), or `nil` for none.
    public var clientName: String?
    /// Send a PING while connecting when no AUTH, SELECT or CLIENT SETNAME is, so that a connection is
    /// returned only once the server has answered: a TCP connect alone also completes against a frozen
    /// server (the kernel accepts it), and a server that wants a password then fails the connect with
    /// ``RedisError/authenticationFailed(_:)`` (NOAUTH) instead of the first command with
    /// ``RedisError/server(_:)``. Costs one round trip per new connection. Default `false` (hiredis'
    /// behaviour; a pool's validation and health checks cover liveness).
    public var pingOnConnect: Bool = false
    /// Whether a request that is the only socket operation under way in the process polls for its reply
    /// for up to 100 µs (``ReplySpin/budget``) before it sleeps in `poll()` or suspends on the reactor (``ReplySpin``).
    /// ``ReplySpinPolicy/adaptive`` spins only while this connection's recent replies came within that
    /// time (a server 300 µs away soon costs no spin); ``ReplySpinPolicy/disabled`` never spins, for a
    /// process whose spare CPU matters more than the latency of a lone request. Default
    /// ``ReplySpinPolicy/adaptive``.
    public var replySpin: ReplySpinPolicy = .adaptive
    /// TLS for the connection (`rediss://` URLs set it); `nil` speaks plain text. See
    /// ``TLSConfiguration`` for the trusted roots, the verification, the server name and the client
    /// certificate. Default `nil`.
    ///
    /// A TLS connect always ends with a round trip (a PING when no AUTH, SELECT or CLIENT SETNAME is
    /// sent): with TLS 1.3 a server refuses a missing client certificate only after the client's side of
    /// the handshake, and the connect, not the first command, should fail then.
    public var tls: TLSConfiguration?

    private var secret: RedisSecret?

    /// The endpoint in the socket layer's terms.
    var socketEndpoint: SocketEndpoint {
        switch endpoint {
        case .tcp(let host, let port): .tcp(host: host, port: port)
        case .unixSocket(let path): .unixSocket(path: path)
        }
    }

    /// TCP_NODELAY, and keepalive as ``tcpKeepAlive`` says.
    var socketOptions: SocketOptions {
        SocketOptions(noDelay: true, keepAlive: tcpKeepAlive != nil, keepAliveIdle: tcpKeepAlive)
    }

    /// A TCP endpoint. Defaults: `127.0.0.1:6379`.
    ///
    /// - Throws: ``RedisConfigurationError/emptyHost`` or ``RedisConfigurationError/portOutOfRange(_:)``.
    public init(host: String = "127.0.0.1", port: Int = 6379) throws(RedisConfigurationError) {
        self.endpoint = .tcp(host: host, port: port)
        try validate()
    }

    /// A unix socket endpoint.
    ///
    /// - Throws: ``RedisConfigurationError/invalidSocketPath(reason:)`` for an empty, relative or too long
    ///   path.
    public init(unixSocketPath: String) throws(RedisConfigurationError) {
        self.endpoint = .unixSocket(path: unixSocketPath)
        try validate()
    }

    /// Parses `redis://[[user]:password@]host[:port][/db][?db=N]`,
    /// `rediss://[[user]:password@]host[:port][/db][?db=N&ca=…&server_name=…&verify=…&cert=…&key=…]` (TLS)
    /// or `unix://[[user]:password@]/path/to/socket[?db=N]`.
    ///
    /// User and password are percent-decoded (write `%40` for `@`, `%3A` for `:`, `%25` for `%`); the
    /// port defaults to 6379 and the database to 0; an IPv6 host goes in brackets (`redis://[::1]:6379`).
    ///
    /// `rediss://` sets ``tls`` to the defaults (system roots, full verification) changed by its query
    /// parameters, each percent-decoded: `ca` (a CA certificate file), `server_name` (the name checked
    /// and sent as SNI), `verify` (`full`, `no-hostname` or `none`; `none` is logged as a warning at
    /// connect), `cert` and `key` (a client certificate and its key file, for mutual TLS; both or neither).
    /// A key passphrase cannot be given in a URL: set ``TLSConfiguration/ClientCertificate/passphrase``.
    ///
    /// - Throws: ``RedisConfigurationError`` naming the problem: ``RedisConfigurationError/malformedURL(reason:)``,
    ///   ``RedisConfigurationError/unknownScheme(_:)``, ``RedisConfigurationError/emptyHost``,
    ///   ``RedisConfigurationError/invalidPort(_:)``, ``RedisConfigurationError/portOutOfRange(_:)``,
    ///   ``RedisConfigurationError/invalidDatabase(_:)``, ``RedisConfigurationError/invalidSocketPath(reason:)``,
    ///   ``RedisConfigurationError/unsupportedQueryParameter(_:)`` or
    ///   ``RedisConfigurationError/invalidCredentials(reason:)``. The error never quotes the URL.
    public init(url: String) throws(RedisConfigurationError) {
        self = try RedisURLParser.parse(url)
    }

    /// Memberwise init used by the URL parser (validated by it).
    init(endpoint: Endpoint, username: String?, password: String?, database: Int) {
        self.endpoint = endpoint
        self.username = username
        self.secret = password.map(RedisSecret.init)
        self.database = database
    }

    /// Checks every property.
    ///
    /// - Throws: the first problem found, as a ``RedisConfigurationError``.
    public func validate() throws(RedisConfigurationError) {
        switch endpoint {
        case .tcp(let host, let port):
            if host.isEmpty { throw .emptyHost }
            if !(1...65535).contains(port) { throw .portOutOfRange(port) }
        case .unixSocket(let path):
            if path.isEmpty { throw .invalidSocketPath(reason: "the path is empty") }
            if !path.hasPrefix("/") { throw .invalidSocketPath(reason: "the path is not absolute") }
            if path.utf8.count > 107 {
                throw .invalidSocketPath(reason: "the path is \(path.utf8.count) bytes long, the limit is 107")
            }
        }
        if database < 0 { throw .databaseOutOfRange(database) }
        if connectTimeout <= .zero { throw .invalidTimeout(name: "connectTimeout", value: connectTimeout) }
        if let commandTimeout, commandTimeout <= .zero {
            throw .invalidTimeout(name: "commandTimeout", value: commandTimeout)
        }
        if let tcpKeepAlive, tcpKeepAlive < .seconds(1) {
            throw .invalidTimeout(name: "tcpKeepAlive (at least 1 s)", value: tcpKeepAlive)
        }
        if let clientName, clientName.isEmpty || clientName.contains(where: { $0 == " " || $0.isNewline }) {
            throw .invalidClientName
        }
        if username != nil && secret == nil {
            throw .invalidCredentials(reason: "a user name needs a password")
        }
        if let tls {
            do {
                try tls.validate()
            } catch {
                throw .invalidTLS(reason: error.description)
            }
        }
    }
}

extension RedisConnectionConfiguration: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// A summary with the password shown as `<redacted>`.
    public var description: String {
        var parts = ["endpoint: \(endpoint)"]
        if let username { parts.append("username: \(username)") }
        if secret != nil { parts.append("password: <redacted>") }
        parts.append("database: \(database)")
        if let clientName { parts.append("clientName: \(clientName)") }
        if pingOnConnect { parts.append("pingOnConnect: true") }
        if replySpin != .adaptive { parts.append("replySpin: \(replySpin)") }
        if let tls { parts.append("tls: \(tls)") }
        parts.append("connectTimeout: \(connectTimeout)")
        parts.append("commandTimeout: \(commandTimeout.map { "\($0)" } ?? "none")")
        parts.append("tcpKeepAlive: \(tcpKeepAlive.map { "\($0)" } ?? "off")")
        return "RedisConnectionConfiguration(\(parts.joined(separator: ", ")))"
    }

    /// The same as ``description``: the password is redacted.
    public var debugDescription: String { description }

    /// Reflection (`dump`, `Mirror`) with the password replaced by `<redacted>`.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "endpoint": endpoint,
                "username": username as Any,
                "password": (secret == nil ? nil : "<redacted>") as String? as Any,
                "database": database,
                "clientName": clientName as Any,
                "pingOnConnect": pingOnConnect,
                "replySpin": replySpin,
                "tls": tls.map(\.description) as Any,
                "connectTimeout": connectTimeout,
                "commandTimeout": commandTimeout as Any,
                "tcpKeepAlive": tcpKeepAlive as Any,
            ],
            displayStyle: .struct)
    }
}

/// Holds a password; prints and reflects as `<redacted>` wherever it ends up.
struct RedisSecret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    let value: String
    var description: String { "<redacted>" }
    var debugDescription: String { "<redacted>" }
    var customMirror: Mirror { Mirror(self, children: [:]) }
}

/// Parses Redis URLs without Foundation, reporting precise errors that never quote the input.
enum RedisURLParser {
    static func parse(_ url: String) throws(RedisConfigurationError) -> RedisConnectionConfiguration {
        var knownPassword: String?
        do {
            return try parse(url, password: &knownPassword)
        } catch {
            // Belt and braces: fragments are echoed only when they look harmless, and never when they hold
            // the password parsed so far.
            if let knownPassword, !knownPassword.isEmpty { throw error.redacting(knownPassword) }
            throw error
        }
    }

    private static func parse(
        _ url: String, password knownPassword: inout String?
    ) throws(RedisConfigurationError) -> RedisConnectionConfiguration {
        guard let schemeEnd = url.firstRange(of: "://") else {
            throw .malformedURL(reason: "missing '://' after the scheme")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard !scheme.isEmpty else { throw .malformedURL(reason: "missing scheme") }
        var rest = Substring(url[schemeEnd.upperBound...])
        if rest.contains("#") { throw .malformedURL(reason: "fragments ('#') are not allowed") }

        // Query: only db=N.
        // The query is split off first but checked after the user info, so that its errors can be
        // scrubbed of the password.
        var queryParameters: [(name: String, value: String)] = []
        if let questionMark = rest.lastIndex(of: "?"), !rest[questionMark...].contains("@") {
            let query = rest[rest.index(after: questionMark)...]
            rest = rest[..<questionMark]
            for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(parts[0])
                queryParameters.append((name, parts.count > 1 ? String(parts[1]) : ""))
            }
        }

        switch scheme {
        case "redis", "rediss":
            // The user info ends at the last '@' (a password may hold raw '/', ':' or '?').
            var username: String?
            var password: String?
            if let at = rest.lastIndex(of: "@") {
                (username, password) = try parseUserInfo(rest[..<at])
                knownPassword = password
                rest = rest[rest.index(after: at)...]
            }
            let (queryDatabase, tls) = try parseQuery(queryParameters, tls: scheme == "rediss")
            let authority: Substring
            var path: Substring = ""
            if let slash = rest.firstIndex(of: "/") {
                authority = rest[..<slash]
                path = rest[rest.index(after: slash)...]
            } else {
                authority = rest
            }
            let (host, port) = try parseHostPort(authority)
            var database = 0
            if !path.isEmpty { database = try parseDatabase(String(path)) }
            if let queryDatabase { database = queryDatabase }
            var configuration = RedisConnectionConfiguration(
                endpoint: .tcp(host: host, port: port), username: username, password: password,
                database: database)
            configuration.tls = tls
            try configuration.validate()
            return configuration
        case "unix":
            var username: String?
            var password: String?
            if !rest.hasPrefix("/") {
                guard let at = rest.lastIndex(of: "@"), rest[rest.index(after: at)...].hasPrefix("/") else {
                    throw .invalidSocketPath(reason: "expected unix:///absolute/path")
                }
                (username, password) = try parseUserInfo(rest[..<at])
                knownPassword = password
                rest = rest[rest.index(after: at)...]
            }
            let (queryDatabase, _) = try parseQuery(queryParameters, tls: false)
            guard let path = percentDecode(rest) else {
                throw .malformedURL(reason: "invalid percent-encoding in the socket path")
            }
            if path == "/" || path.isEmpty { throw .invalidSocketPath(reason: "the path is empty") }
            let configuration = RedisConnectionConfiguration(
                endpoint: .unixSocket(path: path), username: username, password: password,
                database: queryDatabase ?? 0)
            try configuration.validate()
            return configuration
        default:
            throw .unknownScheme(knownSchemes.contains(scheme) ? scheme : "<not shown: \(scheme.count) characters>")
        }
    }

    /// The database (`db`) and, for `rediss://`, the TLS settings of the query.
    private static func parseQuery(
        _ parameters: [(name: String, value: String)], tls: Bool
    ) throws(RedisConfigurationError) -> (database: Int?, tls: TLSConfiguration?) {
        var database: Int?
        var configuration: TLSConfiguration? = tls ? TLSConfiguration() : nil
        var certificatePath: String?
        var keyPath: String?
        for (name, rawValue) in parameters {
            if name == "db" {
                database = try parseDatabase(rawValue)
                continue
            }
            guard tls, ["ca", "server_name", "verify", "cert", "key"].contains(name) else {
                throw .unsupportedQueryParameter(safeEcho(name))
            }
            guard let value = percentDecode(Substring(rawValue)), !value.isEmpty else {
                throw .invalidTLS(reason: "the URL parameter '\(name)' needs a value")
            }
            switch name {
            case "ca": configuration?.trustRoots = .certificateFile(value)
            case "server_name": configuration?.serverName = value
            case "cert": certificatePath = value
            case "key": keyPath = value
            default:
                switch value {
                case "full": configuration?.certificateVerification = .fullVerification
                case "no-hostname": configuration?.certificateVerification = .noHostnameVerification
                case "none": configuration?.certificateVerification = .none
                default:
                    throw .invalidTLS(reason: "verify=\(safeEcho(value)) is not one of full, no-hostname, none")
                }
            }
        }
        switch (certificatePath, keyPath) {
        case (let certificate?, let key?):
            configuration?.clientCertificate = .files(certificatePath: certificate, privateKeyPath: key)
        case (nil, nil):
            break
        default:
            throw .invalidTLS(reason: "a client certificate needs both 'cert' and 'key' in the URL")
        }
        return (database, configuration)
    }

    private static func parseUserInfo(
        _ userInfo: Substring
    ) throws(RedisConfigurationError) -> (String?, String?) {
        guard let colon = userInfo.firstIndex(of: ":") else {
            if userInfo.isEmpty { return (nil, nil) }
            throw .invalidCredentials(
                reason: "a user name needs a password: use redis://user:password@host or redis://:password@host")
        }
        guard let user = percentDecode(userInfo[..<colon]) else {
            throw .malformedURL(reason: "invalid percent-encoding in the user name")
        }
        guard let password = percentDecode(userInfo[userInfo.index(after: colon)...]) else {
            throw .malformedURL(reason: "invalid percent-encoding in the password")
        }
        if user.isEmpty && password.isEmpty { return (nil, nil) }
        return (user.isEmpty ? nil : user, password)
    }

    private static func parseHostPort(_ authority: Substring) throws(RedisConfigurationError) -> (String, Int) {
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw .malformedURL(reason: "missing ']' after an IPv6 address")
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else {
                    throw .malformedURL(reason: "unexpected text after the IPv6 address")
                }
                portText = after.dropFirst()
            }
        } else {
            let colons = authority.filter { $0 == ":" }.count
            if colons > 1 {
                throw .malformedURL(reason: "an IPv6 address must be written in brackets, as [::1]")
            }
            if let colon = authority.firstIndex(of: ":") {
                host = authority[..<colon]
                portText = authority[authority.index(after: colon)...]
            } else {
                host = authority
            }
        }
        if host.isEmpty { throw .emptyHost }
        guard let decodedHost = percentDecode(host) else {
            throw .malformedURL(reason: "invalid percent-encoding in the host")
        }
        var port = 6379
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit) else {
                throw .invalidPort(numericEcho(String(portText)))
            }
            guard let value = Int(portText), value <= 65535 else {
                throw .portOutOfRange(Int(portText.prefix(9)) ?? Int.max)
            }
            port = value
        }
        return (decodedHost, port)
    }

    private static func parseDatabase(_ text: String) throws(RedisConfigurationError) -> Int {
        guard !text.isEmpty, text.allSatisfy(\.isASCIIDigit), let value = Int(text) else {
            throw .invalidDatabase(numericEcho(text))
        }
        return value
    }

    /// Percent-decodes; `nil` for a bad escape. Invalid UTF-8 is repaired (U+FFFD).
    static func percentDecode(_ text: Substring) -> String? {
        guard text.contains("%") else { return String(text) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue)
                else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Schemes quoted in ``RedisConfigurationError/unknownScheme(_:)``; any other is described by length
    /// only (the text before `://` could be a misplaced secret).
    private static let knownSchemes: Set<String> = [
        "rediss", "http", "https", "tcp", "tls", "valkey", "valkeys", "redis+sentinel", "redis-sentinel",
        "sentinel", "redis+socket", "redis-socket", "unix+tls", "memcached",
    ]

    /// Echoes a port or database fragment only when it is made of digits (and signs); anything else may be
    /// a misplaced password (`redis://user:secret` parses `secret` as a port).
    private static func numericEcho(_ text: String) -> String {
        if text.count <= 24, text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "-" || $0 == "+") }) {
            return text
        }
        return "<not shown: \(text.count) characters>"
    }

    /// Echoes a query parameter name when it is short and plain.
    private static func safeEcho(_ text: String) -> String {
        if text.count <= 24, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) {
            return text
        }
        return "<not shown: \(text.count) characters>"
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension RedisConfigurationError {
    /// The same error with every occurrence of `secret` in its text replaced by `<redacted>`.
    func redacting(_ secret: String) -> RedisConfigurationError {
        func scrub(_ text: String) -> String { text.replacing(secret, with: "<redacted>") }
        switch self {
        case .malformedURL(let reason): return .malformedURL(reason: scrub(reason))
        case .unknownScheme(let scheme): return .unknownScheme(scrub(scheme))
        case .invalidPort(let text): return .invalidPort(scrub(text))
        case .invalidDatabase(let text): return .invalidDatabase(scrub(text))
        case .invalidSocketPath(let reason): return .invalidSocketPath(reason: scrub(reason))
        case .unsupportedQueryParameter(let name): return .unsupportedQueryParameter(scrub(name))
        case .invalidCredentials(let reason): return .invalidCredentials(reason: scrub(reason))
        case .invalidTLS(let reason): return .invalidTLS(reason: scrub(reason))
        case .emptyHost, .portOutOfRange, .databaseOutOfRange, .invalidTimeout, .invalidClientName: return self
        }
    }
}
