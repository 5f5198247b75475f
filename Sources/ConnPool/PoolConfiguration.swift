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
/// ``ConnectionPool/init(factory:configuration:clock:logger:tracer:)`` calls ``validate()`` and throws
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
    /// 10. Must be `1...PoolConfiguration.maxSizeLimit`. The pool's slot array is allocated for this
    /// many connections.
    public var maxSize: Int = 10

    /// The largest `maxSize` that ``validate()`` accepts: 1,000,000.
    ///
    /// The pool allocates its slot storage (about 110 bytes a slot) for `maxSize` at creation, so a
    /// bound is what keeps an accepted configuration constructible: a value near `Int32.max` would
    /// ask for hundreds of gigabytes and crash instead of throwing.
    public static let maxSizeLimit = 1_000_000

    /// How long ``ConnectionPool/acquire(timeout:file:line:)`` waits for a connection before it throws
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

    /// How often the pool's maintenance runs: closing connections past `maxLifetime` or idle past
    /// `idleTimeout`, health-checking idle ones, refilling `minSize`. Default 5 s; these rules are
    /// applied with this precision. Must be positive.
    public var maintenanceInterval: Duration = .seconds(5)

    /// An idle connection unused and unchecked for this long is checked with
    /// ``Connection/isValid(timeout:)`` by the maintenance task, outside the lock, and closed if the
    /// check fails. Default 30 s; `nil` disables background checks. Must be positive when set.
    public var healthCheckInterval: Duration? = .seconds(30)

    /// The time a health check (background or on acquire) may take; a slower check counts as failed.
    /// Default 2 s. Must be positive.
    public var healthCheckTimeout: Duration = .seconds(2)

    /// The longest a connection may live. An idle one is closed when it reaches it, a leased one when
    /// it is returned. Default 30 min; `nil` means no limit. Must be positive when set.
    public var maxLifetime: Duration? = .seconds(1800)

    /// Each connection's lifetime is shortened by a random fraction up to this, so connections opened
    /// together do not all expire together. Default 0.05 (up to 5 % shorter). Must be in `0...0.5`.
    public var maxLifetimeJitter: Double = 0.05

    /// Check an idle connection with ``Connection/isValid(timeout:)`` before lending it. A connection
    /// that fails is closed and the acquire moves on to the next one or a new one, within the same
    /// acquire timeout. Default `false`.
    public var validateOnAcquire: Bool = false

    /// With `validateOnAcquire`, skip the check for a connection used within this window: it was just
    /// known to work. Default 500 ms. Must not be negative.
    public var validationBypassWindow: Duration = .milliseconds(500)

    /// Open `minSize` connections in the background as soon as the pool is created. Default `true`.
    /// ``ConnectionPool/warm()`` does it on demand and waits for it.
    public var warmUpOnInit: Bool = true

    /// The most connection attempts in flight at once (warm-up, refill and waiters together), so a
    /// restarting server is not stampeded. Default 4. Must be at least 1.
    public var maxConcurrentConnects: Int = 4

    /// After this many consecutive failed connection attempts the pool fails fast: an acquire that no
    /// open connection can serve gets ``ConnectionPoolError/connectFailing(lastConnectError:consecutiveFailures:)``
    /// at once instead of waiting for its timeout, while one probe keeps retrying with backoff; the
    /// first success closes the breaker. Default 5; `nil` never fails fast. Must be at least 1 when set.
    public var circuitBreakerThreshold: Int? = 5

    /// How long the pool waits for ``ConnectionFactory/makeConnection()`` before it gives up on the
    /// attempt, frees its slot and counts it as failed (checked at each maintenance round; a late
    /// connection is closed). Guards the pool against a factory that hangs. Default 10 s. Must be
    /// positive.
    public var connectTimeout: Duration = .seconds(10)

    /// How long the pool waits for ``Connection/close()`` before it frees the slot anyway (checked at
    /// each maintenance round). Default 10 s. Must be positive.
    public var closeTimeout: Duration = .seconds(10)

    /// How long ``ConnectionPool/run()`` (the swift-service-lifecycle entry point) lets leased
    /// connections come back after a graceful shutdown is requested before it closes them by force.
    /// Default 30 s. Must be positive.
    public var shutdownGracePeriod: Duration = .seconds(30)

    /// The pool's name: the `pool` label of its metrics and the `pool` field of its log metadata.
    /// Default `"default"`. Must not be empty.
    public var name: String = "default"

    /// Log a warning, with the file and line that acquired it, for a lease still held after this long
    /// (checked at each maintenance round), and count it in ``PoolMetrics/leaksDetected``. Default
    /// `nil`: off. Turning it on stamps every lease with the time and call site (a coarse clock read on
    /// acquire). Must be positive when set.
    public var leakDetectionThreshold: Duration? = nil

    /// Record how long each lease is held in ``PoolMetrics/leaseHold``. Default `false`: it costs a
    /// coarse clock read on acquire and a histogram record on release.
    public var recordsLeaseHoldTime: Bool = false

    /// Creates a configuration with every default.
    public init() {}

    // MARK: Fluent modifiers
    //
    // One per stored property, in declaration order, each returning a copy with that property set;
    // then the combined ones that set related properties together. A modifier does not check its
    // argument: ``validate()`` does, when the pool is created.

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
    /// Returns a copy with ``connectRetryInitialBackoff`` set.
    public func connectRetryInitialBackoff(_ value: Duration) -> Self { with { $0.connectRetryInitialBackoff = value } }
    /// Returns a copy with ``connectRetryMultiplier`` set.
    public func connectRetryMultiplier(_ value: Double) -> Self { with { $0.connectRetryMultiplier = value } }
    /// Returns a copy with ``connectRetryMaxBackoff`` set.
    public func connectRetryMaxBackoff(_ value: Duration) -> Self { with { $0.connectRetryMaxBackoff = value } }
    /// Returns a copy with ``connectRetryJitter`` set.
    public func connectRetryJitter(_ value: Double) -> Self { with { $0.connectRetryJitter = value } }
    /// Returns a copy with ``maxWaiters`` set (`nil` means unlimited).
    public func maxWaiters(_ value: Int?) -> Self { with { $0.maxWaiters = value } }
    /// Returns a copy with ``maintenanceInterval`` set.
    public func maintenanceInterval(_ value: Duration) -> Self { with { $0.maintenanceInterval = value } }
    /// Returns a copy with ``healthCheckInterval`` set (`nil` disables background checks).
    public func healthCheckInterval(_ value: Duration?) -> Self { with { $0.healthCheckInterval = value } }
    /// Returns a copy with ``healthCheckTimeout`` set.
    public func healthCheckTimeout(_ value: Duration) -> Self { with { $0.healthCheckTimeout = value } }
    /// Returns a copy with ``maxLifetime`` set (`nil` means no limit), leaving ``maxLifetimeJitter``
    /// as it is.
    public func maxLifetime(_ value: Duration?) -> Self { with { $0.maxLifetime = value } }
    /// Returns a copy with ``maxLifetimeJitter`` set.
    public func maxLifetimeJitter(_ value: Double) -> Self { with { $0.maxLifetimeJitter = value } }
    /// Returns a copy with ``validateOnAcquire`` set, leaving ``validationBypassWindow`` as it is.
    public func validateOnAcquire(_ value: Bool) -> Self { with { $0.validateOnAcquire = value } }
    /// Returns a copy with ``validationBypassWindow`` set.
    public func validationBypassWindow(_ value: Duration) -> Self { with { $0.validationBypassWindow = value } }
    /// Returns a copy with ``warmUpOnInit`` set.
    public func warmUpOnInit(_ value: Bool) -> Self { with { $0.warmUpOnInit = value } }
    /// Returns a copy with ``maxConcurrentConnects`` set.
    public func maxConcurrentConnects(_ value: Int) -> Self { with { $0.maxConcurrentConnects = value } }
    /// Returns a copy with ``circuitBreakerThreshold`` set (`nil` never fails fast).
    public func circuitBreakerThreshold(_ value: Int?) -> Self { with { $0.circuitBreakerThreshold = value } }
    /// Returns a copy with ``connectTimeout`` set.
    public func connectTimeout(_ value: Duration) -> Self { with { $0.connectTimeout = value } }
    /// Returns a copy with ``closeTimeout`` set.
    public func closeTimeout(_ value: Duration) -> Self { with { $0.closeTimeout = value } }
    /// Returns a copy with ``shutdownGracePeriod`` set.
    public func shutdownGracePeriod(_ value: Duration) -> Self { with { $0.shutdownGracePeriod = value } }
    /// Returns a copy with ``name`` set.
    public func name(_ value: String) -> Self { with { $0.name = value } }
    /// Returns a copy with ``leakDetectionThreshold`` set (`nil` turns leak detection off).
    public func leakDetectionThreshold(_ value: Duration?) -> Self { with { $0.leakDetectionThreshold = value } }
    /// Returns a copy with ``recordsLeaseHoldTime`` set.
    public func recordsLeaseHoldTime(_ value: Bool) -> Self { with { $0.recordsLeaseHoldTime = value } }

    // Combined modifiers. A defaulted argument sets its property to that default, replacing any
    // earlier value.

    /// Returns a copy with ``healthCheckInterval`` (`nil` disables background checks) and
    /// ``healthCheckTimeout`` set; `timeout` defaults to 2 s, replacing any earlier value.
    public func healthCheck(interval: Duration?, timeout: Duration = .seconds(2)) -> Self {
        with {
            $0.healthCheckInterval = interval
            $0.healthCheckTimeout = timeout
        }
    }
    /// Returns a copy with ``maxLifetime`` (`nil` means no limit) and ``maxLifetimeJitter`` set.
    public func maxLifetime(_ value: Duration?, jitter: Double) -> Self {
        with {
            $0.maxLifetime = value
            $0.maxLifetimeJitter = jitter
        }
    }
    /// Returns a copy with ``validateOnAcquire`` and ``validationBypassWindow`` set.
    public func validateOnAcquire(_ value: Bool, bypassWindow: Duration) -> Self {
        with {
            $0.validateOnAcquire = value
            $0.validationBypassWindow = bypassWindow
        }
    }
    /// Returns a copy with ``connectTimeout`` and ``closeTimeout`` set; `close` defaults to 10 s,
    /// replacing any earlier value.
    public func operationTimeouts(connect: Duration, close: Duration = .seconds(10)) -> Self {
        with {
            $0.connectTimeout = connect
            $0.closeTimeout = close
        }
    }
    /// Returns a copy with the four `connectRetry…` properties set: ``connectRetryInitialBackoff``,
    /// ``connectRetryMultiplier`` (default 2), ``connectRetryMaxBackoff`` and ``connectRetryJitter``
    /// (default 0.2); a defaulted argument replaces any earlier value.
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
        if maxSize > Self.maxSizeLimit {
            throw PoolConfigurationError(
                field: "maxSize", value: "\(maxSize)", rule: "must be at most \(Self.maxSizeLimit) (PoolConfiguration.maxSizeLimit)")
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
        try Self.requirePositive(maintenanceInterval, field: "maintenanceInterval")
        if let healthCheckInterval { try Self.requirePositive(healthCheckInterval, field: "healthCheckInterval") }
        try Self.requirePositive(healthCheckTimeout, field: "healthCheckTimeout")
        if let maxLifetime { try Self.requirePositive(maxLifetime, field: "maxLifetime") }
        if !(0...0.5).contains(maxLifetimeJitter) {
            throw PoolConfigurationError(
                field: "maxLifetimeJitter", value: "\(maxLifetimeJitter)", rule: "must be between 0 and 0.5")
        }
        if validationBypassWindow < .zero {
            throw PoolConfigurationError(
                field: "validationBypassWindow", value: "\(validationBypassWindow)", rule: "must not be negative")
        }
        if maxConcurrentConnects < 1 {
            throw PoolConfigurationError(
                field: "maxConcurrentConnects", value: "\(maxConcurrentConnects)", rule: "must be at least 1")
        }
        if let circuitBreakerThreshold, circuitBreakerThreshold < 1 {
            throw PoolConfigurationError(
                field: "circuitBreakerThreshold", value: "\(circuitBreakerThreshold)",
                rule: "must be at least 1 (or nil to never fail fast)")
        }
        try Self.requirePositive(shutdownGracePeriod, field: "shutdownGracePeriod")
        try Self.requirePositive(connectTimeout, field: "connectTimeout")
        try Self.requirePositive(closeTimeout, field: "closeTimeout")
        if name.isEmpty {
            throw PoolConfigurationError(field: "name", value: "\"\"", rule: "must not be empty")
        }
        if let leakDetectionThreshold { try Self.requirePositive(leakDetectionThreshold, field: "leakDetectionThreshold") }
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

    /// `invalid PoolConfiguration.<field> = <value>: <rule>; …`, naming what to change.
    public var description: String {
        "invalid PoolConfiguration.\(field) = \(value): \(rule); change PoolConfiguration.\(field) or keep its default"
    }
}
