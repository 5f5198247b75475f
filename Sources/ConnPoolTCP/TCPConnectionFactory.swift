public import ConnPool
package import ConnPoolIO
import Logging

/// Opens ``TCPConnection``s for a ``ConnectionPool``.
///
/// ```swift
/// let factory = try TCPConnectionFactory(configuration: .init(host: "127.0.0.1", port: 7000))
/// let pool = try ConnectionPool(factory: factory)
/// let reply = try await pool.withConnection { connection in
///     try await connection.send("GET key\n")
///     return try await connection.readLine()
/// }
/// ```
public struct TCPConnectionFactory: ConnectionFactory {
    /// The connections this factory opens.
    public typealias PooledConnectionType = TCPConnection

    /// The settings of every connection this factory opens.
    public let configuration: TCPConnectionConfiguration
    /// The TLS context all this factory's connections share (session resumption), made on first use.
    private let tlsContext: SharedTLSContext

    /// Creates a factory, checking the configuration at once so that a mistake shows up here and not
    /// as a pool that never connects.
    ///
    /// - Throws: ``TCPConnectionError/invalidConfiguration(field:reason:)`` (see
    ///   ``TCPConnectionConfiguration/validate()``).
    public init(configuration: TCPConnectionConfiguration) throws(TCPConnectionError) {
        try configuration.validate()
        self.configuration = configuration
        tlsContext = SharedTLSContext(configuration: configuration.tls, logger: Logger(label: "ConnPoolTCP"))
    }

    /// The shared TLS context, or `nil` without TLS.
    private func sharedTLSContext() throws(TCPConnectionError) -> TLSContext? {
        do {
            return try tlsContext.context()
        } catch {
            throw .tls(error)
        }
    }

    /// Opens a connection with ``TCPConnection/connect(_:)``; never blocks a cooperative thread.
    ///
    /// - Throws: what ``TCPConnection/connect(_:)`` throws.
    public func makeConnection() async throws -> TCPConnection {
        try await TCPConnection.connect(configuration, tlsContext: sharedTLSContext())
    }

    /// Opens a connection with ``TCPConnection/connectBlocking(_:)`` on the calling thread.
    ///
    /// - Throws: what ``TCPConnection/connectBlocking(_:)`` throws.
    public func makeConnectionBlocking() throws(TCPConnectionError) -> TCPConnection {
        try TCPConnection.connectBlocking(configuration, tlsContext: sharedTLSContext())
    }
}
