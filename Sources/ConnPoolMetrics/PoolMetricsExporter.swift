public import ConnPool
public import Metrics

/// Reports a ``ConnPool/ConnectionPool``'s ``ConnPool/PoolMetrics`` through swift-metrics, so that
/// any swift-metrics backend (Prometheus, StatsD, OpenTelemetry, …) sees the pool.
///
/// ## Attaching
/// ```swift
/// import ConnPoolMetrics
///
/// let exporter = pool.exportMetrics(every: .seconds(10))      // MetricsSystem.factory by default
/// …
/// exporter.stop()                                             // one last export, then detaches
/// ```
/// ``ConnPool/ConnectionPool/exportMetrics(every:factory:options:)`` uses the pool's periodic metrics
/// handler (``ConnPool/ConnectionPool/setMetricsHandler(every:_:)``), so exports run on the pool's
/// timer (its timer thread, or the thread advancing a ``ConnPool/ManualClock`` in tests) and stop when
/// the pool shuts down. A pool has **one** such handler: attaching replaces a handler set with
/// `setMetricsHandler`, and setting one later detaches the exporter. To keep a handler of your own,
/// create the exporter with ``init(poolName:factory:options:)`` and call ``export(_:)`` from it.
///
/// ## What is reported
/// Every instrument carries the dimension `pool=<configuration.name>` (and nothing else from the
/// pool: the name is the only user-supplied value, so keep secrets out of it).
///
/// | instrument | kind | value |
/// | --- | --- | --- |
/// | `connpool_connections{state=idle\|in_use\|connecting\|closing\|validating}` | gauge | connections now |
/// | `connpool_waiting` | gauge | callers waiting now |
/// | `connpool_max_size` | gauge | the pool's current maximum |
/// | `connpool_acquires_total` | counter | leases granted |
/// | `connpool_acquires_waited_total` | counter | leases granted after waiting |
/// | `connpool_connections_created_total` | counter | connections opened |
/// | `connpool_connect_failures_total` | counter | failed connection attempts |
/// | `connpool_acquire_timeouts_total` | counter | acquires that timed out |
/// | `connpool_health_check_failures_total` | counter | failed health checks |
/// | `connpool_acquires_failed_fast_total` | counter | acquires failed by the open circuit breaker |
/// | `connpool_waiters_shed_total` | counter | acquires shed at `maxWaiters` |
/// | `connpool_waiters_cancelled_total` | counter | waiting acquires cancelled |
/// | `connpool_leaks_detected_total` | counter | leases held past the leak threshold |
/// | `connpool_session_resets_total` | counter | released connections whose session state was reset |
/// | `connpool_connections_closed_total{reason=lifetime\|idle\|health\|broken\|shutdown\|resize\|dirty}` | counter | connections closed |
/// | `connpool_acquire_wait_seconds` | timer | how long acquires waited (0 when served at once) |
/// | `connpool_lease_hold_seconds` | timer | how long leases were held (with `recordsLeaseHoldTime`) |
/// | `connpool_connection_lifetime_seconds` | timer | how long closed connections lived |
///
/// The pool's counters only grow; each export increments a counter by the difference from the
/// previous export (the first export reports everything since the pool was created). The timers are
/// named `_seconds` because Prometheus-style backends report them in seconds; the values recorded are
/// durations in nanoseconds, as swift-metrics timers take them. The names match those of
/// `ConnPoolPrometheus`, so dashboards work with either.
///
/// ## Histograms: bounded replay
/// The pool keeps its distributions as fixed log-scale buckets (``ConnPool/HistogramSnapshot``), while a
/// swift-metrics `Timer` only takes single values. Each export therefore replays, per bucket, the
/// number of values the bucket gained since the previous export, as that many `recordNanoseconds`
/// calls at the bucket's representative value: its midpoint, clamped to the recorded minimum and
/// maximum; 0 for the first bucket (under 1 µs: mostly acquires served at once, which are exactly 0);
/// the recorded maximum for the overflow bucket (over 68.7 s).
///
/// A busy pool gains millions of values between two exports, and replaying them one by one would make
/// the export (which runs on the pool's timer) cost milliseconds to seconds. So when a histogram
/// gained more than ``Options/maxSamplesPerExport`` values, every bucket's gain is scaled down by the
/// same factor (`gain × max / total`, rounded down, but at least 1 for any bucket that gained
/// something, so that rare slow values — the tail — are never dropped). An export thus records at most
/// `maxSamplesPerExport` + 106 (the number of buckets) values per histogram, whatever the traffic.
///
/// Why scaling rather than the alternatives:
/// - *capping each bucket* (`min(gain, cap)`) is as cheap but skews the shape: with 1,000,000 fast
///   acquires and 20 slow ones, a cap of 16 reports half of them slow, and the p50 becomes the slow
///   value. Scaling keeps every bucket's share, so percentiles computed by the backend stay within a
///   bucket's width (25 %) plus the rounding of `106 / maxSamplesPerExport` in rank.
/// - *percentiles as gauges* lose what a backend's histogram gives: aggregation across instances and
///   over arbitrary windows.
///
/// What the approximation costs: above the threshold, the backend's timer *count* and *sum* are the
/// sampled ones, not the true ones. Use `connpool_acquires_total` (exact) for rates and counts, and the
/// timers for the distribution's shape. Below it (the default 1,000 per 10 s is 100 acquires a second)
/// the replay is exact up to the bucket's width.
public final class PoolMetricsExporter: Sendable {
    /// How the exporter reports.
    public struct Options: Sendable, Hashable {
        /// The most values one export replays into each timer (see the type's documentation, "bounded
        /// replay"); at least 1. Default 1,000.
        public var maxSamplesPerExport: Int

        /// Options with the given sample bound (clamped to at least 1).
        public init(maxSamplesPerExport: Int = 1_000) {
            self.maxSamplesPerExport = max(1, maxSamplesPerExport)
        }
    }

    /// The `pool` dimension of every instrument: the pool's ``ConnPool/PoolConfiguration/name``.
    public let poolName: String
    /// The options the exporter was created with.
    public let options: Options

    private let instruments: Instruments
    /// The snapshot of the previous export (counter and histogram deltas are taken against it), and
    /// how to reach the attached pool. Exports are serialized by this lock, so that two concurrent
    /// exports never count the same delta twice.
    private let state = LockedValue(State())

    private struct State {
        var previous: PoolMetrics?
        var attachment: Attachment?
    }

    /// Closures over the attached pool, held weakly (the pool holds the exporter through its handler).
    private struct Attachment: Sendable {
        var snapshot: @Sendable () -> PoolMetrics?
        var detach: @Sendable () -> Void
    }

    /// Creates an exporter and its instruments, not attached to any pool: call ``export(_:)`` with
    /// snapshots yourself (for instance from your own ``ConnPool/ConnectionPool/setMetricsHandler(every:_:)``
    /// handler), or use ``ConnPool/ConnectionPool/exportMetrics(every:factory:options:)``.
    ///
    /// - Parameters:
    ///   - poolName: the `pool` dimension; the pool's ``ConnPool/PoolConfiguration/name``.
    ///   - factory: where the instruments are created; `MetricsSystem.factory` by default (read now:
    ///     bootstrap the metrics system first).
    ///   - options: see ``Options``.
    public init(poolName: String, factory: any MetricsFactory = MetricsSystem.factory, options: Options = Options()) {
        self.poolName = poolName
        self.options = options
        instruments = Instruments(poolName: poolName, factory: factory)
    }

    /// Reports one snapshot: sets the gauges, increments the counters by what they gained since the
    /// previous export (everything, on the first), and replays the histograms' new values into the
    /// timers (bounded, see the type's documentation). Thread-safe; concurrent calls are serialized.
    ///
    /// Give it the snapshots of one pool, in the order they were taken (an attached exporter takes its
    /// own, in order). A counter found lower than at the previous export (a pool created anew under the
    /// same name and exporter) is taken as restarted from zero: its whole value is reported.
    public func export(_ metrics: PoolMetrics) {
        state.withLock { state in record(metrics, &state) }
    }

    /// Exports the attached pool's current ``ConnPool/ConnectionPool/metrics()`` now, outside the
    /// schedule. Does nothing when the exporter is not attached or the pool is gone.
    ///
    /// The snapshot is taken with the exporter's lock held, so that exports from the schedule and from
    /// here, on different threads, always see the pool's counters in order.
    public func exportNow() {
        state.withLock { state in
            guard let metrics = state.attachment?.snapshot() else { return }
            record(metrics, &state)
        }
    }

    /// Detaches the exporter from its pool (clears the pool's metrics handler) after one last export,
    /// so that the counters include everything up to now. The instruments keep their last values.
    /// Does nothing when the exporter is not attached.
    public func stop() {
        state.withLock { state in
            guard let attachment = state.attachment else { return }
            state.attachment = nil
            attachment.detach()
            if let metrics = attachment.snapshot() { record(metrics, &state) }
        }
    }

    /// Installs the exporter as `pool`'s metrics handler.
    func attach<Factory: ConnectionFactory>(to pool: ConnectionPool<Factory>, every interval: Duration) {
        let attachment = Attachment(
            snapshot: { [weak pool] in pool?.metrics() },
            detach: { [weak pool] in pool?.setMetricsHandler(every: interval, nil) })
        state.withLock { $0.attachment = attachment }
        // The handler's own snapshot is dropped: ``exportNow()`` takes a fresh one under the exporter's
        // lock, so that a concurrent `exportNow()` can never deliver an older snapshot after a newer one
        // (which would look like a restart and count everything twice). One more `metrics()` per
        // interval is cheap. Lock order: exporter, then pool; the pool calls handlers without its own
        // lock held, so the two never wait for each other.
        pool.setMetricsHandler(every: interval) { [self] _ in exportNow() }
    }

    private func record(_ metrics: PoolMetrics, _ state: inout State) {
        instruments.update(metrics, previous: state.previous, maxSamples: options.maxSamplesPerExport)
        state.previous = metrics
    }

    // MARK: Histogram replay

    /// The value replayed for bucket `index` of `snapshot` (see the type's documentation).
    static func representativeNanoseconds(bucket index: Int, of snapshot: HistogramSnapshot) -> UInt64 {
        let bounds = HistogramSnapshot.upperBounds
        if index == 0 { return 0 }
        guard index < bounds.count else { return max(snapshot.maxNanoseconds, bounds[bounds.count - 1]) }
        let lower = bounds[index - 1]
        let midpoint = lower + (bounds[index] - lower) / 2
        guard snapshot.minNanoseconds <= snapshot.maxNanoseconds else { return midpoint }
        return min(max(midpoint, snapshot.minNanoseconds), snapshot.maxNanoseconds)
    }

    /// How many values to replay per bucket: the buckets' gains since `previous`, scaled down to about
    /// `maxSamples` in total when larger (each non-empty bucket keeps at least one).
    static func replayCounts(_ current: HistogramSnapshot, previous: HistogramSnapshot?, maxSamples: Int) -> [UInt64] {
        var gains = current.counts
        if let previous, previous.counts.count == gains.count {
            for index in gains.indices {
                let before = previous.counts[index]
                // A bucket lower than before means a restarted source: count it whole.
                if gains[index] >= before { gains[index] -= before }
            }
        }
        let total = gains.reduce(0, +)
        let limit = UInt64(max(1, maxSamples))
        guard total > limit else { return gains }
        let scale = Double(limit) / Double(total)
        return gains.map { gain in gain == 0 ? 0 : max(1, UInt64((Double(gain) * scale).rounded(.down))) }
    }
}

extension ConnectionPool {
    /// Reports this pool's metrics through swift-metrics every `interval`, from the pool's timer, until
    /// the returned exporter is stopped, the pool shuts down, or another metrics handler replaces it.
    /// See ``PoolMetricsExporter`` for the instruments and the replay of the histograms.
    ///
    /// The pool has one metrics handler: this replaces one set with
    /// ``ConnPool/ConnectionPool/setMetricsHandler(every:_:)``. The first export happens after one
    /// `interval`.
    ///
    /// - Parameters:
    ///   - interval: time between exports; 10 seconds by default.
    ///   - factory: where the instruments are created; `MetricsSystem.factory` by default.
    ///   - options: see ``PoolMetricsExporter/Options``.
    /// - Returns: the exporter; keep it to ``PoolMetricsExporter/stop()`` it (dropping it does not stop
    ///   the exports: the pool's handler holds it).
    /// - Precondition: `interval` is positive.
    @discardableResult
    public func exportMetrics(
        every interval: Duration = .seconds(10),
        factory: any MetricsFactory = MetricsSystem.factory,
        options: PoolMetricsExporter.Options = PoolMetricsExporter.Options()
    ) -> PoolMetricsExporter {
        let exporter = PoolMetricsExporter(poolName: configuration.name, factory: factory, options: options)
        exporter.attach(to: self, every: interval)
        return exporter
    }
}

/// The swift-metrics instruments of one pool, created once.
private struct Instruments: Sendable {
    /// Gauges, in the order of ``PoolMetricsNames/connectionStates``.
    let connections: [Gauge]
    let waiting: Gauge
    let maxSize: Gauge
    /// Counters, in the order of ``PoolMetricsNames/counters``.
    let counters: [Counter]
    let closed: [CloseReason: Counter]
    let acquireWait: Timer
    let leaseHold: Timer
    let connectionLifetime: Timer

    init(poolName: String, factory: any MetricsFactory) {
        let pool = [("pool", poolName)]
        connections = PoolMetricsNames.connectionStates.map { state, _ in
            Gauge(label: PoolMetricsNames.connections, dimensions: pool + [("state", state)], factory: factory)
        }
        waiting = Gauge(label: PoolMetricsNames.waiting, dimensions: pool, factory: factory)
        maxSize = Gauge(label: PoolMetricsNames.maxSize, dimensions: pool, factory: factory)
        counters = PoolMetricsNames.counters.map { name, _ in Counter(label: name, dimensions: pool, factory: factory) }
        var closed: [CloseReason: Counter] = [:]
        for reason in CloseReason.allCases {
            closed[reason] = Counter(
                label: PoolMetricsNames.connectionsClosed, dimensions: pool + [("reason", reason.rawValue)],
                factory: factory)
        }
        self.closed = closed
        acquireWait = Timer(label: PoolMetricsNames.acquireWait, dimensions: pool, factory: factory)
        leaseHold = Timer(label: PoolMetricsNames.leaseHold, dimensions: pool, factory: factory)
        connectionLifetime = Timer(label: PoolMetricsNames.connectionLifetime, dimensions: pool, factory: factory)
    }

    func update(_ metrics: PoolMetrics, previous: PoolMetrics?, maxSamples: Int) {
        for (gauge, (_, value)) in zip(connections, PoolMetricsNames.connectionStates) { gauge.record(value(metrics)) }
        waiting.record(metrics.waiting)
        maxSize.record(metrics.maxSize)
        for (counter, (_, value)) in zip(counters, PoolMetricsNames.counters) {
            let gain = Self.gain(value(metrics), previous.map(value))
            if gain > 0 { counter.increment(by: gain) }
        }
        for reason in CloseReason.allCases {
            let gain = Self.gain(metrics.closedByReason[reason] ?? 0, previous.map { $0.closedByReason[reason] ?? 0 })
            if gain > 0 { closed[reason]?.increment(by: gain) }
        }
        Self.replay(metrics.acquireWait, previous: previous?.acquireWait, into: acquireWait, maxSamples: maxSamples)
        Self.replay(metrics.leaseHold, previous: previous?.leaseHold, into: leaseHold, maxSamples: maxSamples)
        Self.replay(
            metrics.connectionLifetime, previous: previous?.connectionLifetime, into: connectionLifetime,
            maxSamples: maxSamples)
    }

    /// What a counter gained; a value below the previous one means the source restarted.
    static func gain(_ current: Int, _ previous: Int?) -> Int {
        guard let previous, current >= previous else { return current }
        return current - previous
    }

    static func replay(_ snapshot: HistogramSnapshot, previous: HistogramSnapshot?, into timer: Timer, maxSamples: Int) {
        let counts = PoolMetricsExporter.replayCounts(snapshot, previous: previous, maxSamples: maxSamples)
        for (index, count) in counts.enumerated() where count > 0 {
            let value = Int64(clamping: PoolMetricsExporter.representativeNanoseconds(bucket: index, of: snapshot))
            for _ in 0..<count { timer.recordNanoseconds(value) }
        }
    }
}

/// The instrument names (shared with the tests).
enum PoolMetricsNames {
    static let connections = "connpool_connections"
    static let waiting = "connpool_waiting"
    static let maxSize = "connpool_max_size"
    static let connectionsClosed = "connpool_connections_closed_total"
    static let acquireWait = "connpool_acquire_wait_seconds"
    static let leaseHold = "connpool_lease_hold_seconds"
    static let connectionLifetime = "connpool_connection_lifetime_seconds"

    /// The `state` dimension of `connpool_connections`, and where each value comes from.
    static let connectionStates: [(String, @Sendable (PoolMetrics) -> Int)] = [
        ("idle", { $0.idle }),
        ("in_use", { $0.inUse }),
        ("connecting", { $0.connecting }),
        ("closing", { $0.closing }),
        ("validating", { $0.validating }),
    ]

    /// The counters, and where each value comes from.
    static let counters: [(String, @Sendable (PoolMetrics) -> Int)] = [
        ("connpool_acquires_total", { $0.acquires }),
        ("connpool_acquires_waited_total", { $0.acquiresAfterWaiting }),
        ("connpool_connections_created_total", { $0.created }),
        ("connpool_connect_failures_total", { $0.creationFailures }),
        ("connpool_acquire_timeouts_total", { $0.acquireTimeouts }),
        ("connpool_health_check_failures_total", { $0.healthCheckFailures }),
        ("connpool_acquires_failed_fast_total", { $0.failedFast }),
        ("connpool_waiters_shed_total", { $0.shedWaiters }),
        ("connpool_waiters_cancelled_total", { $0.cancelledWaiters }),
        ("connpool_leaks_detected_total", { $0.leaksDetected }),
        ("connpool_session_resets_total", { $0.sessionResets }),
    ]
}
