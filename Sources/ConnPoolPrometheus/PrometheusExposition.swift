public import ConnPool

/// Renders pools' metrics in the Prometheus text exposition format (version 0.0.4).
///
/// ## Why rendered here, and not through swift-prometheus
/// swift-prometheus 2.x's `PrometheusCollectorRegistry` records single observations into histograms
/// whose buckets it owns; it cannot take buckets that were already counted. The pool counts its
/// distributions itself, lock-free, in fixed log-scale buckets (``ConnPool/HistogramSnapshot``): going
/// through the registry would mean replaying every acquire (millions) at each scrape, or sampling and
/// losing the exact counts. Rendering the few dozen lines ourselves keeps the histograms exact
/// (`_count` equals the acquires, every bucket equals the pool's), costs one pass over the buckets, and
/// keeps this module free of dependencies. To serve other metrics alongside, append a registry's output
/// (`registry.emit(into: &buffer)`) after ours: ``PoolMetricsServer`` takes such a closure.
///
/// ## Families (every sample has `pool="<configuration.name>"`)
/// - gauges: `connpool_connections{state="idle|in_use|connecting|closing|validating"}`,
///   `connpool_waiting`, `connpool_max_size`, and `connpool_health{state="healthy|degraded|failing|shutting_down"}`
///   (1 for the pool's current health, 0 for the others);
/// - counters: `connpool_acquires_total`, `connpool_acquires_waited_total`,
///   `connpool_connections_created_total`, `connpool_connect_failures_total`,
///   `connpool_acquire_timeouts_total`, `connpool_health_check_failures_total`,
///   `connpool_acquires_failed_fast_total`, `connpool_waiters_shed_total`,
///   `connpool_waiters_cancelled_total`, `connpool_leaks_detected_total`, `connpool_session_resets_total`,
///   `connpool_connections_closed_total{reason="lifetime|idle|health|broken|shutdown|resize|dirty"}`;
/// - histograms: `connpool_acquire_wait_seconds`, `connpool_lease_hold_seconds`,
///   `connpool_connection_lifetime_seconds` (`_bucket{le=…}`, `_sum` in seconds, `_count`).
///
/// Label names are fixed (`pool`, `state`, `reason`, `le`); the only value that comes from the user is
/// the pool's name (escaped: `\` `"` and line feeds), and nothing else from the configuration, the
/// factory or an error ever appears, so no secret can leak into a label.
///
/// ## Histogram buckets
/// The pool's buckets are four per power of two from 2¹⁰ ns (1.024 µs) to 2³⁶ ns (68.7 s), plus one
/// below and one above. Every fourth bound is a power of two, so the octave bounds are exact bucket
/// bounds too: ``BucketLayout/octaves`` (the default) emits those 27 bounds and `+Inf`, every count
/// exact, 28 series per histogram (within the 10–30 Prometheus advises); ``BucketLayout/all`` emits all
/// 105 bounds for 25 % resolution. Each `le` is the bucket's bound in seconds, written exactly in
/// decimal (`0.000001024`). The pool's buckets exclude their upper bound (values are whole
/// nanoseconds), so a value exactly on a bound is counted under the next `le`: 1 ns away from
/// Prometheus's "less or equal", which no quantile can see.
///
/// `+Inf` and `_count` are the sum of the bucket counts (they must agree for a valid histogram; the
/// snapshot's separate total may trail them by the values being recorded during the snapshot).
public enum PrometheusExposition {
    /// Which bucket bounds a histogram is rendered with.
    public enum BucketLayout: Sendable, Hashable {
        /// The powers of two from 2¹⁰ ns to 2³⁶ ns (27 bounds) and `+Inf`.
        case octaves
        /// Every bound of the pool's histogram (105) and `+Inf`.
        case all
    }

    /// The content type of the exposition, for an HTTP response.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Renders the status of each pool (from ``ConnPool/ConnectionPool/status()``), in the order given.
    ///
    /// The pools' names should be distinct (``PoolMetricsRegistry`` ensures it): two pools of one name
    /// would produce duplicate series, which Prometheus rejects.
    public static func render(_ statuses: [PoolStatus], buckets: BucketLayout = .octaves) -> String {
        var out = ""
        out.reserveCapacity(2_048 + statuses.count * (buckets == .octaves ? 9_000 : 30_000))
        let pools = statuses.map { (label: "pool=\"\(escapeLabelValue($0.name))\"", status: $0) }

        family(&out, "connpool_connections", "gauge", "Connections of the pool, by state.")
        for (label, status) in pools {
            let m = status.metrics
            for (state, value) in [("idle", m.idle), ("in_use", m.inUse), ("connecting", m.connecting),
                                   ("closing", m.closing), ("validating", m.validating)] {
                sample(&out, "connpool_connections", "\(label),state=\"\(state)\"", value)
            }
        }
        family(&out, "connpool_waiting", "gauge", "Callers waiting for a connection.")
        for (label, status) in pools { sample(&out, "connpool_waiting", label, status.metrics.waiting) }
        family(&out, "connpool_max_size", "gauge", "The pool's current maximum number of connections.")
        for (label, status) in pools { sample(&out, "connpool_max_size", label, status.metrics.maxSize) }
        family(&out, "connpool_health", "gauge", "The pool's health: 1 for the current state, 0 for the others.")
        for (label, status) in pools {
            for health in [PoolStatus.Health.healthy, .degraded, .failing, .shuttingDown] {
                sample(&out, "connpool_health", "\(label),state=\"\(health.rawValue)\"", status.health == health ? 1 : 0)
            }
        }

        for counter in counters {
            family(&out, counter.name, "counter", counter.help)
            for (label, status) in pools { sample(&out, counter.name, label, counter.value(status.metrics)) }
        }
        family(&out, "connpool_connections_closed_total", "counter", "Connections closed, by reason.")
        for (label, status) in pools {
            for reason in CloseReason.allCases {
                sample(&out, "connpool_connections_closed_total", "\(label),reason=\"\(reason.rawValue)\"",
                       status.metrics.closedByReason[reason] ?? 0)
            }
        }

        let bounds = bucketBounds(buckets)
        for histogram in histograms {
            family(&out, histogram.name, "histogram", histogram.help)
            for (label, status) in pools {
                renderHistogram(&out, histogram.name, label, histogram.value(status.metrics), bounds: bounds)
            }
        }
        return out
    }

    /// Escapes a label value: backslash, double quote and line feed, as the text format requires.
    public static func escapeLabelValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") })
        else { return value }
        var escaped = ""
        escaped.reserveCapacity(value.utf8.count + 8)
        for character in value.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// Whole nanoseconds as exact decimal seconds: `1024` → `0.000001024`, `2_000_000_000` → `2`.
    public static func seconds(nanoseconds: UInt64) -> String {
        let whole = nanoseconds / 1_000_000_000
        var fraction = nanoseconds % 1_000_000_000
        guard fraction > 0 else { return String(whole) }
        var digits = 9
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let text = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - text.count) + text
    }

    // MARK: Pieces

    /// The indices into ``ConnPool/HistogramSnapshot/upperBounds`` rendered as `le` bounds.
    static func bucketBounds(_ layout: BucketLayout) -> [Int] {
        let all = Array(HistogramSnapshot.upperBounds.indices)
        switch layout {
        case .all: return all
        case .octaves: return all.filter { HistogramSnapshot.upperBounds[$0].nonzeroBitCount == 1 }
        }
    }

    private static func renderHistogram(
        _ out: inout String, _ name: String, _ label: String, _ snapshot: HistogramSnapshot, bounds: [Int]
    ) {
        // cumulative[i] = values in buckets 0...i, i.e. below upperBounds[i].
        var cumulative: UInt64 = 0
        var next = 0
        for index in bounds {
            while next <= index, next < snapshot.counts.count {
                cumulative += snapshot.counts[next]
                next += 1
            }
            let le = seconds(nanoseconds: HistogramSnapshot.upperBounds[index])
            out += "\(name)_bucket{\(label),le=\"\(le)\"} \(cumulative)\n"
        }
        let total = snapshot.counts.reduce(0, +)
        out += "\(name)_bucket{\(label),le=\"+Inf\"} \(total)\n"
        out += "\(name)_sum{\(label)} \(seconds(nanoseconds: snapshot.sumNanoseconds))\n"
        out += "\(name)_count{\(label)} \(total)\n"
    }

    private static func family(_ out: inout String, _ name: String, _ type: String, _ help: String) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    private static func sample(_ out: inout String, _ name: String, _ labels: String, _ value: Int) {
        out += "\(name){\(labels)} \(value)\n"
    }

    private struct CounterFamily: Sendable {
        let name: String
        let help: String
        let value: @Sendable (PoolMetrics) -> Int
    }

    private static let counters: [CounterFamily] = [
        CounterFamily(name: "connpool_acquires_total", help: "Leases granted, at once or after waiting.", value: { $0.acquires }),
        CounterFamily(name: "connpool_acquires_waited_total", help: "Leases granted after waiting.", value: { $0.acquiresAfterWaiting }),
        CounterFamily(name: "connpool_connections_created_total", help: "Connections opened.", value: { $0.created }),
        CounterFamily(name: "connpool_connect_failures_total", help: "Failed connection attempts.", value: { $0.creationFailures }),
        CounterFamily(name: "connpool_acquire_timeouts_total", help: "Acquires that timed out.", value: { $0.acquireTimeouts }),
        CounterFamily(
            name: "connpool_health_check_failures_total", help: "Health checks that failed (background or on acquire).",
            value: { $0.healthCheckFailures }),
        CounterFamily(
            name: "connpool_acquires_failed_fast_total", help: "Acquires failed at once while the circuit breaker was open.",
            value: { $0.failedFast }),
        CounterFamily(name: "connpool_waiters_shed_total", help: "Acquires refused because maxWaiters callers already waited.", value: { $0.shedWaiters }),
        CounterFamily(name: "connpool_waiters_cancelled_total", help: "Waiting acquires whose task was cancelled.", value: { $0.cancelledWaiters }),
        CounterFamily(name: "connpool_leaks_detected_total", help: "Leases held past the leak detection threshold.", value: { $0.leaksDetected }),
        CounterFamily(
            name: "connpool_session_resets_total", help: "Released connections whose session state was reset before reuse.",
            value: { $0.sessionResets }),
    ]

    private struct HistogramFamily: Sendable {
        let name: String
        let help: String
        let value: @Sendable (PoolMetrics) -> HistogramSnapshot
    }

    private static let histograms: [HistogramFamily] = [
        HistogramFamily(
            name: "connpool_acquire_wait_seconds", help: "How long acquires waited for a connection (0 when served at once).",
            value: { $0.acquireWait }),
        HistogramFamily(
            name: "connpool_lease_hold_seconds", help: "How long leases were held (recorded with recordsLeaseHoldTime).",
            value: { $0.leaseHold }),
        HistogramFamily(
            name: "connpool_connection_lifetime_seconds", help: "How long closed connections lived.",
            value: { $0.connectionLifetime }),
    ]
}
