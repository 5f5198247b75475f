// The snippets of ConnPoolRedis.docc/UsingRedis.md, verbatim (ModuleCatalogTests checks that every
// ```swift block of the module catalogs is in this target), run against a real redis-server.
import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Testing

func makeRedisPool(port: Int) throws -> ConnectionPool<RedisConnectionFactory> {
    var redis = try RedisConnectionConfiguration(host: "127.0.0.1", port: port)
    redis.commandTimeout = .seconds(2)  // bound every command: see "Timeouts" below
    return try ConnectionPool(
        factory: RedisConnectionFactory(configuration: redis),
        configuration: PoolConfiguration().maxSize(8).minSize(1))
}

func commandsAndPipelines(_ pool: ConnectionPool<RedisConnectionFactory>, key: String) async throws {
    try await pool.withConnection { redis in
        // One command: an error reply is thrown as RedisError.server.
        _ = try await redis.command("SET", key, "41")
        let next = try await redis.command("INCR", key).int
        // A pipeline: one write, one reply per command; error replies are elements, not thrown.
        let replies = try await redis.pipeline([["GET", .string(key)], ["LPUSH", .string(key), "x"]])
        guard case .error(let message) = replies[1] else { throw RedisError.unexpectedReply(expected: "an error", actual: "\(replies[1])") }
        print(next, replies[0], message)  // 42 "42" WRONGTYPE Operation against a key holding the wrong kind of value
    }
}

func typedCommands(_ redis: RedisConnection, key: String) async throws {
    let stored = try await redis.send(.set(key, "v1", expiration: .after(.seconds(60)), condition: .ifNotExists))
    let value: String? = try await redis.send(.get(key))
    let counter = try await redis.send(.incr(key + ":n"))
    print(stored, value ?? "nil", counter)  // true v1 1
}

func transfer(_ redis: RedisConnection, from: String, to: String) async throws {
    // MULTI, the commands and EXEC go out as one pipeline: no MULTI is ever left open.
    if let (debit, credit) = try await redis.transaction(.decrBy(from, 10), .incrBy(to, 10)) {
        print(try debit.get(), try credit.get())
    }
    // Optimistic locking: WATCH, read, then a transaction that runs only if nothing changed; retried.
    let (doubled) = try await redis.withWatch([from]) { redis in
        let balance = try await redis.send(.get(from)).flatMap { Int($0) } ?? 0
        return RedisTransaction(.set(from, balance * 2))
    }
    print(try doubled.get())
}

func listen(configuration: RedisConnectionConfiguration, pool: ConnectionPool<RedisConnectionFactory>) async throws {
    let subscriber = try RedisSubscriber(configuration: configuration)
    try await subscriber.subscribe(["orders"])
    _ = try await pool.withConnection { try await $0.publish("orders", "order-1") }
    for try await message in subscriber.messages {
        print(message.channel, message.string)  // orders order-1
        break
    }
    await subscriber.close()
}

@Suite("ConnPoolRedis.docc samples", .serialized, .processExclusive)
struct RedisGuideSampleTests {
    @Test("the Using Redis snippets run against a real server")
    func samplesRun() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try makeRedisPool(port: server.port)
            let key = "doc:\(UInt32.random(in: 0...UInt32.max))"
            try await commandsAndPipelines(pool, key: key)
            try await pool.withConnection { redis in
                try await typedCommands(redis, key: key + ":typed")
                #expect(try await redis.send(.get(key + ":typed")) == "v1")
                try await transfer(redis, from: key + ":a", to: key + ":b")
                #expect(try await redis.send(.get(key + ":a")) == "-20")
                #expect(try await redis.send(.get(key + ":b")) == "10")
            }
            // Nothing the samples did leaves the connection dirty: no reset, nothing closed.
            #expect(pool.metrics().sessionResets == 0)
            #expect(pool.metrics().closed == 0)
            // The pub/sub snippet: it returns after the message it published itself.
            var redis = try RedisConnectionConfiguration(port: server.port)
            redis.commandTimeout = .seconds(5)
            try await listen(configuration: redis, pool: pool)
            await pool.shutdown()
        }
    }
}
