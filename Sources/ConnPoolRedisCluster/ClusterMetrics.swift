public import ConnPool
import Synchronization

/// The cluster client's event counters since it was created.
public struct RedisClusterCounters: Sendable, Hashable, Codable {
    /// `MOVED` redirections followed (each also updated the slot table and scheduled a refresh).
    public var movedRedirects: Int = 0
    /// `ASK` redirections followed (`ASKING` then the command on the importing node).
    public var askRedirects: Int = 0
    /// Topology refreshes that produced a view (periodic, on demand, or triggered by redirects and errors).
    public var refreshes: Int = 0
    /// Refreshes in which no node answered.
    public var refreshFailures: Int = 0
    /// Failovers seen: a refresh found a shard served by a node that was its replica in the previous view.
    public var failoversSeen: Int = 0
    /// `TRYAGAIN`, `CLUSTERDOWN`, `LOADING` or `MASTERDOWN` replies retried.
    public var clusterBusyRetries: Int = 0
    /// Requests retried after a connection error (reads, and writes provably not sent).
    public var connectionRetries: Int = 0
    /// Pooled connections found closed by their node before a write was sent on them (discarded, the
    /// write sent on another connection).
    public var staleConnectionsDiscarded: Int = 0

    /// All redirections: ``movedRedirects`` plus ``askRedirects``.
    public var redirects: Int { movedRedirects + askRedirects }

    /// All zero.
    public init() {}
}

/// Lock-free counters behind ``RedisClusterCounters`` (relaxed increments: they order nothing).
final class ClusterCounterCells: Sendable {
    let moved = Atomic<Int>(0)
    let ask = Atomic<Int>(0)
    let refreshes = Atomic<Int>(0)
    let refreshFailures = Atomic<Int>(0)
    let failovers = Atomic<Int>(0)
    let busyRetries = Atomic<Int>(0)
    let connectionRetries = Atomic<Int>(0)
    let staleConnections = Atomic<Int>(0)

    var snapshot: RedisClusterCounters {
        var counters = RedisClusterCounters()
        counters.movedRedirects = moved.load(ordering: .relaxed)
        counters.askRedirects = ask.load(ordering: .relaxed)
        counters.refreshes = refreshes.load(ordering: .relaxed)
        counters.refreshFailures = refreshFailures.load(ordering: .relaxed)
        counters.failoversSeen = failovers.load(ordering: .relaxed)
        counters.clusterBusyRetries = busyRetries.load(ordering: .relaxed)
        counters.connectionRetries = connectionRetries.load(ordering: .relaxed)
        counters.staleConnectionsDiscarded = staleConnections.load(ordering: .relaxed)
        return counters
    }
}

/// A snapshot of a ``RedisClusterClient``: its view of the cluster, its counters and each node's pool.
/// Holds no secret.
public struct RedisClusterStatus: Sendable, Hashable, Codable {
    /// One node the client keeps pools for.
    public struct Node: Sendable, Hashable, Codable {
        /// The node's address (also the label of its pools: `cluster:<address>`).
        public var address: ClusterNodeAddress
        /// `primary`, `replica`, or `no slots` (a node serving and replicating nothing) in the client's view.
        public var role: String
        /// The slots it serves (0 for a replica).
        public var slots: Int
        /// Its read-write pool's status.
        public var pool: PoolStatus
        /// Its `READONLY` pool's status (replica reads), when the read policy uses replicas.
        public var readOnlyPool: PoolStatus?
    }

    /// The nodes, primaries first, by address.
    public var nodes: [Node]
    /// The client's view of the cluster.
    public var topology: ClusterTopology
    /// How many views were applied (refreshes and their results).
    public var topologyGeneration: Int
    /// The counters.
    public var counters: RedisClusterCounters
    /// The last refresh error, if the last refresh failed.
    public var lastRefreshError: String?
    /// `true` when every slot is served in the client's view.
    public var allSlotsCovered: Bool { topology.coveredSlots == ClusterSlot.count }
}

extension RedisClusterStatus {
    /// The cluster counters and per-node pool gauges in the Prometheus text format (version 0.0.4):
    /// `connpool_cluster_redirects_total{kind="moved"|"ask"}`, `connpool_cluster_refreshes_total`,
    /// `connpool_cluster_refresh_failures_total`, `connpool_cluster_failovers_seen_total`,
    /// `connpool_cluster_retries_total{reason="busy"|"connection"}`, `connpool_cluster_slots{node=…}` and
    /// `connpool_cluster_node_connections{node=…,pool="readwrite"|"readonly",state="idle"|"in_use"}`.
    /// Serve it next to ``ConnPool`` pool metrics, or on its own.
    public var prometheusText: String {
        var lines = [String]()
        func counter(_ name: String, _ help: String, _ samples: [(String, Int)]) {
            lines.append("# HELP \(name) \(help)")
            lines.append("# TYPE \(name) counter")
            for (labels, value) in samples { lines.append("\(name)\(labels) \(value)") }
        }
        counter("connpool_cluster_redirects_total", "MOVED and ASK redirections followed.", [
            ("{kind=\"moved\"}", counters.movedRedirects), ("{kind=\"ask\"}", counters.askRedirects),
        ])
        counter("connpool_cluster_refreshes_total", "Topology refreshes that produced a view.", [("", counters.refreshes)])
        counter("connpool_cluster_refresh_failures_total", "Topology refreshes no node answered.", [("", counters.refreshFailures)])
        counter("connpool_cluster_failovers_seen_total", "Shards found served by their former replica.", [("", counters.failoversSeen)])
        counter("connpool_cluster_retries_total", "Requests retried.", [
            ("{reason=\"busy\"}", counters.clusterBusyRetries), ("{reason=\"connection\"}", counters.connectionRetries),
        ])
        lines.append("# HELP connpool_cluster_slots Slots served by each node in the client's view.")
        lines.append("# TYPE connpool_cluster_slots gauge")
        for node in nodes { lines.append("connpool_cluster_slots{node=\"\(node.address)\",role=\"\(node.role)\"} \(node.slots)") }
        lines.append("# HELP connpool_cluster_node_connections Connections of each node's pools.")
        lines.append("# TYPE connpool_cluster_node_connections gauge")
        for node in nodes {
            for (kind, pool) in [("readwrite", node.pool), ("readonly", node.readOnlyPool)] {
                guard let pool else { continue }
                let labels = "node=\"\(node.address)\",pool=\"\(kind)\""
                lines.append("connpool_cluster_node_connections{\(labels),state=\"idle\"} \(pool.metrics.idle)")
                lines.append("connpool_cluster_node_connections{\(labels),state=\"in_use\"} \(pool.metrics.inUse)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
