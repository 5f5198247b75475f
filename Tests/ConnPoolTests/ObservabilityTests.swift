import ConnPoolTestSupport
import Foundation
import InMemoryTracing
import Logging
import Synchronization
import Testing
import Tracing
@testable import ConnPool

@Suite("Observability: counters, histograms, status, resize, leaks, tracing", .serialized, .processExclusive)
struct ObservabilityTests {
    static let quiet = PoolConfiguration().maxSize(2).acquireTimeout(.seconds(1))
        .healthCheck(interval: nil).idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1))
        .circuitBreakerThreshold(nil).connectRetryBackoff(initial: .milliseconds(100), max: .milliseconds(100), jitter: 0)

    @Test("exact counters after a scripted sequence")
    func exactCounters() async throws {
        let clock = ManualClock()
        let factory = MockFactory([.fail("refused")])
        let pool = try ConnectionPool(factory: factory, configuration: Self.quiet.maxWaiters(1), clock: .manual(clock))
        // 1 failed attempt, then a success after the backoff: one waited acquire.
        let first = Task { try await pool.acquire().connection }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(100))
        let a = try await first.value
        #expect(a.id == 0)
        // 3 immediate acquires of the idle connection.
        for _ in 0..<3 { try await pool.withConnection { _ in } }
        // A second connection; both held; one waiter times out, one is shed, one is cancelled.
        let held1 = LeaseHolder(try await pool.acquire())
        let held2 = LeaseHolder(try await pool.acquire())
        let timedOut = Task { try await pool.acquire(timeout: .milliseconds(50)) .connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        await #expect(throws: ConnectionPoolError.self) { try await pool.acquire() }  // shed: maxWaiters 1
        clock.advance(by: .milliseconds(50))
        await #expect(throws: ConnectionPoolError.self) { try await timedOut.value }
        let cancelled = Task { try await pool.acquire().connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        held1.dropAsBroken()
        held2.drop()
        #expect(await eventually { pool.metrics().closing == 0 })

        let metrics = pool.metrics()
        #expect(metrics.created == 2)
        #expect(metrics.creationFailures == 1)
        #expect(metrics.acquires == 6)              // first + 3 + held1 + held2
        #expect(metrics.acquiresAfterWaiting == 2)  // first, and held2's new connection
        #expect(metrics.acquireTimeouts == 1)
        #expect(metrics.shedWaiters == 1)
        #expect(metrics.cancelledWaiters == 1)
        #expect(metrics.closedByReason[.broken] == 1)
        #expect(metrics.closed == 1)
        #expect(metrics.created - metrics.closed == metrics.total)
        #expect(metrics.acquireWait.count == 6)
        #expect(metrics.connectionLifetime.count == 1)
        await pool.shutdown()
        let after = pool.metrics()
        #expect(after.closedByReason[.shutdown] == 1)
        #expect(after.total == 0)
    }

    @Test("histogram buckets: placement, bounds, percentiles, min and max")
    func histogramPlacement() {
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 0) == 0)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 1_023) == 0)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 1_024) == 1)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 1_279) == 1)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 1_280) == 2)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 2_047) == 4)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 2_048) == 5)
        #expect(LatencyHistogram.bucketIndex(nanoseconds: 1 << 36) == LatencyHistogram.bucketCount - 1)
        #expect(LatencyHistogram.upperBounds.count == LatencyHistogram.bucketCount - 1)
        // The public description of the layout is the recorder's.
        #expect(HistogramSnapshot.bucketCount == 106)
        #expect(HistogramSnapshot.bucketCount == LatencyHistogram.bucketCount)
        #expect(HistogramSnapshot.upperBounds == LatencyHistogram.upperBounds)
        #expect(HistogramSnapshot.upperBounds.count == HistogramSnapshot.bucketCount - 1)
        #expect(HistogramSnapshot.upperBounds.first == 1_024 && HistogramSnapshot.upperBounds.last == 1 << 36)
        #expect(zip(HistogramSnapshot.upperBounds, HistogramSnapshot.upperBounds.dropFirst()).allSatisfy { $0 < $1 })
        #expect(HistogramSnapshot.empty.counts.count == HistogramSnapshot.bucketCount)
        // Every value lands in a bucket whose bounds contain it.
        for value: UInt64 in [1_024, 1_500, 9_999, 123_456, 7_000_000, 60_000_000_000] {
            let index = LatencyHistogram.bucketIndex(nanoseconds: value)
            #expect(value < LatencyHistogram.upperBounds[index])
            #expect(value >= LatencyHistogram.upperBounds[index - 1])
        }
        let histogram = LatencyHistogram()
        for _ in 0..<90 { histogram.record(.microseconds(10)) }
        for _ in 0..<10 { histogram.record(.milliseconds(5)) }
        let snapshot = histogram.snapshot(extraZeros: 100)
        #expect(snapshot.count == 200)
        #expect(snapshot.counts[0] == 100)
        #expect(snapshot.counts[LatencyHistogram.bucketIndex(nanoseconds: 10_000)] == 90)
        #expect(snapshot.counts[LatencyHistogram.bucketIndex(nanoseconds: 5_000_000)] == 10)
        #expect(snapshot.sumNanoseconds == 90 * 10_000 + 10 * 5_000_000)
        #expect(snapshot.minNanoseconds == 0)
        #expect(snapshot.maxNanoseconds == 5_000_000)
        #expect(snapshot.percentile(50) == 0)
        let p90 = snapshot.percentile(90)
        #expect(p90 >= 10_000 && p90 <= 12_500)
        let p99 = snapshot.percentile(99)
        #expect(p99 == 5_000_000)  // capped at the recorded maximum
    }

    @Test("the metrics handler runs at its interval with fresh snapshots, and stops")
    func metricsHandler() async throws {
        let clock = ManualClock()
        let pool = try ConnectionPool(factory: MockFactory(), configuration: Self.quiet, clock: .manual(clock))
        let seen = LockedValue<[Int]>([])
        pool.setMetricsHandler(every: .seconds(10)) { metrics in seen.withLock { $0.append(metrics.acquires) } }
        clock.advance(by: .seconds(9))
        #expect(seen.withLock { $0 } == [])
        try await pool.withConnection { _ in }
        clock.advance(by: .seconds(1))
        try await pool.withConnection { _ in }
        clock.advance(by: .seconds(10))
        #expect(seen.withLock { $0 } == [1, 2])
        pool.setMetricsHandler(every: .seconds(10), nil)
        clock.advance(by: .seconds(30))
        #expect(seen.withLock { $0 } == [1, 2])
        await pool.shutdown()
    }

    @Test("status reports health, metrics and configuration, and encodes as JSON")
    func status() async throws {
        let clock = ManualClock()
        let factory = MockFactory(Array(repeating: .fail("refused"), count: 3))
        let pool = try ConnectionPool(
            factory: factory, configuration: Self.quiet.name("orders").circuitBreakerThreshold(3), clock: .manual(clock))
        #expect(pool.status().health == .healthy)
        let waiter = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        #expect(pool.status().health == .degraded)
        clock.advance(by: .milliseconds(100))
        #expect(await eventually { factory.attempts == 2 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(100))
        _ = try? await waiter.value
        #expect(await eventually { pool.status().health == .failing })
        let status = pool.status()
        #expect(status.name == "orders")
        #expect(status.lastConnectError == "refused")
        #expect(status.consecutiveConnectFailures == 3)
        let json = String(decoding: try JSONEncoder().encode(status), as: UTF8.self)
        #expect(json.contains("\"health\":\"failing\""))
        #expect(json.contains("\"name\":\"orders\""))
        let decoded = try JSONDecoder().decode(PoolStatus.self, from: Data(json.utf8))
        #expect(decoded == status)
        await pool.shutdown()
        #expect(pool.status().health == .shuttingDown)
    }

    @Test("resize: growing serves waiters at once; shrinking closes idle extras now and leased ones on return")
    func resize() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(factory: factory, configuration: Self.quiet.maxSize(1).acquireTimeout(.seconds(60)))
        let held = LeaseHolder(try await pool.acquire())
        let waiters = (0..<3).map { _ in Task { LeaseHolder(try await pool.acquire()) } }
        #expect(await eventually { pool.metrics().waiting == 3 })
        try pool.resize(maxSize: 4)  // above the initial capacity: the slot array grows
        var leases: [LeaseHolder<MockFactory>] = []
        for waiter in waiters { leases.append(try await waiter.value) }
        #expect(pool.metrics().inUse == 4)
        #expect(pool.metrics().maxSize == 4)
        leases[0].drop(); leases[1].drop()
        #expect(pool.metrics().idle == 2)
        try pool.resize(maxSize: 1)
        #expect(await eventually { pool.metrics().idle == 0 && pool.metrics().closing == 0 })
        #expect(pool.metrics().inUse == 2)  // above the new maximum until they come back
        leases[2].drop()  // over the new maximum: closed, not parked
        #expect(await eventually { pool.metrics().total == 1 })
        held.drop()
        #expect(pool.metrics().idle == 1)
        #expect(pool.metrics().closedByReason[.resize] == 3)
        #expect(throws: PoolConfigurationError.self) { try pool.resize(maxSize: 0) }
        #expect(throws: PoolConfigurationError.self) { try pool.resize(maxSize: PoolConfiguration.maxSizeLimit + 1) }
        #expect(pool.status().configuration.maxSize == 1)  // a refused resize changes nothing
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
    }

    @Test("concurrent resizes and acquires under load keep every invariant")
    func resizeUnderLoad() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(factory: factory, configuration: Self.quiet.maxSize(4).acquireTimeout(.seconds(30)))
        let violations = LockedValue<[String]>([])
        let maxAllowed = LockedValue<Int>(8)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<32 {
                group.addTask {
                    for _ in 0..<200 {
                        try await pool.withConnection { connection in
                            if !connection.beginBorrow() { violations.withLock { $0.append("double borrow") } }
                            if let violation = pool.invariantViolation() { violations.withLock { $0.append(violation) } }
                            await Task.yield()
                            connection.endBorrow()
                        }
                    }
                }
            }
            group.addTask {
                for size in [8, 2, 6, 1, 5, 3, 8, 4] {
                    try pool.resize(maxSize: size)
                    await Task.yield()
                }
                maxAllowed.withLock { $0 = 4 }
            }
            try await group.waitForAll()
        }
        #expect(violations.withLock { $0 } == [])
        #expect(await eventually { pool.metrics().total <= 4 && pool.metrics().closing == 0 })
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("a lease held past the leak threshold is logged once with its call site and counted")
    func leakDetection() async throws {
        let clock = ManualClock()
        let logs = LogCapture()
        let pool = try ConnectionPool(
            factory: MockFactory(), configuration: Self.quiet.leakDetectionThreshold(.seconds(5)).recordsLeaseHoldTime(true),
            clock: .manual(clock), logger: logs.logger)
        let line = #line + 1
        let leaked = LeaseHolder(try await pool.acquire())
        clock.advance(by: .seconds(4))
        #expect(pool.metrics().leaksDetected == 0)
        clock.advance(by: .seconds(2))
        #expect(pool.metrics().leaksDetected == 1)
        clock.advance(by: .seconds(5))
        #expect(pool.metrics().leaksDetected == 1)  // once per lease
        let warnings = logs.messages.filter { $0.contains("leak") }
        #expect(warnings.count == 1)
        #expect(warnings.first?.contains("ObservabilityTests.swift:\(line)") == true)
        leaked.drop()
        let hold = pool.metrics().leaseHold
        #expect(hold.count == 1)
        #expect(hold.maxNanoseconds >= 10_000_000_000)
        await pool.shutdown()
    }

    @Test("tracing: spans for acquires (wait and outcome) and connection attempts")
    func tracing() async throws {
        let clock = ManualClock()
        let tracer = InMemoryTracer()
        let factory = MockFactory([.fail("refused")])
        let pool = try ConnectionPool(
            factory: factory, configuration: Self.quiet.maxSize(1), clock: .manual(clock), tracer: tracer)
        let first = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(100))
        #expect(try await first.value == 0)
        let held = LeaseHolder(try await pool.acquire())
        let timeout = Task { try await pool.acquire(timeout: .milliseconds(10)).connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        clock.advance(by: .milliseconds(10))
        _ = try? await timeout.value
        held.drop()
        let spans = tracer.finishedSpans
        let connects = spans.filter { $0.operationName == "connpool.connect" }
        let acquires = spans.filter { $0.operationName == "connpool.acquire" }
        #expect(connects.count == 2)
        #expect(connects.filter { $0.status?.code == .error }.count == 1)
        #expect(acquires.count == 3)
        let outcomes = acquires.compactMap { $0.attributes["connpool.outcome"]?.toSpanAttribute() }
        #expect(outcomes.contains(.string("ok")))
        #expect(outcomes.contains(.string("timeout")))
        let waits = acquires.compactMap { $0.attributes["connpool.wait_ns"]?.toSpanAttribute() }
        #expect(waits.contains(.int64(100_000_000)))
        await pool.shutdown()
    }
}

/// Captures log messages (with their metadata) for assertions.
final class LogCapture: @unchecked Sendable {
    // @unchecked Sendable: `lines` is only touched through `lock`.
    private let lock = NSLock()
    private var lines: [String] = []

    var messages: [String] { lock.withLock { lines } }

    var logger: Logger {
        Logger(label: "capture") { _ in Handler(capture: self) }
    }

    func append(_ line: String) { lock.withLock { lines.append(line) } }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let rendered = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.append("\(event.level) \(event.message) \(rendered)")
        }
    }
}
