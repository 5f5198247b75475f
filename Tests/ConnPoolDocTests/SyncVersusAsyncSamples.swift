import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import Synchronization
import Testing

// The samples of SyncVersusAsync.md, verbatim; all but the Redis one run against the KV example
// backend.

func sessionUser(pool: ConnectionPool<KVConnectionFactory>, token: String) async throws -> String? {
    try await pool.withConnection { kv in
        try await kv.get("session:\(token)")
    }
}

func startWorkers(pool: ConnectionPool<KVConnectionFactory>, count: Int, done: DispatchGroup) {
    for worker in 0..<count {
        done.enter()
        Thread.detachNewThread {
            defer { done.leave() }
            do {
                try pool.withConnectionBlocking { kv in
                    try kv.setBlocking("worker:\(worker)", "ready")
                }
            } catch {
                print("worker \(worker): \(error)")
            }
        }
    }
}

func legacyLookup(pool: ConnectionPool<KVConnectionFactory>, key: String) async throws -> String? {
    try await BlockingOffload.run {
        try pool.withConnectionBlocking { kv in try kv.getBlocking(key) }
    }
}

func publishDraft(pool: ConnectionPool<KVConnectionFactory>) async throws {
    let lease = try await pool.acquire()
    try await copyValue(from: "draft", to: "published", on: lease)
    lease.release()  // back to the pool now rather than at the end of the scope
    // Using `lease` after this line does not compile: `release()` consumed it.
    try await notifySubscribers()
}

func copyValue(
    from source: String, to target: String, on lease: borrowing ConnectionLease<KVConnectionFactory>
) async throws {
    if let value = try await lease.connection.get(source) {
        try await lease.connection.set(target, value)
    }
}

func copyToArchive(pool: ConnectionPool<RedisConnectionFactory>, key: String) async throws {
    let lease = try await pool.acquire()
    let redis = lease.connection
    do {
        let value = try await redis.command("GET", key).string
        _ = try await redis.command("SELECT", 1)  // the archive database
        _ = try await redis.command("SET", key, value)
        _ = try await redis.command("SELECT", 0)  // back to the database the pool's connections use
    } catch {
        // The connection may still have database 1 selected: the next borrower must not get it.
        lease.releaseAsBroken()
        throw error
    }
}

/// Stands in for work that needs no connection.
func notifySubscribers() async throws {
    await Task.yield()
}

@Suite("Sync versus async", .serialized, .processExclusive)
struct SyncVersusAsyncSamples {
    static func makePool(_ server: FakeKVServer, maxSize: Int = 4) throws -> ConnectionPool<KVConnectionFactory> {
        try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().maxSize(maxSize))
    }

    @Test("async handlers, blocking workers and offloaded legacy code share one pool")
    func bothInterfaces() async throws {
        let pool = try Self.makePool(FakeKVServer.start(), maxSize: 2)
        try await pool.withConnection { kv in try await kv.set("session:abc", "ada") }
        #expect(try await sessionUser(pool: pool, token: "abc") == "ada")

        let done = DispatchGroup()
        startWorkers(pool: pool, count: 8, done: done)
        // Resumed when the last worker leaves the group: nothing blocks while the workers run.
        await withCheckedContinuation { continuation in done.notify(queue: .global()) { continuation.resume() } }
        for worker in 0..<8 {
            #expect(try await legacyLookup(pool: pool, key: "worker:\(worker)") == "ready")
        }
        #expect(pool.metrics().total <= 2)
        await pool.shutdown()
    }

    @Test("a lease passed as borrowing and released early")
    func leaseBorrowedAndReleased() async throws {
        let pool = try Self.makePool(FakeKVServer.start())
        try await pool.withConnection { kv in try await kv.set("draft", "v1") }
        try await publishDraft(pool: pool)
        #expect(pool.metrics().inUse == 0)
        #expect(try await pool.withConnection { kv in try await kv.get("published") } == "v1")
        await pool.shutdown()
    }

    @Test("releaseAsBroken closes the connection instead of lending it again")
    func releaseAsBrokenCloses() async throws {
        let pool = try Self.makePool(FakeKVServer.start(), maxSize: 1)
        let lease = try await pool.acquire()
        let first = lease.connection  // kept alive, so the new connection cannot reuse its address
        lease.releaseAsBroken()
        #expect(await eventually { pool.metrics().closedByReason[.broken] == 1 })
        let second = try await pool.withConnection { $0 }
        #expect(first !== second)
        await pool.shutdown()
    }

    @Test("a cancelled waiting task gets CancellationError and leaves no waiter behind")
    func cancelledWaiter() async throws {
        let pool = try Self.makePool(FakeKVServer.start(), maxSize: 1)
        let held = try await pool.acquire()
        let waiting = Task { try await pool.withConnection { _ in } }
        #expect(await eventually { pool.metrics().waiting == 1 })
        waiting.cancel()
        await #expect(throws: CancellationError.self) { try await waiting.value }
        #expect(pool.metrics().waiting == 0)
        _ = consume held
        await pool.shutdown()
    }
}
