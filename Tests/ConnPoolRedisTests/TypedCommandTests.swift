import ConnPoolRedis
import ConnPoolTestSupport
import Testing

/// The factories are static members of every `RedisCommand`; any specialization names them.
private typealias Command = RedisCommand<RedisReply>

@Suite("Typed Redis commands", .serialized, .processExclusive)
struct TypedCommandTests {
    @Test func stringsAndKeysAsync() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()

        #expect(try await connection.send(.get(key)) == nil)
        #expect(try await connection.send(.set(key, "value")))
        #expect(try await connection.send(.get(key)) == "value")
        #expect(try await connection.send(.getBytes(key)) == Array("value".utf8))
        #expect(try await connection.send(.set(key, "other", condition: .ifNotExists)) == false)
        #expect(try await connection.send(.set(key, [0, 1, 2] as [UInt8], condition: .ifExists)))
        #expect(try await connection.send(.getBytes(key)) == [0, 1, 2])
        #expect(try await connection.send(.set(key + ":none", "x", condition: .ifExists)) == false)
        #expect(try await connection.send(.exists([key, key + ":none", key])) == 2)

        // expiration: whole seconds as EX, anything finer as PX; KEEPTTL keeps it
        #expect(try await connection.send(.ttl(key)) == .noExpiration)
        #expect(try await connection.send(.ttl(key + ":none")) == .keyNotFound)
        #expect(try await connection.send(.set(key, "v", expiration: .after(.seconds(100)))))
        guard case .expires(let ttl) = try await connection.send(.ttl(key)) else {
            Issue.record("expected an expiration")
            return
        }
        #expect(ttl > .seconds(90) && ttl <= .seconds(100))
        #expect(try await connection.send(.set(key, "w", expiration: .after(.milliseconds(50_500)))))
        guard case .expires(let pttl) = try await connection.send(.pttl(key)) else {
            Issue.record("expected an expiration")
            return
        }
        #expect(pttl > .seconds(40) && pttl <= .milliseconds(50_500))
        #expect(try await connection.send(.set(key, "x", expiration: .keepTTL)))
        #expect(try await connection.send(.pttl(key)) != .noExpiration)
        #expect(try await connection.send(.persist(key)))
        #expect(try await connection.send(.ttl(key)) == .noExpiration)
        #expect(try await connection.send(.expire(key, after: .seconds(30))))
        #expect(try await connection.send(.pexpire(key, after: .milliseconds(30_250))))
        #expect(try await connection.send(.expire(key + ":none", after: .seconds(30))) == false)

        // counters
        let counter = key + ":n"
        #expect(try await connection.send(.incr(counter)) == 1)
        #expect(try await connection.send(.incrBy(counter, 10)) == 11)
        #expect(try await connection.send(.decr(counter)) == 10)
        #expect(try await connection.send(.decrBy(counter, 4)) == 6)
        #expect(try await connection.send(.incrByFloat(counter, 0.5)) == 6.5)

        // several keys
        try await connection.send(.mset([(key + ":a", "1"), (key + ":b", "2")]))
        #expect(try await connection.send(.mget([key + ":a", key + ":missing", key + ":b"])) == ["1", nil, "2"])
        #expect(try await connection.send(.type(key + ":a")) == "string")
        #expect(try await connection.send(.type(key + ":missing")) == "none")
        try await connection.send(.rename(key + ":a", to: key + ":c"))
        #expect(try await connection.send(.get(key + ":c")) == "1")
        #expect(try await connection.send(.del([key + ":b", key + ":c", key + ":missing"])) == 2)
        #expect(try await connection.send(.unlink([key, counter])) == 2)

        #expect(try await connection.send(.ping()) == "PONG")
        #expect(try await connection.send(.echo("héllo")) == "héllo")
        #expect(try await connection.send(.publish(key + ":channel", "message")) == 0)
    }

    @Test func collectionsBlocking() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        try await onThread {
            // hashes
            let hash = key + ":hash"
            #expect(try connection.sendBlocking(.hset(hash, [("a", "1"), ("b", "2")])) == 2)
            #expect(try connection.sendBlocking(.hset(hash, field: "a", to: 10)) == 0)
            #expect(try connection.sendBlocking(.hget(hash, "a")) == "10")
            #expect(try connection.sendBlocking(.hget(hash, "zz")) == nil)
            #expect(try connection.sendBlocking(.hgetBytes(hash, "b")) == Array("2".utf8))
            #expect(try connection.sendBlocking(.hgetAll(hash)) == ["a": Array("10".utf8), "b": Array("2".utf8)])
            #expect(try connection.sendBlocking(.hexists(hash, "a")))
            #expect(try connection.sendBlocking(.hincrBy(hash, "a", 5)) == 15)
            #expect(try Set(connection.sendBlocking(.hkeys(hash))) == ["a", "b"])
            #expect(try connection.sendBlocking(.hlen(hash)) == 2)
            #expect(try connection.sendBlocking(.hmget(hash, ["b", "zz", "a"])) == ["2", nil, "15"])
            #expect(try connection.sendBlocking(.hdel(hash, ["a", "zz"])) == 1)
            #expect(try connection.sendBlocking(.hexists(hash, "a")) == false)

            // lists
            let list = key + ":list"
            #expect(try connection.sendBlocking(.rpush(list, ["b", "c"])) == 2)
            #expect(try connection.sendBlocking(.lpush(list, ["a", "z"])) == 4)
            #expect(try connection.sendBlocking(.lrange(list, 0, -1)) == ["z", "a", "b", "c"])
            #expect(try connection.sendBlocking(.llen(list)) == 4)
            #expect(try connection.sendBlocking(.lindex(list, 1)) == "a")
            #expect(try connection.sendBlocking(.lindex(list, 10)) == nil)
            #expect(try connection.sendBlocking(.lpop(list)) == "z")
            #expect(try connection.sendBlocking(.rpop(list)) == "c")
            try connection.sendBlocking(.ltrim(list, 1, 1))
            #expect(try connection.sendBlocking(.lrange(list, 0, -1)) == ["b"])
            #expect(try connection.sendBlocking(.lpop(list + ":none")) == nil)

            // sets
            let set = key + ":set"
            #expect(try connection.sendBlocking(.sadd(set, ["x", "y", "x"])) == 2)
            #expect(try connection.sendBlocking(.smembers(set)) == ["x", "y"])
            #expect(try connection.sendBlocking(.sismember(set, "x")))
            #expect(try connection.sendBlocking(.sismember(set, "q")) == false)
            #expect(try connection.sendBlocking(.srem(set, ["x", "q"])) == 1)
            #expect(try connection.sendBlocking(.scard(set)) == 1)

            // sorted sets
            let zset = key + ":zset"
            #expect(try connection.sendBlocking(.zadd(zset, [("a", score: 2), ("b", score: 1)])) == 2)
            #expect(try connection.sendBlocking(.zadd(zset, "c", score: -.infinity)) == 1)
            #expect(try connection.sendBlocking(.zadd(zset, "c", score: 3.25)) == 0)
            #expect(try connection.sendBlocking(.zscore(zset, "c")) == 3.25)
            #expect(try connection.sendBlocking(.zscore(zset, "none")) == nil)
            #expect(try connection.sendBlocking(.zrange(zset, 0, -1)) == ["b", "a", "c"])
            #expect(
                try connection.sendBlocking(.zrangeWithScores(zset, 0, 1))
                    == [RedisScoredMember(member: "b", score: 1), RedisScoredMember(member: "a", score: 2)])
            #expect(try connection.sendBlocking(.zincrBy(zset, 10, "b")) == 11)
            #expect(try connection.sendBlocking(.zrank(zset, "b")) == 2)
            #expect(try connection.sendBlocking(.zrank(zset, "none")) == nil)
            #expect(try connection.sendBlocking(.zrem(zset, ["a", "none"])) == 1)
            #expect(try connection.sendBlocking(.zcard(zset)) == 2)
            _ = try connection.sendBlocking(.del([hash, list, set, zset]))
        }
    }

    @Test func exactArguments() {
        #expect(RedisCommand<Bool>.set("k", "v").arguments == ["SET", "k", "v"])
        #expect(
            RedisCommand<Bool>.set("k", 7, expiration: .after(.seconds(2)), condition: .ifNotExists).arguments
                == ["SET", "k", 7, "NX", "EX", 2])
        #expect(
            RedisCommand<Bool>.set("k", "v", expiration: .after(.milliseconds(1500)), condition: .ifExists).arguments
                == ["SET", "k", "v", "XX", "PX", 1500])
        #expect(RedisCommand<Bool>.set("k", "v", expiration: .after(.microseconds(1))).arguments == ["SET", "k", "v", "PX", 1])
        #expect(RedisCommand<Bool>.set("k", "v", expiration: .keepTTL).arguments == ["SET", "k", "v", "KEEPTTL"])
        #expect(RedisCommand<Bool>.set("k", [1, 2] as [UInt8]).arguments == ["SET", "k", .bytes([1, 2])])
        #expect(RedisCommand<Bool>.expire("k", after: .milliseconds(2500)).arguments == ["PEXPIRE", "k", 2500])
        #expect(RedisCommand<Int>.zadd("z", [("a", score: 1.5), ("b", score: .infinity)]).arguments
            == ["ZADD", "z", "1.5", "a", "inf", "b"])
        #expect(RedisCommand<Double>.zincrBy("z", -2, "m").arguments == ["ZINCRBY", "z", "-2.0", "m"])
        #expect(RedisCommand<Int>.hset("h", field: "f", to: "v").arguments == ["HSET", "h", "f", "v"])
        #expect(RedisCommand<[RedisScoredMember]>.zrangeWithScores("z", 0, -1).arguments == ["ZRANGE", "z", 0, -1, "WITHSCORES"])
    }

    /// Every factory's command exists on the real server, and its argument count fits the server's arity
    /// (positive: exactly that many, the name included; negative: at least that many).
    @Test func factoriesMatchTheServersCommandTable() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let samples: [[RedisArgument]] = [
            Command.get("k").arguments, Command.getBytes("k").arguments,
            Command.set("k", "v", expiration: .after(.seconds(1)), condition: .ifNotExists).arguments,
            Command.incr("k").arguments, Command.incrBy("k", 1).arguments,
            Command.decr("k").arguments, Command.decrBy("k", 1).arguments,
            Command.incrByFloat("k", 1).arguments, Command.mget(["a", "b"]).arguments,
            Command.mset([("a", "1")]).arguments, Command.del(["a"]).arguments,
            Command.unlink(["a"]).arguments, Command.exists(["a"]).arguments,
            Command.expire("k", after: .seconds(1)).arguments,
            Command.pexpire("k", after: .seconds(1)).arguments,
            Command.ttl("k").arguments, Command.pttl("k").arguments,
            Command.persist("k").arguments, Command.type("k").arguments,
            Command.rename("k", to: "j").arguments, Command.ping().arguments,
            Command.echo("m").arguments, Command.publish("c", "m").arguments,
            Command.hset("h", [("f", "v")]).arguments, Command.hget("h", "f").arguments,
            Command.hgetAll("h").arguments, Command.hdel("h", ["f"]).arguments,
            Command.hexists("h", "f").arguments, Command.hincrBy("h", "f", 1).arguments,
            Command.hkeys("h").arguments, Command.hlen("h").arguments,
            Command.hmget("h", ["f"]).arguments, Command.lpush("l", ["v"]).arguments,
            Command.rpush("l", ["v"]).arguments, Command.lpop("l").arguments,
            Command.rpop("l").arguments, Command.lrange("l", 0, 1).arguments,
            Command.llen("l").arguments, Command.lindex("l", 0).arguments,
            Command.ltrim("l", 0, 1).arguments, Command.sadd("s", ["m"]).arguments,
            Command.srem("s", ["m"]).arguments, Command.smembers("s").arguments,
            Command.sismember("s", "m").arguments, Command.scard("s").arguments,
            Command.zadd("z", "m", score: 1).arguments, Command.zrem("z", ["m"]).arguments,
            Command.zscore("z", "m").arguments, Command.zrange("z", 0, 1).arguments,
            Command.zrangeWithScores("z", 0, 1).arguments,
            Command.zincrBy("z", 1, "m").arguments, Command.zcard("z").arguments,
            Command.zrank("z", "m").arguments, Command.watch(["k"]).arguments,
            Command.unwatch().arguments,
        ]
        for arguments in samples {
            guard case .string(let name) = arguments[0] else {
                Issue.record("binary command name in \(arguments)")
                continue
            }
            let info = try await connection.command("COMMAND", "INFO", name).array
            guard info.count == 1, case .array(let entry) = info[0], entry.count > 1 else {
                Issue.record("the server does not know \(name)")
                continue
            }
            let arity = try entry[1].int
            let fits = arity >= 0 ? arguments.count == arity : arguments.count >= -arity
            #expect(fits, "\(name): \(arguments.count) arguments against arity \(arity)")
        }
    }

    @Test func decodeAndServerErrors() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        #expect(try await connection.send(.set(key, "text")))
        let server = await expectRedisError { _ = try await connection.send(.incr(key)) }
        guard case .server(let message) = server else {
            Issue.record("expected .server, got \(String(describing: server))")
            return
        }
        #expect(message.hasPrefix("ERR value is not an integer"))
        let shape = await expectRedisError { _ = try await connection.send(RedisCommand<Int>(["GET", .string(key)]) { try $0.int }) }
        #expect(shape == .unexpectedReply(expected: "an integer", actual: "a bulk string of 4 bytes"))
        #expect(try await connection.send(.ping()) == "PONG")
    }

    @Test func typedPipelines() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        let list = key + ":list"
        _ = try await connection.send(.rpush(list, ["a"]))

        let counts = try await connection.pipeline([.incr(key), .incr(list), .incrBy(key, 5)])
        #expect(counts.count == 3)
        #expect(try counts[0].get() == 1)
        guard case .failure(.server(let message)) = counts[1] else {
            Issue.record("expected WRONGTYPE, got \(counts[1])")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(try counts[2].get() == 6)

        // different result types, each in its own slot of the tuple
        let (value, length, missing, n) = try await connection.pipeline(
            .get(key), .llen(list), .zscore(key + ":none", "m"), .incr(key))
        #expect(try value.get() == "6")
        #expect(try length.get() == 1)
        #expect(try missing.get() == nil)
        #expect(try n.get() == 7)

        try await onThread {
            let blocking = try connection.pipelineBlocking([.get(key), .get(key + ":none")])
            #expect(try blocking.map { try $0.get() } == ["7", nil])
            let (pong, popped) = try connection.pipelineBlocking(.ping(), .lpop(list))
            #expect(try pong.get() == "PONG")
            #expect(try popped.get() == "a")
        }
        #expect(try await connection.pipeline([RedisCommand<Int>]()).isEmpty)
    }

    @Test func scanSequences() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let prefix = uniqueKey()
        let keys = Set((0..<25).map { "\(prefix):\($0)" })
        try await connection.send(.mset(keys.map { ($0, "v") }))
        _ = try await connection.send(.sadd(prefix + ":set", (0..<30).map { "m\($0)" }))
        _ = try await connection.send(.hset(prefix + ":hash", (0..<30).map { ("f\($0)", "\($0)") }))
        _ = try await connection.send(.zadd(prefix + ":zset", (0..<30).map { ("m\($0)", score: Double($0)) }))

        var scanned = Set<String>()
        for try await key in connection.scan(match: prefix + ":[0-9]*", count: 3) { scanned.insert(key) }
        #expect(scanned == keys)
        var typed = [String]()
        for try await key in connection.scan(match: prefix + "*", count: 100, type: "hash") { typed.append(key) }
        #expect(typed == [prefix + ":hash"])
        var members = Set<String>()
        for try await member in connection.sscan(prefix + ":set", count: 5) { members.insert(member) }
        #expect(members == Set((0..<30).map { "m\($0)" }))
        var fields = [String: [UInt8]]()
        for try await entry in connection.hscan(prefix + ":hash", match: "f1*", count: 5) { fields[entry.field] = entry.value }
        #expect(fields == Dictionary(uniqueKeysWithValues: [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19].map {
            ("f\($0)", Array("\($0)".utf8))
        }))

        try await onThread {
            var blocking = Set<String>()
            try connection.scan(match: prefix + ":[0-9]*", count: 3).forEachBlocking { blocking.insert($0) }
            #expect(blocking == keys)
            var scores = [String: Double]()
            try connection.zscan(prefix + ":zset", count: 4).forEachBlocking { scores[$0.member] = $0.score }
            #expect(scores.count == 30)
            #expect(scores["m29"] == 29)
            var none = 0
            try connection.sscan(prefix + ":missing").forEachBlocking { _ in none += 1 }
            #expect(none == 0)
        }
        _ = try await connection.send(.del(Array(keys) + [prefix + ":set", prefix + ":hash", prefix + ":zset"]))
    }
}
