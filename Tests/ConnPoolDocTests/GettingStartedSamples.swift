import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

// The samples of GettingStarted.md, verbatim. The Redis ones need a server: they are compiled, not
// run. The test at the bottom runs the same shapes against the KV example backend.

func gettingStartedWithRedis() async throws {
    let factory = try RedisConnectionFactory(url: "redis://127.0.0.1:6379/0")
    let pool = try ConnectionPool(
        factory: factory,
        configuration: PoolConfiguration()
            .minSize(2)
            .maxSize(16)
            .acquireTimeout(.seconds(2))
    )

    let hits = try await pool.withConnection { redis in
        try await redis.command("INCR", "hits").int
    }
    print("hits: \(hits)")

    await pool.shutdown(gracePeriod: .seconds(10))
}

func readHits(from pool: ConnectionPool<RedisConnectionFactory>) async throws -> String? {
    let lease = try await pool.acquire()
    return try await lease.connection.command("GET", "hits").optionalString
}   // the connection goes back to the pool here, when `lease` goes out of scope

func pingFromAThread(pool: ConnectionPool<RedisConnectionFactory>) throws -> String {
    try pool.withConnectionBlocking { redis in
        try redis.commandBlocking("PING").string
    }
}

func handleTimeouts(pool: ConnectionPool<RedisConnectionFactory>, logger: Logger) async throws {
    do {
        try await pool.withConnection(timeout: .milliseconds(250)) { redis in
            _ = try await redis.command("SET", "greeting", "hello")
        }
    } catch let error as ConnectionPoolError {
        // "connection pool: acquire timed out after 250 ms; last connect error: ..." and the like:
        // the description says what happened and, for a timeout, why no connection came.
        switch error.code {
        case .acquireTimeout, .connectFailing:
            logger.warning("no Redis connection: \(error)")
        default:  // .shutDown, .tooManyWaiters, and codes added in later releases
            logger.info("no Redis connection: \(error)")
        }
        throw error
    }
}

func runAsAService(pool: ConnectionPool<RedisConnectionFactory>, logger: Logger) async throws {
    let group = ServiceGroup(
        services: [pool],
        gracefulShutdownSignals: [.sigterm],
        logger: logger
    )
    try await group.run()
}

@Suite("Getting started", .serialized, .processExclusive)
struct GettingStartedSamples {
    @Test("the getting-started shapes, against the KV example backend")
    func gettingStartedShapes() async throws {
        let server = FakeKVServer.start()
        let pool = try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().minSize(2).maxSize(16).acquireTimeout(.seconds(2)))
        try await pool.warm()
        #expect(pool.metrics().idle == 2)

        try await pool.withConnection { kv in try await kv.set("hits", "1") }
        let lease = try await pool.acquire()
        #expect(try await lease.connection.get("hits") == "1")
        _ = consume lease

        let fromThread = try await onThread {  // a plain thread: the blocking form waits there
            try pool.withConnectionBlocking { kv in try kv.getBlocking("hits") }
        }
        #expect(fromThread == "1")

        let held = try await pool.acquire(timeout: .seconds(1))
        let single = try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().maxSize(1))
        let only = try await single.acquire()
        await #expect(throws: ConnectionPoolError.self) {
            try await single.withConnection(timeout: .milliseconds(50)) { _ in }
        }
        _ = consume only
        _ = consume held
        let report = await pool.shutdown(gracePeriod: .seconds(10))
        #expect(report.closedIdle == 2)
        await single.shutdown()
    }
}
