import ConnPool
import ConnPoolRedis
import Logging
import Synchronization

/// A pooled connection to one cluster node: a ``RedisConnection``, in `READONLY` mode for the pools that
/// serve replica reads.
///
/// ## Reuse
/// The client refuses every command that changes a connection's session (``RedisClusterClient`` lists
/// them: `SELECT`, `MULTI` outside ``RedisClusterClient/transaction(_:)``, `WATCH`, `CLIENT SETNAME`,
/// subscriptions, …) and sends only two of its own: `READONLY` when the connection is opened (the state
/// this pool wants on every connection) and `ASKING`, which applies to the next command only and is always
/// pipelined with it (or with the `MULTI` … `EXEC` that it covers). So a returned connection is clean
/// unless it is broken, although ``RedisConnection/reuseCondition`` would call it dirty after `READONLY` or
/// `ASKING`, and a reset (`RESET` turns `READONLY` off) would cost a round trip per borrow.
final class ClusterNodeConnection: Connection {
    let redis: RedisConnection
    /// Set when the client found the peer gone before sending (see ``RedisConnection/peerHasClosed()``).
    private let discarded = Atomic<Bool>(false)

    init(_ redis: RedisConnection) {
        self.redis = redis
    }

    func isValid(timeout: Duration) async -> Bool { await redis.isValid(timeout: timeout) }
    func close() async { await redis.close() }
    func isValidBlocking(timeout: Duration) -> Bool { redis.isValidBlocking(timeout: timeout) }
    func closeBlocking() { redis.closeBlocking() }
    var isBroken: Bool { redis.isBroken || discarded.load(ordering: .relaxed) }
    var reuseCondition: ReuseCondition { isBroken ? .broken : .clean }
    func resetSession(timeout: Duration) async -> Bool { !isBroken }

    /// `true` (and the connection is discarded on release) when the server closed it while it was idle:
    /// then nothing was sent on it.
    func peerClosedWhileIdle() -> Bool {
        if redis.peerHasClosed() {
            discarded.store(true, ordering: .relaxed)
            return true
        }
        return false
    }
}

/// Opens ``ClusterNodeConnection``s to one node: the seed's configuration with the node's address.
struct ClusterNodeConnectionFactory: ConnectionFactory, CustomStringConvertible {
    let configuration: RedisConnectionConfiguration
    let readOnly: Bool
    let logger: Logger

    func makeConnection() async throws -> ClusterNodeConnection {
        let redis = try await RedisConnection.connect(configuration: configuration, logger: logger)
        if readOnly {
            do {
                try await redis.command("READONLY").expectStatus("OK")
            } catch {
                await redis.close()
                throw error
            }
        }
        return ClusterNodeConnection(redis)
    }

    /// `ClusterNodeConnectionFactory(<endpoint>, readOnly: …)`: never the password.
    var description: String { "ClusterNodeConnectionFactory(\(configuration.endpoint), readOnly: \(readOnly))" }
}

/// One node of the cluster as the client knows it: its address and its pools. Created once per node
/// (per incarnation: a node that leaves and comes back gets a new one), kept by the node table until the
/// client is gone, so the hot path may hold it unretained.
final class ClusterNode: Sendable {
    /// The node's index in the node table (what the slot table stores, plus one).
    let index: UInt16
    let address: ClusterNodeAddress
    /// Connections in the default (read-write) mode: commands routed to the node as a primary.
    let pool: ConnectionPool<ClusterNodeConnectionFactory>
    /// `READONLY` connections for replica reads; `nil` with ``RedisClusterReadPolicy/primaryOnly``.
    let readOnlyPool: ConnectionPool<ClusterNodeConnectionFactory>?
    /// Set when the node left the topology (its pools are draining).
    let isRemoved = Atomic<Bool>(false)
    /// Until when (``ClusterNode/now``, in nanoseconds) writes check their pooled connection for a close by
    /// the node before sending: set for 10 s by a connection error on this node. A node that just failed
    /// (killed, restarted) leaves closed connections in the pool; each would otherwise fail a write with
    /// an unknown outcome. Outside that window the check (a `poll()` per write) is skipped.
    private let suspectUntil = Atomic<Int64>(0)

    /// Marks the node suspect: its pooled connections may have been closed by it.
    func noteConnectionError() {
        suspectUntil.store(Self.now() + 10_000_000_000, ordering: .relaxed)
    }

    /// `true` while writes should check their connection before sending.
    var isSuspect: Bool { suspectUntil.load(ordering: .relaxed) > Self.now() }

    /// Nanoseconds since the first call in the process (a monotonic clock).
    static func now() -> Int64 {
        let elapsed = ContinuousClock.now - base
        return elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
    }

    private static let base = ContinuousClock.now

    init(
        index: UInt16, address: ClusterNodeAddress, seed: RedisConnectionConfiguration,
        configuration: RedisClusterConfiguration, logger: Logger
    ) throws(PoolConfigurationError) {
        self.index = index
        self.address = address
        var connection = seed
        connection.endpoint = .tcp(host: address.host, port: address.port)
        if connection.commandTimeout == nil { connection.commandTimeout = configuration.defaultCommandTimeout }
        let poolConfiguration = configuration.pool.name("cluster:\(address)")
        pool = try ConnectionPool(
            factory: ClusterNodeConnectionFactory(configuration: connection, readOnly: false, logger: logger),
            configuration: poolConfiguration, logger: logger)
        if configuration.readPolicy != .primaryOnly {
            readOnlyPool = try ConnectionPool(
                factory: ClusterNodeConnectionFactory(configuration: connection, readOnly: true, logger: logger),
                configuration: configuration.pool.name("cluster:\(address):readonly"), logger: logger)
        } else {
            readOnlyPool = nil
        }
    }

    /// Shuts the pools down, letting borrowed connections finish within `gracePeriod`.
    func drain(gracePeriod: Duration) async {
        await pool.shutdown(gracePeriod: gracePeriod)
        await readOnlyPool?.shutdown(gracePeriod: gracePeriod)
    }
}
