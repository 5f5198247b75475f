import ConnPool
import ConnPoolPrometheus

/// `--metrics-port`: serves `/metrics` (Prometheus text) and `/status` (JSON) on 127.0.0.1 for the pool
/// of the run under way, while redis-bench runs.
///
/// Each pooled run creates its pool (all named alike); the newest replaces the previous one, which
/// stays visible (shut down, with its final counters) until then, so a scrape between two runs still
/// sees the last figures.
final class MetricsEndpoint: Sendable {
    private let registry: PoolMetricsRegistry
    private let server: PoolMetricsServer

    /// The bound port.
    var port: Int { server.port }

    /// Starts serving on 127.0.0.1:`port`.
    ///
    /// - Throws: ``PoolMetricsServerError`` if the port cannot be bound (in use, or privileged).
    init(port: Int) throws {
        registry = try PoolMetricsRegistry()
        server = try PoolMetricsServer(registry: registry, host: "127.0.0.1", port: port)
    }

    /// Reports `pool` from now on, instead of the previous run's.
    func observe<Factory: ConnectionFactory>(_ pool: ConnectionPool<Factory>) {
        for previous in registry.registered { registry.unregister(previous) }
        try? registry.register(pool)  // cannot fail: the registry is empty
    }

    /// Stops serving.
    func stop() { server.stop() }
}
