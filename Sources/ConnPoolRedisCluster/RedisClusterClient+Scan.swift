public import ConnPoolRedis

/// The keys of the whole cluster, shard after shard (see ``RedisClusterClient/scan(match:count:type:)``).
public struct RedisClusterScanSequence: AsyncSequence, Sendable {
    /// A key.
    public typealias Element = String

    let client: RedisClusterClient
    let options: [RedisArgument]

    /// Iterates the keys.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var scanner: ClusterScanner

        /// The next key, or `nil` after the last shard.
        ///
        /// - Throws: what a ``RedisClusterClient/command(_:)-([RedisArgument])`` of `SCAN` throws.
        public mutating func next() async throws -> String? {
            while scanner.needsStep {
                guard let step = scanner.nextStep() else { return nil }
                scanner.absorb(try await scanner.client.scanStep(step, options: scanner.options))
            }
            return scanner.pop()
        }
    }

    /// An iterator starting at the first shard of the client's current view.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(scanner: ClusterScanner(client: client, options: options))
    }
}

/// The state of a cluster-wide scan: the shards still to visit, the cursor in the current one and the node
/// that cursor belongs to.
struct ClusterScanner: Sendable {
    struct Step: Sendable {
        let slot: UInt16
        let cursor: String
        let node: ClusterNodeAddress?
    }

    struct StepResult: Sendable {
        let node: ClusterNodeAddress
        let cursor: String
        let keys: [String]
    }

    let client: RedisClusterClient
    let options: [RedisArgument]
    private var shards: [UInt16]?
    private var shardIndex = 0
    private var cursor = "0"
    private var node: ClusterNodeAddress?
    private var buffer: [String] = []
    private var bufferIndex = 0

    init(client: RedisClusterClient, options: [RedisArgument]) {
        self.client = client
        self.options = options
    }

    var needsStep: Bool { bufferIndex >= buffer.count }

    /// The next `SCAN` to send, `nil` when every shard is done.
    mutating func nextStep() -> Step? {
        if shards == nil {
            shards = client.topology.shards.compactMap { $0.slotRanges.first.map { UInt16($0.lowerBound) } }
        }
        guard let shards, shardIndex < shards.count else { return nil }
        return Step(slot: shards[shardIndex], cursor: cursor, node: node)
    }

    mutating func absorb(_ result: StepResult) {
        buffer = result.keys
        bufferIndex = 0
        if result.cursor == "0" {
            shardIndex += 1
            cursor = "0"
            node = nil
        } else {
            cursor = result.cursor
            node = result.node
        }
    }

    mutating func pop() -> String? {
        guard bufferIndex < buffer.count else { return nil }
        defer { bufferIndex += 1 }
        return buffer[bufferIndex]
    }
}

extension RedisClusterClient {
    /// Every key of the cluster: `SCAN` on each shard's primary in turn (a keyless `SCAN` would visit one
    /// node only).
    ///
    /// A shard's cursor belongs to the node that issued it. When the shard is served by another node at
    /// the next step (a failover mid-scan), the scan of that shard restarts at cursor 0 on the new primary,
    /// so no key present from start to end is missed, though keys of that shard may be returned twice (as
    /// `SCAN` itself allows). Connection errors are retried as for any read. Slots that move to another
    /// shard during the scan (a reshard) may be missed or visited twice.
    ///
    /// - Parameters:
    ///   - pattern: `MATCH` pattern.
    ///   - count: `COUNT` hint per step.
    ///   - type: `TYPE` filter.
    public func scan(match pattern: String? = nil, count: Int? = nil, type: String? = nil) -> RedisClusterScanSequence {
        RedisClusterScanSequence(client: self, options: Self.scanOptions(pattern, count, type))
    }

    /// ``scan(match:count:type:)`` on the calling thread: calls `body` with every key.
    ///
    /// - Throws: what `body` throws, or what a blocking `SCAN` throws.
    public func scanBlocking(
        match pattern: String? = nil, count: Int? = nil, type: String? = nil, _ body: (String) throws -> Void
    ) throws {
        var scanner = ClusterScanner(client: self, options: Self.scanOptions(pattern, count, type))
        while true {
            while scanner.needsStep {
                guard let step = scanner.nextStep() else { return }
                scanner.absorb(try scanStepBlocking(step, options: scanner.options))
            }
            if let key = scanner.pop() { try body(key) }
        }
    }

    static func scanOptions(_ pattern: String?, _ count: Int?, _ type: String?) -> [RedisArgument] {
        var options = [RedisArgument]()
        if let pattern { options += ["MATCH", .string(pattern)] }
        if let count { options += ["COUNT", .integer(count)] }
        if let type { options += ["TYPE", .string(type)] }
        return options
    }

    private static func parseScan(_ reply: RedisReply, node: ClusterNodeAddress) throws -> ClusterScanner.StepResult {
        let parts = try reply.array
        guard parts.count == 2 else { throw RedisError.unexpectedReply(expected: "a SCAN reply", actual: reply.kindDescription) }
        return ClusterScanner.StepResult(node: node, cursor: try parts[0].string, keys: try parts[1].array.map { try $0.string })
    }

    func scanStep(_ step: ClusterScanner.Step, options: [RedisArgument]) async throws -> ClusterScanner.StepResult {
        try await withRetries(name: "SCAN", readOnly: true, slot: step.slot, primaryOnly: true, singleCommand: true) {
            node, connection, _ in
            let cursor = step.node == nil || step.node == node.address ? step.cursor : "0"
            return try Self.parseScan(try await connection.redis.command(["SCAN", .string(cursor)] + options), node: node.address)
        }
    }

    func scanStepBlocking(_ step: ClusterScanner.Step, options: [RedisArgument]) throws -> ClusterScanner.StepResult {
        try withRetriesBlocking(name: "SCAN", readOnly: true, slot: step.slot, primaryOnly: true, singleCommand: true) {
            node, connection, _ in
            let cursor = step.node == nil || step.node == node.address ? step.cursor : "0"
            return try Self.parseScan(try connection.redis.commandBlocking(["SCAN", .string(cursor)] + options), node: node.address)
        }
    }
}
