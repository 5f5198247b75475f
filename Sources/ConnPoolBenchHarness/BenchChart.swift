#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An SVG chart of results against concurrency: for each backend and workload, a row of two panels,
/// throughput (ops/s) and p99 latency (µs), with one line per series (`pooled async`, `shared sync`,
/// `redis-benchmark`, …) and a shared legend. Hand-written SVG 1.1 text, viewable in any browser.
///
/// The document is structured for tools as well as people: every panel is a
/// `<g class="panel" data-metric="ops_per_sec|p99_us" data-group="…">` and every line in it a
/// `<g class="series" data-series="…">`.
public enum BenchChart {
    /// The metrics plotted, one panel each.
    enum Metric: CaseIterable {
        case throughput
        case p99

        var key: String { self == .throughput ? "ops_per_sec" : "p99_us" }
        var title: String { self == .throughput ? "Throughput (ops/s)" : "p99 latency (µs)" }

        func value(_ result: BenchResult) -> Double? {
            switch self {
            case .throughput: return result.opsPerSecond
            case .p99: return result.p99Microseconds
            }
        }
    }

    static let palette = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ]

    /// The series names in `results`, in a stable order: pooled first, then shared, per-request, and
    /// external tools; async before sync.
    public static func seriesNames(_ results: [BenchResult]) -> [String] {
        let rank: [BenchBaseline: Int] = [.pooled: 0, .shared: 1, .perRequest: 2, .redisBenchmark: 3]
        var seen: [String: (Int, String)] = [:]
        for result in results where seen[result.seriesName] == nil {
            seen[result.seriesName] = (rank[result.baseline] ?? 9, result.mode)
        }
        return seen.keys.sorted { left, right in
            let (l, r) = (seen[left]!, seen[right]!)
            if l.0 != r.0 { return l.0 < r.0 }
            if l.1 != r.1 { return l.1 < r.1 }
            return left < right
        }
    }

    /// Renders the chart.
    ///
    /// - Parameters:
    ///   - results: the figures to plot (results without a p99 are left out of the latency panel).
    ///   - title: the heading drawn at the top.
    /// - Returns: a standalone SVG document.
    public static func svg(_ results: [BenchResult], title: String = "connpool benchmark") -> String {
        let series = seriesNames(results)
        var groups: [String] = []
        for result in results {
            let group = groupName(result)
            if !groups.contains(group) { groups.append(group) }
        }
        let panelWidth = 460.0
        let panelHeight = 280.0
        let gap = 40.0
        let legendRows = Double((series.count + 3) / 4)
        let top = 60.0 + legendRows * 20
        let width = 2 * panelWidth + 3 * gap
        let height = top + Double(max(groups.count, 1)) * (panelHeight + gap) + 10

        var svg = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(f(width))" height="\(f(height))" \
            viewBox="0 0 \(f(width)) \(f(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect x="0" y="0" width="\(f(width))" height="\(f(height))" fill="#ffffff"/>
            <text x="\(f(width / 2))" y="26" text-anchor="middle" font-size="18" font-weight="bold">\(escape(title))</text>

            """
        // Legend.
        svg += "<g class=\"legend\">\n"
        for (index, name) in series.enumerated() {
            let x = gap + Double(index % 4) * 230
            let y = 48 + Double(index / 4) * 20
            svg += "<line x1=\"\(f(x))\" y1=\"\(f(y))\" x2=\"\(f(x + 28))\" y2=\"\(f(y))\" stroke=\"\(color(index))\" "
                + "stroke-width=\"2.5\"\(dash(name))/>"
            svg += "<circle cx=\"\(f(x + 14))\" cy=\"\(f(y))\" r=\"3.5\" fill=\"\(color(index))\"/>"
            svg += "<text x=\"\(f(x + 36))\" y=\"\(f(y + 4))\">\(escape(name))</text>\n"
        }
        svg += "</g>\n"

        for (row, group) in groups.enumerated() {
            let rowResults = results.filter { groupName($0) == group }
            for (column, metric) in Metric.allCases.enumerated() {
                let x = gap + Double(column) * (panelWidth + gap)
                let y = top + Double(row) * (panelHeight + gap)
                svg += panel(
                    rowResults, metric: metric, group: group, series: series, x: x, y: y, width: panelWidth,
                    height: panelHeight)
            }
        }
        svg += "</svg>\n"
        return svg
    }

    private static func groupName(_ result: BenchResult) -> String {
        var name = "\(result.backend) \(result.workload)"
        if result.commandsPerRequest > 1 { name += " (pipeline \(result.commandsPerRequest))" }
        return name
    }

    private static func panel(
        _ results: [BenchResult], metric: Metric, group: String, series: [String], x: Double, y: Double,
        width: Double, height: Double
    ) -> String {
        let left = x + 60
        let right = x + width - 10
        let plotTop = y + 30
        let bottom = y + height - 40
        let concurrencies = Array(Set(results.map(\.concurrency))).sorted()
        let values = results.compactMap { metric.value($0) }
        let yMax = niceCeiling(max(values.max() ?? 1, 1e-9) * 1.05)
        let yStep = niceStep(yMax / 5)
        let minC = Double(concurrencies.first ?? 1)
        let maxC = Double(concurrencies.last ?? 1)
        let logScale = minC >= 1 && maxC / minC >= 4
        func xPosition(_ concurrency: Int) -> Double {
            guard maxC > minC else { return (left + right) / 2 }
            let fraction = logScale
                ? (log2(Double(concurrency)) - log2(minC)) / (log2(maxC) - log2(minC))
                : (Double(concurrency) - minC) / (maxC - minC)
            return left + 15 + fraction * (right - left - 30)
        }
        func yPosition(_ value: Double) -> Double { bottom - value / yMax * (bottom - plotTop) }

        var svg = "<g class=\"panel\" data-metric=\"\(metric.key)\" data-group=\"\(escape(group))\">\n"
        svg += "<text x=\"\(f((left + right) / 2))\" y=\"\(f(y + 16))\" text-anchor=\"middle\" font-size=\"14\" "
            + "font-weight=\"bold\">\(escape(group)): \(escape(metric.title))</text>\n"
        // Grid and y ticks.
        var tick = 0.0
        while tick <= yMax + yStep / 1000 {
            let ty = yPosition(tick)
            svg += "<line x1=\"\(f(left))\" y1=\"\(f(ty))\" x2=\"\(f(right))\" y2=\"\(f(ty))\" stroke=\"#e5e5e5\"/>"
            svg += "<line x1=\"\(f(left - 5))\" y1=\"\(f(ty))\" x2=\"\(f(left))\" y2=\"\(f(ty))\" stroke=\"#333\"/>"
            svg += "<text x=\"\(f(left - 8))\" y=\"\(f(ty + 4))\" text-anchor=\"end\">\(TextFormat.compact(tick))</text>\n"
            tick += yStep
        }
        // X ticks: one per concurrency level measured.
        for concurrency in concurrencies {
            let tx = xPosition(concurrency)
            svg += "<line x1=\"\(f(tx))\" y1=\"\(f(bottom))\" x2=\"\(f(tx))\" y2=\"\(f(bottom + 5))\" stroke=\"#333\"/>"
            svg += "<text x=\"\(f(tx))\" y=\"\(f(bottom + 18))\" text-anchor=\"middle\">\(concurrency)</text>\n"
        }
        // Axes and their titles.
        svg += "<line x1=\"\(f(left))\" y1=\"\(f(bottom))\" x2=\"\(f(right))\" y2=\"\(f(bottom))\" stroke=\"#333\"/>"
        svg += "<line x1=\"\(f(left))\" y1=\"\(f(plotTop))\" x2=\"\(f(left))\" y2=\"\(f(bottom))\" stroke=\"#333\"/>\n"
        svg += "<text x=\"\(f((left + right) / 2))\" y=\"\(f(bottom + 34))\" text-anchor=\"middle\">"
            + "concurrency\(logScale ? " (log scale)" : "")</text>\n"
        let axisY = (plotTop + bottom) / 2
        svg += "<text x=\"\(f(x + 14))\" y=\"\(f(axisY))\" text-anchor=\"middle\" "
            + "transform=\"rotate(-90 \(f(x + 14)) \(f(axisY)))\">\(escape(metric.title))</text>\n"
        // Series.
        for (index, name) in series.enumerated() {
            let points = results.filter { $0.seriesName == name }
                .compactMap { result in metric.value(result).map { (result.concurrency, $0) } }
                .sorted { $0.0 < $1.0 }
            guard !points.isEmpty else { continue }
            svg += "<g class=\"series\" data-series=\"\(escape(name))\">"
            let coordinates = points.map { "\(f(xPosition($0.0))),\(f(yPosition($0.1)))" }.joined(separator: " ")
            svg += "<polyline points=\"\(coordinates)\" fill=\"none\" stroke=\"\(color(index))\" stroke-width=\"2\""
                + "\(dash(name))/>"
            for (concurrency, value) in points {
                svg += "<circle cx=\"\(f(xPosition(concurrency)))\" cy=\"\(f(yPosition(value)))\" r=\"3.5\" "
                    + "fill=\"\(color(index))\"><title>\(escape(name)), concurrency \(concurrency): "
                    + "\(TextFormat.grouped(value))\(metric == .throughput ? " ops/s" : " µs")</title></circle>"
            }
            svg += "</g>\n"
        }
        svg += "</g>\n"
        return svg
    }

    private static func color(_ index: Int) -> String { palette[index % palette.count] }

    /// Baselines are dashed, the pool solid.
    private static func dash(_ series: String) -> String {
        series.hasPrefix(BenchBaseline.pooled.rawValue) ? "" : " stroke-dasharray=\"6 3\""
    }

    /// The smallest 1, 2 or 5 × 10ⁿ that is at least `value`.
    static func niceStep(_ value: Double) -> Double {
        guard value > 0, value.isFinite else { return 1 }
        var magnitude = 1.0
        while magnitude * 10 <= value { magnitude *= 10 }
        while magnitude > value { magnitude /= 10 }
        for factor in [1.0, 2, 5, 10] where factor * magnitude >= value { return factor * magnitude }
        return 10 * magnitude
    }

    /// A round axis maximum at least `value`: a multiple of the step for a five-tick axis.
    static func niceCeiling(_ value: Double) -> Double {
        let step = niceStep(value / 5)
        return (value / step).rounded(.up) * step
    }

    /// A coordinate with at most one decimal.
    private static func f(_ value: Double) -> String {
        let text = TextFormat.fixed(value, 1)
        return text.hasSuffix(".0") ? String(text.dropLast(2)) : text
    }

    /// Escapes text for XML content and attribute values.
    static func escape(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            case "'": result += "&apos;"
            default: result.append(character)
            }
        }
        return result
    }
}
