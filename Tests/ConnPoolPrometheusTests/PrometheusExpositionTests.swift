import ConnPool
import ConnPoolTestSupport
import Foundation
import Prometheus
import Testing
@testable import ConnPoolPrometheus

/// A pool driven through a fixed sequence on a manual clock, so that every figure is known:
/// acquires waited 0 (×4), 5 ms and 100 ms; leases were held 0 (×3), 2 ms, 50 ms and 150 ms;
/// one connection lived 152 ms; 2 created, 1 failed attempt, 1 timeout, 1 closed as broken.
func scriptedPool(name: String = "orders") async throws -> ConnectionPool<MockFactory> {
    let clock = ManualClock()
    let factory = MockFactory([.suspend, .fail("refused")])
    let configuration = PoolConfiguration().maxSize(2).acquireTimeout(.seconds(1))
        .healthCheck(interval: nil).idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1))
        .circuitBreakerThreshold(nil).connectRetryBackoff(initial: .milliseconds(100), max: .milliseconds(100), jitter: 0)
        .recordsLeaseHoldTime(true).name(name)
    let pool = try ConnectionPool(factory: factory, configuration: configuration, clock: .manual(clock))
    let first = Task { LeaseHolder(try await pool.acquire()) }
    #expect(await eventually { factory.suspendedCount == 1 })
    clock.advance(by: .milliseconds(5))
    factory.resumeSuspended()
    let a = try await first.value
    clock.advance(by: .milliseconds(2))
    a.drop()
    for _ in 0..<3 { try await pool.withConnection { _ in } }
    let b = LeaseHolder(try await pool.acquire())
    let third = Task { LeaseHolder(try await pool.acquire()) }
    #expect(await eventually { factory.attempts == 2 && pool.metrics().connecting == 0 })
    clock.advance(by: .milliseconds(100))
    let c = try await third.value
    let timedOut = Task { try await pool.acquire(timeout: .milliseconds(50)).connection.id }
    #expect(await eventually { pool.metrics().waiting == 1 })
    clock.advance(by: .milliseconds(50))
    _ = try? await timedOut.value
    b.dropAsBroken()
    c.drop()
    #expect(await eventually { pool.metrics().closing == 0 })
    return pool
}

/// The `promtool` binary, from PATH or the Debian location.
func promtoolPath() -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    for directory in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"] {
        let candidate = directory + "/promtool"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// Runs `promtool check metrics` on `text` on a plain thread (the run waits for the child's output and
/// exit): its exit status and its output (stdout and stderr).
func promtoolCheck(_ text: String) async throws -> (status: Int32, output: String)? {
    try await onThread { try promtoolCheckBlocking(text) }
}

func promtoolCheckBlocking(_ text: String) throws -> (status: Int32, output: String)? {
    guard let promtool = promtoolPath() else { return nil }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: promtool)
    process.arguments = ["check", "metrics"]
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    try process.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The samples of a rendered exposition: `name{labels}` → value.
func samples(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else { continue }
        result[String(line[..<space])] = String(line[line.index(after: space)...])
    }
    return result
}

/// Exact decimal seconds back to nanoseconds ("0.000001024" → 1024).
func nanoseconds(fromSeconds text: String) -> UInt64? {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard let whole = UInt64(parts[0]) else { return nil }
    var fraction: UInt64 = 0
    if parts.count == 2 {
        guard parts[1].count <= 9, let digits = UInt64(parts[1]) else { return nil }
        fraction = digits * UInt64(pow(10, Double(9 - parts[1].count)))
    }
    return whole * 1_000_000_000 + fraction
}

@Suite("ConnPoolPrometheus: text exposition", .serialized, .processExclusive)
struct PrometheusExpositionTests {
    @Test("the exposition of pools (odd names too) plus a swift-prometheus registry passes promtool check metrics")
    func promtoolValidates() async throws {
        let orders = try await scriptedPool()
        let odd = try ConnectionPool(
            factory: MockFactory(), configuration: PoolConfiguration().name("we\"ird\\pool\nname {x=\"1\"} é"))
        let registry = try PoolMetricsRegistry(pools: [orders, odd])
        let app = PrometheusCollectorRegistry()
        app.makeCounter(
            descriptor: MetricNameDescriptor(metricName: "app_requests", unitName: "total", helpText: "Requests."),
            labels: [("route", "/x")]).increment(by: Int64(3))
        app.makeDurationHistogram(
            descriptor: MetricNameDescriptor(metricName: "app_request", unitName: "seconds", helpText: "Request time."),
            buckets: [.milliseconds(1), .seconds(1)]).record(.milliseconds(3))
        for layout in [PrometheusExposition.BucketLayout.octaves, .all] {
            var body = Array(registry.prometheusText(buckets: layout).utf8)
            app.emit(into: &body)
            let text = String(decoding: body, as: UTF8.self)
            guard let (status, output) = try await promtoolCheck(text) else {
                Issue.record("promtool is not installed: `apt-get install prometheus` (or run Scripts/install-deps.sh)")
                return
            }
            #expect(status == 0, "promtool check metrics failed (\(layout)):\n\(output)")
            #expect(output.isEmpty, "promtool check metrics reported (\(layout)):\n\(output)")
            print("promtool check metrics (\(layout), \(text.split(separator: "\n").count) lines): exit \(status), output: \"\(output)\"")
        }
        // The check must catch a broken exposition (so that a pass above means something).
        if let (status, output) = try await promtoolCheck("# TYPE x_total counter\nx_total{a=\"\\q\"} 1\n") {
            #expect(status != 0, "promtool accepted an invalid escape: \(output)")
        }
        await orders.shutdown()
        await odd.shutdown()
    }

    @Test("gauges, counters and histograms of a scripted pool, exactly")
    func exactValues() async throws {
        let pool = try await scriptedPool()
        let text = PrometheusExposition.render([pool.status()])
        let values = samples(text)
        let p = "pool=\"orders\""
        #expect(values["connpool_connections{\(p),state=\"idle\"}"] == "1")
        #expect(values["connpool_connections{\(p),state=\"in_use\"}"] == "0")
        #expect(values["connpool_waiting{\(p)}"] == "0")
        #expect(values["connpool_max_size{\(p)}"] == "2")
        #expect(values["connpool_health{\(p),state=\"degraded\"}"] == "0")
        #expect(values["connpool_health{\(p),state=\"healthy\"}"] == "1")
        #expect(values["connpool_acquires_total{\(p)}"] == "6")
        #expect(values["connpool_acquires_waited_total{\(p)}"] == "2")
        #expect(values["connpool_connections_created_total{\(p)}"] == "2")
        #expect(values["connpool_connect_failures_total{\(p)}"] == "1")
        #expect(values["connpool_acquire_timeouts_total{\(p)}"] == "1")
        #expect(values["connpool_waiters_shed_total{\(p)}"] == "0")
        #expect(values["connpool_connections_closed_total{\(p),reason=\"broken\"}"] == "1")
        #expect(values["connpool_connections_closed_total{\(p),reason=\"resize\"}"] == "0")
        #expect(values["connpool_connections_closed_total{\(p),reason=\"dirty\"}"] == "0")
        #expect(values["connpool_session_resets_total{\(p)}"] == "0")
        // acquire wait: 0 ×4, 5 ms, 100 ms.
        let wait = "connpool_acquire_wait_seconds"
        #expect(values["\(wait)_bucket{\(p),le=\"0.000001024\"}"] == "4")
        #expect(values["\(wait)_bucket{\(p),le=\"0.004194304\"}"] == "4")
        #expect(values["\(wait)_bucket{\(p),le=\"0.008388608\"}"] == "5")
        #expect(values["\(wait)_bucket{\(p),le=\"0.067108864\"}"] == "5")
        #expect(values["\(wait)_bucket{\(p),le=\"0.134217728\"}"] == "6")
        #expect(values["\(wait)_bucket{\(p),le=\"68.719476736\"}"] == "6")
        #expect(values["\(wait)_bucket{\(p),le=\"+Inf\"}"] == "6")
        #expect(values["\(wait)_sum{\(p)}"] == "0.105")
        #expect(values["\(wait)_count{\(p)}"] == "6")
        // lease hold: 0 ×3, 2 ms, 50 ms, 150 ms; lifetime: 152 ms.
        #expect(values["connpool_lease_hold_seconds_bucket{\(p),le=\"0.002097152\"}"] == "4")
        #expect(values["connpool_lease_hold_seconds_bucket{\(p),le=\"0.067108864\"}"] == "5")
        #expect(values["connpool_lease_hold_seconds_sum{\(p)}"] == "0.202")
        #expect(values["connpool_lease_hold_seconds_count{\(p)}"] == "6")
        #expect(values["connpool_connection_lifetime_seconds_bucket{\(p),le=\"0.134217728\"}"] == "0")
        #expect(values["connpool_connection_lifetime_seconds_bucket{\(p),le=\"0.268435456\"}"] == "1")
        #expect(values["connpool_connection_lifetime_seconds_sum{\(p)}"] == "0.152")
        #expect(values["connpool_connection_lifetime_seconds_count{\(p)}"] == "1")
        // Every family has one HELP and one TYPE line, each family's samples are contiguous.
        let types = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }
        #expect(types.count == 4 + 12 + 3)
        #expect(Set(types).count == types.count)
        await pool.shutdown()
    }

    @Test("bucket counts are cumulative and equal the snapshot's, +Inf and _count equal the acquires (both layouts)")
    func bucketsMatchSnapshot() async throws {
        let pool = try await scriptedPool()
        // More traffic, with waits spread over many buckets.
        let histogram = LatencyHistogram()
        for value: UInt64 in [0, 900, 1_024, 1_500, 77_777, 5_000_000, 123_456_789, 9_999_999_999, 200_000_000_000] {
            histogram.record(nanoseconds: value)
        }
        var status = pool.status()
        status.metrics.leaseHold = histogram.snapshot(extraZeros: 3)
        for layout in [PrometheusExposition.BucketLayout.octaves, .all] {
            let text = PrometheusExposition.render([status], buckets: layout)
            for (name, snapshot) in [("connpool_acquire_wait_seconds", status.metrics.acquireWait),
                                     ("connpool_lease_hold_seconds", status.metrics.leaseHold),
                                     ("connpool_connection_lifetime_seconds", status.metrics.connectionLifetime)] {
                let prefix = "\(name)_bucket{pool=\"orders\",le=\""
                let buckets = text.split(separator: "\n").filter { $0.hasPrefix(prefix) }
                #expect(buckets.count == (layout == .octaves ? 28 : 106))
                var previous: UInt64 = 0
                for line in buckets {
                    let le = line.dropFirst(prefix.count).prefix { $0 != "\"" }
                    let value = UInt64(line.split(separator: " ").last!)!
                    #expect(value >= previous, "\(line) is below the previous bucket")
                    previous = value
                    if le == "+Inf" {
                        #expect(value == snapshot.count)
                    } else {
                        // The snapshot's count of values below the bound.
                        let bound = nanoseconds(fromSeconds: String(le))!
                        let index = HistogramSnapshot.upperBounds.firstIndex(of: bound)
                        #expect(index != nil, "\(le) is not a bucket bound")
                        let expected = snapshot.counts[...(index ?? 0)].reduce(0, +)
                        #expect(value == expected, "\(line): expected \(expected)")
                    }
                }
                #expect(samples(text)["\(name)_count{pool=\"orders\"}"] == String(snapshot.count))
                #expect(samples(text)["\(name)_sum{pool=\"orders\"}"] == PrometheusExposition.seconds(nanoseconds: snapshot.sumNanoseconds))
            }
            #expect(samples(text)["connpool_acquire_wait_seconds_count{pool=\"orders\"}"] == String(status.metrics.acquires))
            #expect(samples(text)["connpool_lease_hold_seconds_count{pool=\"orders\"}"] == "12")
        }
        await pool.shutdown()
    }

    @Test("label values are escaped; decimal seconds are exact")
    func escaping() throws {
        #expect(PrometheusExposition.escapeLabelValue("plain-name_1") == "plain-name_1")
        #expect(PrometheusExposition.escapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
        #expect(PrometheusExposition.escapeLabelValue("é ünïcode {x=\"1\"}") == "é ünïcode {x=\\\"1\\\"}")
        var status = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("a\"b\\c\nd")).status()
        status.metrics.maxSize = 7
        let text = PrometheusExposition.render([status])
        #expect(text.contains("\nconnpool_max_size{pool=\"a\\\"b\\\\c\\nd\"} 7\n"))
        #expect(!text.contains("a\"b"))
        #expect(PrometheusExposition.seconds(nanoseconds: 0) == "0")
        #expect(PrometheusExposition.seconds(nanoseconds: 1_024) == "0.000001024")
        #expect(PrometheusExposition.seconds(nanoseconds: 1_500_000_000) == "1.5")
        #expect(PrometheusExposition.seconds(nanoseconds: 2_000_000_000) == "2")
        #expect(PrometheusExposition.seconds(nanoseconds: 68_719_476_736) == "68.719476736")
        #expect(PrometheusExposition.seconds(nanoseconds: 1) == "0.000000001")
    }

    @Test("the registry refuses a second pool of the same name; pools come and go")
    func registry() throws {
        let a = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("a"))
        let a2 = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("a"))
        let b = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("b"))
        let registry = try PoolMetricsRegistry(pools: [a])
        #expect(throws: PoolMetricsRegistryError.duplicateName("a")) { try registry.register(a2) }
        #expect(throws: PoolMetricsRegistryError.duplicateName("a")) { try PoolMetricsRegistry(pools: [a, a2]) }
        try registry.register(a)  // the same pool again: nothing happens
        try registry.register(b)
        #expect(registry.statuses().map(\.name) == ["a", "b"])
        registry.unregister(a)
        try registry.register(a2)
        #expect(registry.statuses().map(\.name) == ["b", "a"])
        #expect(registry.registered.count == 2)
        #expect(PrometheusExposition.render([]).contains("# TYPE connpool_acquires_total counter"))
    }
}
