public import ConnPoolRedis

/// An error of a ``RedisClusterClient``: a request that could not be routed or completed, or a
/// topology that could not be learnt. Error replies of the servers that are the command's own result
/// (`WRONGTYPE`, `ERR …`) are thrown as ``RedisError/server(_:)`` instead, as by a single connection.
///
/// No case carries a command's arguments, a key or a password: the errors are safe to log.
public enum RedisClusterError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The command's keys hash to different slots (`slots` lists the first two), so no single node can
    /// serve it. Detected before anything is sent. Give the keys a common `{hash tag}`, or use the
    /// client's multi-key forms (``RedisClusterClient/mget(_:)``, ``RedisClusterClient/del(_:)``, …) that split by slot.
    case crossSlot(command: String, slots: [UInt16])
    /// A transaction's commands touch keys of more than one slot (`slots` lists the first two); nothing
    /// was sent. A transaction runs on one node: put its keys under one `{hash tag}`.
    case transactionSpansSlots(slots: [UInt16])
    /// A transaction has no key (it cannot be routed to a shard); nothing was sent.
    case transactionWithoutKeys
    /// The command was redirected (`MOVED`/`ASK`) `limit` times without completing: the cluster's slots
    /// are moving faster than the client follows, or two nodes disagree. `lastRedirect` is the last
    /// redirection's text (`MOVED 3999 127.0.0.1:7001`).
    case tooManyRedirects(command: String, limit: Int, lastRedirect: String)
    /// The request did not complete within ``RedisClusterConfiguration/requestTimeout`` while the cluster
    /// kept answering `TRYAGAIN`/`CLUSTERDOWN` or a node was unreachable; `lastError` describes the last
    /// failure. Retry later, or raise the timeout above the cluster's failover time.
    case retriesExhausted(command: String, attempts: Int, lastError: String)
    /// No node answered `CLUSTER SHARDS`/`CLUSTER SLOTS` (`tried` lists the addresses asked);
    /// `lastCause` is the last node's error. Check that the seeds are reachable cluster nodes.
    case topologyUnavailable(tried: [String], lastCause: String)
    /// No node serves `slot` in the client's current view of the cluster (slots not covered); the client
    /// refreshes its view and retries until ``RedisClusterConfiguration/requestTimeout`` first.
    case slotNotServed(slot: UInt16)
    /// The read policy is ``RedisClusterReadPolicy/replicaOnly`` and the shard serving `slot` has no
    /// replica that is online.
    case noReplicaAvailable(slot: UInt16)
    /// The command cannot be sent through a cluster client: `reason` says why and what to use instead
    /// (for example `SELECT` of a database other than 0, or `SUBSCRIBE`, which needs a connection of its own).
    case unsupportedCommand(command: String, reason: String)
    /// A seed URL or the configuration is invalid: `reason` says what to fix (never quoting a URL).
    case invalidConfiguration(reason: String)
    /// The client was shut down (``RedisClusterClient/shutdown()``).
    case shutDown

    /// A readable explanation with what to do; never contains a key, an argument or a password.
    public var description: String {
        switch self {
        case .crossSlot(let command, let slots):
            return "CROSSSLOT: the keys of \(command) hash to different slots (\(slots.map(String.init).joined(separator: ", ")));"
                + " give them a common {hash tag} or use the client's slot-splitting multi-key forms"
        case .transactionSpansSlots(let slots):
            return "a cluster transaction must stay within one slot, but its keys hash to slots "
                + "\(slots.map(String.init).joined(separator: ", ")): put them under one {hash tag}"
        case .transactionWithoutKeys:
            return "a cluster transaction needs at least one key to be routed to its shard"
        case .tooManyRedirects(let command, let limit, let lastRedirect):
            return "\(command) was redirected \(limit) times without completing (last: \(lastRedirect)); the cluster is resharding faster than the client follows"
        case .retriesExhausted(let command, let attempts, let lastError):
            return "\(command) failed after \(attempts) attempts within the request timeout; last error: \(lastError)"
        case .topologyUnavailable(let tried, let lastCause):
            return "no cluster node answered CLUSTER SHARDS/SLOTS (asked \(tried.joined(separator: ", "))); last cause: \(lastCause)"
        case .slotNotServed(let slot):
            return "no node serves slot \(slot) in the cluster's current configuration"
        case .noReplicaAvailable(let slot):
            return "the read policy is replicaOnly, but the shard serving slot \(slot) has no online replica"
        case .unsupportedCommand(let command, let reason):
            return "\(command) cannot be sent through a cluster client: \(reason)"
        case .invalidConfiguration(let reason):
            return "invalid Redis Cluster configuration: \(reason)"
        case .shutDown:
            return "the Redis Cluster client has been shut down"
        }
    }
}
