public import ConnPoolRedis

/// The address of a cluster node, as the cluster announces it.
public struct ClusterNodeAddress: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The host (an IP address or a name).
    public var host: String
    /// The TCP port of the node's clients (not its cluster bus).
    public var port: Int

    /// An address.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`.
    public var description: String { "\(host):\(port)" }

    /// Orders by host, then port.
    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.host, lhs.port) < (rhs.host, rhs.port) }

    /// Parses `host:port` (the form of `MOVED`/`ASK` redirections; the last colon separates the port).
    init?(parsing text: Substring) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), port > 0 else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.init(host: host, port: port)
    }
}

/// One shard of the cluster: the slots a primary serves and its replicas.
public struct ClusterShard: Sendable, Hashable, Codable {
    /// The slot ranges, sorted and merged.
    public var slotRanges: [ClosedRange<Int>]
    /// The primary serving the slots.
    public var primary: ClusterNodeAddress
    /// The replicas the cluster reports online, sorted.
    public var replicas: [ClusterNodeAddress]

    /// A shard.
    public init(slotRanges: [ClosedRange<Int>], primary: ClusterNodeAddress, replicas: [ClusterNodeAddress]) {
        self.slotRanges = Self.merged(slotRanges)
        self.primary = primary
        self.replicas = replicas.sorted()
    }

    /// The number of slots of the shard.
    public var slotCount: Int { slotRanges.reduce(0) { $0 + $1.count } }

    static func merged(_ ranges: [ClosedRange<Int>]) -> [ClosedRange<Int>] {
        var result = [ClosedRange<Int>]()
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = result.last, range.lowerBound <= last.upperBound + 1 {
                result[result.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                result.append(range)
            }
        }
        return result
    }
}

/// A view of the cluster: which primary serves which slots, with its replicas. Canonical (shards sorted by
/// their first slot), so two nodes' views compare equal when they agree.
public struct ClusterTopology: Sendable, Hashable, Codable {
    /// The shards that serve at least one slot, sorted by their first slot.
    public var shards: [ClusterShard]
    /// Reachable nodes that serve no slot and replicate no shard in this view, sorted: a primary just
    /// added (before slots move to it), or one demoted by a failover that the answering node still lists
    /// as an empty primary. The client keeps their pools, so that such a node is not dropped and re-added.
    public var nodesWithoutSlots: [ClusterNodeAddress]

    /// A view made of `shards` (sorted here; shards without slots are dropped) and `nodesWithoutSlots`.
    public init(shards: [ClusterShard], nodesWithoutSlots: [ClusterNodeAddress] = []) {
        self.shards = shards.filter { !$0.slotRanges.isEmpty }.sorted {
            ($0.slotRanges.first?.lowerBound ?? 0) < ($1.slotRanges.first?.lowerBound ?? 0)
        }
        var inShards = Set<ClusterNodeAddress>()
        for shard in self.shards {
            inShards.insert(shard.primary)
            inShards.formUnion(shard.replicas)
        }
        self.nodesWithoutSlots = Array(Set(nodesWithoutSlots).subtracting(inShards)).sorted()
    }

    /// The number of slots some primary serves.
    public var coveredSlots: Int { shards.reduce(0) { $0 + $1.slotCount } }

    /// Every node of the view: primaries, replicas and nodes without slots.
    public var allNodes: Set<ClusterNodeAddress> {
        var nodes = Set(nodesWithoutSlots)
        for shard in shards {
            nodes.insert(shard.primary)
            nodes.formUnion(shard.replicas)
        }
        return nodes
    }

    /// The shard serving `slot`, if any.
    public func shard(forSlot slot: Int) -> ClusterShard? {
        shards.first { $0.slotRanges.contains { $0.contains(slot) } }
    }

    // MARK: Parsing

    /// Parses a `CLUSTER SHARDS` reply (Redis 7). A node's address is its `endpoint` (its `ip` when the
    /// endpoint is unknown, `?` or empty: then `askedHost`, the host the reply came from, when the ip is
    /// empty too). Replicas whose `health` is `failed` are left out; a shard's primary is its
    /// `master` (the online one when there are two, as right after a failover).
    ///
    /// - Throws: ``RedisError/unexpectedReply(expected:actual:)`` when the reply has another shape.
    static func parse(shardsReply reply: RedisReply, askedHost: String) throws -> ClusterTopology {
        var shards = [ClusterShard]()
        var withoutSlots = [ClusterNodeAddress]()
        for shardReply in try reply.array {
            let shard = CommandTable.flatMap(shardReply)
            guard let slotValues = try shard["slots"]?.array, let nodes = try shard["nodes"]?.array else {
                throw RedisError.unexpectedReply(expected: "a CLUSTER SHARDS entry", actual: shardReply.kindDescription)
            }
            var ranges = [ClosedRange<Int>]()
            var index = 0
            while index + 1 < slotValues.count {
                let start = try slotValues[index].int, end = try slotValues[index + 1].int
                if start <= end { ranges.append(start...end) }
                index += 2
            }
            var primaries = [(ClusterNodeAddress, Bool)]()
            var replicas = [ClusterNodeAddress]()
            for nodeReply in nodes {
                let node = CommandTable.flatMap(nodeReply)
                guard let port = try? node["port"]?.int, port > 0 else { continue }
                var host = (try? node["endpoint"]?.string) ?? ""
                if host.isEmpty || host == "?" { host = (try? node["ip"]?.string) ?? "" }
                if host.isEmpty || host == "?" { host = askedHost }
                let address = ClusterNodeAddress(host: host, port: port)
                // "failed" is left out; "loading" is kept: Redis 7.0 reports a replica whose replication
                // offset is still 0 (no write since it synced) as loading, and a replica really loading
                // answers -LOADING, which the client retries.
                let health = (try? node["health"]?.string) ?? "online"
                let online = health != "failed" && health != "fail"
                switch (try? node["role"]?.string) ?? "" {
                case "master": primaries.append((address, online))
                default: if online { replicas.append(address) }
                }
            }
            guard !ranges.isEmpty else {
                withoutSlots += primaries.filter(\.1).map(\.0) + replicas
                continue
            }
            guard let primary = primaries.first(where: { $0.1 })?.0 ?? primaries.first?.0 else { continue }
            shards.append(ClusterShard(slotRanges: ranges, primary: primary, replicas: replicas))
        }
        return ClusterTopology(shards: shards, nodesWithoutSlots: withoutSlots)
    }

    /// Parses a `CLUSTER SLOTS` reply (the fallback before Redis 7): `[start, end, [host, port, id],
    /// replicas…]` per range; ranges of one primary are merged into one shard. An empty or `?` host is
    /// `askedHost`.
    ///
    /// - Throws: ``RedisError/unexpectedReply(expected:actual:)`` when the reply has another shape.
    static func parse(slotsReply reply: RedisReply, askedHost: String) throws -> ClusterTopology {
        var byPrimary = [ClusterNodeAddress: (ranges: [ClosedRange<Int>], replicas: Set<ClusterNodeAddress>)]()
        var order = [ClusterNodeAddress]()
        func address(_ reply: RedisReply) throws -> ClusterNodeAddress {
            let fields = try reply.array
            guard fields.count >= 2 else {
                throw RedisError.unexpectedReply(expected: "a CLUSTER SLOTS node", actual: reply.kindDescription)
            }
            var host = try fields[0].string
            if host.isEmpty || host == "?" { host = askedHost }
            return ClusterNodeAddress(host: host, port: try fields[1].int)
        }
        for rangeReply in try reply.array {
            let fields = try rangeReply.array
            guard fields.count >= 3 else {
                throw RedisError.unexpectedReply(expected: "a CLUSTER SLOTS range", actual: rangeReply.kindDescription)
            }
            let start = try fields[0].int, end = try fields[1].int
            let primary = try address(fields[2])
            if byPrimary[primary] == nil { order.append(primary) }
            byPrimary[primary, default: ([], [])].ranges.append(start...end)
            for replica in fields.dropFirst(3) { byPrimary[primary]?.replicas.insert(try address(replica)) }
        }
        return ClusterTopology(
            shards: order.map { ClusterShard(slotRanges: byPrimary[$0]!.ranges, primary: $0, replicas: Array(byPrimary[$0]!.replicas)) })
    }

    // MARK: Consensus

    /// The view most of `views` share (they come from different nodes, in the order they answered):
    /// the most votes wins; a tie goes to the view covering more slots, then to the first answer.
    /// `nil` when `views` is empty.
    static func elect(_ views: [ClusterTopology]) -> ClusterTopology? {
        var votes = [ClusterTopology: (count: Int, first: Int)]()
        for (position, view) in views.enumerated() {
            votes[view, default: (0, position)].count += 1
        }
        return votes.max { a, b in
            if a.value.count != b.value.count { return a.value.count < b.value.count }
            if a.key.coveredSlots != b.key.coveredSlots { return a.key.coveredSlots < b.key.coveredSlots }
            return a.value.first > b.value.first
        }?.key
    }
}
