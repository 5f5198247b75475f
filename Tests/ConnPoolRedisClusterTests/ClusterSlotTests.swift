@testable import ConnPoolRedisCluster
import ConnPoolRedis
import RedisServerLauncher
import Testing
import ConnPoolTestSupport

@Suite("Cluster slots, key specs and topology parsing", .serialized, .processExclusive)
struct ClusterSlotTests {
    @Test func crc16MatchesTheSpecification() {
        let check = Array("123456789".utf8).withUnsafeBytes { ClusterSlot.crc16($0) }
        #expect(check == 0x31C3)
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        #expect(ClusterSlot.slot(forKey: "foo") == 12182)
        #expect(ClusterSlot.slot(forKey: "bar") == 5061)
        #expect(ClusterSlot.slot(forKey: "") == 0)
    }

    @Test func hashTags() {
        #expect(ClusterSlot.slot(forKey: "{user1000}.following") == ClusterSlot.slot(forKey: "{user1000}.followers"))
        #expect(ClusterSlot.slot(forKey: "{user1000}.following") == ClusterSlot.slot(forKey: "user1000"))
        // Only the first {…}; an empty tag hashes the whole key.
        #expect(ClusterSlot.slot(forKey: "foo{bar}{zap}") == ClusterSlot.slot(forKey: "bar"))
        #expect(ClusterSlot.slot(forKey: "foo{}{bar}") != ClusterSlot.slot(forKey: "bar"))
        #expect(ClusterSlot.slot(forKey: "foo{}{bar}") == Array("foo{}{bar}".utf8).withUnsafeBytes { ClusterSlot.crc16($0) } & 0x3FFF)
        #expect(ClusterSlot.slot(forKey: "foo{{bar}}zap") == ClusterSlot.slot(forKey: "{bar"))
        #expect(ClusterSlot.slot(forKey: Array("{a}b".utf8)) == ClusterSlot.slot(forKey: "a"))
    }

    /// Key positions from a real server's COMMAND table, for each kind of key spec.
    @Test func keyPositionsFromTheServersKeySpecs() async throws {
        try await RedisServerProcess.withServer { server in
            var configuration = try RedisConnectionConfiguration(port: server.port)
            configuration.commandTimeout = .seconds(5)
            let connection = try await RedisConnection.connect(configuration: configuration)
            defer { connection.closeBlocking() }
            let table = try CommandTable(commandReply: try await connection.command("COMMAND"))
            func positions(_ arguments: [RedisArgument]) -> [Int]? {
                guard let info = table.info(for: arguments) else { return nil }
                if case .positions(let positions) = CommandTable.keyPositions(arguments, info: info) { return positions }
                return nil
            }
            #expect(positions(["GET", "k"]) == [1])
            #expect(positions(["get", "k"]) == [1])
            #expect(positions(["MSET", "a", "1", "b", "2"]) == [1, 3])
            #expect(positions(["MGET", "a", "b", "c"]) == [1, 2, 3])
            #expect(positions(["EVAL", "return 1", "2", "k1", "k2", "arg"]) == [3, 4])
            #expect(positions(["EVAL", "return 1", "0"]) == [])
            #expect(positions(["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]) == [4, 5])
            #expect(positions(["OBJECT", "ENCODING", "k"]) == [2])
            #expect(positions(["PING"]) == [])
            #expect(positions(["LMOVE", "a", "b", "LEFT", "RIGHT"]) == [1, 2])
            #expect(positions(["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]) == [1, 3, 4])
            #expect(table.info(for: ["GET", "k"])?.isReadOnly == true)
            #expect(table.info(for: ["SET", "k", "v"])?.isReadOnly == false)
            #expect(table.info(for: ["DBSIZE"])?.requestPolicy == .allShards)
            #expect(table.info(for: ["DBSIZE"])?.responsePolicy == .sum)
            #expect(table.info(for: ["SCRIPT", "LOAD", "return 1"])?.requestPolicy == .allNodes)
            #expect(table.info(for: ["FLUSHALL"])?.requestPolicy == .allShards)
            // SORT's BY/GET patterns are not described: the server is asked.
            let sort = try #require(table.info(for: ["SORT", "k", "BY", "w_*"]))
            if case .askServer = CommandTable.keyPositions(["SORT", "k", "BY", "w_*"], info: sort) {} else {
                Issue.record("SORT should ask the server for its keys")
            }
        }
    }

    @Test func shardsAndSlotsRepliesParseToTheSameView() throws {
        func node(_ port: Int, _ role: String, health: String = "online") -> RedisReply {
            .array([
                .bulkString(Array("id".utf8)), .bulkString(Array("n\(port)".utf8)), .bulkString(Array("port".utf8)),
                .integer(port), .bulkString(Array("ip".utf8)), .bulkString(Array("127.0.0.1".utf8)),
                .bulkString(Array("endpoint".utf8)), .bulkString(Array("127.0.0.1".utf8)),
                .bulkString(Array("role".utf8)), .bulkString(Array(role.utf8)),
                .bulkString(Array("health".utf8)), .bulkString(Array(health.utf8)),
            ])
        }
        let shards = RedisReply.array([
            .array([
                .bulkString(Array("slots".utf8)), .array([.integer(0), .integer(99), .integer(200), .integer(300)]),
                .bulkString(Array("nodes".utf8)), .array([node(7001, "master"), node(7004, "replica"), node(7007, "replica", health: "fail")]),
            ]),
            .array([
                .bulkString(Array("slots".utf8)), .array([.integer(100), .integer(199), .integer(301), .integer(16383)]),
                .bulkString(Array("nodes".utf8)), .array([node(7002, "master")]),
            ]),
        ])
        let fromShards = try ClusterTopology.parse(shardsReply: shards, askedHost: "127.0.0.1")
        func address(_ port: Int) -> RedisReply { .array([.bulkString(Array("127.0.0.1".utf8)), .integer(port), .bulkString([])]) }
        let slots = RedisReply.array([
            .array([.integer(0), .integer(99), address(7001), address(7004)]),
            .array([.integer(100), .integer(199), address(7002)]),
            .array([.integer(200), .integer(300), address(7001), address(7004)]),
            .array([.integer(301), .integer(16383), .array([.bulkString([]), .integer(7002)])]),
        ])
        let fromSlots = try ClusterTopology.parse(slotsReply: slots, askedHost: "127.0.0.1")
        #expect(fromShards == fromSlots)
        #expect(fromShards.coveredSlots == 16384)
        #expect(fromShards.shard(forSlot: 250)?.primary == ClusterNodeAddress(host: "127.0.0.1", port: 7001))
        #expect(fromShards.shard(forSlot: 250)?.replicas == [ClusterNodeAddress(host: "127.0.0.1", port: 7004)])
        #expect(fromShards.shard(forSlot: 150)?.primary.port == 7002)
    }

    @Test func electionPicksTheMajorityView() {
        let a = ClusterTopology(shards: [ClusterShard(slotRanges: [0...16383], primary: .init(host: "h", port: 1), replicas: [])])
        let b = ClusterTopology(shards: [ClusterShard(slotRanges: [0...16383], primary: .init(host: "h", port: 2), replicas: [])])
        let partial = ClusterTopology(shards: [ClusterShard(slotRanges: [0...100], primary: .init(host: "h", port: 3), replicas: [])])
        #expect(ClusterTopology.elect([a, b, b]) == b)
        #expect(ClusterTopology.elect([a, b]) == a)  // a tie: the first answer
        #expect(ClusterTopology.elect([partial, a]) == a)  // a tie: more slots covered
        #expect(ClusterTopology.elect([]) == nil)
    }

    @Test func redirectionAddressesParse() {
        #expect(ClusterNodeAddress(parsing: "127.0.0.1:7000") == ClusterNodeAddress(host: "127.0.0.1", port: 7000))
        #expect(ClusterNodeAddress(parsing: "[::1]:7000") == ClusterNodeAddress(host: "::1", port: 7000))
        #expect(ClusterNodeAddress(parsing: "nohost") == nil)
    }
}
