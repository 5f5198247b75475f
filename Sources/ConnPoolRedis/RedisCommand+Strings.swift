// Typed factories for the string, key and connection commands. Arguments are in the order the Redis
// 7 reference (`COMMAND DOCS`) gives; TypedCommandTests checks each name and arity against COMMAND INFO.

/// How long a key set with ``RedisCommand/set(_:_:expiration:condition:)`` lives.
public enum RedisExpiration: Sendable, Hashable {
    /// Expire after the duration: sent as `EX seconds` when it is a whole number of seconds, else as
    /// `PX milliseconds` (a fraction of a millisecond rounds up). Precondition: positive.
    case after(Duration)
    /// Keep the key's current time to live (`KEEPTTL`).
    case keepTTL

    /// The `EX`/`PX`/`KEEPTTL` arguments.
    var arguments: [RedisArgument] {
        switch self {
        case .keepTTL:
            return ["KEEPTTL"]
        case .after(let duration):
            precondition(duration > .zero, "an expiration must be positive, got \(duration)")
            let (seconds, attoseconds) = duration.components
            if attoseconds == 0 { return ["EX", .integer(Int(seconds))] }
            return ["PX", .integer(duration.wholeMillisecondsRoundingUp)]
        }
    }
}

/// The condition of a ``RedisCommand/set(_:_:expiration:condition:)``.
public enum RedisSetCondition: Sendable, Hashable {
    /// Set only if the key does not exist (`NX`).
    case ifNotExists
    /// Set only if the key exists (`XX`).
    case ifExists
}

/// The time to live of a key, from ``RedisCommand/ttl(_:)`` or ``RedisCommand/pttl(_:)``.
public enum RedisTimeToLive: Sendable, Hashable {
    /// The key does not exist (the server answered -2).
    case keyNotFound
    /// The key exists and does not expire (-1).
    case noExpiration
    /// The key expires after this duration (seconds precision for TTL, milliseconds for PTTL).
    case expires(in: Duration)
}

extension Duration {
    /// The duration in milliseconds, a fraction rounding up (so that a positive duration never becomes 0).
    var wholeMillisecondsRoundingUp: Int {
        let (seconds, attoseconds) = components
        let perMillisecond: Int64 = 1_000_000_000_000_000
        let fraction = attoseconds / perMillisecond + (attoseconds % perMillisecond > 0 ? 1 : 0)
        return Int(seconds * 1000 + fraction)
    }
}

extension RedisArgument {
    /// `value` as an argument: a ``RedisArgument`` as is, a `String` or `Int` as text, anything else as
    /// its bytes.
    init(_ value: some RedisArgumentConvertible) {
        switch value {
        case let argument as RedisArgument: self = argument
        case let string as String: self = .string(string)
        case let integer as Int: self = .integer(integer)
        default: self = value.withRedisArgumentBytes { .bytes(Array($0)) }
        }
    }

    /// A floating-point number in the text form Redis parses (`1.5`, `inf`, `-inf`).
    init(_ value: Double) {
        self = .string(value.isInfinite ? (value < 0 ? "-inf" : "inf") : "\(value)")
    }

    /// The arguments `[key1, key2, …]`.
    static func keys(_ keys: [String]) -> [RedisArgument] { keys.map { .string($0) } }
}

/// Decoders shared by the factories.
extension RedisReply {
    /// `OK` (throws for anything else).
    static func ok(_ reply: RedisReply) throws { try reply.expectStatus("OK") }
    /// An integer reply as a `Bool` (`1` is `true`).
    static func bool(_ reply: RedisReply) throws -> Bool { try reply.int != 0 }
    /// A bulk string holding a floating-point number (`inf` and `-inf` included).
    var double: Double {
        get throws {
            let text = try string
            if let value = Double(text) { return value }
            throw RedisError.unexpectedReply(expected: "a floating-point number", actual: kindDescription)
        }
    }
    /// ``double``, or `nil` for a nil reply.
    var optionalDouble: Double? {
        get throws { isNull ? nil : try double }
    }
    /// An array of strings.
    var strings: [String] {
        get throws { try array.map { try $0.string } }
    }
    /// An array of strings, some of which may be nil.
    var optionalStrings: [String?] {
        get throws { try array.map { try $0.optionalString } }
    }
    /// An array of `[name, value, name, value, …]` as pairs.
    func pairs<V>(_ value: (RedisReply) throws -> V) throws -> [(String, V)] {
        let elements = try array
        guard elements.count.isMultiple(of: 2) else {
            throw RedisError.unexpectedReply(expected: "an array of pairs", actual: kindDescription)
        }
        return try stride(from: 0, to: elements.count, by: 2).map {
            (try elements[$0].string, try value(elements[$0 + 1]))
        }
    }
}

// MARK: - Strings

extension RedisCommand {
    /// `GET key`: the value as text (decoded as UTF-8), `nil` when the key does not exist.
    public static func get(_ key: String) -> RedisCommand<String?> {
        RedisCommand<String?>(["GET", .string(key)]) { try $0.optionalString }
    }

    /// `GET key`: the value's bytes, `nil` when the key does not exist.
    public static func getBytes(_ key: String) -> RedisCommand<[UInt8]?> {
        RedisCommand<[UInt8]?>(["GET", .string(key)]) { try $0.optionalBytes }
    }

    /// `SET key value [NX|XX] [EX seconds|PX milliseconds|KEEPTTL]`.
    ///
    /// - Returns (when sent): `true` when the value was set, `false` when `condition` prevented it.
    /// - Precondition: an `.after` expiration is positive.
    public static func set(
        _ key: String, _ value: some RedisArgumentConvertible,
        expiration: RedisExpiration? = nil, condition: RedisSetCondition? = nil
    ) -> RedisCommand<Bool> {
        var arguments: [RedisArgument] = ["SET", .string(key), RedisArgument(value)]
        switch condition {
        case .ifNotExists: arguments.append("NX")
        case .ifExists: arguments.append("XX")
        case nil: break
        }
        if let expiration { arguments += expiration.arguments }
        return RedisCommand<Bool>(arguments) { reply in
            if reply.isNull { return false }
            try reply.expectStatus("OK")
            return true
        }
    }

    /// `INCR key`: the value after the increment.
    public static func incr(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["INCR", .string(key)]) { try $0.int }
    }

    /// `INCRBY key increment`: the value after the increment.
    public static func incrBy(_ key: String, _ increment: Int) -> RedisCommand<Int> {
        RedisCommand<Int>(["INCRBY", .string(key), .integer(increment)]) { try $0.int }
    }

    /// `DECR key`: the value after the decrement.
    public static func decr(_ key: String) -> RedisCommand<Int> {
        RedisCommand<Int>(["DECR", .string(key)]) { try $0.int }
    }

    /// `DECRBY key decrement`: the value after the decrement.
    public static func decrBy(_ key: String, _ decrement: Int) -> RedisCommand<Int> {
        RedisCommand<Int>(["DECRBY", .string(key), .integer(decrement)]) { try $0.int }
    }

    /// `INCRBYFLOAT key increment`: the value after the increment.
    ///
    /// - Precondition: `increment` is finite (the server rejects infinities and NaN).
    public static func incrByFloat(_ key: String, _ increment: Double) -> RedisCommand<Double> {
        precondition(increment.isFinite, "INCRBYFLOAT needs a finite increment")
        return RedisCommand<Double>(["INCRBYFLOAT", .string(key), RedisArgument(increment)]) { try $0.double }
    }

    /// `MGET key [key …]`: one value per key (as text), `nil` for a missing key.
    ///
    /// - Precondition: `keys` is not empty.
    public static func mget(_ keys: [String]) -> RedisCommand<[String?]> {
        precondition(!keys.isEmpty, "MGET needs at least one key")
        return RedisCommand<[String?]>(["MGET"] + RedisArgument.keys(keys)) { try $0.optionalStrings }
    }

    /// `MSET key value [key value …]`.
    ///
    /// - Precondition: `pairs` is not empty.
    public static func mset<V: RedisArgumentConvertible>(_ pairs: [(String, V)]) -> RedisCommand<Void> {
        precondition(!pairs.isEmpty, "MSET needs at least one key")
        return RedisCommand<Void>(["MSET"] + pairs.flatMap { [.string($0.0), RedisArgument($0.1)] }, decode: RedisReply.ok)
    }

    // MARK: - Keys

    /// `DEL key [key …]`: how many of the keys existed and were removed.
    ///
    /// - Precondition: `keys` is not empty.
    public static func del(_ keys: [String]) -> RedisCommand<Int> {
        keyCount("DEL", keys)
    }

    /// `UNLINK key [key …]` (DEL with the memory reclaimed in the background): how many keys were removed.
    ///
    /// - Precondition: `keys` is not empty.
    public static func unlink(_ keys: [String]) -> RedisCommand<Int> {
        keyCount("UNLINK", keys)
    }

    /// `EXISTS key [key …]`: how many of the keys exist (a key given twice counts twice).
    ///
    /// - Precondition: `keys` is not empty.
    public static func exists(_ keys: [String]) -> RedisCommand<Int> {
        keyCount("EXISTS", keys)
    }

    private static func keyCount(_ name: RedisArgument, _ keys: [String]) -> RedisCommand<Int> {
        precondition(!keys.isEmpty, "\(name) needs at least one key")
        return RedisCommand<Int>([name] + RedisArgument.keys(keys)) { try $0.int }
    }

    /// `EXPIRE key seconds`, or `PEXPIRE key milliseconds` when `duration` is not whole seconds (a
    /// fraction of a millisecond rounds up): `true` when the timeout was set, `false` when the key does
    /// not exist.
    public static func expire(_ key: String, after duration: Duration) -> RedisCommand<Bool> {
        let (seconds, attoseconds) = duration.components
        if attoseconds != 0 { return pexpire(key, after: duration) }
        return RedisCommand<Bool>(["EXPIRE", .string(key), .integer(Int(seconds))], decode: RedisReply.bool)
    }

    /// `PEXPIRE key milliseconds` (a fraction of a millisecond rounds up): `true` when the timeout was
    /// set, `false` when the key does not exist.
    public static func pexpire(_ key: String, after duration: Duration) -> RedisCommand<Bool> {
        RedisCommand<Bool>(
            ["PEXPIRE", .string(key), .integer(duration.wholeMillisecondsRoundingUp)], decode: RedisReply.bool)
    }

    /// `TTL key`: the time to live, in whole seconds.
    public static func ttl(_ key: String) -> RedisCommand<RedisTimeToLive> {
        timeToLive("TTL", key, unit: .seconds(1))
    }

    /// `PTTL key`: the time to live, in milliseconds.
    public static func pttl(_ key: String) -> RedisCommand<RedisTimeToLive> {
        timeToLive("PTTL", key, unit: .milliseconds(1))
    }

    private static func timeToLive(_ name: RedisArgument, _ key: String, unit: Duration) -> RedisCommand<RedisTimeToLive> {
        RedisCommand<RedisTimeToLive>([name, .string(key)]) { reply in
            switch try reply.int {
            case -2: return .keyNotFound
            case -1: return .noExpiration
            case let value: return .expires(in: unit * value)
            }
        }
    }

    /// `PERSIST key`: `true` when a timeout was removed, `false` when the key has none or does not exist.
    public static func persist(_ key: String) -> RedisCommand<Bool> {
        RedisCommand<Bool>(["PERSIST", .string(key)], decode: RedisReply.bool)
    }

    /// `TYPE key`: `string`, `list`, `set`, `zset`, `hash`, `stream`, or `none` for a missing key.
    public static func type(_ key: String) -> RedisCommand<String> {
        RedisCommand<String>(["TYPE", .string(key)]) { try $0.string }
    }

    /// `RENAME key newkey`. When sent, throws ``RedisError/server(_:)`` (`ERR no such key`) if `key` does
    /// not exist.
    public static func rename(_ key: String, to newKey: String) -> RedisCommand<Void> {
        RedisCommand<Void>(["RENAME", .string(key), .string(newKey)], decode: RedisReply.ok)
    }

    // MARK: - Connection and pub/sub

    /// `PING`: the server's `PONG`.
    public static func ping() -> RedisCommand<String> {
        RedisCommand<String>(["PING"]) { try $0.string }
    }

    /// `ECHO message`: the message back.
    public static func echo(_ message: String) -> RedisCommand<String> {
        RedisCommand<String>(["ECHO", .string(message)]) { try $0.string }
    }

    /// `PUBLISH channel message`: how many clients received the message.
    public static func publish(_ channel: String, _ message: some RedisArgumentConvertible) -> RedisCommand<Int> {
        RedisCommand<Int>(["PUBLISH", .string(channel), RedisArgument(message)]) { try $0.int }
    }
}
