/// What ``ConnectionPool/status()`` reports: a health verdict, the metrics and the configuration.
///
/// `Codable`, for a status endpoint. It holds no secret: the pool's configuration has none, and the
/// factory and the last connect error appear through their `description`, which the backends redact.
public struct PoolStatus: Sendable, Hashable, Codable {
    /// The pool's health.
    public enum Health: String, Sendable, Hashable, Codable {
        /// No connection attempt has failed since the last success, and no caller waits on a full
        /// pool.
        case healthy
        /// Connection attempts have failed since the last success, or callers wait while the pool
        /// holds `maxSize` connections: the pool still serves from the connections it has.
        case degraded
        /// The circuit breaker is open: the backend looks down and acquires fail fast.
        case failing
        /// ``ConnectionPool/shutdown(gracePeriod:)`` was called.
        case shuttingDown = "shutting_down"
    }

    /// The pool's ``PoolConfiguration/name``.
    public var name: String
    /// The health verdict, from the circuit breaker, the last connection attempts and the waiters.
    public var health: Health
    /// The pool's ``ConnectionPool/metrics()``, taken with the verdict.
    public var metrics: PoolMetrics
    /// The configuration the pool was created with, its `maxSize` updated by
    /// ``ConnectionPool/resize(maxSize:)``.
    public var configuration: PoolConfiguration
    /// The factory's description (backends redact passwords).
    public var factory: String
    /// The most recent connection failure since the last success, if any.
    public var lastConnectError: String?
    /// Consecutive failed connection attempts.
    public var consecutiveConnectFailures: Int
}
