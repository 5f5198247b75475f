// Typed factories for hashes, lists, sets and sorted sets. Arguments are in the order the Redis 7
// reference (`COMMAND DOCS`) gives; TypedCommandTests checks each name and arity against COMMAND INFO.

/// A member of a sorted set with its score, from ``RedisCommand/zrangeWithScores(_:_:_:)`` and
/// ``RedisConnection/zscan(_:match:count:)``.
public struct RedisScoredMember: Sendable, Hashable {
    /// The member (decoded as UTF-8).
    public var member: String
    /// Its score.
    public var score: Double

    /// A member with its score.
    public init(member: String, score: Double) {
        self.member = member
        self.score = score
    }
}

extension RedisCommand {
    // MARK: - Hashes

    /// `HSET key field value [field value …]`: how many fields were added (fields that existed are
    /// updated and not counted).
    ///
    /// - Precondition: `fields` is not empty.
    public static func hset<V: RedisArgumentConvertible>(_ key: String, _ fields: [(String, V)]) -> RedisCommand<Int> {
        precondition(!fields.isEmpty, "HSET needs at least one field")
        return RedisCommand<Int>(["HSET", .string(key)] + fields.flatMap { [.string($0.0), RedisArgument($0.1)] }) {
            try $0.int
        }
    }

    /// `HSET key field value`: `1` when the field was added, `0` when it was updated.
    public static func hset(_ key: String, field: String, to value: some RedisArgumentConvertible) -> RedisCommand<Int> {
        hset(key, [(field, RedisArgument(value))])
    }

    /// `HGET key field`: the field's value as text, `nil` when the field or key does not exist.
    public static func hget(_ key: String, _ field: String) -> RedisCommand<String?> {
        RedisCommand<String?>(["HGET", .string(key), .string(field)]) { try $0.optionalString }
    }

    /// `HGET key field`: the field's bytes, `nil` when the field or key does not exist.
    public static func hgetBytes(_ key: String, _ field: String) -> RedisCommand<[UInt8]?> {
        RedisCommand<[UInt8]?>(["HGET", .string(key), .string(field)]) { try $0.optionalBytes }
    }

    /// `HGETALL key`: every field and its bytes (empty for a missing key).
    public static func hgetAll(_ key: String) -> RedisCommand<[String: [UInt8]]> {
        RedisCommand<[String: [UInt8]]>(["HGETALL", .string(key)]) { reply in
            Dictionary(try reply.pairs { try $0.bytes }, uniquingKeysWith: { _, last in last })
        }
    }

    /// `HDEL key field [field …]`: how many fields were removed.
    ///
    /// - Precondition: `fields` is not empty.
    public static func hdel(_ key: String, _ fields: [String]) -> RedisCommand<Int> {
        keyAndMembers("HDEL", key, fields.map { .string($0) }) { try $0.int }
    }

    /// `HEXISTS key field`.
    public static func hexists(_ key: String, _ field: String) -> RedisCommand<Bool> {
        RedisCommand<Bool>(["HEXISTS", .string(key), .string(field)], decode: RedisReply.bool)
    }

    /// `HINCRBY key field increment`: the field's value after the increment.
    public static func hincrBy(_ key: String, _ field: String, _ increment: Int) -> RedisCommand<Int> {
        RedisCommand<Int>(["HINCRBY", .string(key), .string(field), .integer(increment)]) { try $0.int }
    }

    /// `HKEYS key`: the field names.
    public static func hkeys(_ key: String) -> RedisCommand<[String]> {
        RedisCommand<[String]>(["HKEYS", .string(key)]) { try $0.strings }
    }

    /// `HLEN key`: the number of fields.
    public static func hlen(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["HLEN", .string(key)]) { try $0.int }
    }

    /// `HMGET key field [field …]`: one value per field (as text), `nil` for a missing field.
    ///
    /// - Precondition: `fields` is not empty.
    public static func hmget(_ key: String, _ fields: [String]) -> RedisCommand<[String?]> {
        keyAndMembers("HMGET", key, fields.map { .string($0) }) { try $0.optionalStrings }
    }

    // MARK: - Lists

    /// `LPUSH key element [element …]`: the list's length after the push (the last element ends up first).
    ///
    /// - Precondition: `elements` is not empty.
    public static func lpush<V: RedisArgumentConvertible>(_ key: String, _ elements: [V]) -> RedisCommand<Int> {
        keyAndMembers("LPUSH", key, elements.map { RedisArgument($0) }) { try $0.int }
    }

    /// `RPUSH key element [element …]`: the list's length after the push.
    ///
    /// - Precondition: `elements` is not empty.
    public static func rpush<V: RedisArgumentConvertible>(_ key: String, _ elements: [V]) -> RedisCommand<Int> {
        keyAndMembers("RPUSH", key, elements.map { RedisArgument($0) }) { try $0.int }
    }

    /// `LPOP key`: the first element as text, `nil` when the list is empty or missing.
    public static func lpop(_ key: String) -> RedisCommand<String?> {
        RedisCommand<String?>(["LPOP", .string(key)]) { try $0.optionalString }
    }

    /// `RPOP key`: the last element as text, `nil` when the list is empty or missing.
    public static func rpop(_ key: String) -> RedisCommand<String?> {
        RedisCommand<String?>(["RPOP", .string(key)]) { try $0.optionalString }
    }

    /// `LRANGE key start stop`: the elements from `start` to `stop` inclusive (negative indexes count from
    /// the end: `0, -1` is the whole list).
    public static func lrange(_ key: String, _ start: Int, _ stop: Int) -> RedisCommand<[String]> {
        RedisCommand<[String]>(["LRANGE", .string(key), .integer(start), .integer(stop)]) { try $0.strings }
    }

    /// `LLEN key`: the list's length (0 for a missing key).
    public static func llen(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["LLEN", .string(key)]) { try $0.int }
    }

    /// `LINDEX key index`: the element at `index` as text, `nil` when out of range.
    public static func lindex(_ key: String, _ index: Int) -> RedisCommand<String?> {
        RedisCommand<String?>(["LINDEX", .string(key), .integer(index)]) { try $0.optionalString }
    }

    /// `LTRIM key start stop`: keeps only the elements from `start` to `stop` inclusive.
    public static func ltrim(_ key: String, _ start: Int, _ stop: Int) -> RedisCommand<Void> {
        RedisCommand<Void>(["LTRIM", .string(key), .integer(start), .integer(stop)], decode: RedisReply.ok)
    }

    // MARK: - Sets

    /// `SADD key member [member …]`: how many members were added (not counting existing ones).
    ///
    /// - Precondition: `members` is not empty.
    public static func sadd<V: RedisArgumentConvertible>(_ key: String, _ members: [V]) -> RedisCommand<Int> {
        keyAndMembers("SADD", key, members.map { RedisArgument($0) }) { try $0.int }
    }

    /// `SREM key member [member …]`: how many members were removed.
    ///
    /// - Precondition: `members` is not empty.
    public static func srem<V: RedisArgumentConvertible>(_ key: String, _ members: [V]) -> RedisCommand<Int> {
        keyAndMembers("SREM", key, members.map { RedisArgument($0) }) { try $0.int }
    }

    /// `SMEMBERS key`: the members as text.
    public static func smembers(_ key: String) -> RedisCommand<Set<String>> {
        RedisCommand<Set<String>>(["SMEMBERS", .string(key)]) { Set(try $0.strings) }
    }

    /// `SISMEMBER key member`.
    public static func sismember(_ key: String, _ member: some RedisArgumentConvertible) -> RedisCommand<Bool> {
        RedisCommand<Bool>(["SISMEMBER", .string(key), RedisArgument(member)], decode: RedisReply.bool)
    }

    /// `SCARD key`: the number of members.
    public static func scard(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["SCARD", .string(key)]) { try $0.int }
    }

    // MARK: - Sorted sets

    /// `ZADD key score member [score member …]`: how many members were added (not counting members whose
    /// score was updated).
    ///
    /// - Precondition: `members` is not empty; no score is NaN.
    public static func zadd<V: RedisArgumentConvertible>(_ key: String, _ members: [(V, score: Double)]) -> RedisCommand<Int> {
        precondition(members.allSatisfy { !$0.score.isNaN }, "ZADD scores cannot be NaN")
        return keyAndMembers("ZADD", key, members.flatMap { [RedisArgument($0.score), RedisArgument($0.0)] }) {
            try $0.int
        }
    }

    /// `ZADD key score member`: `1` when the member was added, `0` when its score was updated.
    ///
    /// - Precondition: `score` is not NaN.
    public static func zadd(_ key: String, _ member: some RedisArgumentConvertible, score: Double) -> RedisCommand<Int> {
        zadd(key, [(RedisArgument(member), score: score)])
    }

    /// `ZREM key member [member …]`: how many members were removed.
    ///
    /// - Precondition: `members` is not empty.
    public static func zrem<V: RedisArgumentConvertible>(_ key: String, _ members: [V]) -> RedisCommand<Int> {
        keyAndMembers("ZREM", key, members.map { RedisArgument($0) }) { try $0.int }
    }

    /// `ZSCORE key member`: the member's score, `nil` when it is not in the set.
    public static func zscore(_ key: String, _ member: some RedisArgumentConvertible) -> RedisCommand<Double?> {
        RedisCommand<Double?>(["ZSCORE", .string(key), RedisArgument(member)]) { try $0.optionalDouble }
    }

    /// `ZRANGE key start stop`: the members by rank from `start` to `stop` inclusive, lowest score first
    /// (negative ranks count from the end).
    public static func zrange(_ key: String, _ start: Int, _ stop: Int) -> RedisCommand<[String]> {
        RedisCommand<[String]>(["ZRANGE", .string(key), .integer(start), .integer(stop)]) { try $0.strings }
    }

    /// `ZRANGE key start stop WITHSCORES`: as ``zrange(_:_:_:)``, with each member's score.
    public static func zrangeWithScores(_ key: String, _ start: Int, _ stop: Int) -> RedisCommand<[RedisScoredMember]> {
        RedisCommand<[RedisScoredMember]>(
            ["ZRANGE", .string(key), .integer(start), .integer(stop), "WITHSCORES"]
        ) { reply in
            try reply.pairs { try $0.double }.map { RedisScoredMember(member: $0.0, score: $0.1) }
        }
    }

    /// `ZINCRBY key increment member`: the member's new score.
    ///
    /// - Precondition: `increment` is not NaN.
    public static func zincrBy(_ key: String, _ increment: Double, _ member: some RedisArgumentConvertible) -> RedisCommand<Double> {
        precondition(!increment.isNaN, "ZINCRBY increment cannot be NaN")
        return RedisCommand<Double>(["ZINCRBY", .string(key), RedisArgument(increment), RedisArgument(member)]) {
            try $0.double
        }
    }

    /// `ZCARD key`: the number of members.
    public static func zcard(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["ZCARD", .string(key)]) { try $0.int }
    }

    /// `ZRANK key member`: the member's rank (0 for the lowest score), `nil` when it is not in the set.
    public static func zrank(_ key: String, _ member: some RedisArgumentConvertible) -> RedisCommand<Int?> {
        RedisCommand<Int?>(["ZRANK", .string(key), RedisArgument(member)]) { try $0.optionalInt }
    }

    /// `NAME key member [member …]`, for the variadic collection commands.
    private static func keyAndMembers<T>(
        _ name: RedisArgument, _ key: String, _ members: [RedisArgument],
        decode: @escaping @Sendable (RedisReply) throws -> T
    ) -> RedisCommand<T> {
        precondition(!members.isEmpty, "\(name) needs at least one member")
        return RedisCommand<T>([name, .string(key)] + members, decode: decode)
    }
}
