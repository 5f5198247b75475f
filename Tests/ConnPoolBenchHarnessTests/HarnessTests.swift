import ConnPool
import Foundation
import Synchronization
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

@testable import ConnPoolBenchHarness
import ConnPoolTestSupport

/// An in-memory connection: no I/O. It detects being used by two callers at once.
final class MemoryConnection: Connection {
    let id: Int
    private let inUse = Atomic<Bool>(false)
    let closed = Atomic<Bool>(false)

    init(id: Int) { self.id = id }

    func isValid(timeout: Duration) async -> Bool { true }
    func isValidBlocking(timeout: Duration) -> Bool { true }
    func close() async { closed.store(true, ordering: .relaxed) }
    func closeBlocking() { closed.store(true, ordering: .relaxed) }

    /// Runs `body` as one exclusive use; throws ``MemoryError/concurrentUse`` if someone else is inside.
    func use<T>(_ body: () throws -> T) throws -> T {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            throw MemoryError.concurrentUse
        }
        defer { inUse.store(false, ordering: .releasing) }
        return try body()
    }
}

/// Counts the connections it makes and can make the n-th fail.
final class MemoryFactory: ConnectionFactory {
    let made = Atomic<Int>(0)

    func makeConnection() async throws -> MemoryConnection {
        MemoryConnection(id: made.add(1, ordering: .relaxed).newValue)
    }

    func makeConnectionBlocking() throws -> MemoryConnection {
        MemoryConnection(id: made.add(1, ordering: .relaxed).newValue)
    }
}

enum MemoryError: Error {
    case concurrentUse
    case timeout(after: Int)
}

struct OtherFailure: Error {}

/// Records which request indices an operation saw, and how often it ran.
///
/// `@unchecked Sendable` is safe because `seen` is only read and written with `lock` held (an NSLock:
/// `Synchronization.Mutex` draws false ThreadSanitizer reports when contended on this platform).
final class IndexLog: @unchecked Sendable {
    let count = Atomic<Int>(0)
    private let lock = NSLock()
    private var seen: [Int: Int] = [:]

    func note(_ index: Int) {
        count.add(1, ordering: .relaxed)
        lock.withLock { seen[index, default: 0] += 1 }
    }

    var indices: [Int: Int] { lock.withLock { seen } }
}

func countingOperation(_ log: IndexLog) -> BenchOperation<MemoryConnection> {
    BenchOperation(
        run: { connection, index in
            try connection.use { log.note(index) }
            await Task.yield()
        },
        runBlocking: { connection, index in try connection.use { log.note(index) } })
}

func harness(_ factory: MemoryFactory) -> BenchHarness<MemoryFactory> {
    BenchHarness(factory: factory, connectBlocking: { try factory.makeConnectionBlocking() }, showProgress: false)
}

@Suite("Harness runs", .serialized, .processExclusive)
struct HarnessRunTests {
    @Test(
        "runs the exact request count, each index once",
        arguments: [BenchMode.async, .sync], [BenchBaseline.pooled, .perRequest, .shared])
    func exactRequestCount(mode: BenchMode, baseline: BenchBaseline) async throws {
        let factory = MemoryFactory()
        let log = IndexLog()
        let requests = baseline == .perRequest ? 500 : 3_000
        let spec = BenchRunSpec(
            backend: "mock", workload: "count", mode: mode, baseline: baseline, concurrency: 7, poolSize: 3,
            stop: .requests(requests))
        let result = try await harness(factory).run(spec, operation: countingOperation(log))

        #expect(result.requests == requests)
        #expect(result.errors == 0, "\(result.errorsByType)")
        #expect(log.count.load(ordering: .relaxed) == requests)
        let indices = log.indices
        #expect(indices.count == requests)
        #expect(indices.keys.min() == 0 && indices.keys.max() == requests - 1)
        #expect(indices.values.allSatisfy { $0 == 1 })
        #expect(result.opsPerSecond > 0)
        #expect(result.durationSeconds > 0)
        #expect(result.baseline == baseline)
        #expect(result.mode == mode.rawValue)
        #expect(result.concurrency == 7)
        #expect(result.poolSize == 3)

        let opened = factory.made.load(ordering: .relaxed)
        switch baseline {
        case .pooled: #expect(opened >= 1 && opened <= 3)
        case .perRequest: #expect(opened == requests)
        case .shared: #expect(opened == 1)
        case .redisBenchmark: Issue.record("not runnable")
        }
    }

    @Test("warm-up requests run first and are not counted")
    func warmupIsNotCounted() async throws {
        let log = IndexLog()
        let spec = BenchRunSpec(
            backend: "mock", workload: "count", mode: .async, concurrency: 4, stop: .requests(1_000),
            warmupRequests: 250)
        let result = try await harness(MemoryFactory()).run(spec, operation: countingOperation(log))
        #expect(result.requests == 1_000)
        #expect(log.count.load(ordering: .relaxed) == 1_250)
        // The client's CPU per request is measured (this process's, over the measured phase).
        let cpu = try #require(result.clientCPUMicrosecondsPerOp)
        #expect(cpu >= 0)
    }

    @Test("the per-request baseline is capped")
    func perRequestCap() async throws {
        let factory = MemoryFactory()
        let spec = BenchRunSpec(
            backend: "mock", workload: "count", mode: .sync, baseline: .perRequest, concurrency: 2,
            stop: .requests(10_000), perRequestCap: 300)
        let result = try await harness(factory).run(spec, operation: countingOperation(IndexLog()))
        #expect(result.requests == 300)
        #expect(factory.made.load(ordering: .relaxed) == 300)
    }

    @Test("a duration run of the per-request baseline also stops at the cap")
    func perRequestCapInDurationRun() async throws {
        let factory = MemoryFactory()
        let spec = BenchRunSpec(
            backend: "mock", workload: "count", mode: .async, baseline: .perRequest, concurrency: 3,
            stop: .duration(.seconds(30)), perRequestCap: 200)
        let result = try await harness(factory).run(spec, operation: countingOperation(IndexLog()))
        #expect(result.requests == 200)
        #expect(result.durationSeconds < 10)
    }

    @Test("a duration run stops on time", arguments: [BenchMode.async, .sync])
    func durationRun(mode: BenchMode) async throws {
        let log = IndexLog()
        let spec = BenchRunSpec(
            backend: "mock", workload: "count", mode: mode, concurrency: 3, stop: .duration(.milliseconds(1_000)))
        let result = try await harness(MemoryFactory()).run(spec, operation: countingOperation(log))
        // Ends at the deadline plus the requests in flight (generous bounds: CI may run under TSan on a
        // busy machine).
        #expect(result.durationSeconds >= 0.99 && result.durationSeconds < 10)
        #expect(result.requests > 0)
        #expect(result.requests == log.count.load(ordering: .relaxed))
        #expect(result.errors == 0)
    }

    @Test("errors are counted by type and the run goes on", arguments: [BenchMode.async, .sync])
    func errorsByType(mode: BenchMode) async throws {
        let failing = BenchOperation<MemoryConnection>(
            run: { _, index in try Self.failByIndex(index) },
            runBlocking: { _, index in try Self.failByIndex(index) })
        let spec = BenchRunSpec(backend: "mock", workload: "fail", mode: mode, concurrency: 5, stop: .requests(1_000))
        let result = try await harness(MemoryFactory()).run(spec, operation: failing)
        // Indices 0..<1000: multiples of 25 throw OtherFailure (40), other multiples of 10 a timeout (80).
        #expect(result.requests == 1_000)
        #expect(result.errors == 120)
        #expect(result.errorsByType == ["OtherFailure": 40, "MemoryError.timeout": 80])
        #expect(result.opsPerSecond > 0)
    }

    static func failByIndex(_ index: Int) throws {
        if index % 25 == 0 { throw OtherFailure() }
        if index % 10 == 0 { throw MemoryError.timeout(after: index) }
    }

    @Test("a custom error categorizer is used")
    func customCategorizer() async throws {
        var bench = harness(MemoryFactory())
        bench.errorCategory = { _ in "custom" }
        let failing = BenchOperation<MemoryConnection>(
            run: { _, _ in throw OtherFailure() }, runBlocking: { _, _ in throw OtherFailure() })
        let spec = BenchRunSpec(backend: "mock", workload: "fail", mode: .async, concurrency: 2, stop: .requests(10))
        let result = try await bench.run(spec, operation: failing)
        #expect(result.errorsByType == ["custom": 10])
        #expect(result.opsPerSecond == 0)
    }

    @Test("the shared baseline serializes its workers on one connection", arguments: [BenchMode.async, .sync])
    func sharedSerializes(mode: BenchMode) async throws {
        let factory = MemoryFactory()
        // Holds the connection across a suspension (async) or a short sleep (sync): a second user would be seen.
        let operation = BenchOperation<MemoryConnection>(
            run: { connection, _ in
                try connection.use {}
                await Task.yield()
                try connection.use {}
            },
            runBlocking: { connection, _ in try connection.use { _ = usleep(20) } })
        let spec = BenchRunSpec(
            backend: "mock", workload: "hold", mode: mode, baseline: .shared, concurrency: 8, stop: .requests(2_000))
        let result = try await harness(factory).run(spec, operation: operation)
        #expect(result.errors == 0, "\(result.errorsByType)")
        #expect(factory.made.load(ordering: .relaxed) == 1)
    }

    @Test("a matrix of specs runs in order, pooled next to its baselines")
    func matrix() async throws {
        let template = BenchRunSpec(backend: "mock", workload: "count", mode: .async, concurrency: 1, stop: .requests(50))
        let specs = BenchRunSpec.matrix(template, concurrencyLevels: [1, 4], modes: [.async, .sync])
        #expect(specs.count == 12)
        #expect(specs.prefix(3).map(\.baseline) == [.shared, .pooled, .perRequest])
        #expect(specs.map(\.concurrency) == [1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4])
        #expect(specs.map(\.poolSize) == specs.map(\.concurrency))
        var seen = 0
        let results = try await harness(MemoryFactory()).run(specs, operation: countingOperation(IndexLog())) { _ in
            seen += 1
        }
        #expect(seen == 12)
        #expect(results.map(\.requests) == Array(repeating: 50, count: 12))
        #expect(results.map(\.mode) == specs.map(\.mode.rawValue))
    }

    @Test("an invalid spec is rejected")
    func invalidSpec() async throws {
        let bench = harness(MemoryFactory())
        let operation = countingOperation(IndexLog())
        await #expect(throws: BenchError.self) {
            try await bench.run(
                BenchRunSpec(backend: "m", workload: "w", mode: .async, concurrency: 0, stop: .requests(1)),
                operation: operation)
        }
        await #expect(throws: BenchError.self) {
            try await bench.run(
                BenchRunSpec(
                    backend: "m", workload: "w", mode: .async, baseline: .redisBenchmark, concurrency: 1,
                    stop: .requests(1)),
                operation: operation)
        }
    }
}

@Suite("Latency percentiles")
struct LatencyTests {
    @Test("percentiles of known latencies")
    func knownLatencies() {
        var recorder = LatencyRecorder()
        // 1 µs ... 1000 µs, once each.
        for microseconds in 1...1_000 { recorder.record(nanoseconds: UInt64(microseconds) * 1_000) }
        let summary = recorder.summary
        func close(_ value: Double, _ expected: Double) -> Bool { abs(value - expected) <= expected * 0.002 }
        #expect(close(summary.p50, 500), "p50 \(summary.p50)")
        #expect(close(summary.p90, 900), "p90 \(summary.p90)")
        #expect(close(summary.p99, 990), "p99 \(summary.p99)")
        #expect(close(summary.p999, 999), "p99.9 \(summary.p999)")
        #expect(close(summary.max, 1_000), "max \(summary.max)")
        #expect(close(summary.mean, 500.5), "mean \(summary.mean)")
        #expect(recorder.successes == 1_000)
    }

    @Test("merging recorders adds latencies and errors")
    func merge() {
        var fast = LatencyRecorder()
        var slow = LatencyRecorder()
        for _ in 0..<900 { fast.record(nanoseconds: 10_000) }
        for _ in 0..<100 { slow.record(nanoseconds: 2_000_000) }
        fast.recordError(category: "A")
        slow.recordError(category: "A")
        slow.recordError(category: "B")
        fast.merge(slow)
        #expect(fast.successes == 1_000)
        #expect(fast.requests == 1_003)
        #expect(fast.errors == ["A": 2, "B": 1])
        let summary = fast.summary
        #expect(abs(summary.p50 - 10) < 0.05)
        #expect(abs(summary.p90 - 10) < 0.05)
        #expect(abs(summary.p99 - 2_000) < 2)
        #expect(abs(summary.max - 2_000) < 2)
    }

    @Test("an empty recorder reports zeros; huge latencies are clamped")
    func edges() {
        #expect(LatencyRecorder().summary == LatencySummary(p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0))
        var recorder = LatencyRecorder()
        recorder.record(nanoseconds: .max)
        #expect(recorder.summary.max >= 59_000_000)
    }
}

@Suite("Reports")
struct ReportTests {
    static func sample() -> [BenchResult] {
        func result(_ baseline: BenchBaseline, _ mode: String, _ concurrency: Int, _ ops: Double) -> BenchResult {
            BenchResult(
                backend: "redis", workload: "ping", mode: mode, baseline: baseline, concurrency: concurrency,
                poolSize: concurrency, requests: 1_000, commandsPerRequest: 1, durationSeconds: 1_000 / ops,
                opsPerSecond: ops, latency: LatencySummary(p50: 20, p90: 30, p99: 50, p999: 90, max: 200, mean: 22),
                errors: baseline == .perRequest ? 2 : 0,
                errorsByType: baseline == .perRequest ? ["RedisError.timeout": 2] : [:], rssBeforeBytes: 10 << 20,
                rssAfterBytes: 10 << 20)
        }
        var results: [BenchResult] = []
        for concurrency in [1, 8, 50] {
            let scale = Double(concurrency == 1 ? 1 : 3)
            results += [
                result(.shared, "async", concurrency, 20_000),
                result(.pooled, "async", concurrency, 19_000 * scale),
                result(.perRequest, "async", concurrency, 3_000 * scale),
                result(.shared, "sync", concurrency, 30_000),
                result(.pooled, "sync", concurrency, 29_000 * scale),
                result(.perRequest, "sync", concurrency, 4_000 * scale),
                .external(
                    backend: "redis", workload: "ping", concurrency: concurrency, requests: 1_000,
                    opsPerSecond: 25_000 * scale, p50Microseconds: 31, p99Microseconds: 63, maxMicroseconds: 300),
            ]
        }
        return results
    }

    @Test("JSON has the agreed keys and values")
    func jsonKeys() throws {
        let text = try BenchReport.json(Self.sample())
        let array = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        #expect(array.count == 21)
        let required = [
            "backend", "workload", "mode", "concurrency", "pool_size", "requests", "ops_per_sec", "p50_us", "p99_us",
            "p999_us", "errors", "baseline", "p90_us", "max_us", "errors_by_type", "duration_s",
        ]
        for object in array {
            for key in required { #expect(object.keys.contains(key), "missing \(key)") }
            let baseline = try #require(object["baseline"] as? String)
            #expect(["pooled", "per-request", "shared", "redis-benchmark"].contains(baseline))
        }
        let external = try #require(array.first { $0["baseline"] as? String == "redis-benchmark" })
        #expect(external["p999_us"] is NSNull)
        #expect(external["pool_size"] is NSNull)
        #expect(external["mode"] as? String == "external")
        let perRequest = try #require(array.first { $0["baseline"] as? String == "per-request" })
        #expect((perRequest["errors_by_type"] as? [String: Int]) == ["RedisError.timeout": 2])
        #expect(perRequest["errors"] as? Int == 2)

        // And it decodes back.
        let decoded = try BenchReport.results(fromJSON: text)
        #expect(decoded.count == 21)
        #expect(decoded[1].baseline == .pooled && decoded[1].opsPerSecond == 19_000)
    }

    @Test("comparisons: ratios and the pool overhead at concurrency 1")
    func comparisons() throws {
        let results = Self.sample()
        let pooledAsync1 = try #require(results.first { $0.baseline == .pooled && $0.mode == "async" && $0.concurrency == 1 })
        let comparison = BenchReport.comparison(for: pooledAsync1, in: results)
        #expect(abs(comparison.versusRedisBenchmark! - 0.76) < 1e-9)
        #expect(abs(comparison.versusPerRequest! - 19_000.0 / 3_000) < 1e-9)
        #expect(abs(comparison.versusShared! - 0.95) < 1e-9)
        #expect(abs(comparison.poolOverhead! - 0.05) < 1e-9)
        #expect(abs(comparison.medianVersusRedisBenchmark! - 31.0 / 20) < 1e-9)
        #expect(abs(comparison.medianPoolOverhead!) < 1e-9)
        let pooledSync8 = try #require(results.first { $0.baseline == .pooled && $0.mode == "sync" && $0.concurrency == 8 })
        let comparison8 = BenchReport.comparison(for: pooledSync8, in: results)
        #expect(comparison8.poolOverhead == nil)
        #expect(comparison8.medianPoolOverhead == nil)
        #expect(abs(comparison8.versusShared! - 2.9) < 1e-9)
        #expect(BenchReport.comparison(for: results[0], in: results) == BenchComparison())
    }

    @Test("the table is aligned and shows the ratios")
    func table() {
        let table = BenchReport.table(Self.sample())
        let lines = table.split(separator: "\n")
        #expect(lines.count == 2 + 21)
        #expect(lines[0].hasPrefix("backend"))
        #expect(lines[0].contains("vs r-b") && lines[0].contains("overhead"))
        #expect(table.contains("0.76x"))
        #expect(table.contains("5.0%"))
        #expect(table.contains("2 (RedisError.timeout)"))
        // Right-aligned numeric column: every row's "ops/s" cell ends at the same column as the header.
        let header = String(lines[0])
        let end = header.range(of: "ops/s")!.upperBound.utf16Offset(in: header)
        for line in lines.dropFirst(2) {
            let text = String(line)
            let index = text.utf16.index(text.utf16.startIndex, offsetBy: end - 1)
            #expect(text.utf16[index] != 32, "misaligned: \(text)")
        }
    }

    @Test("without baselines the ratio columns are left out")
    func tableWithoutBaselines() {
        let table = BenchReport.table(Self.sample().filter { $0.baseline == .pooled })
        #expect(!table.contains("vs r-b"))
        #expect(!table.contains("overhead"))
    }

    @Test("memory lines report before and after")
    func memoryLines() {
        let text = BenchReport.memoryLines(Self.sample().filter { $0.baseline == .pooled })
        #expect(text.split(separator: "\n").count == 6)
        #expect(text.contains("10.0 MiB -> 10.0 MiB"))
    }
}

@Suite("SVG chart")
struct ChartTests {
    /// Collects the panels and the series inside each panel.
    final class Collector: NSObject, XMLParserDelegate {
        var panels: [(metric: String, group: String, series: [String])] = []
        var rootName: String?
        var texts: [String] = []
        private var currentText = ""

        func parser(
            _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
            qualifiedName qName: String?, attributes: [String: String] = [:]
        ) {
            if rootName == nil { rootName = elementName }
            if elementName == "g", attributes["class"] == "panel" {
                panels.append((attributes["data-metric"] ?? "", attributes["data-group"] ?? "", []))
            }
            if elementName == "g", attributes["class"] == "series", !panels.isEmpty {
                panels[panels.count - 1].series.append(attributes["data-series"] ?? "")
            }
            currentText = ""
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { currentText += string }

        func parser(
            _ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?
        ) {
            if elementName == "text" { texts.append(currentText) }
        }
    }

    func parse(_ svg: String) throws -> Collector {
        let parser = XMLParser(data: Data(svg.utf8))
        let collector = Collector()
        parser.delegate = collector
        let ok = parser.parse()
        #expect(ok, "XML error: \(String(describing: parser.parserError))")
        return collector
    }

    @Test("the SVG is well-formed XML with one series per mode and baseline in each panel")
    func wellFormed() throws {
        let results = ReportTests.sample()
        let collector = try parse(BenchChart.svg(results, title: "test <&> chart"))
        #expect(collector.rootName == "svg")
        #expect(collector.panels.count == 2)
        #expect(collector.panels.map(\.metric) == ["ops_per_sec", "p99_us"])
        let expected = [
            "pooled async", "pooled sync", "shared async", "shared sync", "per-request async", "per-request sync",
            "redis-benchmark",
        ]
        for panel in collector.panels {
            #expect(panel.series == expected)
            #expect(panel.group == "redis ping")
        }
        #expect(collector.texts.contains("test <&> chart"))
        // Axis labels: the concurrency ticks and the axis titles.
        for tick in ["1", "8", "50"] { #expect(collector.texts.contains(tick)) }
        #expect(collector.texts.contains("concurrency (log scale)"))
        #expect(collector.texts.contains { $0.contains("Throughput (ops/s)") })
        #expect(collector.texts.contains { $0.contains("p99 latency (µs)") })
    }

    @Test("one row of panels per workload; a single mode gives one series per baseline")
    func rowsPerWorkload() throws {
        var results = ReportTests.sample().filter { $0.mode != "sync" }
        results += results.map { result in
            var copy = result
            copy.workload = "get"
            return copy
        }
        let collector = try parse(BenchChart.svg(results))
        #expect(collector.panels.count == 4)
        #expect(Set(collector.panels.map(\.group)) == ["redis ping", "redis get"])
        for panel in collector.panels {
            #expect(panel.series == ["pooled async", "shared async", "per-request async", "redis-benchmark"])
        }
    }

    @Test("nice axis steps")
    func niceSteps() {
        #expect(BenchChart.niceStep(3) == 5)
        #expect(BenchChart.niceStep(12_000) == 20_000)
        #expect(BenchChart.niceStep(0.3) == 0.5)
        #expect(BenchChart.niceCeiling(61_234) == 80_000)
        #expect(BenchChart.niceCeiling(9_500) == 10_000)
    }
}

@Suite("Support")
struct SupportTests {
    @Test("resident memory from /proc/self/statm")
    func residentMemory() throws {
        #expect(ResidentMemory.parseStatm("1000 250 30 4 0 100 0\n", pageSize: 4096) == 250 * 4096)
        #expect(ResidentMemory.parseStatm("garbage", pageSize: 4096) == nil)
        let current = try #require(ResidentMemory.currentBytes())
        #expect(current > 1 << 20)
    }

    @Test("number formatting")
    func formatting() {
        #expect(TextFormat.fixed(3.14159, 2) == "3.14")
        #expect(TextFormat.fixed(-0.5, 1) == "-0.5")
        #expect(TextFormat.fixed(2, 0) == "2")
        #expect(TextFormat.fixed(0.05, 2) == "0.05")
        #expect(TextFormat.grouped(1_234_567.8) == "1,234,568")
        #expect(TextFormat.grouped(999) == "999")
        #expect(TextFormat.compact(20_000) == "20k")
        #expect(TextFormat.compact(1_500_000) == "1.5M")
        #expect(TextFormat.microseconds(12.34) == "12.3")
        #expect(TextFormat.microseconds(1234.5) == "1,235")
    }

    @Test("default error categories name the type and the case")
    func categories() {
        #expect(BenchErrorCategory.default(MemoryError.timeout(after: 3)) == "MemoryError.timeout")
        #expect(BenchErrorCategory.default(OtherFailure()) == "OtherFailure")
        #expect(BenchErrorCategory.default(CancellationError()) == "CancellationError")
        #expect(BenchErrorCategory.default(ConnectionPoolError.shutDown) == "ConnectionPoolError.shutDown")
        #expect(
            BenchErrorCategory.default(ConnectionPoolError.acquireTimeout(after: .seconds(1), lastConnectError: nil))
                == "ConnectionPoolError.acquireTimeout")
    }
}

@Suite("Client CPU per request")
struct ClientCPUTests {
    @Test("CPU per request is the CPU time divided by the requests")
    func perRequest() {
        #expect(ProcessCPU.perRequest(cpuMicroseconds: 1_500_000, requests: 50_000) == 30)
        #expect(ProcessCPU.perRequest(cpuMicroseconds: 0, requests: 10) == 0)
        #expect(ProcessCPU.perRequest(cpuMicroseconds: 100, requests: 0) == nil)
        #expect(ProcessCPU.perRequest(cpuMicroseconds: nil, requests: 10) == nil)
        #expect(ProcessCPU.perRequest(cpuMicroseconds: -1, requests: 10) == nil)
        #expect(
            ProcessCPU.microseconds(userSeconds: 1, userMicroseconds: 250_000, systemSeconds: 2, systemMicroseconds: 750_000)
                == 4_000_000)
    }

    @Test("this process's CPU time grows with work")
    func selfCPU() throws {
        let before = try #require(ProcessCPU.selfMicroseconds())
        var x: UInt64 = 1
        var after = before
        // Busy work until 10 ms of CPU show (however busy the machine), with a wall-clock bound.
        let deadline = ContinuousClock.now.advanced(by: .seconds(20))
        while after - before < 10_000 && ContinuousClock.now < deadline {
            for _ in 0..<100_000 { x = x &* 6364136223846793005 &+ 1442695040888963407 }
            after = try #require(ProcessCPU.selfMicroseconds())
        }
        #expect(x != 0)
        #expect(after - before >= 10_000, "20 s of busy work used \(after - before) µs of CPU")
    }

    @Test("the JSON of every result has client_cpu_us_per_op, null when not measured, and it decodes back")
    func json() throws {
        var ours = ReportTests.sample()[1]
        ours.clientCPUMicrosecondsPerOp = 12.3456
        let external = BenchResult.external(
            backend: "redis", workload: "ping", concurrency: 1, requests: 1_000, opsPerSecond: 25_000,
            p50Microseconds: 31, p99Microseconds: 63, maxMicroseconds: 300, clientCPUMicrosecondsPerOp: 7.5)
        let unmeasured = ReportTests.sample()[0]
        let text = try BenchReport.json([ours, external, unmeasured])
        let array = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        #expect(array[0]["client_cpu_us_per_op"] as? Double == 12.346)
        #expect(array[1]["client_cpu_us_per_op"] as? Double == 7.5)
        #expect(array[2]["client_cpu_us_per_op"] is NSNull)
        let decoded = try BenchReport.results(fromJSON: text)
        #expect(decoded.map(\.clientCPUMicrosecondsPerOp) == [12.346, 7.5, nil])
        // Older JSON without the key decodes with nil.
        let old = text.replacingOccurrences(of: "\"client_cpu_us_per_op\" : 7.5,", with: "")
        #expect(old != text)
        #expect(try BenchReport.results(fromJSON: old)[1].clientCPUMicrosecondsPerOp == nil)
    }

    @Test("the table has a cpu µs/req column")
    func table() throws {
        var results = ReportTests.sample()
        results[1].clientCPUMicrosecondsPerOp = 12.3456
        let table = BenchReport.table(results)
        let lines = table.split(separator: "\n")
        #expect(lines[0].contains("cpu µs/req"))
        #expect(lines[3].contains("12.35"))
        #expect(lines[2].contains(" - "))
    }
}
