public import ConnPoolRedisCluster
public import Metrics
import ConnPool
import ConnPoolMetrics
import Synchronization

/// Reports a ``ConnPoolRedisCluster/RedisClusterClient`` through swift-metrics: its cluster counters, the
/// slots each node serves, and every node's pool (through a `PoolMetricsExporter` per pool, with the
/// dimension `pool=cluster:<host>:<port>`, and `…:readonly` for replica-read pools).
///
/// ```swift
/// let exporter = ClusterMetricsExporter(client: cluster, every: .seconds(10))
/// …
/// exporter.stop()
/// ```
///
/// | instrument | kind | value |
/// | --- | --- | --- |
/// | `connpool_cluster_redirects_total{kind=moved\|ask}` | counter | redirections followed |
/// | `connpool_cluster_refreshes_total` | counter | topology refreshes that produced a view |
/// | `connpool_cluster_refresh_failures_total` | counter | refreshes no node answered |
/// | `connpool_cluster_failovers_seen_total` | counter | shards found served by their former replica |
/// | `connpool_cluster_retries_total{reason=busy\|connection}` | counter | requests retried |
/// | `connpool_cluster_slots{node=…}` | gauge | slots a node serves in the client's view |
/// | `connpool_*{pool=cluster:…}` | as `PoolMetricsExporter` | each node pool |
///
/// Counters are incremented by the difference from the previous export. Exports run on a task of the
/// exporter's own, every `interval`, until ``stop()`` (which exports once more).
public final class ClusterMetricsExporter: Sendable {
    private let client: RedisClusterClient
    private let factory: any MetricsFactory
    private let state = LockedValue<State>(State())
    private let task = LockedValue<Task<Void, Never>?>(nil)

    private struct State: Sendable {
        var last = RedisClusterCounters()
        var pools: [String: PoolMetricsExporter] = [:]
        var nodes: Set<String> = []
    }

    /// Starts exporting `client` every `interval` to `factory`.
    ///
    /// - Precondition: `interval` is positive.
    public init(client: RedisClusterClient, every interval: Duration, factory: any MetricsFactory = MetricsSystem.factory) {
        precondition(interval > .zero, "the export interval must be positive")
        self.client = client
        self.factory = factory
        let exportTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let self, !Task.isCancelled else { return }
                self.exportNow()
            }
        }
        task.withLock { $0 = exportTask }
    }

    /// Exports the client's counters, slots and node pools now.
    public func exportNow() {
        let status = client.status()
        state.withLock { state in
            let now = status.counters
            func add(_ label: String, _ dimensions: [(String, String)], _ value: Int, _ previous: Int) {
                let delta = value - previous
                if delta > 0 { Counter(label: label, dimensions: dimensions, factory: factory).increment(by: delta) }
            }
            add("connpool_cluster_redirects_total", [("kind", "moved")], now.movedRedirects, state.last.movedRedirects)
            add("connpool_cluster_redirects_total", [("kind", "ask")], now.askRedirects, state.last.askRedirects)
            add("connpool_cluster_refreshes_total", [], now.refreshes, state.last.refreshes)
            add("connpool_cluster_refresh_failures_total", [], now.refreshFailures, state.last.refreshFailures)
            add("connpool_cluster_failovers_seen_total", [], now.failoversSeen, state.last.failoversSeen)
            add("connpool_cluster_retries_total", [("reason", "busy")], now.clusterBusyRetries, state.last.clusterBusyRetries)
            add("connpool_cluster_retries_total", [("reason", "connection")], now.connectionRetries, state.last.connectionRetries)
            state.last = now
            var seen = Set<String>()
            for node in status.nodes {
                let address = node.address.description
                seen.insert(address)
                Gauge(label: "connpool_cluster_slots", dimensions: [("node", address)], factory: factory).record(node.slots)
                for pool in [node.pool] + (node.readOnlyPool.map { [$0] } ?? []) {
                    let exporter = state.pools[pool.name] ?? PoolMetricsExporter(poolName: pool.name, factory: factory)
                    state.pools[pool.name] = exporter
                    exporter.export(pool.metrics)
                }
            }
            // Nodes that left: their slot gauge drops to 0, their pool exporters are dropped.
            for gone in state.nodes.subtracting(seen) {
                Gauge(label: "connpool_cluster_slots", dimensions: [("node", gone)], factory: factory).record(0)
                state.pools = state.pools.filter { !$0.key.hasPrefix("cluster:\(gone)") }
            }
            state.nodes = seen
        }
    }

    /// Stops the periodic export after one last export. Idempotent.
    public func stop() {
        let running = task.withLock { task in
            defer { task = nil }
            return task
        }
        guard let running else { return }
        running.cancel()
        exportNow()
    }

    deinit {
        task.withLock { $0?.cancel() }
    }
}
