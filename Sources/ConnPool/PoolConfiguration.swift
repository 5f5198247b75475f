/// The settings of a ``ConnectionPool``.
///
/// Start from the defaults and change what you need, either by assigning properties or with the
/// fluent modifiers, which return a modified copy:
/// ```swift
/// let configuration = PoolConfiguration()
///     .maxSize(16)
///     .minSize(2)
///     .acquireTimeout(.seconds(2))
/// ```
/// ``ConnectionPool/init(factory:configuration:clock:)`` calls ``validate()`` and throws
/// ``PoolConfigurationError`` for a value that breaks a rule.
public struct PoolConfiguration: Sendable, Hashable {
    /// The order in which idle connections are reused.
    public enum ReuseOrder: String, Sendable, Hashable, Codable {
        /// Last in, first out (default): the most recently released connection is lent first. Hot
        /// connections stay warm and surplus ones idle out.
        case lifo
        /// First in, first out: spreads use over every idle connection.
        case fifo
    }

    /// The number of connections the pool keeps open even when idle. Default 0. Must be `0...maxSize`.
    public var minSize: Int = 0

    /// The most connections the pool holds at once, counting those being opened and closed. Default
    /// 10. Must be at least 1. The pool's slot array is allocated for this many connections.
    public var maxSize: Int = 10

    /// How long ``ConnectionPool/acquire(timeout:)`` waits for a connection before it throws
    /// ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)``. Default 10 s. Must be positive.
    public var acquireTimeout: Duration = .seconds(10)

    /// How long a connection above `minSize` may stay idle before the pool closes it. Default 10 min;
    /// `nil` keeps idle connections open. Must be positive when set.
    public var idleTimeout: Duration? = .seconds(600)

    /// Which idle connection is lent first. Default ``ReuseOrder/lifo``.
    public var reuseOrder: ReuseOrder = .lifo

    /// The delay before retrying after the first failed connection attempt. Default 10 ms; each
    /// further consecutive failure multiplies it by `connectRetryMultiplier`, up to
    /// `connectRetryMaxBackoff`. Must be positive.
    public var connectRetryInitialBackoff: Duration = .milliseconds(10)

    /// The growth factor of the retry delay between consecutive failed attempts. Default 2. Must be
    /// at least 1.
    public var connectRetryMultiplier: Double = 2

    /// The longest delay between retries of a failing connection attempt. Default 2 s. Must be at
    /// least `connectRetryInitialBackoff`.
    public var connectRetryMaxBackoff: Duration = .seconds(2)

    /// The random spread applied to each retry delay, as a fraction: 0.2 means ±20 %. Spreads the
    /// retries of many pools restarting together. Default 0.2. Must be in `0...1`.
    public var connectRetryJitter: Double = 0.2

    /// The most callers that may wait for a connection at once; beyond it an acquire fails at once
    /// with ``ConnectionPoolError/tooManyWaiters(limit:)``. Default `nil`: unlimited. Must be
    /// positive when set.
    public var maxWaiters: Int? = nil

    /// Creates a configuration with every default.
    public init() {}

    /// Returns a copy with ``minSize`` set.
    public func minSize(_ value: Int) -> Self { with { $0.minSize = value } }
    /// Returns a copy with ``maxSize`` set.
    public func maxSize(_ value: Int) -> Self { with { $0.maxSize = value } }
    /// Returns a copy with ``acquireTimeout`` set.
    public func acquireTimeout(_ value: Duration) -> Self { with { $0.acquireTimeout = value } }
    /// Returns a copy with ``idleTimeout`` set (`nil` disables it).
    public func idleTimeout(_ value: Duration?) -> Self { with { $0.idleTimeout = value } }
    /// Returns a copy with ``reuseOrder`` set.
    public func reuseOrder(_ value: ReuseOrder) -> Self { with { $0.reuseOrder = value } }
    /// Returns a copy with ``maxWaiters`` set (`nil` means unlimited).
    public func maxWaiters(_ value: Int?) -> Self { with { $0.maxWaiters = value } }
    /// Returns a copy with the connection retry backoff set.
    public func connectRetryBackoff(
        initial: Duration, multiplier: Double = 2, max: Duration, jitter: Double = 0.2
    ) -> Self {
        with {
            $0.connectRetryInitialBackoff = initial
            $0.connectRetryMultiplier = multiplier
            $0.connectRetryMaxBackoff = max
            $0.connectRetryJitter = jitter
        }
    }

    private func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }

    /// Checks every rule.
    ///
    /// - Throws: ``PoolConfigurationError`` naming the first field that breaks a rule, the rule, and
    ///   the value it had.
    public func validate() throws(PoolConfigurationError) {
        if maxSize < 1 {
            throw PoolConfigurationError(field: "maxSize", value: "\(maxSize)", rule: "must be at least 1")
        }
        if maxSize > Int(Int32.max) {
            throw PoolConfigurationError(field: "maxSize", value: "\(maxSize)", rule: "must be at most \(Int32.max)")
        }
        if minSize < 0 {
            throw PoolConfigurationError(field: "minSize", value: "\(minSize)", rule: "must not be negative")
        }
        if minSize > maxSize {
            throw PoolConfigurationError(
                field: "minSize", value: "\(minSize)", rule: "must not exceed maxSize (\(maxSize))")
        }
        try Self.requirePositive(acquireTimeout, field: "acquireTimeout")
        if let idleTimeout { try Self.requirePositive(idleTimeout, field: "idleTimeout") }
        try Self.requirePositive(connectRetryInitialBackoff, field: "connectRetryInitialBackoff")
        if !(connectRetryMultiplier >= 1) || !connectRetryMultiplier.isFinite {
            throw PoolConfigurationError(
                field: "connectRetryMultiplier", value: "\(connectRetryMultiplier)", rule: "must be a finite number of at least 1")
        }
        if connectRetryMaxBackoff < connectRetryInitialBackoff {
            throw PoolConfigurationError(
                field: "connectRetryMaxBackoff", value: "\(connectRetryMaxBackoff)",
                rule: "must be at least connectRetryInitialBackoff (\(connectRetryInitialBackoff))")
        }
        if !(0...1).contains(connectRetryJitter) {
            throw PoolConfigurationError(
                field: "connectRetryJitter", value: "\(connectRetryJitter)", rule: "must be between 0 and 1")
        }
        if let maxWaiters, maxWaiters < 1 {
            throw PoolConfigurationError(
                field: "maxWaiters", value: "\(maxWaiters)", rule: "must be at least 1 (or nil for unlimited)")
        }
    }

    private static func requirePositive(_ duration: Duration, field: String) throws(PoolConfigurationError) {
        if duration <= .zero {
            throw PoolConfigurationError(field: field, value: "\(duration)", rule: "must be a positive duration")
        }
    }
}

/// A ``PoolConfiguration`` value that breaks a rule.
public struct PoolConfigurationError: Error, Hashable, CustomStringConvertible {
    /// The name of the offending property, e.g. `"maxSize"`.
    public let field: String
    /// The offending value, as text.
    public let value: String
    /// The rule it broke, e.g. `"must be at least 1"`.
    public let rule: String

    public var description: String {
        "invalid PoolConfiguration.\(field) = \(value): \(rule); change PoolConfiguration.\(field) or keep its default"
    }
}
