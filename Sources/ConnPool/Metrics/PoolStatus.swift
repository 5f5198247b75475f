/// What ``ConnectionPool/status()`` reports: a health verdict, the metrics and the configuration.
///
/// `Codable`, for a status endpoint. It holds no secret: the pool's configuration has none, and the
/// factory and the last connect error appear through their `description`, which the backends redact.
public struct PoolStatus: Sendable, Hashable, Codable {
    /// The pool's health.
    public enum Health: String, Sendable, Hashable, Codable {
        /// Connecting works and nobody waits longer than usual.
        case healthy
        /// Connection attempts have failed since the last success, or callers time out: the pool
        /// still serves from the connections it has.
        case degraded
        /// The circuit breaker is open: the backend looks down and acquires fail fast.
        case failing
        /// ``ConnectionPool/shutdown(gracePeriod:)`` was called.
        case shuttingDown = "shutting_down"
    }

    /// The pool's ``PoolConfiguration/name``.
    public var name: String
    public var health: Health
    public var metrics: PoolMetrics
    public var configuration: PoolConfiguration
    /// The factory's description (backends redact passwords).
    public var factory: String
    /// The most recent connection failure since the last success, if any.
    public var lastConnectError: String?
    /// Consecutive failed connection attempts.
    public var consecutiveConnectFailures: Int
}
