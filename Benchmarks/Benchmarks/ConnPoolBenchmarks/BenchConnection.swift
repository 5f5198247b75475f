import ConnPool
import Synchronization

/// A connection that does no I/O: the benchmarks measure the pool, not a protocol.
final class BenchConnection: Connection {
    let id: Int

    init(id: Int) { self.id = id }

    func isValid(timeout: Duration) async -> Bool { true }
    func close() async {}
}

/// Opens ``BenchConnection``s instantly. The pool calls it only while being pre-warmed, never while a
/// benchmark measures.
struct BenchFactory: ConnectionFactory {
    private static let nextID = Atomic<Int>(0)

    func makeConnection() async throws -> BenchConnection {
        BenchConnection(id: Self.nextID.add(1, ordering: .relaxed).newValue)
    }
}

typealias BenchPool = ConnectionPool<BenchFactory>

/// Holds a lease in a reference so that pre-warming can keep many leases at once (a `~Copyable` lease
/// cannot go into an `Array`).
final class LeaseBox: @unchecked Sendable {
    // @unchecked Sendable: only the task that pre-warms touches it, in order.
    var lease: ConnectionLease<BenchFactory>?
}

/// Makes a pool of `maxSize` connections and opens all of them, so that every later acquire finds an
/// idle connection: `maxSize` leases are taken at once (each opens a connection), then all returned.
func makeWarmPool(maxSize: Int) async throws -> BenchPool {
    let pool = try BenchPool(factory: BenchFactory(), configuration: PoolConfiguration().maxSize(maxSize))
    let boxes = (0..<maxSize).map { _ in LeaseBox() }
    for box in boxes { box.lease = try await pool.acquire() }
    for box in boxes { box.lease = nil }
    let metrics = pool.metrics()
    precondition(metrics.idle == maxSize, "pre-warm left \(metrics.idle) idle connections, expected \(maxSize)")
    return pool
}
