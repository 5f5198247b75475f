import Foundation
import Testing

@testable import ConnPoolBenchHarness

/// `redis-bench --tls`: the `tls` key, like-with-like comparisons, the plain side-by-side ratio, and the
/// TLS target lines.
@Suite("TLS results")
struct TLSReportTests {
    static func result(
        _ baseline: BenchBaseline, _ mode: String, _ concurrency: Int, _ ops: Double, tls: Bool, p50: Double = 20
    ) -> BenchResult {
        BenchResult(
            backend: "redis", workload: "ping", mode: mode, baseline: baseline, concurrency: concurrency,
            poolSize: concurrency, requests: 1_000, commandsPerRequest: 1, durationSeconds: 1_000 / ops,
            opsPerSecond: ops, latency: LatencySummary(p50: p50, p90: 30, p99: 50, p999: 90, max: 200, mean: 22),
            errors: 0, errorsByType: [:], rssBeforeBytes: nil, rssAfterBytes: nil, tls: tls)
    }

    /// A --tls run at concurrency 8 and 50: TLS shared, pooled, per-request, redis-benchmark; plain pooled
    /// and redis-benchmark. Plain figures are far higher than the TLS ones, so that a comparison that
    /// mixed them up would show.
    static func sample() -> [BenchResult] {
        var results: [BenchResult] = []
        for concurrency in [8, 50] {
            // At 8 the TLS pool reaches 0.9x plain, at 50 only 0.7x.
            let tlsPooled: Double = concurrency == 8 ? 90_000 : 70_000
            results += [
                result(.shared, "async", concurrency, 40_000, tls: true),
                result(.pooled, "async", concurrency, tlsPooled, tls: true, p50: 25),
                result(.pooled, "async", concurrency, 100_000, tls: false, p50: 20),
                result(.perRequest, "async", concurrency, concurrency == 8 ? 5_000 : 10_000, tls: true),
                .external(
                    backend: "redis", workload: "ping", concurrency: concurrency, requests: 1_000,
                    opsPerSecond: 80_000, p50Microseconds: 30, p99Microseconds: 60, maxMicroseconds: 300, tls: true),
                .external(
                    backend: "redis", workload: "ping", concurrency: concurrency, requests: 1_000,
                    opsPerSecond: 400_000, p50Microseconds: 10, p99Microseconds: 20, maxMicroseconds: 100),
            ]
        }
        return results
    }

    static func find(
        _ results: [BenchResult], _ baseline: BenchBaseline, concurrency: Int, tls: Bool
    ) throws -> BenchResult {
        try #require(results.first { $0.baseline == baseline && $0.concurrency == concurrency && $0.tls == tls })
    }

    @Test("JSON has the tls key on every result, and it decodes back")
    func jsonKey() throws {
        let text = try BenchReport.json(Self.sample())
        let array = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        #expect(array.count == 12)
        for object in array { #expect(object["tls"] is Bool, "missing tls in \(object)") }
        #expect(array.filter { $0["tls"] as? Bool == true }.count == 8)
        #expect(text.contains("\"tls\" : true") && text.contains("\"tls\" : false"))
        let decoded = try BenchReport.results(fromJSON: text)
        #expect(decoded.map(\.tls) == Self.sample().map(\.tls))
    }

    @Test("older JSON without the tls key decodes as plain")
    func oldJSON() throws {
        let text = try BenchReport.json(ReportTests.sample())
        let old = text.replacingOccurrences(of: "\"tls\" : false,", with: "")
        #expect(!old.contains("tls"))
        let decoded = try BenchReport.results(fromJSON: old)
        #expect(decoded.count == 21)
        #expect(decoded.allSatisfy { !$0.tls })
        #expect(decoded.map(\.opsPerSecond) == ReportTests.sample().map(\.opsPerSecond))
    }

    @Test("a TLS pooled result is compared with TLS baselines only, and with the plain pooled result")
    func comparisonMatchesLikeWithLike() throws {
        let results = Self.sample()
        let tls8 = try Self.find(results, .pooled, concurrency: 8, tls: true)
        let comparison = BenchReport.comparison(for: tls8, in: results)
        #expect(abs(comparison.versusRedisBenchmark! - 90_000.0 / 80_000) < 1e-9)  // not 400,000 (plain)
        #expect(abs(comparison.medianVersusRedisBenchmark! - 30.0 / 25) < 1e-9)
        #expect(abs(comparison.versusPerRequest! - 90_000.0 / 5_000) < 1e-9)
        #expect(abs(comparison.versusShared! - 90_000.0 / 40_000) < 1e-9)
        #expect(abs(comparison.versusPlain! - 0.9) < 1e-9)
        #expect(abs(comparison.medianVersusPlain! - 20.0 / 25) < 1e-9)

        // The plain pooled result: plain redis-benchmark only; no TLS baseline, no versusPlain.
        let plain8 = try Self.find(results, .pooled, concurrency: 8, tls: false)
        let plainComparison = BenchReport.comparison(for: plain8, in: results)
        #expect(abs(plainComparison.versusRedisBenchmark! - 100_000.0 / 400_000) < 1e-9)
        #expect(plainComparison.versusPerRequest == nil)
        #expect(plainComparison.versusShared == nil)
        #expect(plainComparison.versusPlain == nil)
        #expect(plainComparison.medianVersusPlain == nil)

        // Another mode's plain pooled result is not "the same run's plain figure".
        let syncPlain = Self.result(.pooled, "sync", 8, 200_000, tls: false)
        let mixed = results.filter { !($0.baseline == .pooled && !$0.tls) } + [syncPlain]
        #expect(BenchReport.comparison(for: tls8, in: mixed).versusPlain == nil)
    }

    @Test("the table has a tls column and a vs plain ratio on TLS pooled rows only; plain runs show neither")
    func table() throws {
        let table = BenchReport.table(Self.sample())
        let lines = table.split(separator: "\n").map(String.init)
        #expect(lines[0].contains(" tls ") && lines[0].contains("vs plain"))
        #expect(lines.count == 2 + 12)
        let tlsPooled = try #require(lines.first { $0.contains("pooled") && $0.contains(" yes ") })
        #expect(tlsPooled.contains("0.90x"))
        let plainPooled = try #require(lines.first { $0.contains("pooled") && $0.contains(" no ") })
        #expect(!plainPooled.contains("0.90x"))
        let plainOnly = BenchReport.table(ReportTests.sample())
        #expect(!plainOnly.contains("vs plain") && !plainOnly.split(separator: "\n")[0].contains(" tls "))
        // Series names keep TLS and plain apart (charts, summary lines).
        #expect(try Self.find(Self.sample(), .pooled, concurrency: 8, tls: true).seriesName == "pooled async TLS")
        #expect(try Self.find(Self.sample(), .pooled, concurrency: 8, tls: false).seriesName == "pooled async")
        #expect(try Self.find(Self.sample(), .redisBenchmark, concurrency: 8, tls: true).seriesName == "redis-benchmark TLS")
    }

    @Test("target lines: TLS vs plain pooled at 8 and 50, TLS vs per-request TLS")
    func targetLines() {
        let lines = TargetReport.lines(Self.sample())
        #expect(lines.contains(
            "pooled async TLS ping c=8: 0.90x pooled plain ops/s (target >= 0.8x): met; by p50 latency 0.80x"))
        #expect(lines.contains(
            "pooled async TLS ping c=50: 0.70x pooled plain ops/s (target >= 0.8x): MISSED; by p50 latency 0.80x"))
        #expect(lines.contains("pooled async TLS ping c=8: 18.0x per-request TLS (target >= 10x): met"))
        #expect(lines.contains("pooled async TLS ping c=50: 7.0x per-request TLS (target >= 10x): MISSED"))
        // The redis-benchmark target compares TLS with TLS (70,000 / 80,000), plain with plain.
        #expect(lines.contains(
            "pooled async TLS ping c=50: 0.88x redis-benchmark TLS ops/s (target >= 0.8x): met; by p50 latency 1.20x"))
        #expect(lines.contains(
            "pooled async ping c=50: 0.25x redis-benchmark ops/s (target >= 0.8x): MISSED; by p50 latency 0.50x"))
        // No TLS line for a plain run; its own lines are unchanged.
        let plainLines = TargetReport.lines(ReportTests.sample())
        #expect(!plainLines.contains { $0.contains("TLS") })
        #expect(plainLines.contains("pooled async ping c=1: 6.3x per-request (target >= 5x): met"))
        #expect(plainLines.contains {
            $0.hasPrefix("pooled async ping c=1: 0.76x redis-benchmark ops/s (target >= 0.9x): MISSED")
        })
    }
}
