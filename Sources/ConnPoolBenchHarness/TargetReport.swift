/// The team's performance targets, checked against whatever a run measured (printed by `redis-bench`
/// under "Targets:"). Each ops/s ratio is followed by the same comparison by median latency, which a busy
/// machine disturbs far less.
///
/// Plain pooled results: PING at concurrency 1 ≥ 0.9× and at 50 ≥ 0.8× redis-benchmark, ≥ 5× the
/// per-request baseline at concurrency 1, pool overhead ≤ 5 % of a shared connection at concurrency 1.
/// TLS pooled results (``BenchResult/tls``, `redis-bench --tls`) are held to the same targets against TLS
/// baselines, and also: PING at concurrency 8 and 50 ≥ 0.8× the plain pooled figure of the same run, and
/// ≥ 10× the per-request TLS baseline (a TLS handshake per request) at every concurrency.
public enum TargetReport {
    /// One line per target that the results can check, in the order of the results.
    public static func lines(_ results: [BenchResult]) -> [String] {
        var lines: [String] = []
        func verdict(_ ok: Bool) -> String { ok ? "met" : "MISSED" }
        func percent(_ value: Double) -> String { TextFormat.fixed(value * 100, 1) + "%" }
        for result in results where result.baseline == .pooled {
            let comparison = BenchReport.comparison(for: result, in: results)
            let name = "pooled \(result.mode)\(result.tls ? " TLS" : "") \(result.workload) c=\(result.concurrency)"
            if result.workload == "ping", let ratio = comparison.versusRedisBenchmark {
                let goal: Double? = result.concurrency == 1 ? 0.9 : (result.concurrency == 50 ? 0.8 : nil)
                if let goal {
                    var line = "\(name): \(TextFormat.fixed(ratio, 2))x redis-benchmark\(result.tls ? " TLS" : "") "
                        + "ops/s (target >= \(goal)x): " + verdict(ratio >= goal)
                    if let median = comparison.medianVersusRedisBenchmark {
                        line += "; by p50 latency \(TextFormat.fixed(median, 2))x"
                    }
                    lines.append(line)
                }
            }
            if result.tls, result.workload == "ping", result.concurrency == 8 || result.concurrency == 50,
                let ratio = comparison.versusPlain
            {
                var line = "\(name): \(TextFormat.fixed(ratio, 2))x pooled plain ops/s (target >= 0.8x): "
                    + verdict(ratio >= 0.8)
                if let median = comparison.medianVersusPlain { line += "; by p50 latency \(TextFormat.fixed(median, 2))x" }
                lines.append(line)
            }
            if result.tls, let ratio = comparison.versusPerRequest {
                lines.append(
                    "\(name): \(TextFormat.fixed(ratio, 1))x per-request TLS (target >= 10x): \(verdict(ratio >= 10))")
            } else if result.concurrency == 1, let ratio = comparison.versusPerRequest {
                lines.append("\(name): \(TextFormat.fixed(ratio, 1))x per-request (target >= 5x): \(verdict(ratio >= 5))")
            }
            if let overhead = comparison.poolOverhead {
                var line = "\(name): pool overhead \(percent(overhead)) vs shared connection (target <= 5%): "
                    + verdict(overhead <= 0.05)
                if let median = comparison.medianPoolOverhead { line += "; by p50 latency \(percent(median))" }
                lines.append(line)
            }
        }
        return lines
    }
}
