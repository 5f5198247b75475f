/// A field of a hash with its value, from ``RedisConnection/hscan(_:match:count:)``.
public struct RedisHashEntry: Sendable, Hashable {
    /// The field name (decoded as UTF-8).
    public var field: String
    /// The value's bytes.
    public var value: [UInt8]

    /// A field with its value.
    public init(field: String, value: [UInt8]) {
        self.field = field
        self.value = value
    }
}

/// The elements of a `SCAN`-family command (`SCAN`, `HSCAN`, `SSCAN`, `ZSCAN`), fetched page by page
/// following the server's cursor until it returns to 0.
///
/// Iterate it with the async API, or on the calling thread with ``forEachBlocking(_:)``:
///
/// ```swift
/// for try await key in connection.scan(match: "session:*") { … }
/// try connection.scan(match: "session:*").forEachBlocking { key in … }
/// ```
///
/// As Redis documents for `SCAN`: an element present during the whole iteration is returned, possibly
/// more than once; one added or removed meanwhile may or may not be. The connection serves nothing else
/// while a page is fetched, but can be used between elements (each page is one command).
public struct RedisScanSequence<Element: Sendable>: AsyncSequence, Sendable {
    private let connection: RedisConnection
    private let page: @Sendable (_ cursor: String) -> RedisCommand<(cursor: String, elements: [Element])>

    fileprivate init(
        _ connection: RedisConnection, arguments: [RedisArgument], options: [RedisArgument],
        element: @escaping @Sendable (_ reply: [RedisReply]) throws -> [Element]
    ) {
        self.connection = connection
        page = { cursor in
            RedisCommand(arguments + [.string(cursor)] + options) { reply in
                let parts = try reply.array
                guard parts.count == 2 else {
                    throw RedisError.unexpectedReply(expected: "a [cursor, elements] pair", actual: reply.kindDescription)
                }
                return (try parts[0].string, try element(parts[1].array))
            }
        }
    }

    /// Iterates the elements with the async API (one command per page).
    public struct AsyncIterator: AsyncIteratorProtocol {
        private let sequence: RedisScanSequence
        private var cursor: String? = "0"
        private var buffer: [Element] = []
        private var position = 0

        fileprivate init(_ sequence: RedisScanSequence) { self.sequence = sequence }

        /// The next element, fetching the next page when the current one is used up.
        ///
        /// - Returns: `nil` once the server's cursor is back to 0 and its last page is used up.
        /// - Throws: what ``RedisConnection/send(_:)`` throws.
        public mutating func next() async throws -> Element? {
            while position == buffer.count {
                guard let cursor else { return nil }
                let page = try await sequence.connection.send(sequence.page(cursor))
                (self.cursor, buffer, position) = (page.cursor == "0" ? nil : page.cursor, page.elements, 0)
            }
            defer { position += 1 }
            return buffer[position]
        }
    }

    /// An iterator over the elements.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(self) }

    /// Calls `body` with every element, fetching the pages on the calling thread.
    ///
    /// - Throws: what ``RedisConnection/sendBlocking(_:)`` throws, or what `body` throws (which stops
    ///   the iteration).
    public func forEachBlocking(_ body: (Element) throws -> Void) throws {
        var cursor = "0"
        repeat {
            let page = try connection.sendBlocking(page(cursor))
            for element in page.elements { try body(element) }
            cursor = page.cursor
        } while cursor != "0"
    }
}

extension RedisConnection {
    /// The keys of the database (`SCAN`), optionally only those matching the glob-style `pattern`
    /// (`MATCH`), of one `type` (`TYPE`, such as `string` or `hash`), with `count` as the server's
    /// page size hint (`COUNT`).
    ///
    /// - Precondition: `count` is positive.
    public func scan(match pattern: String? = nil, count: Int? = nil, type: String? = nil) -> RedisScanSequence<String> {
        RedisScanSequence(
            self, arguments: ["SCAN"], options: scanOptions(pattern, count) + (type.map { ["TYPE", .string($0)] } ?? [])
        ) { try $0.map { try $0.string } }
    }

    /// The fields and values of the hash at `key` (`HSCAN`); `pattern` and `count` as in
    /// ``scan(match:count:type:)``.
    ///
    /// - Precondition: `count` is positive.
    public func hscan(_ key: String, match pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<RedisHashEntry> {
        RedisScanSequence(self, arguments: ["HSCAN", .string(key)], options: scanOptions(pattern, count)) {
            try RedisReply.array($0).pairs { try $0.bytes }.map { RedisHashEntry(field: $0.0, value: $0.1) }
        }
    }

    /// The members of the set at `key` (`SSCAN`); `pattern` and `count` as in ``scan(match:count:type:)``.
    ///
    /// - Precondition: `count` is positive.
    public func sscan(_ key: String, match pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<String> {
        RedisScanSequence(self, arguments: ["SSCAN", .string(key)], options: scanOptions(pattern, count)) {
            try $0.map { try $0.string }
        }
    }

    /// The members of the sorted set at `key` with their scores (`ZSCAN`); `pattern` and `count` as in
    /// ``scan(match:count:type:)``.
    ///
    /// - Precondition: `count` is positive.
    public func zscan(_ key: String, match pattern: String? = nil, count: Int? = nil) -> RedisScanSequence<RedisScoredMember> {
        RedisScanSequence(self, arguments: ["ZSCAN", .string(key)], options: scanOptions(pattern, count)) {
            try RedisReply.array($0).pairs { try $0.double }.map { RedisScoredMember(member: $0.0, score: $0.1) }
        }
    }

    private func scanOptions(_ pattern: String?, _ count: Int?) -> [RedisArgument] {
        var options = [RedisArgument]()
        if let pattern { options += ["MATCH", .string(pattern)] }
        if let count {
            precondition(count > 0, "a SCAN count must be positive")
            options += ["COUNT", .integer(count)]
        }
        return options
    }
}
