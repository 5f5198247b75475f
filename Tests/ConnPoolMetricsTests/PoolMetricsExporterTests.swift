import ConnPool
import ConnPoolTestSupport
import Foundation
import Metrics
import MetricsTestKit
import Testing
@testable import ConnPoolMetrics

@Suite("ConnPoolMetrics: swift-metrics export", .serialized, .processExclusive)
struct PoolMetricsExporterTests {
    static let quiet = PoolConfiguration().maxSize(2).acquireTimeout(.seconds(1))
        .healthCheck(interval: nil).idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1))
        .circuitBreakerThreshold(nil).connectRetryBackoff(initial: .milliseconds(100), max: .milliseconds(100), jitter: 0)
        .recordsLeaseHoldTime(true)

    static let pool = [("pool", "orders")]

    static let counterNames = [
        "connpool_acquires_total", "connpool_acquires_waited_total", "connpool_connections_created_total",
        "connpool_connect_failures_total", "connpool_acquire_timeouts_total", "connpool_health_check_failures_total",
        "connpool_acquires_failed_fast_total", "connpool_waiters_shed_total", "connpool_waiters_cancelled_total",
        "connpool_leaks_detected_total", "connpool_session_resets_total",
    ]

    static func gaugeValues(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)]) throws -> [Double] {
        try metrics.expectGauge(label, dimensions).values
    }

    static func counterValues(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)] = pool) throws -> [Int64] {
        try metrics.expectCounter(label, dimensions).values
    }

    static func timerValues(_ metrics: TestMetrics, _ label: String) throws -> [Int64] {
        try metrics.expectTimer(label, pool).values
    }

    @Test("a scripted sequence on a manual clock: gauges, counter deltas and timer replays, exactly")
    func scriptedSequence() async throws {
        let clock = ManualClock()
        let factory = MockFactory([.suspend, .fail("refused")])
        let pool = try ConnectionPool(
            factory: factory, configuration: Self.quiet.name("orders"), clock: .manual(clock))
        let metrics = TestMetrics()
        let exporter = pool.exportMetrics(every: .seconds(10), factory: metrics)
        #expect(exporter.poolName == "orders")

        // Every instrument exists from the start, with the pool dimension, and nothing recorded yet.
        for name in Self.counterNames { #expect(try Self.counterValues(metrics, name) == []) }
        for reason in CloseReason.allCases {
            #expect(try Self.counterValues(metrics, "connpool_connections_closed_total", Self.pool + [("reason", reason.rawValue)]) == [])
        }
        #expect(try Self.gaugeValues(metrics, "connpool_waiting", Self.pool) == [])

        // A: waits 5 ms for the first connection (its creation is suspended), holds it 2 ms.
        let first = Task { LeaseHolder(try await pool.acquire()) }
        #expect(await eventually { factory.suspendedCount == 1 })
        clock.advance(by: .milliseconds(5))                    // t = 5 ms
        factory.resumeSuspended()
        let a = try await first.value
        clock.advance(by: .milliseconds(2))                    // t = 7 ms
        a.drop()
        // Three acquires served at once, held for no time.
        for _ in 0..<3 { try await pool.withConnection { _ in } }
        // B: served at once (t = 7 ms). C: needs a second connection; the first attempt fails, the
        // retry after the 100 ms backoff succeeds: C waited 100 ms.
        let b = LeaseHolder(try await pool.acquire())
        let third = Task { LeaseHolder(try await pool.acquire()) }
        #expect(await eventually { factory.attempts == 2 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(100))                  // t = 107 ms
        let c = try await third.value
        // A fourth acquire times out after 50 ms.
        let timedOut = Task { try await pool.acquire(timeout: .milliseconds(50)).connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        clock.advance(by: .milliseconds(50))                   // t = 157 ms
        await #expect(throws: ConnectionPoolError.self) { try await timedOut.value }
        // B is returned broken (held 150 ms; its connection lived 152 ms), C normally (held 50 ms).
        b.dropAsBroken()
        c.drop()
        #expect(await eventually { pool.metrics().closing == 0 })
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [])  // not yet exported

        clock.advance(by: .seconds(10) - .milliseconds(157))  // t = 10 s: the first export
        let gauges: [(String, Double)] = [("idle", 1), ("in_use", 0), ("connecting", 0), ("closing", 0), ("validating", 0)]
        for (state, value) in gauges {
            #expect(try Self.gaugeValues(metrics, "connpool_connections", Self.pool + [("state", state)]) == [value])
        }
        #expect(try Self.gaugeValues(metrics, "connpool_waiting", Self.pool) == [0])
        #expect(try Self.gaugeValues(metrics, "connpool_max_size", Self.pool) == [2])
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [6])  // A, 3, B, C
        #expect(try Self.counterValues(metrics, "connpool_acquires_waited_total") == [2])  // A, C
        #expect(try Self.counterValues(metrics, "connpool_connections_created_total") == [2])
        #expect(try Self.counterValues(metrics, "connpool_connect_failures_total") == [1])
        #expect(try Self.counterValues(metrics, "connpool_acquire_timeouts_total") == [1])
        for name in ["connpool_health_check_failures_total", "connpool_acquires_failed_fast_total",
                     "connpool_waiters_shed_total", "connpool_waiters_cancelled_total", "connpool_leaks_detected_total",
                     "connpool_session_resets_total"] {
            #expect(try Self.counterValues(metrics, name) == [], "\(name)")
        }
        #expect(try Self.counterValues(metrics, "connpool_connections_closed_total", Self.pool + [("reason", "broken")]) == [1])
        #expect(try Self.counterValues(metrics, "connpool_connections_closed_total", Self.pool + [("reason", "shutdown")]) == [])

        // Replayed at each bucket's midpoint, clamped to the recorded min and max; under 1 µs as 0.
        //   5 ms   -> bucket [4_194_304, 5_242_880)       -> 4_718_592
        //   100 ms -> bucket [83_886_080, 100_663_296)    -> 92_274_688
        #expect(try Self.timerValues(metrics, "connpool_acquire_wait_seconds") == [0, 0, 0, 0, 4_718_592, 92_274_688])
        //   2 ms   -> bucket [1_835_008, 2_097_152)       -> 1_966_080
        //   50 ms  -> bucket [41_943_040, 50_331_648)     -> 46_137_344
        //   150 ms -> bucket [134_217_728, 167_772_160)   -> midpoint 150_994_944 > max: 150_000_000
        #expect(try Self.timerValues(metrics, "connpool_lease_hold_seconds") == [0, 0, 0, 1_966_080, 46_137_344, 150_000_000])
        //   152 ms -> bucket [134_217_728, 167_772_160)   -> clamped to min = max = 152_000_000
        #expect(try Self.timerValues(metrics, "connpool_connection_lifetime_seconds") == [152_000_000])

        // Second interval: D held 1 s, and two acquires served at once.
        let d = LeaseHolder(try await pool.acquire())
        clock.advance(by: .seconds(1))                         // t = 11 s
        d.drop()
        for _ in 0..<2 { try await pool.withConnection { _ in } }
        clock.advance(by: .seconds(9))                         // t = 20 s: the second export
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [6, 3])  // increments: the deltas
        #expect(try metrics.expectCounter("connpool_acquires_total", Self.pool).totalValue == 9)
        #expect(try Self.counterValues(metrics, "connpool_acquires_waited_total") == [2])  // unchanged: no increment
        #expect(try Self.counterValues(metrics, "connpool_connections_created_total") == [2])
        #expect(try Self.gaugeValues(metrics, "connpool_connections", Self.pool + [("state", "idle")]) == [1, 1])
        #expect(try Self.timerValues(metrics, "connpool_acquire_wait_seconds") == [0, 0, 0, 0, 4_718_592, 92_274_688, 0, 0, 0])
        //   1 s -> bucket [939_524_096, 1_073_741_824) -> midpoint 1_006_632_960 > max: 1_000_000_000
        #expect(try Self.timerValues(metrics, "connpool_lease_hold_seconds")
            == [0, 0, 0, 1_966_080, 46_137_344, 150_000_000, 0, 0, 1_000_000_000])
        #expect(try Self.timerValues(metrics, "connpool_connection_lifetime_seconds") == [152_000_000])

        // stop(): one last export (nothing new: gauges set again, no counter moves), then no more.
        exporter.stop()
        #expect(try Self.gaugeValues(metrics, "connpool_max_size", Self.pool) == [2, 2, 2])
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [6, 3])
        clock.advance(by: .seconds(30))
        #expect(try Self.gaugeValues(metrics, "connpool_max_size", Self.pool) == [2, 2, 2])
        exporter.stop()  // a second stop does nothing
        #expect(try Self.gaugeValues(metrics, "connpool_max_size", Self.pool) == [2, 2, 2])
        await pool.shutdown()
    }

    @Test("exportNow reports at once; shutdown's closes reach the counters; the pool is not kept alive")
    func exportNowAndShutdown() async throws {
        let clock = ManualClock()
        let metrics = TestMetrics()
        var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
            factory: MockFactory(), configuration: Self.quiet.name("orders"), clock: .manual(clock))
        let exporter = pool!.exportMetrics(every: .seconds(10), factory: metrics)
        try await pool!.withConnection { _ in }
        exporter.exportNow()
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [1])
        #expect(try Self.gaugeValues(metrics, "connpool_connections", Self.pool + [("state", "idle")]) == [1])
        await pool!.shutdown()
        exporter.exportNow()
        #expect(try Self.counterValues(metrics, "connpool_connections_closed_total", Self.pool + [("reason", "shutdown")]) == [1])
        #expect(try Self.gaugeValues(metrics, "connpool_connections", Self.pool + [("state", "idle")]) == [1, 0])
        // The exporter holds the pool weakly: dropping the pool frees it, and the exporter then does nothing.
        weak let weakPool = pool
        pool = nil
        #expect(weakPool == nil)
        exporter.exportNow()
        exporter.stop()
        #expect(try Self.gaugeValues(metrics, "connpool_connections", Self.pool + [("state", "idle")]) == [1, 0])
    }

    @Test("bounded replay: a million values cost a bounded number of samples and keep the shape")
    func boundedReplay() throws {
        let metrics = TestMetrics()
        let exporter = PoolMetricsExporter(
            poolName: "orders", factory: metrics, options: .init(maxSamplesPerExport: 100))
        let fast = Self.bucket(of: 5_000)        // [4_096, 5_120)
        let slow = Self.bucket(of: 3_000_000_000) // [2_684_354_560, 3_221_225_472)
        var snapshot = PoolMetrics(idle: 0, inUse: 0, connecting: 0, closing: 0, validating: 0, waiting: 0, maxSize: 1)
        snapshot.acquires = 1_000_010
        snapshot.acquireWait.counts[fast] = 1_000_000
        snapshot.acquireWait.counts[slow] = 10
        snapshot.acquireWait.count = 1_000_010
        snapshot.acquireWait.minNanoseconds = 4_500
        snapshot.acquireWait.maxNanoseconds = 3_100_000_000
        exporter.export(snapshot)
        // 1_000_000 × 100 / 1_000_010 = 99.99 -> 99; 10 × 100 / 1_000_010 -> 0, but kept as 1 (the tail).
        var values = try Self.timerValues(metrics, "connpool_acquire_wait_seconds")
        #expect(values == Array(repeating: 4_608, count: 99) + [2_952_790_016])
        #expect(try Self.counterValues(metrics, "connpool_acquires_total") == [1_000_010])  // counters stay exact

        // The next export replays only what was added: 50 values, under the bound: exact.
        snapshot.acquireWait.counts[fast] += 50
        snapshot.acquireWait.count += 50
        exporter.export(snapshot)
        values = try Self.timerValues(metrics, "connpool_acquire_wait_seconds")
        #expect(values.count == 100 + 50)
        #expect(values.suffix(50) == Array(repeating: 4_608, count: 50))
    }

    @Test("replay counts: exact under the bound, scaled with a floor of one above it, deltas per bucket")
    func replayCounts() {
        var previous = HistogramSnapshot.empty
        previous.counts[3] = 5
        var current = previous
        current.counts[3] = 8
        current.counts[10] = 2
        var counts = PoolMetricsExporter.replayCounts(current, previous: previous, maxSamples: 10)
        #expect(counts[3] == 3 && counts[10] == 2 && counts.reduce(0, +) == 5)
        current.counts[20] = 1_000
        counts = PoolMetricsExporter.replayCounts(current, previous: previous, maxSamples: 10)
        #expect(counts[3] == 1 && counts[10] == 1 && counts[20] == 9)  // 1_000 × 10 / 1_005 = 9.95
        // Whatever the traffic, an export stays under maxSamples + the number of buckets.
        var huge = HistogramSnapshot.empty
        for index in huge.counts.indices { huge.counts[index] = UInt64(index + 1) * 1_000_000_000 }
        counts = PoolMetricsExporter.replayCounts(huge, previous: nil, maxSamples: 1_000)
        #expect(counts.reduce(0, +) <= 1_000 + UInt64(HistogramSnapshot.bucketCount))
        #expect(counts.allSatisfy { $0 >= 1 })
        // Representative values: 0 for the first bucket, the max for the overflow bucket.
        var snapshot = HistogramSnapshot.empty
        snapshot.maxNanoseconds = 100_000_000_000
        #expect(PoolMetricsExporter.representativeNanoseconds(bucket: 0, of: snapshot) == 0)
        #expect(PoolMetricsExporter.representativeNanoseconds(bucket: HistogramSnapshot.bucketCount - 1, of: snapshot)
            == 100_000_000_000)
        #expect(PoolMetricsExporter.representativeNanoseconds(bucket: 1, of: snapshot) == 1_024 + 128)
    }

    @Test("a counter lower than at the previous export counts as restarted; odd pool names pass as they are")
    func restartAndOddNames() throws {
        let metrics = TestMetrics()
        let name = "db \"main\"\\\nzone=a,b"
        let exporter = PoolMetricsExporter(poolName: name, factory: metrics)
        var snapshot = PoolMetrics(idle: 1, inUse: 0, connecting: 0, closing: 0, validating: 0, waiting: 0, maxSize: 4)
        snapshot.acquires = 10
        snapshot.closedByReason[.idle] = 2
        exporter.export(snapshot)
        snapshot.acquires = 4
        snapshot.closedByReason[.idle] = 3
        exporter.export(snapshot)
        #expect(try metrics.expectCounter("connpool_acquires_total", [("pool", name)]).values == [10, 4])
        #expect(try metrics.expectCounter("connpool_connections_closed_total", [("pool", name), ("reason", "idle")]).values == [2, 1])
        #expect(try metrics.expectGauge("connpool_max_size", [("pool", name)]).values == [4, 4])
    }

    @Test("scheduled exports, exportNow and acquires on several threads: every acquire counted once")
    func concurrentExports() async throws {
        let clock = ManualClock()
        let metrics = TestMetrics()
        let pool = try ConnectionPool(
            factory: MockFactory(), configuration: Self.quiet.name("orders").maxSize(4), clock: .manual(clock))
        // A bound no export reaches, so that the timers get every value.
        let exporter = pool.exportMetrics(
            every: .milliseconds(1), factory: metrics, options: .init(maxSamplesPerExport: 1_000_000))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask { for _ in 0..<500 { try? await pool.withConnection { _ in } } }
            }
            for _ in 0..<2 {
                group.addTask { for _ in 0..<300 { exporter.exportNow(); await Task.yield() } }
            }
            // The scheduled exports, on the thread advancing the clock.
            group.addTask { for _ in 0..<300 { clock.advance(by: .milliseconds(1)); await Task.yield() } }
        }
        exporter.stop()
        let final = pool.metrics()
        #expect(final.acquires == 2_000)
        #expect(try metrics.expectCounter("connpool_acquires_total", Self.pool).totalValue == 2_000)
        #expect(try Self.timerValues(metrics, "connpool_acquire_wait_seconds").count == Int(final.acquireWait.count))
        #expect(try Self.timerValues(metrics, "connpool_lease_hold_seconds").count == Int(final.leaseHold.count))
        await pool.shutdown()
    }

    /// The bucket index of a value, from the public bounds.
    static func bucket(of nanoseconds: UInt64) -> Int {
        HistogramSnapshot.upperBounds.firstIndex { nanoseconds < $0 } ?? HistogramSnapshot.upperBounds.count
    }
}
