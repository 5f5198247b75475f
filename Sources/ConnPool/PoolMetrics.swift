/// A snapshot of a pool's connections and waiters, consistent at the moment it was taken.
public struct PoolMetrics: Sendable, Hashable, Codable {
    /// Connections open and not lent.
    public var idle: Int
    /// Connections lent to a lease holder.
    public var inUse: Int
    /// Connections being opened.
    public var connecting: Int
    /// Connections being closed (they still count towards `maxSize`).
    public var closing: Int
    /// Idle connections taken aside for a background health check.
    public var validating: Int
    /// Callers waiting for a connection.
    public var waiting: Int
    /// The pool's current maximum size.
    public var maxSize: Int

    /// Every connection the pool holds or is opening, checking or closing:
    /// idle + inUse + connecting + closing + validating.
    public var total: Int { idle + inUse + connecting + closing + validating }
}
