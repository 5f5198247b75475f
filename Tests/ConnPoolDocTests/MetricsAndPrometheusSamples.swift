import ConnPool
import ConnPoolMetrics
import ConnPoolPrometheus
import ConnPoolTestSupport
import Foundation
import InMemoryTracing
import Logging
import MetricsTestKit
import Synchronization
import Testing
import Tracing

// The samples of MetricsAndPrometheus.md, verbatim, run against the KV example backend.

func logPoolMetrics(pool: ConnectionPool<KVConnectionFactory>, logger: Logger) {
    let metrics = pool.metrics()
    logger.info(
        "connection pool",
        metadata: [
            "in_use": "\(metrics.inUse)/\(metrics.maxSize)",
            "idle": "\(metrics.idle)",
            "waiting": "\(metrics.waiting)",
            "acquire_wait_p99_us": "\(metrics.acquireWait.percentile(99) / 1_000)",
            "acquire_timeouts": "\(metrics.acquireTimeouts)",
            "closed_by_health_checks": "\(metrics.closedByReason[.health, default: 0])",
        ])
}

func warnWhenSaturated(pool: ConnectionPool<KVConnectionFactory>, logger: Logger) {
    pool.setMetricsHandler(every: .seconds(10)) { metrics in
        if metrics.waiting > 0 && metrics.total >= metrics.maxSize {
            logger.warning("connection pool saturated", metadata: ["waiting": "\(metrics.waiting)"])
        }
    }
}

func statusDocument(pool: ConnectionPool<KVConnectionFactory>) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(pool.status()), as: UTF8.self)
}

func leaseHoldTimes(factory: KVConnectionFactory) throws -> ConnectionPool<KVConnectionFactory> {
    try ConnectionPool(
        factory: factory,
        configuration: PoolConfiguration()
            .name("sessions")
            .recordsLeaseHoldTime(true)
            .leakDetectionThreshold(.seconds(60)))
}

func tracedPool(factory: KVConnectionFactory) throws -> ConnectionPool<KVConnectionFactory> {
    try ConnectionPool(factory: factory, tracer: InstrumentationSystem.tracer)
}

func exportThroughSwiftMetrics(pool: ConnectionPool<KVConnectionFactory>) -> PoolMetricsExporter {
    // MetricsSystem.bootstrap(...) first, with the backend of your choice.
    let exporter = pool.exportMetrics(every: .seconds(10))
    return exporter  // exporter.stop() exports one last time and detaches
}

func serveMetrics(pool: ConnectionPool<KVConnectionFactory>) throws -> PoolMetricsServer {
    let server = try PoolMetricsServer(pools: [pool], port: 9464)  // 127.0.0.1:9464/metrics and /status
    return server  // server.stop() when done
}

func serveSeveralPools(
    sessions: ConnectionPool<KVConnectionFactory>, cache: ConnectionPool<AsyncKVConnectionFactory>
) throws -> PoolMetricsServer {
    let registry = try PoolMetricsRegistry(pools: [sessions, cache])  // names must differ
    return try PoolMetricsServer(registry: registry, host: "127.0.0.1", port: 9464, buckets: .all)
}

@Suite("Metrics and Prometheus", .serialized, .processExclusive)
struct MetricsAndPrometheusSamples {
    static func kvFactory() -> KVConnectionFactory {
        KVConnectionFactory(host: "127.0.0.1", port: FakeKVServer.start().port)
    }

    @Test("the snapshot, logged")
    func snapshot() async throws {
        let pool = try ConnectionPool(factory: Self.kvFactory())
        try await pool.withConnection { _ in }
        logPoolMetrics(pool: pool, logger: Logger(label: "doc-tests"))
        let metrics = pool.metrics()
        #expect(metrics.acquires == 1)
        #expect(metrics.idle + metrics.inUse + metrics.connecting + metrics.closing + metrics.validating == metrics.total)
        await pool.shutdown()
    }

    @Test("the metrics handler runs on the pool's timer")
    func handler() async throws {
        let clock = ManualClock()
        let pool = try ConnectionPool(factory: Self.kvFactory(), clock: .manual(clock))
        warnWhenSaturated(pool: pool, logger: Logger(label: "doc-tests"))
        let calls = Atomic<Int>(0)
        pool.setMetricsHandler(every: .seconds(10)) { _ in calls.add(1, ordering: .relaxed) }
        clock.advance(by: .seconds(10))
        #expect(calls.load(ordering: .relaxed) == 1)
        pool.setMetricsHandler(every: .seconds(10), nil)
        clock.advance(by: .seconds(10))
        #expect(calls.load(ordering: .relaxed) == 1)
        await pool.shutdown()
    }

    @Test("status() encodes to JSON and holds the configuration")
    func status() async throws {
        let pool = try ConnectionPool(factory: Self.kvFactory())
        let json = try statusDocument(pool: pool)
        #expect(json.contains("\"health\":\"healthy\""))
        #expect(json.contains("\"maxSize\":10"))
        await pool.shutdown()
    }

    @Test("lease hold times are recorded when asked for")
    func leaseHold() async throws {
        let pool = try leaseHoldTimes(factory: Self.kvFactory())
        try await pool.withConnection { _ in }
        #expect(pool.metrics().leaseHold.count == 1)
        await pool.shutdown()
    }

    @Test("a tracer gets connpool.acquire and connpool.connect spans")
    func tracing() async throws {
        let tracer = InMemoryTracer()
        let pool = try ConnectionPool(factory: Self.kvFactory(), tracer: tracer)
        try await pool.withConnection { _ in }
        let names = Set(tracer.finishedSpans.map(\.operationName))
        #expect(names == ["connpool.acquire", "connpool.connect"])
        _ = try tracedPool(factory: Self.kvFactory())
        await pool.shutdown()
    }

    @Test("exportMetrics reports through swift-metrics")
    func swiftMetrics() async throws {
        let clock = ManualClock()
        let pool = try ConnectionPool(
            factory: Self.kvFactory(), configuration: PoolConfiguration().name("sessions"), clock: .manual(clock))
        let metrics = TestMetrics()
        let exporter = pool.exportMetrics(every: .seconds(10), factory: metrics)
        try await pool.withConnection { _ in }
        clock.advance(by: .seconds(10))
        #expect(try metrics.expectCounter("connpool_acquires_total", [("pool", "sessions")]).totalValue == 1)
        exporter.stop()
        await pool.shutdown()
    }

    @Test("the Prometheus exposition and the metrics server")
    func prometheus() async throws {
        let sessions = try ConnectionPool(factory: Self.kvFactory(), configuration: PoolConfiguration().name("sessions"))
        let cache = try ConnectionPool(
            factory: AsyncKVConnectionFactory(host: "127.0.0.1", port: FakeKVServer.start().port),
            configuration: PoolConfiguration().name("cache"))
        try await sessions.withConnection { _ in }
        let text = PrometheusExposition.render([sessions.status(), cache.status()])
        #expect(text.contains("connpool_acquires_total{pool=\"sessions\"} 1"))
        #expect(text.contains("connpool_acquire_wait_seconds_bucket{pool=\"cache\",le=\"+Inf\"} 0"))
        let registry = try PoolMetricsRegistry(pools: [sessions, cache])
        #expect(registry.statuses().map(\.name) == ["sessions", "cache"])
        let server = try PoolMetricsServer(registry: registry, port: 0)
        #expect(server.port > 0)
        try await onThread { server.stop() }  // joins the server's thread
        await sessions.shutdown()
        await cache.shutdown()
    }
}
