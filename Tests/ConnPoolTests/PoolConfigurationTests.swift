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
