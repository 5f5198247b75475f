import ConnPoolRedis

/// How a command's keys are found in its arguments, from the server's `COMMAND` reply (Redis 7 key
/// specifications), so that every command the server knows routes by its keys, not only a hand-made list.
struct CommandKeySpec: Sendable, Hashable {
    /// Where the search for the first key starts.
    enum BeginSearch: Sendable, Hashable {
        /// The first key is at this argument index (0 is the command name).
        case index(Int)
        /// The first key follows this keyword, searched from `startFrom` (backwards from the end when negative).
        case keyword(String, startFrom: Int)
        /// The server cannot describe it: ask it with `COMMAND GETKEYS`.
        case unknown
    }

    /// How the keys are found from the first one.
    enum FindKeys: Sendable, Hashable {
        /// Keys from the first to `lastKey` (relative to the first; negative counts from the end), every
        /// `keyStep` arguments; with a `limit` above 1 and `lastKey` -1, only the first 1/limit of the rest.
        case range(lastKey: Int, keyStep: Int, limit: Int)
        /// The number of keys is the argument at `keyNumIndex` (relative to the first); the keys start at
        /// `firstKey` (relative) every `keyStep`.
        case keyNum(keyNumIndex: Int, firstKey: Int, keyStep: Int)
        /// The server cannot describe it: ask it with `COMMAND GETKEYS`.
        case unknown
    }

    var begin: BeginSearch
    var find: FindKeys
    /// The spec may miss keys (the `INCOMPLETE` flag): ask the server.
    var incomplete: Bool

    var needsServer: Bool {
        if incomplete { return true }
        if case .unknown = begin { return true }
        if case .unknown = find { return true }
        return false
    }
}

/// Where the server says a keyless command goes, from its `request_policy` tip.
enum RequestPolicy: Sendable, Hashable {
    /// By its keys; a keyless command to any one primary.
    case `default`
    /// To every primary (`all_shards`: `DBSIZE`, `FLUSHALL`, `KEYS`, `SCRIPT EXISTS`, …).
    case allShards
    /// To every node, replicas included (`all_nodes`: `SCRIPT LOAD`, `CONFIG SET`, …).
    case allNodes
    /// Keys split by slot (`multi_shard`: `MGET`, `MSET`, `DEL`, …); through ``RedisClusterClient/command(_:)``
    /// all keys must share a slot, the client's multi-key forms split them.
    case multiShard
    /// The command needs special handling (`SCAN`: use ``RedisClusterClient/scan(match:count:type:)``).
    case special
}

/// How the replies of a command sent to several nodes are merged, from its `response_policy` tip.
enum ResponsePolicy: Sendable, Hashable {
    /// Arrays are concatenated; otherwise the first non-nil reply.
    case `default`
    /// The first reply that is not an error.
    case oneSucceeded
    /// The first reply when none is an error, else the first error.
    case allSucceeded
    /// Integers: 1 only when all are 1 (arrays element-wise).
    case logicalAnd
    /// Integers: 1 when any is 1 (arrays element-wise).
    case logicalOr
    /// The smallest integer.
    case minimum
    /// The largest integer.
    case maximum
    /// The sum of the integers (`DBSIZE`).
    case sum
    /// No generic merge: the first reply.
    case special
}

/// What the server's `COMMAND` reply says about one command (or one subcommand, `object|encoding`).
struct CommandInfo: Sendable {
    /// The server's name, lowercase (`get`, `object|encoding`).
    var name: String
    /// The name for messages, uppercase with a space before a subcommand (`OBJECT ENCODING`).
    var displayName: String
    var isReadOnly: Bool
    var keySpecs: [CommandKeySpec]
    var requestPolicy: RequestPolicy
    var responsePolicy: ResponsePolicy
    /// Subcommands by their lowercase name (`encoding` for `OBJECT ENCODING`).
    var subcommands: [String: CommandInfo]
}

/// The key positions of every command the cluster knows, parsed once from `COMMAND`.
struct CommandTable: Sendable {
    /// Commands by lowercase and uppercase name (the two common spellings hit without lowercasing).
    private var commands: [String: CommandInfo] = [:]

    /// The number of top-level commands known.
    private(set) var count = 0

    init() {}

    /// Parses the reply of `COMMAND` (RESP2).
    ///
    /// - Throws: ``RedisError/unexpectedReply(expected:actual:)`` when it is not an array of command entries.
    init(commandReply reply: RedisReply) throws {
        for entry in try reply.array {
            guard let info = Self.parseEntry(entry) else { continue }
            commands[info.name] = info
            commands[info.name.uppercased()] = info
            count += 1
        }
        if count == 0 {
            throw RedisError.unexpectedReply(expected: "the COMMAND table", actual: reply.kindDescription)
        }
    }

    /// The info of the command `arguments` run, its subcommand's when it has subcommands; `nil` for a
    /// command the server did not list (a module loaded later, a typo: it goes to any primary, and the
    /// server's reply, `MOVED` included, decides).
    func info(for arguments: [RedisArgument]) -> CommandInfo? {
        guard let first = arguments.first else { return nil }
        let name = Self.text(first)
        guard let info = commands[name] ?? commands[name.lowercased()] else { return nil }
        if !info.subcommands.isEmpty, arguments.count >= 2 {
            return info.subcommands[Self.text(arguments[1]).lowercased()] ?? info
        }
        return info
    }

    static func text(_ argument: RedisArgument) -> String {
        switch argument {
        case .string(let string): return string
        case .bytes(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .integer(let value): return String(value)
        }
    }

    // MARK: Key extraction

    /// The result of looking for a command's keys.
    enum Keys {
        /// The argument indices of the keys (possibly none: a keyless command).
        case positions([Int])
        /// The specs cannot tell (unknown or incomplete): ask the server with `COMMAND GETKEYS`.
        case askServer
    }

    /// The indices of the keys in `arguments` by `info`'s key specs (as the server's
    /// `getKeysUsingKeySpecs` does). Out-of-range positions are dropped (the server then reports its
    /// own arity error).
    static func keyPositions(_ arguments: [RedisArgument], info: CommandInfo) -> Keys {
        var positions = [Int]()
        let complete = forEachKeyPosition(arguments, info: info) { positions.append($0) }
        return complete ? .positions(positions) : .askServer
    }

    /// Calls `body` with the index of each key in `arguments`, in the specs' order, without allocating.
    ///
    /// - Returns: `false` when the specs cannot tell (unknown or incomplete): ask the server with
    ///   `COMMAND GETKEYS` (`body` may have been called for some keys already).
    @inline(__always)
    static func forEachKeyPosition<E: Error>(
        _ arguments: [RedisArgument], info: CommandInfo, _ body: (Int) throws(E) -> Void
    ) throws(E) -> Bool {
        let argc = arguments.count
        for spec in info.keySpecs {
            if spec.needsServer { return false }
            var first: Int
            switch spec.begin {
            case .index(let index):
                first = index
            case .keyword(let keyword, let startFrom):
                let start = startFrom > 0 ? startFrom : argc + startFrom
                let end = startFrom > 0 ? argc - 1 : 0
                var found: Int?
                var index = start
                while index >= 1 && index < argc {
                    if text(arguments[index]).caseInsensitiveEquals(keyword) {
                        found = index + 1
                        break
                    }
                    if index == end { break }
                    index += start <= end ? 1 : -1
                }
                guard let found else { continue }
                first = found
            case .unknown:
                return false
            }
            var last: Int
            var step: Int
            switch spec.find {
            case .range(let lastKey, let keyStep, let limit):
                step = keyStep
                if lastKey >= 0 {
                    last = first + lastKey
                } else if limit <= 1 {
                    last = argc + lastKey
                } else {
                    last = first + ((argc - first) / limit + lastKey)
                }
            case .keyNum(let keyNumIndex, let firstKey, let keyStep):
                step = keyStep
                let numberIndex = first + keyNumIndex
                guard numberIndex < argc, let number = Int(text(arguments[numberIndex])), number >= 0 else { continue }
                first += firstKey
                last = first + (number - 1) * keyStep
            case .unknown:
                return false
            }
            guard step > 0 else { continue }
            var index = first
            while index <= last && index < argc {
                if index >= 1 { try body(index) }
                index += step
            }
        }
        return true
    }

    // MARK: Parsing

    private static func parseEntry(_ entry: RedisReply) -> CommandInfo? {
        guard case .array(let fields) = entry, fields.count >= 6, let name = try? fields[0].string else { return nil }
        let flags = Set(((try? fields[2].array) ?? []).compactMap { try? $0.string.lowercased() })
        var requestPolicy = RequestPolicy.default
        var responsePolicy = ResponsePolicy.default
        if fields.count > 7 {
            for tip in (try? fields[7].array) ?? [] {
                guard let tip = try? tip.string.lowercased() else { continue }
                switch tip {
                case "request_policy:all_shards": requestPolicy = .allShards
                case "request_policy:all_nodes": requestPolicy = .allNodes
                case "request_policy:multi_shard": requestPolicy = .multiShard
                case "request_policy:special": requestPolicy = .special
                case "response_policy:one_succeeded": responsePolicy = .oneSucceeded
                case "response_policy:all_succeeded": responsePolicy = .allSucceeded
                case "response_policy:agg_logical_and": responsePolicy = .logicalAnd
                case "response_policy:agg_logical_or": responsePolicy = .logicalOr
                case "response_policy:agg_min": responsePolicy = .minimum
                case "response_policy:agg_max": responsePolicy = .maximum
                case "response_policy:agg_sum": responsePolicy = .sum
                case "response_policy:special": responsePolicy = .special
                default: break
                }
            }
        }
        var specs = [CommandKeySpec]()
        if fields.count > 8 {
            for spec in (try? fields[8].array) ?? [] {
                specs.append(parseKeySpec(spec))
            }
        } else {
            // A server before Redis 7: the legacy first/last/step triple.
            if let first = try? fields[3].int, let last = try? fields[4].int, let step = try? fields[5].int, first > 0 {
                specs.append(
                    CommandKeySpec(
                        begin: .index(first), find: .range(lastKey: last < 0 ? last : last - first, keyStep: step, limit: 0),
                        incomplete: flags.contains("movablekeys")))
            }
        }
        var subcommands = [String: CommandInfo]()
        if fields.count > 9 {
            for sub in (try? fields[9].array) ?? [] {
                guard let info = parseEntry(sub) else { continue }
                let subName = info.name.split(separator: "|").last.map(String.init) ?? info.name
                subcommands[subName.lowercased()] = info
            }
        }
        return CommandInfo(
            name: name.lowercased(), displayName: name.uppercased().replacing("|", with: " "), isReadOnly: flags.contains("readonly"), keySpecs: specs,
            requestPolicy: requestPolicy, responsePolicy: responsePolicy, subcommands: subcommands)
    }

    private static func parseKeySpec(_ reply: RedisReply) -> CommandKeySpec {
        let map = flatMap(reply)
        let flags = Set(((try? map["flags"]?.array) ?? []).compactMap { try? $0.string.uppercased() })
        var begin = CommandKeySpec.BeginSearch.unknown
        if let search = map["begin_search"].map(flatMap), let type = try? search["type"]?.string {
            let spec = search["spec"].map(flatMap) ?? [:]
            switch type {
            case "index":
                if let index = try? spec["index"]?.int { begin = .index(index) }
            case "keyword":
                if let keyword = try? spec["keyword"]?.string, let startFrom = try? spec["startfrom"]?.int {
                    begin = .keyword(keyword, startFrom: startFrom)
                }
            default:
                break
            }
        }
        var find = CommandKeySpec.FindKeys.unknown
        if let keys = map["find_keys"].map(flatMap), let type = try? keys["type"]?.string {
            let spec = keys["spec"].map(flatMap) ?? [:]
            switch type {
            case "range":
                if let lastKey = try? spec["lastkey"]?.int, let keyStep = try? spec["keystep"]?.int,
                    let limit = try? spec["limit"]?.int
                {
                    find = .range(lastKey: lastKey, keyStep: keyStep, limit: limit)
                }
            case "keynum":
                if let keyNumIndex = try? spec["keynumidx"]?.int, let firstKey = try? spec["firstkey"]?.int,
                    let keyStep = try? spec["keystep"]?.int
                {
                    find = .keyNum(keyNumIndex: keyNumIndex, firstKey: firstKey, keyStep: keyStep)
                }
            default:
                break
            }
        }
        return CommandKeySpec(begin: begin, find: find, incomplete: flags.contains("INCOMPLETE"))
    }

    /// A RESP2 flat map (`[key, value, key, value, …]`) as a dictionary.
    static func flatMap(_ reply: RedisReply) -> [String: RedisReply] {
        guard case .array(let elements) = reply else { return [:] }
        var map = [String: RedisReply]()
        var index = 0
        while index + 1 < elements.count {
            if let key = try? elements[index].string { map[key] = elements[index + 1] }
            index += 2
        }
        return map
    }
}

extension String {
    /// ASCII case-insensitive equality (command names and keywords are ASCII).
    func caseInsensitiveEquals(_ other: String) -> Bool {
        let a = utf8, b = other.utf8
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) where x != y {
            let lx = x >= 65 && x <= 90 ? x + 32 : x
            let ly = y >= 65 && y <= 90 ? y + 32 : y
            if lx != ly { return false }
        }
        return true
    }
}
