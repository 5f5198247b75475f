import ConnPool
import ConnPoolBenchHarness
import ConnPoolRedis
import ConnPoolTCP

/// The request mixes redis-bench can run.
enum Workload: String, CaseIterable, Sendable {
    case ping, get, set, incr, mixed

    /// The `redis-benchmark -t` test that measures the same command (nil: no counterpart).
    func redisBenchmarkTest(backend: Backend) -> String? {
        switch self {
        case .ping: return backend == .tcp ? "ping_inline" : "ping_mbulk"
        case .get: return "get"
        case .set: return "set"
        case .incr: return "incr"
        case .mixed: return nil
        }
    }

    /// `mixed`: 80 % GET, 20 % SET, by request (or pipeline position) index.
    static func mixedIsWrite(_ index: Int) -> Bool { index % 5 == 4 }
}

/// The connection type a run goes through.
enum Backend: String, CaseIterable, Sendable {
    /// hiredis (`ConnPoolRedis.RedisConnection`), RESP multi-bulk commands.
    case redis
    /// Raw TCP (`ConnPoolTCP.TCPConnection`), Redis inline commands (`PING\r\n`), one reply read per command.
    case tcp
}

/// A reply that is not what the workload expects (counted as an error by the harness).
struct UnexpectedReply: Error, CustomStringConvertible {
    let command: String
    let reply: String
    var description: String { "unexpected reply to \(command): \(reply)" }
}

/// A `-ERR …` reply read over the raw TCP backend.
struct ServerErrorReply: Error, CustomStringConvertible {
    let message: String
    var description: String { "server error reply: \(message)" }
}

/// The keys the workloads use (the GET key is written before any GET is measured).
enum BenchKeys {
    static let value = "connpool-bench:key"
    static let counter = "connpool-bench:counter"
}

// MARK: - hiredis backend

/// Builds the per-request operations of the hiredis backend.
struct RedisOperations {
    let valueSize: Int
    let pipeline: Int

    var value: [UInt8] { [UInt8](repeating: UInt8(ascii: "x"), count: valueSize) }

    func operation(_ workload: Workload) -> BenchOperation<RedisConnection> {
        if pipeline > 1 { return pipelined(workload) }
        let value = self.value
        switch workload {
        case .ping:
            return BenchOperation(
                run: { connection, _ in try Self.expectPong(try await connection.command("PING")) },
                runBlocking: { connection, _ in try Self.expectPong(try connection.commandBlocking("PING")) })
        case .get:
            return BenchOperation(
                run: { connection, _ in try Self.expectBulk(try await connection.command("GET", BenchKeys.value)) },
                runBlocking: { connection, _ in try Self.expectBulk(try connection.commandBlocking("GET", BenchKeys.value)) })
        case .set:
            return BenchOperation(
                run: { connection, _ in try Self.expectOK(try await connection.command("SET", BenchKeys.value, value)) },
                runBlocking: { connection, _ in
                    try Self.expectOK(try connection.commandBlocking("SET", BenchKeys.value, value))
                })
        case .incr:
            return BenchOperation(
                run: { connection, _ in try Self.expectInteger(try await connection.command("INCR", BenchKeys.counter)) },
                runBlocking: { connection, _ in
                    try Self.expectInteger(try connection.commandBlocking("INCR", BenchKeys.counter))
                })
        case .mixed:
            return BenchOperation(
                run: { connection, index in
                    if Workload.mixedIsWrite(index) {
                        try Self.expectOK(try await connection.command("SET", BenchKeys.value, value))
                    } else {
                        try Self.expectBulk(try await connection.command("GET", BenchKeys.value))
                    }
                },
                runBlocking: { connection, index in
                    if Workload.mixedIsWrite(index) {
                        try Self.expectOK(try connection.commandBlocking("SET", BenchKeys.value, value))
                    } else {
                        try Self.expectBulk(try connection.commandBlocking("GET", BenchKeys.value))
                    }
                })
        }
    }

    /// `pipeline` commands per request through `RedisConnection.pipeline` / `pipelineBlocking`.
    private func pipelined(_ workload: Workload) -> BenchOperation<RedisConnection> {
        let commands: [[RedisArgument]] = (0..<pipeline).map { position in
            Self.arguments(workload, position: position, value: value)
        }
        return BenchOperation(
            run: { connection, _ in try Self.checkPipeline(try await connection.pipeline(commands)) },
            runBlocking: { connection, _ in try Self.checkPipeline(try connection.pipelineBlocking(commands)) })
    }

    static func arguments(_ workload: Workload, position: Int, value: [UInt8]) -> [RedisArgument] {
        switch workload {
        case .ping: return ["PING"]
        case .get: return ["GET", .string(BenchKeys.value)]
        case .set: return ["SET", .string(BenchKeys.value), .bytes(value)]
        case .incr: return ["INCR", .string(BenchKeys.counter)]
        case .mixed:
            return Workload.mixedIsWrite(position)
                ? ["SET", .string(BenchKeys.value), .bytes(value)] : ["GET", .string(BenchKeys.value)]
        }
    }

    static func checkPipeline(_ replies: [RedisReply]) throws {
        for reply in replies {
            if case .error(let message) = reply { throw RedisError.server(message) }
        }
    }

    static func expectPong(_ reply: RedisReply) throws {
        guard case .status("PONG") = reply else { throw UnexpectedReply(command: "PING", reply: reply.kindDescription) }
    }

    static func expectOK(_ reply: RedisReply) throws {
        guard case .status("OK") = reply else { throw UnexpectedReply(command: "SET", reply: reply.kindDescription) }
    }

    static func expectBulk(_ reply: RedisReply) throws {
        guard case .bulkString = reply else { throw UnexpectedReply(command: "GET", reply: reply.kindDescription) }
    }

    static func expectInteger(_ reply: RedisReply) throws {
        guard case .integer = reply else { throw UnexpectedReply(command: "INCR", reply: reply.kindDescription) }
    }
}

// MARK: - raw TCP backend

/// Builds the per-request operations of the raw TCP backend: Redis inline commands (`GET key\r\n`),
/// written in one send per request, then one reply read per command (a status/error/integer line, or a
/// `$len` line followed by `len + 2` bytes).
struct TCPOperations {
    let valueSize: Int
    let pipeline: Int

    func operation(_ workload: Workload) -> BenchOperation<TCPConnection> {
        // Two request variants for `mixed` (reads and writes); the others use the first only.
        let read = request(workload, write: false)
        let write = request(workload, write: true)
        let count = pipeline
        return BenchOperation(
            run: { connection, index in
                try await connection.send(workload == .mixed && Workload.mixedIsWrite(index) ? write : read)
                for _ in 0..<count { try await Self.readReply(connection) }
            },
            runBlocking: { connection, index in
                try connection.sendBlocking(workload == .mixed && Workload.mixedIsWrite(index) ? write : read)
                for _ in 0..<count { try Self.readReplyBlocking(connection) }
            })
    }

    /// `pipeline` commands in one buffer. With a pipeline, `mixed` alternates by position instead.
    private func request(_ workload: Workload, write: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        for position in 0..<pipeline {
            let isWrite = workload == .set || (workload == .mixed && (pipeline > 1 ? Workload.mixedIsWrite(position) : write))
            switch workload {
            case .ping: bytes += Array("PING\r\n".utf8)
            case .incr: bytes += Array("INCR \(BenchKeys.counter)\r\n".utf8)
            case .get, .set, .mixed:
                if isWrite {
                    bytes += setCommand()
                } else {
                    bytes += Array("GET \(BenchKeys.value)\r\n".utf8)
                }
            }
        }
        return bytes
    }

    /// An inline `SET key xxx…`, or the RESP multi-bulk form for values past the inline limit (64 KiB).
    private func setCommand() -> [UInt8] {
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueSize)
        if valueSize > 0 && valueSize < 60_000 {
            return Array("SET \(BenchKeys.value) ".utf8) + value + Array("\r\n".utf8)
        }
        return Array("*3\r\n$3\r\nSET\r\n$\(BenchKeys.value.utf8.count)\r\n\(BenchKeys.value)\r\n$\(valueSize)\r\n".utf8)
            + value + Array("\r\n".utf8)
    }

    private static let crlf: [UInt8] = [0x0D, 0x0A]

    static func readReply(_ connection: TCPConnection) async throws {
        let line = try await connection.read(until: crlf, maxLength: 1 << 20)
        if let length = try bulkLength(line), length >= 0 {
            _ = try await connection.read(exactly: length + 2)
        }
    }

    static func readReplyBlocking(_ connection: TCPConnection) throws {
        let line = try connection.readBlocking(until: crlf, maxLength: 1 << 20)
        if let length = try bulkLength(line), length >= 0 {
            _ = try connection.readBlocking(exactly: length + 2)
        }
    }

    /// The length of a `$len` header; `nil` for a status or integer line; throws for an error reply.
    static func bulkLength(_ line: [UInt8]) throws -> Int? {
        guard let first = line.first else { throw UnexpectedReply(command: "inline", reply: "an empty line") }
        switch first {
        case UInt8(ascii: "+"), UInt8(ascii: ":"):
            return nil
        case UInt8(ascii: "-"):
            throw ServerErrorReply(message: String(decoding: line.dropFirst(), as: UTF8.self))
        case UInt8(ascii: "$"):
            guard let length = Int(String(decoding: line.dropFirst(), as: UTF8.self)) else {
                throw UnexpectedReply(command: "inline", reply: "a malformed bulk header")
            }
            return length
        default:
            throw UnexpectedReply(command: "inline", reply: "a reply starting with byte \(first)")
        }
    }
}

// MARK: - Error categories

/// Short, stable error categories for the table and JSON: `RedisError.timeout`,
/// `ConnectionPoolError.acquireTimeout`, `TCPConnectionError.peerClosed`, …
enum ErrorCategories {
    static func categorize(_ error: any Error) -> String {
        switch error {
        case let error as RedisError:
            switch error {
            case .connectionClosed: return "RedisError.connectionClosed"
            case .cancelled: return "RedisError.cancelled"
            case .connectionClosedLocally: return "RedisError.connectionClosedLocally"
            case .concurrentUse: return "RedisError.concurrentUse"
            default: return BenchErrorCategory.default(error)
            }
        case let error as TCPConnectionError:
            switch error {
            case .peerClosed: return "TCPConnectionError.peerClosed"
            case .connectionReset: return "TCPConnectionError.connectionReset"
            case .connectionClosed: return "TCPConnectionError.connectionClosed"
            case .connectionBroken: return "TCPConnectionError.connectionBroken"
            default: return BenchErrorCategory.default(error)
            }
        case let error as ConnectionPoolError:
            return "ConnectionPoolError.\(error.code)"
        case is UnexpectedReply:
            return "UnexpectedReply"
        case is ServerErrorReply:
            return "ServerErrorReply"
        default:
            return BenchErrorCategory.default(error)
        }
    }
}
