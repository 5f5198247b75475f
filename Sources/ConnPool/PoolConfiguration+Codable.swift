/// `Codable` with durations as seconds (`"acquireTimeout": 2.5`), readable in a status endpoint,
/// instead of `Duration`'s own encoding (a pair of 64-bit attosecond halves). Missing keys decode to
/// the defaults, so a partial document (a config file) works; the result is not validated here:
/// ``ConnectionPool/init(factory:configuration:clock:logger:tracer:)`` validates it.
extension PoolConfiguration: Codable {
    private enum CodingKeys: String, CodingKey {
        case minSize, maxSize, acquireTimeout, idleTimeout, reuseOrder
        case connectRetryInitialBackoff, connectRetryMultiplier, connectRetryMaxBackoff, connectRetryJitter
        case maxWaiters, maintenanceInterval, healthCheckInterval, healthCheckTimeout, maxLifetime, maxLifetimeJitter
        case validateOnAcquire, validationBypassWindow, warmUpOnInit, maxConcurrentConnects, circuitBreakerThreshold
        case connectTimeout, closeTimeout, shutdownGracePeriod, name, leakDetectionThreshold, recordsLeaseHoldTime
    }

    public init(from decoder: any Decoder) throws {
        self.init()
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ current: T) throws -> T {
            try container.decodeIfPresent(T.self, forKey: key) ?? current
        }
        func duration(_ key: CodingKeys, _ current: Duration) throws -> Duration {
            try container.decodeIfPresent(Double.self, forKey: key).map { Self.duration(seconds: $0) } ?? current
        }
        func optionalDuration(_ key: CodingKeys, _ current: Duration?) throws -> Duration? {
            guard container.contains(key) else { return current }
            return try container.decodeIfPresent(Double.self, forKey: key).map { Self.duration(seconds: $0) }
        }
        minSize = try value(.minSize, minSize)
        maxSize = try value(.maxSize, maxSize)
        acquireTimeout = try duration(.acquireTimeout, acquireTimeout)
        idleTimeout = try optionalDuration(.idleTimeout, idleTimeout)
        reuseOrder = try value(.reuseOrder, reuseOrder)
        connectRetryInitialBackoff = try duration(.connectRetryInitialBackoff, connectRetryInitialBackoff)
        connectRetryMultiplier = try value(.connectRetryMultiplier, connectRetryMultiplier)
        connectRetryMaxBackoff = try duration(.connectRetryMaxBackoff, connectRetryMaxBackoff)
        connectRetryJitter = try value(.connectRetryJitter, connectRetryJitter)
        if container.contains(.maxWaiters) { maxWaiters = try container.decodeIfPresent(Int.self, forKey: .maxWaiters) }
        maintenanceInterval = try duration(.maintenanceInterval, maintenanceInterval)
        healthCheckInterval = try optionalDuration(.healthCheckInterval, healthCheckInterval)
        healthCheckTimeout = try duration(.healthCheckTimeout, healthCheckTimeout)
        maxLifetime = try optionalDuration(.maxLifetime, maxLifetime)
        maxLifetimeJitter = try value(.maxLifetimeJitter, maxLifetimeJitter)
        validateOnAcquire = try value(.validateOnAcquire, validateOnAcquire)
        validationBypassWindow = try duration(.validationBypassWindow, validationBypassWindow)
        warmUpOnInit = try value(.warmUpOnInit, warmUpOnInit)
        maxConcurrentConnects = try value(.maxConcurrentConnects, maxConcurrentConnects)
        if container.contains(.circuitBreakerThreshold) {
            circuitBreakerThreshold = try container.decodeIfPresent(Int.self, forKey: .circuitBreakerThreshold)
        }
        connectTimeout = try duration(.connectTimeout, connectTimeout)
        closeTimeout = try duration(.closeTimeout, closeTimeout)
        shutdownGracePeriod = try duration(.shutdownGracePeriod, shutdownGracePeriod)
        name = try value(.name, name)
        leakDetectionThreshold = try optionalDuration(.leakDetectionThreshold, leakDetectionThreshold)
        recordsLeaseHoldTime = try value(.recordsLeaseHoldTime, recordsLeaseHoldTime)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        func seconds(_ duration: Duration?, _ key: CodingKeys) throws {
            if let duration {
                try container.encode(Self.seconds(duration), forKey: key)
            } else {
                try container.encodeNil(forKey: key)
            }
        }
        try container.encode(minSize, forKey: .minSize)
        try container.encode(maxSize, forKey: .maxSize)
        try seconds(acquireTimeout, .acquireTimeout)
        try seconds(idleTimeout, .idleTimeout)
        try container.encode(reuseOrder, forKey: .reuseOrder)
        try seconds(connectRetryInitialBackoff, .connectRetryInitialBackoff)
        try container.encode(connectRetryMultiplier, forKey: .connectRetryMultiplier)
        try seconds(connectRetryMaxBackoff, .connectRetryMaxBackoff)
        try container.encode(connectRetryJitter, forKey: .connectRetryJitter)
        try container.encode(maxWaiters, forKey: .maxWaiters)
        try seconds(maintenanceInterval, .maintenanceInterval)
        try seconds(healthCheckInterval, .healthCheckInterval)
        try seconds(healthCheckTimeout, .healthCheckTimeout)
        try seconds(maxLifetime, .maxLifetime)
        try container.encode(maxLifetimeJitter, forKey: .maxLifetimeJitter)
        try container.encode(validateOnAcquire, forKey: .validateOnAcquire)
        try seconds(validationBypassWindow, .validationBypassWindow)
        try container.encode(warmUpOnInit, forKey: .warmUpOnInit)
        try container.encode(maxConcurrentConnects, forKey: .maxConcurrentConnects)
        try container.encode(circuitBreakerThreshold, forKey: .circuitBreakerThreshold)
        try seconds(connectTimeout, .connectTimeout)
        try seconds(closeTimeout, .closeTimeout)
        try seconds(shutdownGracePeriod, .shutdownGracePeriod)
        try container.encode(name, forKey: .name)
        try seconds(leakDetectionThreshold, .leakDetectionThreshold)
        try container.encode(recordsLeaseHoldTime, forKey: .recordsLeaseHoldTime)
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    static func duration(seconds: Double) -> Duration {
        .nanoseconds(Int64((seconds * 1e9).rounded()))
    }
}
