import ConnPoolTestSupport
import Foundation
import Testing
@testable import ConnPool

@Suite("PoolConfiguration")
struct PoolConfigurationTests {
    @Test("defaults are valid")
    func defaultsAreValid() throws {
        try PoolConfiguration().validate()
        let configuration = PoolConfiguration()
        #expect(configuration.maxSize == 10)
        #expect(configuration.minSize == 0)
        #expect(configuration.acquireTimeout == .seconds(10))
        #expect(configuration.reuseOrder == .lifo)
    }

    @Test("fluent modifiers return a modified copy")
    func fluentModifiers() throws {
        let base = PoolConfiguration()
        let configuration = base.maxSize(4).minSize(2).acquireTimeout(.milliseconds(250))
            .idleTimeout(nil).reuseOrder(.fifo).maxWaiters(100)
            .connectRetryBackoff(initial: .milliseconds(5), multiplier: 3, max: .seconds(1), jitter: 0)
        #expect(base.maxSize == 10)
        #expect(configuration.maxSize == 4)
        #expect(configuration.minSize == 2)
        #expect(configuration.acquireTimeout == .milliseconds(250))
        #expect(configuration.idleTimeout == nil)
        #expect(configuration.reuseOrder == .fifo)
        #expect(configuration.maxWaiters == 100)
        #expect(configuration.connectRetryMultiplier == 3)
        try configuration.validate()
    }

    /// One fluent modifier and the properties it must set: applied to a configuration, it must give
    /// that configuration with the same values assigned to those properties, and nothing else changed.
    struct ModifierCase: Sendable, CustomTestStringConvertible {
        var properties: [String]
        var modify: @Sendable (PoolConfiguration) -> PoolConfiguration
        var assign: @Sendable (inout PoolConfiguration) -> Void

        init(
            _ properties: String..., modify: @escaping @Sendable (PoolConfiguration) -> PoolConfiguration,
            assign: @escaping @Sendable (inout PoolConfiguration) -> Void
        ) {
            self.properties = properties
            self.modify = modify
            self.assign = assign
        }

        var testDescription: String { properties.joined(separator: " + ") }
    }

    /// One row per stored property, each with a value other than its default.
    static let singlePropertyModifiers: [ModifierCase] = [
        ModifierCase("minSize", modify: { $0.minSize(3) }, assign: { $0.minSize = 3 }),
        ModifierCase("maxSize", modify: { $0.maxSize(40) }, assign: { $0.maxSize = 40 }),
        ModifierCase("acquireTimeout", modify: { $0.acquireTimeout(.milliseconds(250)) }, assign: { $0.acquireTimeout = .milliseconds(250) }),
        ModifierCase("idleTimeout", modify: { $0.idleTimeout(nil) }, assign: { $0.idleTimeout = nil }),
        ModifierCase("reuseOrder", modify: { $0.reuseOrder(.fifo) }, assign: { $0.reuseOrder = .fifo }),
        ModifierCase(
            "connectRetryInitialBackoff", modify: { $0.connectRetryInitialBackoff(.milliseconds(7)) },
            assign: { $0.connectRetryInitialBackoff = .milliseconds(7) }),
        ModifierCase("connectRetryMultiplier", modify: { $0.connectRetryMultiplier(1.5) }, assign: { $0.connectRetryMultiplier = 1.5 }),
        ModifierCase(
            "connectRetryMaxBackoff", modify: { $0.connectRetryMaxBackoff(.seconds(3)) },
            assign: { $0.connectRetryMaxBackoff = .seconds(3) }),
        ModifierCase("connectRetryJitter", modify: { $0.connectRetryJitter(0.1) }, assign: { $0.connectRetryJitter = 0.1 }),
        ModifierCase("maxWaiters", modify: { $0.maxWaiters(64) }, assign: { $0.maxWaiters = 64 }),
        ModifierCase("maintenanceInterval", modify: { $0.maintenanceInterval(.seconds(1)) }, assign: { $0.maintenanceInterval = .seconds(1) }),
        ModifierCase("healthCheckInterval", modify: { $0.healthCheckInterval(nil) }, assign: { $0.healthCheckInterval = nil }),
        ModifierCase("healthCheckTimeout", modify: { $0.healthCheckTimeout(.seconds(1)) }, assign: { $0.healthCheckTimeout = .seconds(1) }),
        ModifierCase("maxLifetime", modify: { $0.maxLifetime(.seconds(60)) }, assign: { $0.maxLifetime = .seconds(60) }),
        ModifierCase("maxLifetimeJitter", modify: { $0.maxLifetimeJitter(0.25) }, assign: { $0.maxLifetimeJitter = 0.25 }),
        ModifierCase("validateOnAcquire", modify: { $0.validateOnAcquire(true) }, assign: { $0.validateOnAcquire = true }),
        ModifierCase(
            "validationBypassWindow", modify: { $0.validationBypassWindow(.zero) }, assign: { $0.validationBypassWindow = .zero }),
        ModifierCase("warmUpOnInit", modify: { $0.warmUpOnInit(false) }, assign: { $0.warmUpOnInit = false }),
        ModifierCase("maxConcurrentConnects", modify: { $0.maxConcurrentConnects(2) }, assign: { $0.maxConcurrentConnects = 2 }),
        ModifierCase("circuitBreakerThreshold", modify: { $0.circuitBreakerThreshold(nil) }, assign: { $0.circuitBreakerThreshold = nil }),
        ModifierCase("connectTimeout", modify: { $0.connectTimeout(.seconds(3)) }, assign: { $0.connectTimeout = .seconds(3) }),
        ModifierCase("closeTimeout", modify: { $0.closeTimeout(.seconds(4)) }, assign: { $0.closeTimeout = .seconds(4) }),
        ModifierCase("shutdownGracePeriod", modify: { $0.shutdownGracePeriod(.seconds(5)) }, assign: { $0.shutdownGracePeriod = .seconds(5) }),
        ModifierCase("name", modify: { $0.name("orders") }, assign: { $0.name = "orders" }),
        ModifierCase(
            "leakDetectionThreshold", modify: { $0.leakDetectionThreshold(.seconds(30)) },
            assign: { $0.leakDetectionThreshold = .seconds(30) }),
        ModifierCase("recordsLeaseHoldTime", modify: { $0.recordsLeaseHoldTime(true) }, assign: { $0.recordsLeaseHoldTime = true }),
    ]

    /// The modifiers that set related properties together.
    static let combinedModifiers: [ModifierCase] = [
        ModifierCase(
            "healthCheckInterval", "healthCheckTimeout", modify: { $0.healthCheck(interval: .seconds(9), timeout: .seconds(1)) },
            assign: {
                $0.healthCheckInterval = .seconds(9)
                $0.healthCheckTimeout = .seconds(1)
            }),
        ModifierCase(
            "maxLifetime", "maxLifetimeJitter", modify: { $0.maxLifetime(.seconds(60), jitter: 0.25) },
            assign: {
                $0.maxLifetime = .seconds(60)
                $0.maxLifetimeJitter = 0.25
            }),
        ModifierCase(
            "validateOnAcquire", "validationBypassWindow", modify: { $0.validateOnAcquire(true, bypassWindow: .zero) },
            assign: {
                $0.validateOnAcquire = true
                $0.validationBypassWindow = .zero
            }),
        ModifierCase(
            "connectTimeout", "closeTimeout", modify: { $0.operationTimeouts(connect: .seconds(3), close: .seconds(4)) },
            assign: {
                $0.connectTimeout = .seconds(3)
                $0.closeTimeout = .seconds(4)
            }),
        ModifierCase(
            "connectRetryInitialBackoff", "connectRetryMultiplier", "connectRetryMaxBackoff", "connectRetryJitter",
            modify: { $0.connectRetryBackoff(initial: .milliseconds(7), multiplier: 1.5, max: .seconds(3), jitter: 0.1) },
            assign: {
                $0.connectRetryInitialBackoff = .milliseconds(7)
                $0.connectRetryMultiplier = 1.5
                $0.connectRetryMaxBackoff = .seconds(3)
                $0.connectRetryJitter = 0.1
            }),
    ]

    /// The stored properties of a configuration, by name, with their values as text.
    static func storedProperties(of configuration: PoolConfiguration) -> [String: String] {
        Dictionary(uniqueKeysWithValues: Mirror(reflecting: configuration).children.map { child in
            (child.label ?? "?", String(reflecting: child.value))
        })
    }

    /// A configuration in which every property but `properties` differs from its default, so that a
    /// modifier that also reset another property to its default would be caught.
    static func scrambled(except properties: [String]) -> PoolConfiguration {
        var configuration = PoolConfiguration()
        for row in singlePropertyModifiers where !properties.contains(row.properties[0]) {
            row.assign(&configuration)
        }
        return configuration
    }

    @Test("every stored property has a single-property modifier (the table below is complete)")
    func everyStoredPropertyHasAModifier() {
        let stored = Set(Self.storedProperties(of: PoolConfiguration()).keys)
        #expect(stored.count == 26)
        #expect(Set(Self.singlePropertyModifiers.map(\.properties[0])) == stored)
        #expect(Self.singlePropertyModifiers.count == stored.count)
    }

    @Test(
        "each fluent modifier sets its properties, and only them",
        arguments: singlePropertyModifiers + combinedModifiers)
    func modifierSetsItsProperties(_ row: ModifierCase) {
        for base in [PoolConfiguration(), Self.scrambled(except: row.properties)] {
            var expected = base
            row.assign(&expected)
            // The row's value is not the base's and changes exactly the properties it names.
            let before = Self.storedProperties(of: base)
            let after = Self.storedProperties(of: expected)
            #expect(Set(after.keys.filter { before[$0] != after[$0] }) == Set(row.properties))
            // The modifier gives the same configuration as the assignments, and leaves its receiver alone.
            #expect(row.modify(base) == expected)
            #expect(Self.storedProperties(of: base) == before)
        }
    }

    @Test("a single-property modifier keeps the related property a combined one would set")
    func singlePropertyModifiersKeepRelatedProperties() {
        let configuration = PoolConfiguration()
            .maxLifetimeJitter(0.3).maxLifetime(.seconds(60))
            .validationBypassWindow(.seconds(2)).validateOnAcquire(true)
            .healthCheckTimeout(.seconds(5)).healthCheckInterval(.seconds(10))
            .closeTimeout(.seconds(20)).connectTimeout(.seconds(1))
            .connectRetryJitter(0).connectRetryInitialBackoff(.milliseconds(1))
        #expect(configuration.maxLifetimeJitter == 0.3)
        #expect(configuration.maxLifetime == .seconds(60))
        #expect(configuration.validationBypassWindow == .seconds(2))
        #expect(configuration.validateOnAcquire)
        #expect(configuration.healthCheckTimeout == .seconds(5))
        #expect(configuration.healthCheckInterval == .seconds(10))
        #expect(configuration.closeTimeout == .seconds(20))
        #expect(configuration.connectTimeout == .seconds(1))
        #expect(configuration.connectRetryJitter == 0)
        #expect(configuration.connectRetryInitialBackoff == .milliseconds(1))
    }

    static let invalid: [(PoolConfiguration, String, String)] = [
        (PoolConfiguration().maxSize(0), "maxSize", "at least 1"),
        (PoolConfiguration().maxSize(-3), "maxSize", "at least 1"),
        (PoolConfiguration().maxSize(PoolConfiguration.maxSizeLimit + 1), "maxSize", "at most 1000000"),
        (PoolConfiguration().maxSize(Int(Int32.max)), "maxSize", "maxSizeLimit"),
        (PoolConfiguration().minSize(-1), "minSize", "negative"),
        (PoolConfiguration().maxSize(2).minSize(3), "minSize", "maxSize"),
        (PoolConfiguration().acquireTimeout(.zero), "acquireTimeout", "positive"),
        (PoolConfiguration().acquireTimeout(.seconds(-1)), "acquireTimeout", "positive"),
        (PoolConfiguration().idleTimeout(.zero), "idleTimeout", "positive"),
        (PoolConfiguration().maxWaiters(0), "maxWaiters", "at least 1"),
        (PoolConfiguration().connectRetryBackoff(initial: .zero, max: .seconds(1)), "connectRetryInitialBackoff", "positive"),
        (PoolConfiguration().connectRetryBackoff(initial: .seconds(1), multiplier: 0.5, max: .seconds(2)), "connectRetryMultiplier", "at least 1"),
        (PoolConfiguration().connectRetryBackoff(initial: .seconds(1), multiplier: .nan, max: .seconds(2)), "connectRetryMultiplier", "finite"),
        (PoolConfiguration().connectRetryBackoff(initial: .seconds(2), max: .seconds(1)), "connectRetryMaxBackoff", "at least"),
        (PoolConfiguration().connectRetryBackoff(initial: .seconds(1), max: .seconds(2), jitter: 1.5), "connectRetryJitter", "between 0 and 1"),
    ]

    @Test("every rule throws a typed error naming the field", arguments: 0..<invalid.count)
    func invalidValues(case index: Int) {
        let (configuration, field, rule) = Self.invalid[index]
        #expect {
            try configuration.validate()
        } throws: { error in
            guard let error = error as? PoolConfigurationError else { return false }
            return error.field == field && error.rule.contains(rule)
                && error.description.contains("PoolConfiguration.\(field)")
        }
    }

    @Test("the pool refuses an invalid configuration")
    func poolRefusesInvalidConfiguration() {
        #expect(throws: PoolConfigurationError.self) {
            _ = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().maxSize(0))
        }
    }

    @Test("Codable: durations as seconds, a round trip, and a partial document with defaults")
    func codable() throws {
        let configuration = PoolConfiguration().maxSize(7).acquireTimeout(.milliseconds(2_500)).idleTimeout(nil)
            .maxWaiters(9).name("orders")
        let json = String(decoding: try JSONEncoder().encode(configuration), as: UTF8.self)
        #expect(json.contains("\"acquireTimeout\":2.5"))
        #expect(json.contains("\"idleTimeout\":null"))
        #expect(json.contains("\"maintenanceInterval\":5"))
        let decoded = try JSONDecoder().decode(PoolConfiguration.self, from: Data(json.utf8))
        #expect(decoded == configuration)
        let partial = try JSONDecoder().decode(
            PoolConfiguration.self, from: Data(#"{"maxSize": 3, "healthCheckInterval": null, "connectTimeout": 0.25}"#.utf8))
        var expected = PoolConfiguration().maxSize(3).healthCheck(interval: nil)
        expected.connectTimeout = .milliseconds(250)
        #expect(partial == expected)
    }
}
