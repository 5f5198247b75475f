#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The comparison figures of a pooled result against the baselines measured in the same run.
///
/// Like is compared with like: a TLS result (``BenchResult/tls``) only with TLS baselines, a plain one
/// only with plain baselines; ``versusPlain`` is the one ratio across the two.
public struct BenchComparison: Sendable, Hashable {
    /// pooled ops/s ÷ redis-benchmark ops/s (same backend, workload, concurrency).
    public var versusRedisBenchmark: Double?
    /// pooled ops/s ÷ per-request ops/s (same backend, workload, mode, concurrency).
    public var versusPerRequest: Double?
    /// pooled ops/s ÷ shared ops/s (same backend, workload, mode, concurrency).
    public var versusShared: Double?
    /// At concurrency 1 only: the pool's own overhead, `1 - pooled / shared`, as a fraction.
    public var poolOverhead: Double?
    /// redis-benchmark's median latency ÷ the pooled median: the throughput ratio a closed loop would
    /// show without its stalls. Far steadier than the ops/s ratio on a machine shared with other work
    /// (a few preempted requests move the mean, not the median).
    public var medianVersusRedisBenchmark: Double?
    /// At concurrency 1 only: `pooled p50 / shared p50 - 1`, the pool's overhead by median latency.
    public var medianPoolOverhead: Double?
    /// For a TLS pooled result only: its ops/s ÷ the plain pooled ops/s of the same backend, workload,
    /// mode, concurrency and pipeline depth (`redis-bench --tls` measures both in the same rounds).
    public var versusPlain: Double?
    /// For a TLS pooled result only: the plain pooled median latency ÷ the TLS pooled median (the same
    /// comparison as ``versusPlain`` by p50, which a busy machine disturbs far less).
    public var medianVersusPlain: Double?
}

/// Tables and JSON for a list of ``BenchResult``s.
public enum BenchReport {
    /// The baselines measured alongside a pooled result, as ratios (`nil` where a baseline is missing).
    /// For a result that is not pooled, every ratio is `nil`. Baselines are matched on backend, workload,
    /// concurrency, pipeline depth, mode (except redis-benchmark's) and ``BenchResult/tls``; a TLS pooled
    /// result is also compared with the plain pooled one (``BenchComparison/versusPlain``).
    public static func comparison(for result: BenchResult, in results: [BenchResult]) -> BenchComparison {
        var comparison = BenchComparison()
        guard result.baseline == .pooled else { return comparison }
        func find(_ baseline: BenchBaseline, sameMode: Bool, tls: Bool? = nil) -> BenchResult? {
            let tls = tls ?? result.tls
            return results.first {
                $0.baseline == baseline && $0.backend == result.backend && $0.workload == result.workload
                    && $0.concurrency == result.concurrency
                    && $0.commandsPerRequest == result.commandsPerRequest && $0.tls == tls
                    && (!sameMode || $0.mode == result.mode) && $0.opsPerSecond > 0
            }
        }
        if result.tls, let plain = find(.pooled, sameMode: true, tls: false) {
            comparison.versusPlain = result.opsPerSecond / plain.opsPerSecond
            if let theirs = plain.p50Microseconds, let ours = result.p50Microseconds, ours > 0 {
                comparison.medianVersusPlain = theirs / ours
            }
        }
        if let external = find(.redisBenchmark, sameMode: false) {
            comparison.versusRedisBenchmark = result.opsPerSecond / external.opsPerSecond
            if let theirs = external.p50Microseconds, let ours = result.p50Microseconds, ours > 0 {
                comparison.medianVersusRedisBenchmark = theirs / ours
            }
        }
        if let perRequest = find(.perRequest, sameMode: true) {
            comparison.versusPerRequest = result.opsPerSecond / perRequest.opsPerSecond
        }
        if let shared = find(.shared, sameMode: true) {
            comparison.versusShared = result.opsPerSecond / shared.opsPerSecond
            if result.concurrency == 1 {
                comparison.poolOverhead = 1 - result.opsPerSecond / shared.opsPerSecond
                if let ours = result.p50Microseconds, let theirs = shared.p50Microseconds, theirs > 0 {
                    comparison.medianPoolOverhead = ours / theirs - 1
                }
            }
        }
        return comparison
    }

    /// An aligned text table, one row per result in the given order: the figures (`cpu µs/req` is
    /// ``BenchResult/clientCPUMicrosecondsPerOp``, `-` when not measured), and the comparison ratios on the
    /// pooled rows: `vs r-b` (pooled ÷ redis-benchmark), `vs per-req`, `vs shared`, at concurrency 1
    /// `overhead` (1 − pooled ÷ shared), and on TLS pooled rows `vs plain` (TLS pooled ÷ plain pooled).
    /// When any result is a TLS one, a `tls` column says `yes` or `no` on every row.
    public static func table(_ results: [BenchResult]) -> String {
        let headers = [
            "backend", "workload", "mode", "baseline", "tls", "conc", "pool", "requests", "ops/s", "p50 µs",
            "p90 µs", "p99 µs", "p99.9 µs", "max µs", "cpu µs/req", "errors", "vs r-b", "vs per-req", "vs shared",
            "overhead", "vs plain",
        ]
        let tlsColumn = 4
        let firstRatioColumn = 16
        let anyTLS = results.contains { $0.tls }
        let leftAligned: Set<Int> = [0, 1, 2, 3, 4]
        var rows: [[String]] = []
        for result in results {
            let comparison = comparison(for: result, in: results)
            func ratio(_ value: Double?) -> String { value.map { TextFormat.fixed($0, 2) + "x" } ?? "" }
            var errors = String(result.errors)
            if result.errors > 0 {
                let top = result.errorsByType.sorted { $0.value > $1.value }.first!
                errors += " (\(top.key)\(result.errorsByType.count > 1 ? ", …" : ""))"
            }
            rows.append([
                result.backend, result.workload, result.mode, result.baseline.rawValue, result.tls ? "yes" : "no",
                String(result.concurrency),
                result.poolSize.map(String.init) ?? "-",
                String(result.requests) + (result.commandsPerRequest > 1 ? "x\(result.commandsPerRequest)" : ""),
                TextFormat.grouped(result.opsPerSecond), TextFormat.microseconds(result.p50Microseconds),
                TextFormat.microseconds(result.p90Microseconds), TextFormat.microseconds(result.p99Microseconds),
                TextFormat.microseconds(result.p999Microseconds), TextFormat.microseconds(result.maxMicroseconds),
                result.clientCPUMicrosecondsPerOp.map { TextFormat.fixed($0, 2) } ?? "-", errors, ratio(comparison.versusRedisBenchmark), ratio(comparison.versusPerRequest),
                ratio(comparison.versusShared),
                comparison.poolOverhead.map { TextFormat.fixed($0 * 100, 1) + "%" } ?? "",
                ratio(comparison.versusPlain),
            ])
        }
        // Drop comparison columns that are empty everywhere, and the tls column in a run without TLS.
        var keep = Array(0..<headers.count)
        keep.removeAll { column in
            (column >= firstRatioColumn && rows.allSatisfy { $0[column].isEmpty }) || (column == tlsColumn && !anyTLS)
        }
        var widths = keep.map { headers[$0].count }
        for row in rows {
            for (position, column) in keep.enumerated() { widths[position] = max(widths[position], row[column].count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (position, column) in keep.enumerated() {
                let cell = cells[column]
                let padding = String(repeating: " ", count: widths[position] - cell.count)
                if position > 0 { text += "  " }
                text += leftAligned.contains(column) ? cell + padding : padding + cell
            }
            while text.hasSuffix(" ") { text.removeLast() }
            return text
        }
        var output = line(headers) + "\n"
        var dashes = Array(repeating: "", count: headers.count)
        for (position, column) in keep.enumerated() { dashes[column] = String(repeating: "-", count: widths[position]) }
        output += line(dashes) + "\n"
        for row in rows { output += line(row) + "\n" }
        return output
    }

    /// The results as a pretty-printed JSON array (keys sorted; see ``BenchResult`` for the keys).
    ///
    /// - Throws: an encoding error (not expected for finite figures).
    public static func json(_ results: [BenchResult]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(results)
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Decodes what ``json(_:)`` wrote.
    ///
    /// - Throws: a decoding error for malformed input.
    public static func results(fromJSON text: String) throws -> [BenchResult] {
        try JSONDecoder().decode([BenchResult].self, from: Data(text.utf8))
    }

    /// Resident memory before and after each result's measured phase, one line per result that has both.
    public static func memoryLines(_ results: [BenchResult]) -> String {
        var text = ""
        for result in results {
            guard let before = result.rssBeforeBytes, let after = result.rssAfterBytes else { continue }
            var change = TextFormat.fixed(Double(after - before) / 1_048_576, 2)
            if !change.hasPrefix("-") { change = "+" + change }
            text += "RSS \(result.backend) \(result.workload) \(result.seriesName) c=\(result.concurrency): "
                + "\(ResidentMemory.describe(before)) -> \(ResidentMemory.describe(after)) "
                + "(\(change) MiB over \(result.requests) requests)\n"
        }
        return text
    }
}
