package import CHiredis

/// A reply from Redis (RESP2), copied out of hiredis' reply object, which is freed at once.
///
/// A command sent with ``RedisConnection/command(_:)`` throws ``RedisError/server(_:)`` for an error
/// reply instead of returning ``error(_:)``; error values appear inside pipeline results and arrays (for
/// example the results of `EXEC`).
public enum RedisReply: Sendable, Hashable {
    /// A status reply such as `OK` or `PONG` (`+...`).
    case status(String)
    /// An error reply (`-...`), with the server's message.
    case error(String)
    /// An integer reply (`:...`).
    case integer(Int)
    /// A bulk string (`$...`): binary-safe bytes.
    case bulkString([UInt8])
    /// The nil bulk string or nil array (`$-1`, `*-1`), for example `GET` of a missing key.
    case null
    /// An array (`*...`) of replies.
    case array([RedisReply])

    /// `true` for ``null``.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The text of a bulk string (decoded as UTF-8) or status reply.
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for nil or any other kind.
    public var string: String {
        get throws {
            switch self {
            case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
            case .status(let status): return status
            case .error(let message): throw RedisError.server(message)
            default: throw RedisError.unexpectedReply(expected: "a string", actual: kindDescription)
            }
        }
    }

    /// Like ``string``, but `nil` for a nil reply.
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for an integer or array.
    public var optionalString: String? {
        get throws {
            if case .null = self { return nil }
            return try string
        }
    }

    /// The bytes of a bulk string (or the UTF-8 bytes of a status reply).
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for nil or any other kind.
    public var bytes: [UInt8] {
        get throws {
            switch self {
            case .bulkString(let bytes): return bytes
            case .status(let status): return Array(status.utf8)
            case .error(let message): throw RedisError.server(message)
            default: throw RedisError.unexpectedReply(expected: "a bulk string", actual: kindDescription)
            }
        }
    }

    /// Like ``bytes``, but `nil` for a nil reply.
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for an integer or array.
    public var optionalBytes: [UInt8]? {
        get throws {
            if case .null = self { return nil }
            return try bytes
        }
    }

    /// An integer reply, or a bulk string holding a decimal integer (as `GET` of a counter returns).
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for nil, a non-numeric string or any other kind.
    public var int: Int {
        get throws {
            switch self {
            case .integer(let value): return value
            case .bulkString(let bytes):
                if let value = Int(String(decoding: bytes, as: UTF8.self)) { return value }
                throw RedisError.unexpectedReply(expected: "an integer", actual: kindDescription)
            case .error(let message): throw RedisError.server(message)
            default: throw RedisError.unexpectedReply(expected: "an integer", actual: kindDescription)
            }
        }
    }

    /// Like ``int``, but `nil` for a nil reply.
    ///
    /// - Throws: as ``int`` for anything but nil.
    public var optionalInt: Int? {
        get throws {
            if case .null = self { return nil }
            return try int
        }
    }

    /// The elements of an array reply.
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for nil or any other kind.
    public var array: [RedisReply] {
        get throws {
            switch self {
            case .array(let elements): return elements
            case .error(let message): throw RedisError.server(message)
            default: throw RedisError.unexpectedReply(expected: "an array", actual: kindDescription)
            }
        }
    }

    /// Checks that the reply is the status `expected` (for example `OK` or `PONG`).
    ///
    /// - Throws: ``RedisError/server(_:)`` for an error reply, ``RedisError/unexpectedReply(expected:actual:)``
    ///   for anything else.
    public func expectStatus(_ expected: String) throws {
        switch self {
        case .status(let status) where status == expected: return
        case .error(let message): throw RedisError.server(message)
        default: throw RedisError.unexpectedReply(expected: "status \(expected)", actual: kindDescription)
        }
    }

    /// The kind of reply, with a size but never its content (content may be secret).
    public var kindDescription: String {
        switch self {
        case .status: return "a status reply"
        case .error: return "an error reply"
        case .integer: return "an integer"
        case .bulkString(let bytes): return "a bulk string of \(bytes.count) bytes"
        case .null: return "nil"
        case .array(let elements): return "an array of \(elements.count) elements"
        }
    }

    /// Copies a hiredis reply tree. The caller frees `reply`.
    init(copying reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STATUS:
            self = .status(Self.text(r.str, r.len))
        case REDIS_REPLY_ERROR:
            self = .error(Self.text(r.str, r.len))
        case REDIS_REPLY_INTEGER:
            self = .integer(Int(r.integer))
        case REDIS_REPLY_STRING:
            if r.len == 0 || r.str == nil {
                self = .bulkString([])
            } else {
                self = .bulkString([UInt8](UnsafeRawBufferPointer(start: r.str, count: r.len)))
            }
        case REDIS_REPLY_ARRAY:
            var elements = [RedisReply]()
            elements.reserveCapacity(r.elements)
            for index in 0..<r.elements {
                if let element = r.element[index] {
                    elements.append(RedisReply(copying: element))
                } else {
                    elements.append(.null)
                }
            }
            self = .array(elements)
        default:  // REDIS_REPLY_NIL
            self = .null
        }
    }

    /// The outcome of ``take(from:simpleRepliesFromBuffer:)`` when the reader did not fail.
    package struct Taken {
        /// The next whole reply; `nil` when it has not been wholly received yet.
        package let reply: RedisReply?
    }

    /// Takes the next whole reply out of `context`'s reader, if one is buffered.
    ///
    /// Simple replies (status, error, integer, bulk string, nil) are read straight from the reader's buffer
    /// (`connpool_redisTakeSimpleReply`): no hiredis reply object, so no allocation but a bulk string's
    /// own bytes. Written by hand because it is the hot path (a pipeline reads thousands of replies per
    /// wake-up, and hiredis allocates and frees two blocks for each). Arrays, and anything malformed or
    /// unusual, go through hiredis' `redisGetReplyFromReader`, which parses and reports everything.
    ///
    /// - Parameter simpleRepliesFromBuffer: `false` parses every reply with hiredis (tests compare the two).
    /// - Returns: `nil` when the reader failed (a protocol error: the context's `err`/`errstr` say which).
    package static func take(
        from context: UnsafeMutablePointer<redisContext>, simpleRepliesFromBuffer: Bool = true
    ) -> Taken? {
        var simple = connpool_simple_reply()
        if simpleRepliesFromBuffer && connpool_redisTakeSimpleReply(context, &simple) == 1 {
            let reply = RedisReply(simple)
            connpool_redisReaderCompact(context)
            return Taken(reply: reply)
        }
        var raw: UnsafeMutableRawPointer?
        guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { return nil }
        guard let raw else { return Taken(reply: nil) }
        defer { freeReplyObject(raw) }
        return Taken(reply: RedisReply(copying: raw.assumingMemoryBound(to: redisReply.self)))
    }

    /// A copy of a simple reply taken from the reader's buffer (`connpool_redisTakeSimpleReply`), before
    /// the reader moves on.
    init(_ simple: connpool_simple_reply) {
        switch simple.type {
        case REDIS_REPLY_STATUS:
            self = .status(Self.text(simple.str, simple.len))
        case REDIS_REPLY_ERROR:
            self = .error(Self.text(simple.str, simple.len))
        case REDIS_REPLY_INTEGER:
            self = .integer(Int(simple.integer))
        case REDIS_REPLY_STRING:
            self = simple.len == 0 ? .bulkString([]) : .bulkString([UInt8](UnsafeRawBufferPointer(start: simple.str, count: simple.len)))
        default:  // REDIS_REPLY_NIL
            self = .null
        }
    }

    private static func text(_ pointer: UnsafePointer<CChar>?, _ length: Int) -> String {
        guard let pointer, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    }
}
