import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Testing

/// A pooled Redis connection is shared by strangers one after another: nothing one borrower leaves
/// behind (a half-sent pipeline, an open transaction, another database, a subscription, …) may reach
/// the next. Pools of one connection against real redis-server processes, so the next borrower always
/// gets the connection the previous one returned (or its replacement).
@Suite("Redis: no reply desync, session state reset on release", .serialized, .processExclusive)
struct SessionResetTests {
    typealias Pool = ConnectionPool<RedisConnectionFactory>

    /// How the first borrower sends its commands.
    enum Mode: String, CaseIterable, CustomTestStringConvertible {
        case async, blocking
        var testDescription: String { rawValue }
    }

    static func makePool(_ redis: RedisConnectionConfiguration) throws -> Pool {
        try ConnectionPool(
            factory: RedisConnectionFactory(configuration: redis),
            configuration: PoolConfiguration().maxSize(1).minSize(0).acquireTimeout(.seconds(10)))
    }

    /// Runs `commands` as one pipeline through `pool`, in `mode`, and returns the replies (server
    /// errors are replies, not thrown).
    static func pipeline(_ pool: Pool, _ mode: Mode, _ commands: [[RedisArgument]]) async throws -> [RedisReply] {
        switch mode {
        case .async:
            return try await pool.withConnection { try await $0.pipeline(commands) }
        case .blocking:
            return try await onThread { try pool.withConnectionBlocking { try $0.pipelineBlocking(commands) } }
        }
    }

    static func clientID(_ connection: RedisConnection) async throws -> Int {
        try await connection.command("CLIENT", "ID").int
    }

    // MARK: Desync

    @Test("a pipeline with an invalid command sends nothing: the next borrower gets its own reply", arguments: Mode.allCases)
    func invalidPipelineSendsNothing(mode: Mode) async throws {
        let pool = try await Self.makePool(SharedServer.configuration())
        let key = uniqueKey()
        try await pool.withConnection { _ = try await $0.command("SET", key, "previous") }
        let error = await expectRedisError {
            _ = try await Self.pipeline(pool, mode, [["GET", .string(key)], []])
        }
        guard case .invalidCommand(let message)? = error else {
            Issue.record("expected invalidCommand, got \(String(describing: error))")
            return
        }
        #expect(message.contains("command 1 of the pipeline has no arguments"))
        #expect(message.contains("nothing was sent"))
        // Before the fix the GET was already in hiredis' buffer: this PING got the GET's value.
        try await pool.withConnection { connection in
            let pong = try await connection.command("PING")
            #expect(pong == .status("PONG"))
            let value = try await connection.command("GET", key)
            #expect(value == .bulkString(Array("previous".utf8)))
        }
        #expect(pool.metrics().closed == 0)
        await pool.shutdown()
    }

    @Test("CLIENT REPLY OFF|SKIP and HELLO 3 are refused before anything is sent", arguments: Mode.allCases)
    func desynchronizingCommandsAreRefused(mode: Mode) async throws {
        let pool = try await Self.makePool(SharedServer.configuration())
        let refused: [[RedisArgument]] = [
            ["CLIENT", "REPLY", "OFF"], ["CLIENT", "REPLY", "SKIP"], ["client", "reply", "off"], ["HELLO", "3"],
            ["hello", "3", "SETNAME", "x"],
        ]
        for command in refused {
            let single = await expectRedisError {
                switch mode {
                case .async:
                    _ = try await pool.withConnection { try await $0.command(command) }
                case .blocking:
                    _ = try await onThread { try pool.withConnectionBlocking { try $0.commandBlocking(command) } }
                }
            }
            #expect(single.map { if case .invalidCommand = $0 { true } else { false } } == true, "\(command)")
            let inPipeline = await expectRedisError {
                _ = try await Self.pipeline(pool, mode, [["PING"], command])
            }
            guard case .invalidCommand(let message)? = inPipeline else {
                Issue.record("expected invalidCommand, got \(String(describing: inPipeline))")
                continue
            }
            #expect(message.contains("command 1 of the pipeline"))
        }
        // Nothing was sent: the connection answers at once, and was neither reset nor closed.
        try await pool.withConnection {
            let pong = try await $0.command("PING")
            #expect(pong == .status("PONG"))
        }
        #expect(pool.metrics().sessionResets == 0)
        #expect(pool.metrics().closed == 0)
        await pool.shutdown()
    }

    /// Every way a pipeline can end after its first byte went out without reading its last reply
    /// (a timeout, a cancelled wait, the server closing the connection) breaks the connection: the pool
    /// replaces it, and the next borrower reads its own reply, never one of these commands'.
    enum Interruption: String, CaseIterable, CustomTestStringConvertible {
        case timeoutAsync, timeoutBlocking, cancelled, serverClosed
        var testDescription: String { rawValue }
    }

    @Test("a pipeline interrupted between send and its last reply breaks the connection; the next borrower gets a new one", arguments: Interruption.allCases)
    func interruptedPipelineIsNotReused(_ interruption: Interruption) async throws {
        try await RedisServerProcess.withServer { server in
            var redis = try RedisConnectionConfiguration(port: server.port)
            redis.commandTimeout = interruption == .cancelled ? .seconds(30) : .milliseconds(200)
            let pool = try Self.makePool(redis)
            let key = uniqueKey()
            let firstID = try await pool.withConnection { try await Self.clientID($0) }
            let commands: [[RedisArgument]] = [
                ["SET", .string(key), "stale"],
                // A BLPOP that never returns blocks only this client, so the server stays responsive.
                interruption == .serverClosed
                    ? ["CLIENT", "KILL", "ID", .integer(firstID), "SKIPME", "no"] : ["BLPOP", .string(key + ":list"), 0],
                ["GET", .string(key)],
            ]
            let thrown: (any Error)?
            switch interruption {
            case .timeoutAsync, .serverClosed:
                thrown = await #expect(throws: RedisError.self) { _ = try await Self.pipeline(pool, .async, commands) }
            case .timeoutBlocking:
                thrown = await #expect(throws: RedisError.self) { _ = try await Self.pipeline(pool, .blocking, commands) }
            case .cancelled:
                let task = Task { try await Self.pipeline(pool, .async, commands) }
                // Cancel once the server is inside BLPOP: the SET's reply is read, the rest is not.
                let observer = try await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: server.port))
                #expect(try await waitUntilClientRuns("blpop", observer: observer))
                await observer.close()
                task.cancel()
                thrown = await #expect(throws: CancellationError.self) { _ = try await task.value }
            }
            if interruption != .cancelled {
                #expect((thrown as? RedisError)?.isConnectionError == true, "\(String(describing: thrown))")
            }
            try await pool.withConnection { connection in
                let pong = try await connection.command("PING")
                #expect(pong == .status("PONG"))
                let id = try await Self.clientID(connection)
                #expect(id != firstID)
            }
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.metrics().closedByReason[.broken] == 1 })
            await pool.shutdown()
        }
    }

    // MARK: Reset on release

    /// A command that changes the session, what the next borrower checks, and whether the connection
    /// is reset (and lent again) or closed.
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        /// The first borrower's commands (their keys come from `key`).
        var commands: @Sendable (_ key: String) -> [[RedisArgument]]
        /// Whether the connection can be reset (else it is closed with `.dirty` and replaced).
        var resettable: Bool
        /// Run by the next borrower: expectations that fail if the state leaked.
        var check: @Sendable (_ connection: RedisConnection, _ key: String) async throws -> Void
        var testDescription: String { name }

        init(
            name: String, commands: @escaping @Sendable (_ key: String) -> [[RedisArgument]], resettable: Bool,
            check: @escaping @Sendable (_ connection: RedisConnection, _ key: String) async throws -> Void
        ) {
            self.name = name
            self.commands = commands
            self.resettable = resettable
            self.check = check
        }
    }

    static let cases: [Case] = [
        Case(name: "MULTI", commands: { key in [["MULTI"], ["SET", .string(key), "queued"]] }, resettable: true) { connection, key in
            // Not QUEUED: the transaction was discarded, and its SET never ran.
            let reply = try await connection.command("GET", key)
            #expect(reply == .null)
        },
        Case(name: "WATCH", commands: { key in [["WATCH", .string(key)]] }, resettable: true) { connection, key in
            // Another client changes the key the first borrower watched: a leaked WATCH would abort this EXEC.
            let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
            _ = try await other.command("SET", key, "changed")
            await other.close()
            let replies = try await connection.pipeline([["MULTI"], ["SET", .string(key), "mine"], ["EXEC"]])
            #expect(replies.last == .array([.status("OK")]))
        },
        Case(name: "SELECT", commands: { _ in [["SELECT", 5]] }, resettable: true) { connection, _ in
            let reply = try await connection.command("CLIENT", "INFO").string
            #expect(reply.contains(" db=0 "))
        },
        Case(name: "CLIENT SETNAME", commands: { _ in [["CLIENT", "SETNAME", "borrower-a"]] }, resettable: true) { connection, _ in
            let reply = try await connection.command("CLIENT", "GETNAME")
            #expect(reply == .null)
        },
        Case(name: "CLIENT TRACKING ON", commands: { _ in [["client", "tracking", "on"]] }, resettable: true) { connection, _ in
            let info = try await connection.command("CLIENT", "TRACKINGINFO")
            guard case .array(let fields) = info, fields.count >= 2 else {
                Issue.record("unexpected CLIENT TRACKINGINFO reply \(info)")
                return
            }
            #expect(fields[1] == .array([.bulkString(Array("off".utf8))]))
        },
        Case(name: "READONLY", commands: { _ in [["READONLY"]] }, resettable: true) { connection, _ in
            let reply = try await connection.command("PING")
            #expect(reply == .status("PONG"))
        },
        Case(name: "HELLO 2", commands: { _ in [["HELLO", "2", "SETNAME", "via-hello"]] }, resettable: true) { connection, _ in
            let reply = try await connection.command("CLIENT", "GETNAME")
            #expect(reply == .null)
        },
        Case(name: "SUBSCRIBE", commands: { key in [["SUBSCRIBE", .string(key)]] }, resettable: false) { connection, _ in
            let reply = try await connection.command("PING")
            #expect(reply == .status("PONG"))
        },
        Case(name: "PSUBSCRIBE", commands: { key in [["psubscribe", .string(key + "*")]] }, resettable: false) { connection, _ in
            let reply = try await connection.command("PING")
            #expect(reply == .status("PONG"))
        },
        Case(name: "SSUBSCRIBE", commands: { key in [["SSUBSCRIBE", .string(key)]] }, resettable: false) { connection, _ in
            let reply = try await connection.command("PING")
            #expect(reply == .status("PONG"))
        },
        Case(name: "MONITOR", commands: { _ in [["MONITOR"]] }, resettable: false) { connection, key in
            let pong = try await connection.command("PING")
            #expect(pong == .status("PONG"))
            let reply = try await connection.command("GET", key)
            #expect(reply == .null)
        },
    ]

    @Test("a borrower's session change never reaches the next borrower", arguments: cases, Mode.allCases)
    func sessionChangeIsUndone(_ testCase: Case, mode: Mode) async throws {
        let pool = try await Self.makePool(SharedServer.configuration())
        let key = uniqueKey("session-\(testCase.name)")
        let firstID = try await pool.withConnection { try await Self.clientID($0) }
        _ = try await Self.pipeline(pool, mode, testCase.commands(key))
        try await pool.withConnection { connection in
            try await testCase.check(connection, key)
            let secondID = try await Self.clientID(connection)
            if testCase.resettable {
                #expect(secondID == firstID, "reset and lent again, not replaced")
            } else {
                #expect(secondID != firstID, "closed and replaced")
            }
        }
        let metrics = pool.metrics()
        if testCase.resettable {
            #expect(metrics.sessionResets == 1)
            #expect(metrics.closed == 0)
        } else {
            #expect(metrics.sessionResets == 0)
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.metrics().closedByReason[.dirty] == 1 })
        }
        // A clean borrower costs no reset.
        try await pool.withConnection {
            let pong = try await $0.command("PING")
            #expect(pong == .status("PONG"))
        }
        #expect(pool.metrics().sessionResets == metrics.sessionResets)
        await pool.shutdown()
    }

    @Test("a transaction ended with EXEC or DISCARD leaves the connection clean: no reset")
    func finishedTransactionNeedsNoReset() async throws {
        let pool = try await Self.makePool(SharedServer.configuration())
        let key = uniqueKey()
        _ = try await Self.pipeline(pool, .async, [["WATCH", .string(key)], ["MULTI"], ["INCR", .string(key)], ["EXEC"]])
        _ = try await Self.pipeline(pool, .blocking, [["MULTI"], ["INCR", .string(key)], ["DISCARD"]])
        _ = try await Self.pipeline(pool, .async, [["WATCH", .string(key)], ["UNWATCH"]])
        try await pool.withConnection {
            let value = try await $0.command("GET", key)
            #expect(value == .bulkString(Array("1".utf8)))
        }
        #expect(pool.metrics().sessionResets == 0)
        await pool.shutdown()
    }

    @Test("the reset restores the configured AUTH, database and client name")
    func resetRestoresConfiguration() async throws {
        let password = "s3cret-\(UInt32.random(in: 0...UInt32.max))"
        try await RedisServerProcess.withServer(extraArguments: ["--requirepass", password]) { server in
            var redis = try RedisConnectionConfiguration(port: server.port)
            redis.password = password
            redis.database = 2
            redis.clientName = "app"
            redis.commandTimeout = .seconds(10)
            let pool = try Self.makePool(redis)
            _ = try await Self.pipeline(pool, .async, [["SELECT", 0], ["CLIENT", "SETNAME", "other"], ["AUTH", "default", .string(password)]])
            try await pool.withConnection { connection in
                // RESET logged the connection out: without AUTH again this would be NOAUTH.
                let info = try await connection.command("CLIENT", "INFO").string
                #expect(info.contains(" db=2 "))
                #expect(info.contains(" name=app "))
            }
            #expect(pool.metrics().sessionResets == 1)
            await pool.shutdown()
        }
    }

    @Test("without RESET (a server before 6.2) DISCARD, UNWATCH, SELECT and SETNAME undo what they can; the rest is closed")
    func resetWithoutResetCommand() async throws {
        try await RedisServerProcess.withServer(extraArguments: ["--rename-command", "RESET", ""]) { server in
            var redis = try RedisConnectionConfiguration(port: server.port)
            redis.commandTimeout = .seconds(10)
            let pool = try Self.makePool(redis)
            let key = uniqueKey()
            let firstID = try await pool.withConnection { try await Self.clientID($0) }
            _ = try await Self.pipeline(
                pool, .blocking, [["SELECT", 3], ["CLIENT", "SETNAME", "a"], ["MULTI"], ["SET", .string(key), "queued"]])
            try await pool.withConnection { connection in
                let value = try await connection.command("GET", key)
                #expect(value == .null)
                let info = try await connection.command("CLIENT", "INFO").string
                #expect(info.contains(" db=0 "))
                #expect(info.contains(" name= "))
                let id = try await Self.clientID(connection)
                #expect(id == firstID)
            }
            #expect(pool.metrics().sessionResets == 1)
            // Tracking cannot be turned off for sure without RESET: closed instead.
            _ = try await Self.pipeline(pool, .async, [["CLIENT", "TRACKING", "ON"]])
            try await pool.withConnection {
                let id = try await Self.clientID($0)
                #expect(id != firstID)
            }
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.metrics().closedByReason[.dirty] == 1 })
            await pool.shutdown()
        }
    }
}
