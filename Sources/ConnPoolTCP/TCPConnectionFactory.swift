public import ConnPool

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

    /// Creates a factory, checking the configuration at once so that a mistake shows up here and not
    /// as a pool that never connects.
    ///
    /// - Throws: ``TCPConnectionError/invalidConfiguration(field:reason:)`` (see
    ///   ``TCPConnectionConfiguration/validate()``).
    public init(configuration: TCPConnectionConfiguration) throws(TCPConnectionError) {
        try configuration.validate()
        self.configuration = configuration
    }

    /// Opens a connection with ``TCPConnection/connect(_:)``; never blocks a cooperative thread.
    ///
    /// - Throws: what ``TCPConnection/connect(_:)`` throws.
    public func makeConnection() async throws -> TCPConnection {
        try await TCPConnection.connect(configuration)
    }

    /// Opens a connection with ``TCPConnection/connectBlocking(_:)`` on the calling thread.
    ///
    /// - Throws: what ``TCPConnection/connectBlocking(_:)`` throws.
    public func makeConnectionBlocking() throws(TCPConnectionError) -> TCPConnection {
        try TCPConnection.connectBlocking(configuration)
    }
}
