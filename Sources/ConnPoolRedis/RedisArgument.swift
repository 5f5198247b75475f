/// A value that can be sent as one argument of a Redis command, binary-safe (embedded NUL bytes are
/// kept: arguments are passed to hiredis with explicit lengths).
///
/// `String`, `Substring`, `[UInt8]`, `ArraySlice<UInt8>`, `Int` and ``RedisArgument`` conform.
public protocol RedisArgumentConvertible: Sendable {
    /// Calls `body` with the argument's bytes, valid only during the call.
    ///
    /// - Throws: whatever `body` throws.
    func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension String: RedisArgumentConvertible {
    /// The UTF-8 bytes of the string. Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let result = try utf8.withContiguousStorageIfAvailable({ try body(UnsafeRawBufferPointer($0)) }) {
            return result
        }
        var copy = self
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}

extension Substring: RedisArgumentConvertible {
    /// The UTF-8 bytes of the substring. Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = self
        return try copy.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
    }
}

extension Array: RedisArgumentConvertible where Element == UInt8 {
    /// The bytes themselves. Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension ArraySlice: RedisArgumentConvertible where Element == UInt8 {
    /// The bytes themselves. Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }
}

extension Int: RedisArgumentConvertible {
    /// The decimal text of the integer (as Redis expects numbers), formatted without allocating.
    /// Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { buffer in
            var magnitude = self.magnitude
            var index = buffer.count
            repeat {
                index -= 1
                buffer[index] = UInt8(truncatingIfNeeded: magnitude % 10) &+ 0x30
                magnitude /= 10
            } while magnitude != 0
            if self < 0 {
                index -= 1
                buffer[index] = 0x2D  // "-"
            }
            return try body(UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[index...])))
        }
    }
}

/// One argument of a Redis command, for commands whose arguments mix kinds in an array:
/// `["SET", .string(key), .bytes(value)]`. String and integer literals convert implicitly.
public enum RedisArgument: RedisArgumentConvertible, Hashable, ExpressibleByStringLiteral,
    ExpressibleByIntegerLiteral
{
    /// A text argument, sent as its UTF-8 bytes.
    case string(String)
    /// A binary argument, sent as is (may contain NUL bytes).
    case bytes([UInt8])
    /// An integer, sent as its decimal text.
    case integer(Int)

    /// A text argument from a string literal.
    public init(stringLiteral value: String) { self = .string(value) }

    /// An integer argument from an integer literal.
    public init(integerLiteral value: Int) { self = .integer(value) }

    /// The argument's bytes. Rethrows what `body` throws.
    public func withRedisArgumentBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch self {
        case .string(let string): return try string.withRedisArgumentBytes(body)
        case .bytes(let bytes): return try bytes.withRedisArgumentBytes(body)
        case .integer(let integer): return try integer.withRedisArgumentBytes(body)
        }
    }
}
