import ConnPoolTestSupport
import Testing
@testable import ConnPool

@Suite("Descriptions of PoolMetrics and CloseReason")
struct MetricsDescriptionTests {
    @Test("PoolMetrics describes itself in one line of counts")
    func poolMetricsDescription() {
        var metrics = PoolMetrics(idle: 3, inUse: 2, connecting: 1, closing: 4, validating: 5, waiting: 6, maxSize: 10)
        metrics.acquires = 1_234
        metrics.acquiresAfterWaiting = 56
        metrics.acquireTimeouts = 7
        metrics.created = 8
        metrics.creationFailures = 9
        metrics.closedByReason = [.idle: 2, .broken: 1]
        #expect(
            metrics.description
                == "idle 3, in use 2, connecting 1, closing 4, validating 5, waiting 6 (max 10); "
                + "acquires 1234 (56 waited), timeouts 7, created 8, failures 9, closed 3")
        #expect("\(metrics)" == metrics.description)
        #expect(!metrics.description.contains("\n"))
    }

    @Test("a live pool's metrics describe it, with no name or error in them")
    func livePoolDescription() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(4).name("secret-name").warmUpOnInit(false))
        let lease = try await pool.acquire()
        let text = "\(pool.metrics())"
        #expect(text.hasPrefix("idle 0, in use 1, connecting 0, closing 0, validating 0, waiting 0 (max 4); acquires 1 "))
        #expect(!text.contains("secret-name"))
        _ = consume lease
        await pool.shutdown()
    }

    @Test("each CloseReason has a distinct one-line description that starts with its raw value")
    func closeReasonDescriptions() {
        let descriptions = CloseReason.allCases.map(\.description)
        #expect(Set(descriptions).count == CloseReason.allCases.count)
        for reason in CloseReason.allCases {
            #expect(reason.description.hasPrefix("\(reason.rawValue) ("), "\(reason.description)")
            #expect(reason.description.count > reason.rawValue.count + 3)
            #expect(!reason.description.contains("\n"))
        }
        #expect(CloseReason.lifetime.description == "lifetime (reached maxLifetime)")
        #expect("\(CloseReason.health)" == "health (failed a health check)")
    }
}
