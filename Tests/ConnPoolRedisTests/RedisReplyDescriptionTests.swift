import ConnPoolRedis
import ConnPoolTestSupport
import Testing

@Suite("RedisReply descriptions")
struct RedisReplyDescriptionTests {
    @Test func textShowsAsQuotedText() {
        #expect(RedisReply.bulkString(Array("req-0".utf8)).description == #""req-0""#)
        #expect(RedisReply.bulkString(Array("a \"b\"\n\té".utf8)).description == #""a \"b\"\n\té""#)
        #expect(RedisReply.bulkString([]).description == #""""#)
        #expect("\(RedisReply.bulkString(Array("req-0".utf8)))" == #""req-0""#)
    }

    @Test func binaryShowsAsHex() {
        #expect(RedisReply.bulkString([0xff, 0x00, 0x10]).description == "<3 bytes: ff 00 10>")
        let long = RedisReply.bulkString([0xfe] + [UInt8](repeating: 0xab, count: 99))
        #expect(long.description.hasPrefix("<100 bytes: fe ab ab"))
        #expect(long.description.hasSuffix(" …>"))
        #expect(long.description.count < 120)
    }

    @Test func otherKindsAndNesting() {
        #expect(RedisReply.null.description == "nil")
        #expect(RedisReply.integer(-42).description == "-42")
        #expect(RedisReply.status("OK").description == "OK")
        #expect(RedisReply.error("ERR bad").description == #"error("ERR bad")"#)
        let nested = RedisReply.array([
            .bulkString(Array("req-0".utf8)), .integer(1), .null, .array([.bulkString([0x80]), .array([])]),
        ])
        #expect(nested.description == #"["req-0", 1, nil, [<1 bytes: 80>, []]]"#)
        #expect(
            nested.debugDescription
                == #".array([.bulkString("req-0"), .integer(1), .null, .array([.bulkString(<1 bytes: 80>), .array([])])])"#)
        #expect(RedisReply.status("OK").debugDescription == #".status("OK")"#)
        #expect(RedisReply.error("ERR x").debugDescription == #".error("ERR x")"#)
    }

    /// A reply read from the real server reads as text.
    @Test func realReply() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        _ = try await connection.send(.rpush(key, ["req-0", "req-1"]))
        #expect(try await connection.command("LRANGE", key, 0, -1).description == #"["req-0", "req-1"]"#)
        _ = try await connection.send(.del([key]))
    }
}
