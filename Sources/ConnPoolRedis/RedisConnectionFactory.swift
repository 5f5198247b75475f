public import ConnPool
public import Logging
package import ConnPoolIO

/// Makes connected, authenticated and configured ``RedisConnection``s for a ``ConnectionPool``.
///
/// ```swift
/// let factory = try RedisConnectionFactory(url: "redis://:secret@127.0.0.1:6379/2")
/// ```
///
/// Printing or reflecting a factory never shows the password.
public struct RedisConnectionFactory: ConnectionFactory, CustomStringConvertible, CustomReflectable {
    /// The connections this factory makes.
    public typealias PooledConnectionType = RedisConnection

    /// Where and how connections are opened.
    public let configuration: RedisConnectionConfiguration
    /// Receives debug messages (connection opened, broken, failed to connect); never the password.
    public let logger: Logger
    /// The TLS context all this factory's connections share (session resumption), made on first use.
    private let tlsContext: SharedTLSContext

    /// A factory for `configuration`.
    ///
    /// - Throws: the ``RedisConfigurationError`` that ``RedisConnectionConfiguration/validate()`` reports.
    public init(
        configuration: RedisConnectionConfiguration, logger: Logger = Logger(label: "ConnPoolRedis")
    ) throws(RedisConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        tlsContext = SharedTLSContext(configuration: configuration.tls, logger: logger)
    }

    /// The shared TLS context, or `nil` without TLS.
    private func sharedTLSContext() throws(RedisError) -> TLSContext? {
        do {
            return try tlsContext.context()
        } catch {
            throw .tls(error)
        }
    }

    /// A factory for a `redis://` or `unix://` URL (see ``RedisConnectionConfiguration/init(url:)``).
    ///
    /// - Throws: the ``RedisConfigurationError`` naming what is wrong with the URL (never quoting it).
    public init(url: String, logger: Logger = Logger(label: "ConnPoolRedis")) throws(RedisConfigurationError) {
        try self.init(configuration: RedisConnectionConfiguration(url: url), logger: logger)
    }

    /// Opens a connection without blocking a cooperative thread (see
    /// ``RedisConnection/connect(configuration:logger:)``).
    ///
    /// - Throws: the connect errors of ``RedisConnection/connect(configuration:logger:)``
    ///   (``RedisError/connectionRefused(endpoint:)``, ``RedisError/connectTimeout(endpoint:timeout:)``,
    ///   ``RedisError/authenticationFailed(_:)``, …) or `CancellationError`.
    public func makeConnection() async throws -> RedisConnection {
        do {
            return try await RedisConnection.connect(
                configuration: configuration, tlsContext: sharedTLSContext(), logger: logger)
        } catch {
            logger.debug(
                "redis connect failed", metadata: ["endpoint": "\(configuration.endpoint)", "error": "\(error)"])
            throw error
        }
    }

    /// Opens a connection on the calling thread, blocking it (see
    /// ``RedisConnection/connectBlocking(configuration:logger:)``).
    ///
    /// - Throws: as ``makeConnection()`` except `CancellationError`.
    public func makeConnectionBlocking() throws -> RedisConnection {
        do {
            return try RedisConnection.connectBlocking(
                configuration: configuration, tlsContext: sharedTLSContext(), logger: logger)
        } catch {
            logger.debug(
                "redis connect failed", metadata: ["endpoint": "\(configuration.endpoint)", "error": "\(error)"])
            throw error
        }
    }

    /// `RedisConnectionFactory(<configuration with the password redacted>)`.
    public var description: String { "RedisConnectionFactory(\(configuration))" }

    /// Reflection showing the configuration's redacted mirror, not the logger.
    public var customMirror: Mirror {
        Mirror(self, children: ["configuration": configuration], displayStyle: .struct)
    }
}
