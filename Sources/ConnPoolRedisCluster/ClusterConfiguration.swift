public import ConnPool
public import ConnPoolRedis

/// Where a ``RedisClusterClient`` sends commands that only read.
public enum RedisClusterReadPolicy: String, Sendable, Hashable, Codable, CaseIterable {
    /// Every command goes to its slot's primary (the default): reads see every acknowledged write.
    case primaryOnly
    /// Read-only commands go to an online replica of the slot's shard (round-robin among them), or to the
    /// primary when the shard has none. Replicas lag: a read may miss a recent write.
    case preferReplica
    /// Read-only commands go to an online replica (round-robin); when the shard has none they fail with
    /// ``RedisClusterError/noReplicaAvailable(slot:)``.
    case replicaOnly
    /// Read-only commands go round-robin over the primary and the online replicas of the shard.
    case roundRobin
}

/// How a ``RedisClusterClient`` routes, retries and refreshes, and how its per-node pools are sized.
public struct RedisClusterConfiguration: Sendable, Hashable {
    /// The configuration of each node's ``ConnectionPool`` (its ``PoolConfiguration/name`` is replaced
    /// by `cluster:<host>:<port>`, so metrics and status are labelled by node). Defaults: at most 16
    /// connections per node, none opened in advance.
    public var pool: PoolConfiguration = PoolConfiguration().maxSize(16).minSize(0)
    /// Where read-only commands go. Default ``RedisClusterReadPolicy/primaryOnly``.
    public var readPolicy: RedisClusterReadPolicy = .primaryOnly
    /// How many `MOVED`/`ASK` redirections one command follows before failing with
    /// ``RedisClusterError/tooManyRedirects(command:limit:lastRedirect:)``. Default 5.
    public var maxRedirects: Int = 5
    /// The deadline of one request, retries included: `TRYAGAIN`, `CLUSTERDOWN`, an unreachable node
    /// and a failover in progress are retried with backoff until it passes. Default 5 s (above a
    /// failover's node timeout plus election).
    public var requestTimeout: Duration = .seconds(5)
    /// The first pause between two retries; it doubles up to ``retryMaxBackoff``. Default 10 ms.
    public var retryInitialBackoff: Duration = .milliseconds(10)
    /// The longest pause between two retries. Default 250 ms.
    public var retryMaxBackoff: Duration = .milliseconds(250)
    /// How often the topology is refreshed when nothing triggers it; `nil` never. Default 30 s.
    public var refreshInterval: Duration? = .seconds(30)
    /// The shortest time between two refreshes that redirections or errors trigger (a burst of `MOVED`
    /// during a reshard makes one refresh, not thousands). Default 100 ms.
    public var minimumRefreshInterval: Duration = .milliseconds(100)
    /// How many nodes a refresh asks for their view; the view most of them share wins (ties: the view
    /// covering more slots, then the first answer). Default 3.
    public var refreshSampleSize: Int = 3
    /// How long the pool of a node that left the cluster lets its borrowed connections finish before
    /// closing them. Default 10 s.
    public var drainGracePeriod: Duration = .seconds(10)
    /// The command timeout of node connections whose seed URL configuration has none (a frozen node
    /// must not hang a request forever). Default 2 s; `nil` keeps none.
    public var defaultCommandTimeout: Duration? = .seconds(2)

    /// The defaults.
    public init() {}

    /// Checks the values.
    ///
    /// - Throws: ``RedisClusterError/invalidConfiguration(reason:)`` naming the first bad field.
    public func validate() throws(RedisClusterError) {
        if maxRedirects < 0 { throw .invalidConfiguration(reason: "maxRedirects must be 0 or more") }
        if requestTimeout <= .zero { throw .invalidConfiguration(reason: "requestTimeout must be positive") }
        if retryInitialBackoff <= .zero || retryMaxBackoff < retryInitialBackoff {
            throw .invalidConfiguration(reason: "retry backoffs must be positive, the maximum at least the initial one")
        }
        if let refreshInterval, refreshInterval <= .zero {
            throw .invalidConfiguration(reason: "refreshInterval must be positive (or nil)")
        }
        if refreshSampleSize < 1 { throw .invalidConfiguration(reason: "refreshSampleSize must be at least 1") }
        if let defaultCommandTimeout, defaultCommandTimeout <= .zero {
            throw .invalidConfiguration(reason: "defaultCommandTimeout must be positive (or nil)")
        }
        do {
            try pool.validate()
        } catch {
            throw .invalidConfiguration(reason: "pool: \(error)")
        }
    }
}
