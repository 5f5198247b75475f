// Starts a throwaway Redis Cluster on loopback: N `redis-server --cluster-enabled yes` processes (each a
// `RedisServerProcess` on a free port, with its cluster bus on a second free port), joined with
// `redis-cli --cluster create`. Used by the cluster client's tests, redis-bench and chaos. Talks to the
// nodes with a tiny RESP client of its own (this target does not depend on ConnPoolRedis).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ConnPool

/// Why a ``RedisClusterProcess`` could not be started, checked or changed.
///
/// The text never repeats extra server arguments (they may hold a password).
public enum RedisClusterLauncherError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No `redis-cli` executable was found next to `redis-server`, in `PATH` or at `REDIS_CLI_PATH`.
    case redisCLINotInstalled(searched: [String])
    /// `redis-cli --cluster …` exited with a failure; `output` is the end of what it printed.
    case redisCLIFailed(arguments: String, status: String, output: String)
    /// The cluster did not become healthy (every node `cluster_state:ok`, all slots assigned, every
    /// node's view of the slots identical, every replica's link up) in time; `detail` says what was
    /// still wrong.
    case notHealthy(after: Duration, detail: String)
    /// A command sent to a node failed (a connection error or an error reply).
    case commandFailed(command: String, port: Int, message: String)
    /// No node of the cluster matched (for example no primary owns the slot).
    case nodeNotFound(String)
    /// A system call needed to run `redis-cli` failed.
    case systemError(operation: String, errno: Int32)

    /// A readable explanation with what to do.
    public var description: String {
        switch self {
        case .redisCLINotInstalled(let searched):
            return "redis-cli is not installed (looked in \(searched.joined(separator: ":"))): "
                + "install it with `apt-get install redis-tools`, or set REDIS_CLI_PATH"
        case .redisCLIFailed(let arguments, let status, let output):
            return "redis-cli \(arguments) failed (\(status)); output tail:\n\(output)"
        case .notHealthy(let after, let detail):
            return "the Redis cluster did not become healthy within \(after): \(detail)"
        case .commandFailed(let command, let port, let message):
            return "\(command) on 127.0.0.1:\(port) failed: \(message)"
        case .nodeNotFound(let what):
            return "no cluster node found: \(what)"
        case .systemError(let operation, let errno):
            return "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }
}

/// A reply read by the launcher's small RESP client (``RedisClusterProcess/command(_:on:timeout:)``).
public enum RedisClusterProcessReply: Sendable, Hashable {
    /// `+…`
    case status(String)
    /// `-…`
    case error(String)
    /// `:…`
    case integer(Int)
    /// `$…` (as UTF-8 text)
    case bulk(String)
    /// `$-1` or `*-1`
    case null
    /// `*…`
    case array([RedisClusterProcessReply])

    /// The text of a status or bulk reply, the number of an integer reply, else `""`.
    public var text: String {
        switch self {
        case .status(let text), .bulk(let text), .error(let text): return text
        case .integer(let value): return String(value)
        default: return ""
        }
    }
}

/// A throwaway Redis Cluster on `127.0.0.1`: `primaries × (1 + replicasPerPrimary)` nodes, each a
/// ``RedisServerProcess`` started with `--cluster-enabled yes`, a short `cluster-node-timeout` and its
/// cluster bus on a free port of its own (`--cluster-port`), joined with
/// `redis-cli --cluster create … --cluster-replicas R --cluster-yes`.
///
/// ``start(primaries:replicasPerPrimary:nodeTimeout:startTimeout:extraArguments:)`` returns once the
/// cluster is healthy (see ``waitUntilHealthy(timeout:)``). Nodes can then be killed
/// (`node.kill(signal: SIGKILL)`), frozen (`SIGSTOP`), restarted (`node.restart()`: same port, same
/// `nodes.conf`, so the node rejoins), failed over (``failover(to:force:)``), added (``addNode(replicaOf:)``),
/// removed (``removeNode(_:)``) and slots migrated (``migrateSlot(_:to:batchSize:)``).
///
/// Blocking methods wait on the calling thread (for seconds); async twins run them on a thread of their own.
/// All members are safe to call from any thread.
public final class RedisClusterProcess: Sendable, CustomStringConvertible {
    /// The node timeout every node was started with (`cluster-node-timeout`).
    public let nodeTimeout: Duration
    private let extraArguments: [String]
    private let members: LockedValue<[RedisServerProcess]>

    /// The current members (the nodes started, minus those removed with ``removeNode(_:)``), in start order.
    public var nodes: [RedisServerProcess] { members.withLock { $0 } }

    /// `redis://127.0.0.1:<port>` of every member: seeds for a cluster client.
    public var seedURLs: [String] { nodes.map(\.url) }

    /// `RedisClusterProcess(ports: […])`.
    public var description: String { "RedisClusterProcess(ports: \(nodes.map(\.port)))" }

    private init(nodeTimeout: Duration, extraArguments: [String], nodes: [RedisServerProcess]) {
        self.nodeTimeout = nodeTimeout
        self.extraArguments = extraArguments
        self.members = LockedValue(nodes)
    }

    deinit {
        for node in members.withLock({ $0 }) { node.stop(timeout: .seconds(2)) }
    }

    // MARK: Starting and stopping

    /// Starts the nodes, joins them into a cluster and waits until it is healthy.
    ///
    /// - Parameters:
    ///   - primaries: the number of primaries (at least 3: `redis-cli --cluster create` refuses fewer).
    ///   - replicasPerPrimary: replicas of each primary.
    ///   - nodeTimeout: `cluster-node-timeout` (a failed primary's replica is promoted after about this
    ///     long, plus an election of up to a second).
    ///   - startTimeout: how long to wait for the cluster to become healthy.
    ///   - extraArguments: more `redis-server` arguments for every node (never quoted in errors).
    /// - Throws: ``RedisServerLauncherError`` when a server cannot start; ``RedisClusterLauncherError``
    ///   when `redis-cli` is missing or fails, or the cluster does not become healthy in time. Every node
    ///   started is stopped before it throws.
    /// - Precondition: `primaries >= 3`, `replicasPerPrimary >= 0`.
    public static func start(
        primaries: Int = 3, replicasPerPrimary: Int = 1, nodeTimeout: Duration = .seconds(1),
        startTimeout: Duration = .seconds(30), extraArguments: [String] = []
    ) throws -> RedisClusterProcess {
        precondition(primaries >= 3, "redis-cli --cluster create needs at least 3 primaries")
        precondition(replicasPerPrimary >= 0)
        var started = [RedisServerProcess]()
        do {
            for _ in 0..<(primaries * (1 + replicasPerPrimary)) {
                started.append(try startNode(nodeTimeout: nodeTimeout, extraArguments: extraArguments))
            }
            let cluster = RedisClusterProcess(nodeTimeout: nodeTimeout, extraArguments: extraArguments, nodes: started)
            try runCLI(
                ["--cluster", "create"] + started.map { "127.0.0.1:\($0.port)" }
                    + ["--cluster-replicas", String(replicasPerPrimary), "--cluster-yes"])
            try cluster.waitUntilHealthy(timeout: startTimeout)
            return cluster
        } catch {
            for node in started { node.stop(timeout: .seconds(2)) }
            throw error
        }
    }

    /// Stops every member (``RedisServerProcess/stop(timeout:)``). Idempotent.
    public func stop() {
        for node in members.withLock({ $0 }) { node.stop(timeout: .seconds(2)) }
    }

    /// Starts one empty cluster-enabled node on free ports (not yet part of any cluster).
    private static func startNode(nodeTimeout: Duration, extraArguments: [String]) throws -> RedisServerProcess {
        var lastError: any Error = RedisServerLauncherError.portCollision(attempts: 0)
        for _ in 0..<5 {
            let busPort = try freeBusPort()
            do {
                return try RedisServerProcess.start(
                    extraArguments: [
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", String(milliseconds(nodeTimeout)),
                        "--cluster-port", String(busPort),
                    ] + extraArguments)
            } catch RedisServerLauncherError.portCollision(let attempts) {
                // The bus port was taken between picking and binding it (the server reports it as its
                // port in use): pick another.
                lastError = RedisServerLauncherError.portCollision(attempts: attempts)
            }
        }
        throw lastError
    }

    // MARK: Health

    /// Waits until every member says `cluster_state:ok` with all 16,384 slots assigned and knows every
    /// member, every member's view of who serves which slots (`CLUSTER NODES`: ids, roles, primaries,
    /// slots) is the same, and every replica's replication link is up. Polls every 50 ms.
    ///
    /// - Throws: ``RedisClusterLauncherError/notHealthy(after:detail:)`` with the last thing wrong.
    public func waitUntilHealthy(timeout: Duration = .seconds(30)) throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var detail = "not checked"
        while true {
            if let problem = healthProblem() { detail = problem } else { return }
            if ContinuousClock.now >= deadline { throw RedisClusterLauncherError.notHealthy(after: timeout, detail: detail) }
            usleep(50_000)
        }
    }

    /// What is wrong with the cluster now, or `nil` when it is healthy.
    private func healthProblem() -> String? {
        let all = nodes
        var views = Set<String>()
        for node in all {
            guard node.isRunning else { return "node \(node.port) is not running" }
            let info: String
            let clusterNodes: String
            do {
                info = try command(["CLUSTER", "INFO"], on: node).text
                clusterNodes = try command(["CLUSTER", "NODES"], on: node).text
            } catch {
                return "\(error)"
            }
            if !info.contains("cluster_state:ok") { return "node \(node.port): cluster_state is not ok" }
            if !info.contains("cluster_slots_assigned:16384") { return "node \(node.port): not every slot is assigned" }
            let known = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cluster_known_nodes:") } ?? "?"
            if known != "cluster_known_nodes:\(all.count)" {
                return "node \(node.port) does not know every node yet (\(known), \(all.count) members)"
            }
            let lines = clusterNodes.split(separator: "\n").map { line -> String in
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                guard fields.count >= 8 else { return String(line) }
                let flags = fields[2].split(separator: ",")
                let role = flags.contains("master") ? "master" : "slave"
                let failing = flags.contains("fail") || flags.contains("fail?") ? " failing" : ""
                return ([fields[0], Substring(role), fields[3]] + fields[8...]).joined(separator: " ") + failing
            }
            let view = lines.sorted().joined(separator: "\n")
            if view.contains(" failing") { return "node \(node.port) sees a failing node" }
            views.insert(view)
            if views.count > 1 { return "the nodes do not agree on the slots yet" }
            if clusterNodes.contains("myself,slave") {
                guard let replication = try? command(["INFO", "replication"], on: node).text else {
                    return "node \(node.port): INFO replication failed"
                }
                if !replication.contains("master_link_status:up") { return "replica \(node.port): link not up yet" }
            }
        }
        return nil
    }

    // MARK: Inspection

    /// The node id of `node` (`CLUSTER MYID`).
    ///
    /// - Throws: ``RedisClusterLauncherError/commandFailed(command:port:message:)``.
    public func nodeID(of node: RedisServerProcess) throws -> String {
        try command(["CLUSTER", "MYID"], on: node).text
    }

    /// The members that are primaries now (by their own `ROLE`), in start order. Unreachable nodes are
    /// left out.
    public func primaries() -> [RedisServerProcess] {
        nodes.filter { node in
            guard case .array(let role)? = try? command(["ROLE"], on: node, timeout: .milliseconds(500)) else {
                return false
            }
            return role.first?.text == "master"
        }
    }

    /// The member that owns `slot` according to the first reachable member's `CLUSTER SLOTS`.
    ///
    /// - Throws: ``RedisClusterLauncherError/nodeNotFound(_:)`` when no reachable member knows an owner.
    public func owner(ofSlot slot: Int) throws -> RedisServerProcess {
        for node in nodes {
            guard case .array(let ranges)? = try? command(["CLUSTER", "SLOTS"], on: node, timeout: .milliseconds(500)) else {
                continue
            }
            for case .array(let range) in ranges where range.count >= 3 {
                guard case .integer(let start) = range[0], case .integer(let end) = range[1],
                    start <= slot, slot <= end, case .array(let primary) = range[2], primary.count >= 2,
                    case .integer(let port) = primary[1]
                else { continue }
                if let member = nodes.first(where: { $0.port == port }) { return member }
            }
        }
        throw RedisClusterLauncherError.nodeNotFound("no reachable member knows the owner of slot \(slot)")
    }

    /// The members that replicate `primary` (by their own `ROLE`).
    public func replicas(of primary: RedisServerProcess) -> [RedisServerProcess] {
        nodes.filter { node in
            guard case .array(let role)? = try? command(["ROLE"], on: node, timeout: .milliseconds(500)) else {
                return false
            }
            return role.first?.text == "slave" && role.count >= 3 && role[2] == .integer(primary.port)
        }
    }

    // MARK: Changes

    /// Moves `slot` to `destination` the way `redis-cli --cluster reshard` does: `CLUSTER SETSLOT
    /// IMPORTING` on the destination, `MIGRATING` on the owner, `MIGRATE … KEYS` in batches of
    /// `batchSize` until the slot is empty, then `CLUSTER SETSLOT NODE` on the destination, the old owner
    /// and every other primary. While it runs, clients see `ASK` for keys already moved; afterwards `MOVED`.
    ///
    /// - Throws: ``RedisClusterLauncherError`` when a step fails (the slot may then stay half-migrated).
    public func migrateSlot(_ slot: Int, to destination: RedisServerProcess, batchSize: Int = 50) throws {
        let source = try owner(ofSlot: slot)
        if source.port == destination.port { return }
        let sourceID = try nodeID(of: source)
        let destinationID = try nodeID(of: destination)
        try expectOK(["CLUSTER", "SETSLOT", String(slot), "IMPORTING", sourceID], on: destination)
        try expectOK(["CLUSTER", "SETSLOT", String(slot), "MIGRATING", destinationID], on: source)
        while true {
            let keys = try command(["CLUSTER", "GETKEYSINSLOT", String(slot), String(batchSize)], on: source)
            guard case .array(let names) = keys, !names.isEmpty else { break }
            let reply = try command(
                ["MIGRATE", "127.0.0.1", String(destination.port), "", "0", "5000", "KEYS"] + names.map(\.text),
                on: source, timeout: .seconds(10))
            if case .error(let message) = reply {
                throw RedisClusterLauncherError.commandFailed(command: "MIGRATE", port: source.port, message: message)
            }
        }
        try expectOK(["CLUSTER", "SETSLOT", String(slot), "NODE", destinationID], on: destination)
        try expectOK(["CLUSTER", "SETSLOT", String(slot), "NODE", destinationID], on: source)
        for primary in primaries() where primary.port != source.port && primary.port != destination.port {
            _ = try? command(["CLUSTER", "SETSLOT", String(slot), "NODE", destinationID], on: primary)
        }
    }

    /// Sends `CLUSTER FAILOVER` (or `CLUSTER FAILOVER FORCE`) to `replica`: a manual failover, where the
    /// primary stops its clients until the replica has caught up, so no acknowledged write is lost.
    /// Returns once `replica` says it is a primary.
    ///
    /// - Throws: ``RedisClusterLauncherError/commandFailed(command:port:message:)``, or
    ///   ``RedisClusterLauncherError/notHealthy(after:detail:)`` when it is not a primary within `timeout`.
    public func failover(to replica: RedisServerProcess, force: Bool = false, timeout: Duration = .seconds(10)) throws {
        try expectOK(["CLUSTER", "FAILOVER"] + (force ? ["FORCE"] : []), on: replica)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if case .array(let role)? = try? command(["ROLE"], on: replica), role.first?.text == "master" { return }
            usleep(20_000)
        }
        throw RedisClusterLauncherError.notHealthy(after: timeout, detail: "replica \(replica.port) was not promoted")
    }

    /// Starts a new node and joins it (`CLUSTER MEET`): as an empty primary (no slots: give it some with
    /// ``migrateSlot(_:to:batchSize:)``), or as a replica of `primary`. Returns once the cluster is
    /// healthy again with it.
    ///
    /// - Throws: what starting a server throws, or ``RedisClusterLauncherError``.
    public func addNode(replicaOf primary: RedisServerProcess? = nil, timeout: Duration = .seconds(30)) throws
        -> RedisServerProcess
    {
        let node = try Self.startNode(nodeTimeout: nodeTimeout, extraArguments: extraArguments)
        do {
            guard let existing = nodes.first(where: { $0.isRunning }) else {
                throw RedisClusterLauncherError.nodeNotFound("no running member to meet")
            }
            try expectOK(["CLUSTER", "MEET", "127.0.0.1", String(existing.port), String(try busPort(of: existing))], on: node)
            members.withLock { $0.append(node) }
            if let primary {
                let primaryID = try nodeID(of: primary)
                // REPLICATE fails until the new node has learnt of the primary through gossip.
                let deadline = ContinuousClock.now.advanced(by: timeout)
                while true {
                    let reply = try command(["CLUSTER", "REPLICATE", primaryID], on: node)
                    if reply == .status("OK") { break }
                    if ContinuousClock.now >= deadline {
                        throw RedisClusterLauncherError.commandFailed(
                            command: "CLUSTER REPLICATE", port: node.port, message: reply.text)
                    }
                    usleep(50_000)
                }
            }
            try waitUntilHealthy(timeout: timeout)
            return node
        } catch {
            members.withLock { $0.removeAll { $0 === node } }
            node.stop(timeout: .seconds(2))
            throw error
        }
    }

    /// Removes `node` from the cluster: `CLUSTER FORGET` on every other member (repeated until none knows
    /// it: gossip may bring it back for a moment), then stops it. A primary must own no slots any more
    /// (move them with ``migrateSlot(_:to:batchSize:)`` first).
    ///
    /// - Throws: ``RedisClusterLauncherError`` when a member refuses to forget it, or it still owns slots.
    public func removeNode(_ node: RedisServerProcess, timeout: Duration = .seconds(30)) throws {
        let id = try nodeID(of: node)
        members.withLock { $0.removeAll { $0 === node } }
        // Stop first, so that the node itself cannot gossip itself back in.
        node.stop(timeout: .seconds(2))
        let deadline = ContinuousClock.now.advanced(by: timeout)
        for member in nodes {
            while true {
                let reply = try command(["CLUSTER", "FORGET", id], on: member)
                if reply == .status("OK") || reply.text.contains("Unknown node") { break }
                if ContinuousClock.now >= deadline {
                    throw RedisClusterLauncherError.commandFailed(command: "CLUSTER FORGET", port: member.port, message: reply.text)
                }
                usleep(50_000)
            }
        }
        try waitUntilHealthy(timeout: max(.zero, deadline - ContinuousClock.now))
    }

    // MARK: Talking to nodes

    /// Sends one command to `node` over a fresh connection and returns its reply (error replies are
    /// returned, not thrown).
    ///
    /// - Throws: ``RedisClusterLauncherError/commandFailed(command:port:message:)`` when the node cannot be
    ///   reached or does not answer within `timeout`.
    public func command(
        _ arguments: [String], on node: RedisServerProcess, timeout: Duration = .seconds(2)
    ) throws -> RedisClusterProcessReply {
        try MiniRESPClient.send(arguments, port: node.port, timeout: timeout)
    }

    private func expectOK(_ arguments: [String], on node: RedisServerProcess) throws {
        let reply = try command(arguments, on: node)
        guard reply == .status("OK") else {
            throw RedisClusterLauncherError.commandFailed(
                command: arguments.prefix(2).joined(separator: " "), port: node.port, message: reply.text)
        }
    }

    private func busPort(of node: RedisServerProcess) throws -> Int {
        let reply = try command(["CONFIG", "GET", "cluster-port"], on: node)
        guard case .array(let pair) = reply, pair.count == 2, let port = Int(pair[1].text), port > 0 else {
            return node.port + 10_000
        }
        return port
    }

    // MARK: Plumbing

    private static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// A free loopback port for a node's cluster bus (bound, read and released, like the server's own).
    private static func freeBusPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RedisClusterLauncherError.systemError(operation: "socket", errno: errno) }
        defer { close(fd) }
        var address = MiniRESPClient.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw RedisClusterLauncherError.systemError(operation: "bind", errno: errno) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw RedisClusterLauncherError.systemError(operation: "getsockname", errno: errno) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private static func findCLI() throws -> String {
        if let override = getenv("REDIS_CLI_PATH").map({ String(cString: $0) }), !override.isEmpty {
            if access(override, X_OK) == 0 { return override }
            throw RedisClusterLauncherError.redisCLINotInstalled(searched: [override])
        }
        var directories = [String]()
        if let server = getenv("REDIS_SERVER_PATH").map({ String(cString: $0) }), let slash = server.lastIndex(of: "/") {
            directories.append(String(server[..<slash]))
        }
        directories += getenv("PATH").map { String(cString: $0).split(separator: ":").map(String.init) } ?? []
        directories += ["/usr/bin", "/usr/local/bin", "/bin"]
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/redis-cli"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw RedisClusterLauncherError.redisCLINotInstalled(searched: directories)
    }

    /// Runs `redis-cli` with `arguments` (never secrets: the cluster commands take none here), its output
    /// in a temporary file, and waits for it.
    static func runCLI(_ arguments: [String]) throws {
        let executable = try findCLI()
        var template = Array(((getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp") + "/connpool-cli-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw RedisClusterLauncherError.systemError(operation: "mkstemp", errno: errno) }
        let outputPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        close(fd)
        defer { unlink(outputPath) }

        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, outputPath, O_WRONLY | O_TRUNC, 0)
        posix_spawn_file_actions_adddup2(&fileActions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &fileActions, nil, argv, environ)
        guard result == 0 else { throw RedisClusterLauncherError.systemError(operation: "posix_spawn redis-cli", errno: result) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7f
        let code = (status >> 8) & 0xff
        if signal != 0 || code != 0 {
            var output = [UInt8](repeating: 0, count: 4096)
            let outFD = open(outputPath, O_RDONLY | O_CLOEXEC)
            var count = 0
            if outFD >= 0 {
                let size = lseek(outFD, 0, SEEK_END)
                lseek(outFD, max(0, size - 4096), SEEK_SET)
                count = max(0, read(outFD, &output, output.count))
                close(outFD)
            }
            throw RedisClusterLauncherError.redisCLIFailed(
                arguments: arguments.prefix(2).joined(separator: " "),
                status: signal != 0 ? "killed by signal \(signal)" : "exit code \(code)",
                output: String(decoding: output[0..<count], as: UTF8.self))
        }
    }
}

// MARK: - Async forms

extension RedisClusterProcess {
    /// ``start(primaries:replicasPerPrimary:nodeTimeout:startTimeout:extraArguments:)`` on a thread of
    /// its own: the caller suspends, no cooperative thread blocks.
    public static func start(
        primaries: Int = 3, replicasPerPrimary: Int = 1, nodeTimeout: Duration = .seconds(1),
        startTimeout: Duration = .seconds(30), extraArguments: [String] = []
    ) async throws -> RedisClusterProcess {
        try await OwnThread.run {
            try start(
                primaries: primaries, replicasPerPrimary: replicasPerPrimary, nodeTimeout: nodeTimeout,
                startTimeout: startTimeout, extraArguments: extraArguments)
        }
    }

    /// ``stop()`` on a thread of its own.
    public func stop() async {
        await OwnThread.run { self.stop() }
    }

    /// ``waitUntilHealthy(timeout:)`` on a thread of its own.
    public func waitUntilHealthy(timeout: Duration = .seconds(30)) async throws {
        try await OwnThread.run { try self.waitUntilHealthy(timeout: timeout) }
    }

    /// ``migrateSlot(_:to:batchSize:)`` on a thread of its own.
    public func migrateSlot(_ slot: Int, to destination: RedisServerProcess, batchSize: Int = 50) async throws {
        try await OwnThread.run { try self.migrateSlot(slot, to: destination, batchSize: batchSize) }
    }

    /// ``failover(to:force:timeout:)`` on a thread of its own.
    public func failover(to replica: RedisServerProcess, force: Bool = false, timeout: Duration = .seconds(10)) async throws {
        try await OwnThread.run { try self.failover(to: replica, force: force, timeout: timeout) }
    }

    /// ``addNode(replicaOf:timeout:)`` on a thread of its own.
    public func addNode(replicaOf primary: RedisServerProcess? = nil, timeout: Duration = .seconds(30)) async throws
        -> RedisServerProcess
    {
        try await OwnThread.run { try self.addNode(replicaOf: primary, timeout: timeout) }
    }

    /// ``removeNode(_:timeout:)`` on a thread of its own.
    public func removeNode(_ node: RedisServerProcess, timeout: Duration = .seconds(30)) async throws {
        try await OwnThread.run { try self.removeNode(node, timeout: timeout) }
    }

    /// ``command(_:on:timeout:)`` on a thread of its own.
    public func command(
        _ arguments: [String], on node: RedisServerProcess, timeout: Duration = .seconds(2)
    ) async throws -> RedisClusterProcessReply {
        try await OwnThread.run { try self.command(arguments, on: node, timeout: timeout) }
    }
}

// MARK: - A small blocking RESP2 client

/// One command per connection, blocking with `poll()` and a deadline: enough for the launcher's
/// administration commands (never on a hot path).
enum MiniRESPClient {
    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        return address
    }

    static func send(_ arguments: [String], port: Int, timeout: Duration) throws -> RedisClusterProcessReply {
        let name = arguments.prefix(2).joined(separator: " ")
        func failure(_ message: String) -> RedisClusterLauncherError {
            .commandFailed(command: name, port: port, message: message)
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw failure("socket: errno \(errno)") }
        defer { close(fd) }
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw failure("connect: \(String(cString: strerror(errno)))") }
        var request = "*\(arguments.count)\r\n"
        for argument in arguments { request += "$\(argument.utf8.count)\r\n\(argument)\r\n" }
        var bytes = Array(request.utf8)
        while !bytes.isEmpty {
            let n = write(fd, bytes, bytes.count)
            guard n > 0 else { throw failure("write: \(String(cString: strerror(errno)))") }
            bytes.removeFirst(n)
        }
        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            var cursor = 0
            if let reply = parse(buffer, &cursor) { return reply }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw failure("no reply within \(timeout)") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let millis = Int32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
            let ready = poll(&pfd, 1, millis)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { throw failure("no reply within \(timeout)") }
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { throw failure(n == 0 ? "connection closed" : "read: \(String(cString: strerror(errno)))") }
            buffer += chunk[0..<n]
        }
    }

    /// Parses one reply at `cursor`; `nil` when `buffer` does not hold all of it yet.
    static func parse(_ buffer: [UInt8], _ cursor: inout Int) -> RedisClusterProcessReply? {
        guard cursor < buffer.count else { return nil }
        guard let lineEnd = lineEnd(buffer, from: cursor + 1) else { return nil }
        let type = buffer[cursor]
        let line = String(decoding: buffer[(cursor + 1)..<lineEnd], as: UTF8.self)
        let afterLine = lineEnd + 2
        switch type {
        case UInt8(ascii: "+"):
            cursor = afterLine
            return .status(line)
        case UInt8(ascii: "-"):
            cursor = afterLine
            return .error(line)
        case UInt8(ascii: ":"):
            cursor = afterLine
            return .integer(Int(line) ?? 0)
        case UInt8(ascii: "$"):
            let length = Int(line) ?? -1
            if length < 0 {
                cursor = afterLine
                return .null
            }
            guard buffer.count >= afterLine + length + 2 else { return nil }
            cursor = afterLine + length + 2
            return .bulk(String(decoding: buffer[afterLine..<(afterLine + length)], as: UTF8.self))
        case UInt8(ascii: "*"):
            let count = Int(line) ?? -1
            if count < 0 {
                cursor = afterLine
                return .null
            }
            var position = afterLine
            var elements = [RedisClusterProcessReply]()
            for _ in 0..<count {
                guard let element = parse(buffer, &position) else { return nil }
                elements.append(element)
            }
            cursor = position
            return .array(elements)
        default:
            cursor = buffer.count
            return .error("unparsable reply")
        }
    }

    private static func lineEnd(_ buffer: [UInt8], from start: Int) -> Int? {
        var index = start
        while index + 1 < buffer.count {
            if buffer[index] == 13 && buffer[index + 1] == 10 { return index }
            index += 1
        }
        return nil
    }
}
