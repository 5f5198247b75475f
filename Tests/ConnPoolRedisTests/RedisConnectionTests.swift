import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import RedisServerLauncher
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("RedisConnection: replies and commands", .serialized, .processExclusive)
struct RedisConnectionReplyTests {
    @Test func everyReplyTypeAsync() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()

        #expect(try await connection.command("PING") == .status("PONG"))
        #expect(try await connection.command("SET", key, "value") == .status("OK"))
        #expect(try await connection.command("GET", key) == .bulkString(Array("value".utf8)))
        #expect(try await connection.command("GET", key).string == "value")
        #expect(try await connection.command("GET", key + ":missing") == .null)
        #expect(try await connection.command("GET", key + ":missing").optionalString == nil)
        #expect(try await connection.command("INCR", key + ":n") == .integer(1))
        #expect(try await connection.command("INCRBY", key + ":n", -5).int == -4)
        #expect(try await connection.command("SET", key + ":empty", "") == .status("OK"))
        #expect(try await connection.command("GET", key + ":empty") == .bulkString([]))

        _ = try await connection.command("RPUSH", key + ":list", "a", "b", "c")
        #expect(
            try await connection.command("LRANGE", key + ":list", 0, -1)
                == .array([.bulkString(Array("a".utf8)), .bulkString(Array("b".utf8)), .bulkString(Array("c".utf8))]))
        #expect(try await connection.command("LRANGE", key + ":nolist", 0, -1) == .array([]))
        // nil inside an array
        let mget = try await connection.command("MGET", key, key + ":missing").array
        #expect(mget == [.bulkString(Array("value".utf8)), .null])
        // a nested array with an integer and an error inside (MULTI/EXEC)
        #expect(try await connection.command("MULTI") == .status("OK"))
        #expect(try await connection.command("INCR", key + ":m") == .status("QUEUED"))
        #expect(try await connection.command("LPUSH", key, "x") == .status("QUEUED"))
        #expect(try await connection.command("LRANGE", key + ":list", 0, 0) == .status("QUEUED"))
        let exec = try await connection.command("EXEC").array
        #expect(exec.count == 3)
        #expect(exec[0] == .integer(1))
        guard case .error(let message) = exec[1] else {
            Issue.record("expected an error element, got \(exec[1])")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(exec[2] == .array([.bulkString(Array("a".utf8))]))
        // a null array: BLPOP timing out
        #expect(try await connection.command("BLPOP", key + ":nothing", "0.01") == .null)

        // an error reply is thrown as .server and leaves the connection usable
        let error = await expectRedisError { _ = try await connection.command("NOSUCHCOMMAND", "arg") }
        guard case .server(let text) = error else {
            Issue.record("expected .server, got \(String(describing: error))")
            return
        }
        #expect(text.hasPrefix("ERR unknown command"))
        #expect(error?.isConnectionError == false)
        #expect(!connection.isBroken)
        #expect(try await connection.command("PING") == .status("PONG"))
    }

    @Test func everyReplyTypeBlocking() async throws {
        let configuration = try await SharedServer.configuration()
        try await onThread {
            let connection = try RedisConnection.connectBlocking(configuration: configuration)
            defer { connection.closeBlocking() }
            let key = uniqueKey("blocking")
            #expect(try connection.commandBlocking("PING") == .status("PONG"))
            #expect(try connection.commandBlocking("SET", key, "v") == .status("OK"))
            #expect(try connection.commandBlocking("GET", key).string == "v")
            #expect(try connection.commandBlocking("GET", key + ":missing").isNull)
            #expect(try connection.commandBlocking("INCR", key + ":n").int == 1)
            #expect(try connection.commandBlocking(["RPUSH", .string(key + ":l"), "1", "2"]).int == 2)
            #expect(try connection.commandBlocking("LRANGE", key + ":l", 0, -1).array.count == 2)
            #expect(throws: RedisError.server("WRONGTYPE Operation against a key holding the wrong kind of value")) {
                try connection.commandBlocking("INCR", key + ":l")
            }
            #expect(!connection.isBroken)
            #expect(connection.isValidBlocking(timeout: .seconds(2)))
        }
    }

    @Test func replyAccessorsThrowTypedErrors() throws {
        #expect(throws: RedisError.unexpectedReply(expected: "a string", actual: "nil")) {
            _ = try RedisReply.null.string
        }
        #expect(throws: RedisError.unexpectedReply(expected: "an integer", actual: "a bulk string of 3 bytes")) {
            _ = try RedisReply.bulkString(Array("abc".utf8)).int
        }
        #expect(throws: RedisError.unexpectedReply(expected: "an array", actual: "an integer")) {
            _ = try RedisReply.integer(1).array
        }
        #expect(throws: RedisError.server("ERR x")) { _ = try RedisReply.error("ERR x").string }
        #expect(throws: RedisError.unexpectedReply(expected: "status OK", actual: "a status reply")) {
            try RedisReply.status("PONG").expectStatus("OK")
        }
        #expect(try RedisReply.bulkString(Array("42".utf8)).int == 42)
        #expect(try RedisReply.null.optionalInt == nil)
        #expect(try RedisReply.status("OK").bytes == Array("OK".utf8))
    }

    @Test func binaryArgumentsAndValuesWithNULBytes() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key: [UInt8] = Array("bin\0key:".utf8) + (0..<8).map { _ in UInt8.random(in: 0...255) } + [0]
        let value: [UInt8] = Array(0...255) + [0, 0, 13, 10, 0]
        #expect(try await connection.command("SET", key, value) == .status("OK"))
        #expect(try await connection.command("GET", key).bytes == value)
        #expect(try await connection.command("STRLEN", key).int == value.count)
        // a String with an embedded NUL is sent whole too
        let textKey = uniqueKey() + "\0tail"
        _ = try await connection.command("SET", textKey, "a\0b")
        #expect(try await connection.command("GET", textKey).bytes == [0x61, 0, 0x62])
        #expect(try await connection.command("EXISTS", String(textKey.split(separator: "\0")[0])).int == 0)
        // mixed argument kinds in an array
        _ = try await connection.command(["SET", .bytes(key), .integer(-17)])
        #expect(try await connection.command("GET", key).int == -17)
        #expect(try await connection.command("DEL", key, textKey).int == 2)
    }

    @Test func oneMebibyteValueRoundTrip() async throws {
        let configuration = try await SharedServer.configuration()
        var generator = SystemRandomNumberGenerator()
        let value = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let key = uniqueKey()
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        #expect(try await connection.command("SET", key, value) == .status("OK"))
        #expect(try await connection.command("GET", key).bytes == value)
        // the blocking path too
        let blockingCopy = try await onThread {
            let blocking = try RedisConnection.connectBlocking(configuration: configuration)
            defer { blocking.closeBlocking() }
            _ = try blocking.commandBlocking("SET", key + ":2", value)
            return try blocking.commandBlocking("GET", key + ":2").bytes
        }
        #expect(blockingCopy == value)
        _ = try await connection.command("DEL", key, key + ":2")
    }

    @Test func pipelines() async throws {
        let configuration = try await SharedServer.configuration()
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        let commands: [[RedisArgument]] = (0..<1000).map { _ in ["INCR", .string(key)] }
        let replies = try await connection.pipeline(commands)
        #expect(replies == (1...1000).map { .integer($0) })
        // an error inside a pipeline is an element, not thrown
        let mixed = try await connection.pipeline([["SET", .string(key + ":s"), "x"], ["INCR", .string(key + ":s")], ["PING"]])
        #expect(mixed[0] == .status("OK"))
        guard case .error = mixed[1] else {
            Issue.record("expected an error element")
            return
        }
        #expect(mixed[2] == .status("PONG"))
        #expect(try await connection.pipeline([]) == [])
        let blockingReplies = try await onThread {
            let blocking = try RedisConnection.connectBlocking(configuration: configuration)
            defer { blocking.closeBlocking() }
            return try blocking.pipelineBlocking((0..<500).map { _ in ["INCR", .string(key)] })
        }
        #expect(blockingReplies == (1001...1500).map { .integer($0) })
        _ = try await connection.command("DEL", key, key + ":s")
    }

    @Test func emptyCommandIsRejectedWithoutIO() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let error = await expectRedisError { _ = try await connection.command([]) }
        guard case .invalidCommand = error else {
            Issue.record("expected .invalidCommand, got \(String(describing: error))")
            return
        }
        #expect(!connection.isBroken)
        #expect(try await connection.command("PING") == .status("PONG"))
    }

    @Test func closeIsIdempotentAndFinal() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        await connection.close()
        await connection.close()
        connection.closeBlocking()
        #expect(connection.isClosed)
        #expect(await connection.isValid(timeout: .seconds(1)) == false)
        let error = await expectRedisError { _ = try await connection.command("PING") }
        #expect(error == .connectionClosedLocally)
    }

    @Test func concurrentUseOfOneConnectionIsRejected() async throws {
        var configuration = try await SharedServer.configuration()
        let observer = try await RedisConnection.connect(configuration: configuration)
        let name = "concurrent-\(UInt32.random(in: 0...UInt32.max))"
        configuration.clientName = name
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer {
            connection.closeBlocking()
            observer.closeBlocking()
        }
        let key = uniqueKey()
        let blocked = Task { try await connection.command("BLPOP", key, 0) }
        #expect(try await waitUntilClientRuns("blpop", named: name, observer: observer))
        let error = await expectRedisError { _ = try await connection.command("PING") }
        #expect(error == .concurrentUse)
        #expect(connection.isValidBlocking(timeout: .seconds(1)) == false)
        _ = try await observer.command("RPUSH", key, "wake")
        #expect(try await blocked.value.array == [.bulkString(Array(key.utf8)), .bulkString(Array("wake".utf8))])
        #expect(!connection.isBroken)
        #expect(try await connection.command("PING") == .status("PONG"))
    }

    @Test func cancellingAWaitingCommandBreaksTheConnection() async throws {
        var configuration = try await SharedServer.configuration()
        let observer = try await RedisConnection.connect(configuration: configuration)
        let name = "cancel-\(UInt32.random(in: 0...UInt32.max))"
        configuration.clientName = name
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer {
            connection.closeBlocking()
            observer.closeBlocking()
        }
        let blocked = Task { try await connection.command("BLPOP", uniqueKey(), 0) }
        #expect(try await waitUntilClientRuns("blpop", named: name, observer: observer))
        blocked.cancel()
        await #expect(throws: CancellationError.self) { _ = try await blocked.value }
        #expect(connection.isBroken)
        let error = await expectRedisError { _ = try await connection.command("PING") }
        #expect(error == .connectionBroken(cause: .cancelled))
    }

    @Test func clientKillOfAnIdleConnectionIsCaughtByIsValid() async throws {
        var configuration = try await SharedServer.configuration()
        let admin = try await RedisConnection.connect(configuration: configuration)
        defer { admin.closeBlocking() }
        let name = "victim-\(UInt32.random(in: 0...UInt32.max))"
        configuration.clientName = name
        let victim = try await RedisConnection.connect(configuration: configuration)
        let blockingVictim = try await RedisConnection.connect(configuration: configuration)
        defer {
            victim.closeBlocking()
            blockingVictim.closeBlocking()
        }
        let victimID = try await victim.command("CLIENT", "ID").int
        let blockingVictimID = try await blockingVictim.command("CLIENT", "ID").int
        let killed = try await admin.command("CLIENT", "KILL", "ID", victimID).int
        let killedToo = try await admin.command("CLIENT", "KILL", "ID", blockingVictimID).int
        #expect(killed == 1 && killedToo == 1)
        #expect(await victim.isValid(timeout: .seconds(2)) == false)
        #expect(victim.isBroken)
        #expect(try await onThread { blockingVictim.isValidBlocking(timeout: .seconds(2)) } == false)
        #expect(blockingVictim.isBroken)
    }

    @Test func isValidAnswersPing() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        #expect(await connection.isValid(timeout: .seconds(2)))
        #expect(try await onThread { connection.isValidBlocking(timeout: .seconds(2)) })
    }
}

@Suite("RedisConnection: connecting and configuration", .serialized, .processExclusive)
struct RedisConnectionSetupTests {
    @Test func authWithRequirepass() async throws {
        let password = "s3cr3t-R3quirePass"
        try await RedisServerProcess.withServer(extraArguments: ["--requirepass", password]) { server in

            // right password, through a URL
            let factory = try RedisConnectionFactory(url: "redis://:\(password)@127.0.0.1:\(server.port)")
            let connection = try await factory.makeConnection()
            #expect(try await connection.command("PING") == .status("PONG"))
            await connection.close()

            // wrong password: a typed error without the password in it
            var wrong = try RedisConnectionConfiguration(port: server.port)
            wrong.password = "not-the-password"
            let error = await expectRedisError { _ = try await RedisConnection.connect(configuration: wrong) }
            guard case .authenticationFailed(let message) = error else {
                Issue.record("expected .authenticationFailed, got \(String(describing: error))")
                return
            }
            #expect(message.contains("WRONGPASS") || message.contains("invalid password"))
            #expect(!"\(error!)".contains("not-the-password"))

            // the blocking path
            let wrongConfiguration = wrong
            let blockingError = try await onThread { () -> RedisError? in
                do {
                    _ = try RedisConnection.connectBlocking(configuration: wrongConfiguration)
                    return nil
                } catch let error as RedisError {
                    return error
                }
            }
            guard case .authenticationFailed = blockingError else {
                Issue.record("expected .authenticationFailed, got \(String(describing: blockingError))")
                return
            }

            // no password: the connection opens, and commands get NOAUTH server errors
            let anonymous = try await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: server.port))
            defer { anonymous.closeBlocking() }
            let noauth = await expectRedisError { _ = try await anonymous.command("GET", "k") }
            guard case .server(let noauthMessage) = noauth else {
                Issue.record("expected .server, got \(String(describing: noauth))")
                return
            }
            #expect(noauthMessage.hasPrefix("NOAUTH"))
            #expect(await anonymous.isValid(timeout: .seconds(1)) == false)

            // ...unless pingOnConnect is set: then the connect itself reports it
            var pinging = try RedisConnectionConfiguration(port: server.port)
            pinging.pingOnConnect = true
            let anonymousError = await expectRedisError { _ = try await RedisConnection.connect(configuration: pinging) }
            guard case .authenticationFailed(let message) = anonymousError else {
                Issue.record("expected .authenticationFailed, got \(String(describing: anonymousError))")
                return
            }
            #expect(message.hasPrefix("NOAUTH"))
        }
    }

    @Test func authWithACLUser() async throws {
        try await RedisServerProcess.withServer(extraArguments: [
            "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all",
        ]) { server in
            let connection = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(url: "redis://alice:alice-pw@127.0.0.1:\(server.port)"))
            #expect(try await connection.command("ACL", "WHOAMI").string == "alice")

            // a user created at run time, whose password needs percent-encoding in a URL
            let tricky = "p@ss:w/rd%?"
            _ = try await connection.command("ACL", "SETUSER", "bob", "on", ">" + tricky, "~bob:*", "+@all")
            await connection.close()
            let bob = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(
                    url: "redis://bob:p%40ss%3Aw%2Frd%25%3F@127.0.0.1:\(server.port)"))
            #expect(try await bob.command("ACL", "WHOAMI").string == "bob")
            // the ACL applies: bob may only touch bob:* keys
            let denied = await expectRedisError { _ = try await bob.command("GET", "alice:key") }
            guard case .server(let message) = denied else {
                Issue.record("expected .server, got \(String(describing: denied))")
                return
            }
            #expect(message.hasPrefix("NOPERM"))
            await bob.close()

            var wrong = try RedisConnectionConfiguration(port: server.port)
            wrong.username = "alice"
            wrong.password = "bad-alice-pw"
            let error = await expectRedisError { _ = try await RedisConnection.connect(configuration: wrong) }
            guard case .authenticationFailed(let message) = error else {
                Issue.record("expected .authenticationFailed, got \(String(describing: error))")
                return
            }
            #expect(message.hasPrefix("WRONGPASS"))
            #expect(!"\(error!)".contains("bad-alice-pw"))
        }
    }

    @Test func selectDatabase() async throws {
        let server = try await SharedServer.get()
        let key = uniqueKey()
        let inThree = try await RedisConnection.connect(
            configuration: RedisConnectionConfiguration(url: "redis://127.0.0.1:\(server.port)/3"))
        let inZero = try await RedisConnection.connect(
            configuration: RedisConnectionConfiguration(url: "redis://127.0.0.1:\(server.port)"))
        defer {
            inThree.closeBlocking()
            inZero.closeBlocking()
        }
        _ = try await inThree.command("SET", key, "three")
        #expect(try await inThree.command("CLIENT", "INFO").string.contains(" db=3 "))
        #expect(try await inZero.command("EXISTS", key).int == 0)
        #expect(try await inThree.command("GET", key).string == "three")
        _ = try await inThree.command("DEL", key)

        // the query form, and the blocking connect
        let configuration = try RedisConnectionConfiguration(url: "redis://127.0.0.1:\(server.port)?db=5")
        let info = try await onThread {
            let connection = try RedisConnection.connectBlocking(configuration: configuration)
            defer { connection.closeBlocking() }
            return try connection.commandBlocking("CLIENT", "INFO").string
        }
        #expect(info.contains(" db=5 "))

        // an index the server does not have: its error, named
        let error = await expectRedisError {
            _ = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(url: "redis://127.0.0.1:\(server.port)/99"))
        }
        #expect(error == .handshakeFailed(command: "SELECT 99", message: "ERR DB index is out of range"))
    }

    @Test func clientNameIsVisibleInClientList() async throws {
        var configuration = try await SharedServer.configuration()
        let name = "connpool-test-\(UInt32.random(in: 0...UInt32.max))"
        configuration.clientName = name
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        let list = try await connection.command("CLIENT", "LIST").string
        #expect(list.contains("name=\(name) "))
        #expect(try await connection.command("CLIENT", "GETNAME").string == name)
    }

    @Test func wrongPortIsRefusedFast() async throws {
        let port = try freeLoopbackPort()
        let configuration = try RedisConnectionConfiguration(port: port)
        let start = ContinuousClock.now
        let error = await expectRedisError { _ = try await RedisConnection.connect(configuration: configuration) }
        #expect(error == .connectionRefused(endpoint: "127.0.0.1:\(port)"))
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect("\(error!)".contains("connection refused"))

        let blockingError = try await onThread { () -> RedisError? in
            do {
                _ = try RedisConnection.connectBlocking(configuration: configuration)
                return nil
            } catch let error as RedisError { return error }
        }
        #expect(blockingError == .connectionRefused(endpoint: "127.0.0.1:\(port)"))
    }

    @Test func connectTimeoutOnAFullBacklog() async throws {
        let listener = try await onThread { try FullBacklogListener() }  // its connects wait up to 200 ms
        var configuration = try RedisConnectionConfiguration(port: listener.port)
        configuration.connectTimeout = .milliseconds(200)
        let timeoutConfiguration = configuration
        let start = ContinuousClock.now
        let error = await expectRedisError { _ = try await RedisConnection.connect(configuration: configuration) }
        let elapsed = ContinuousClock.now - start
        #expect(error == .connectTimeout(endpoint: "127.0.0.1:\(listener.port)", timeout: .milliseconds(200)))
        #expect(error?.isTimeout == true)
        #expect(elapsed >= .milliseconds(190) && elapsed < .seconds(5))

        let (blockingError, blockingElapsed) = try await onThread { () -> (RedisError?, Duration) in
            let start = ContinuousClock.now
            do {
                _ = try RedisConnection.connectBlocking(configuration: timeoutConfiguration)
                return (nil, ContinuousClock.now - start)
            } catch let error as RedisError { return (error, ContinuousClock.now - start) }
        }
        #expect(blockingError?.isTimeout == true)
        #expect(blockingElapsed >= .milliseconds(190) && blockingElapsed < .seconds(5))
        withExtendedLifetime(listener) {}
    }

    @Test func commandTimeoutBreaksTheConnection() async throws {
        try await RedisServerProcess.withServer(extraArguments: ["--enable-debug-command", "yes"]) { server in
            var configuration = try RedisConnectionConfiguration(port: server.port)
            configuration.commandTimeout = .milliseconds(200)
            let sleepyConfiguration = configuration

            // async
            let connection = try await RedisConnection.connect(configuration: configuration)
            defer { connection.closeBlocking() }
            let start = ContinuousClock.now
            let error = await expectRedisError { _ = try await connection.command("DEBUG", "SLEEP", 2) }
            let elapsed = ContinuousClock.now - start
            #expect(error == .timeout(.milliseconds(200)))
            #expect(error?.isConnectionError == true)
            #expect(elapsed >= .milliseconds(190) && elapsed < .seconds(5))
            #expect(connection.isBroken)
            let after = await expectRedisError { _ = try await connection.command("PING") }
            #expect(after == .connectionBroken(cause: .timeout(.milliseconds(200))))
            #expect(after?.isTimeout == true)
            #expect(await connection.isValid(timeout: .seconds(1)) == false)

            // blocking (the server is still asleep: a PING times out too)
            let blocking = try await onThread { () -> (RedisError?, Bool, Duration) in
                let start = ContinuousClock.now
                let connection = try RedisConnection.connectBlocking(configuration: sleepyConfiguration)
                defer { connection.closeBlocking() }
                do {
                    _ = try connection.commandBlocking("DEBUG", "SLEEP", 2)
                    return (nil, connection.isBroken, ContinuousClock.now - start)
                } catch let error as RedisError {
                    return (error, connection.isBroken, ContinuousClock.now - start)
                }
            }
            #expect(blocking.0?.isTimeout == true)
            #expect(blocking.1)
            #expect(blocking.2 < .seconds(5))
            try await server.kill(signal: SIGKILL)  // the stop that follows need not wait for DEBUG SLEEP to end
        }
    }

    @Test func connectToAFrozenServerTimesOut() async throws {
        try await RedisServerProcess.withServer { server in
            try await server.kill(signal: SIGSTOP)
            var configuration = try RedisConnectionConfiguration(port: server.port)
            configuration.connectTimeout = .milliseconds(300)
            configuration.pingOnConnect = true
            // the kernel completes the TCP handshake, but the PING of the handshake gets no answer
            let start = ContinuousClock.now
            let error = await expectRedisError { _ = try await RedisConnection.connect(configuration: configuration) }
            #expect(error == .connectTimeout(endpoint: "127.0.0.1:\(server.port)", timeout: .milliseconds(300)))
            #expect(ContinuousClock.now - start < .seconds(5))
            try await server.kill(signal: SIGCONT)
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(try await connection.command("PING") == .status("PONG"))
            await connection.close()
        }
    }

    @Test func serverKilledMidCommand() async throws {
        try await RedisServerProcess.withServer { server in
            let configuration = try RedisConnectionConfiguration(port: server.port)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let observer = try await RedisConnection.connect(configuration: configuration)
            defer {
                connection.closeBlocking()
                observer.closeBlocking()
            }
            let blocked = Task { try await connection.command("BLPOP", "never", 0) }
            #expect(try await waitUntilClientRuns("blpop", observer: observer))
            try await server.kill(signal: SIGKILL)
            let error: RedisError?
            do {
                _ = try await blocked.value
                error = nil
            } catch let caught as RedisError {
                error = caught
            }
            #expect(error == .connectionClosed || error == .io(operation: "read", errno: ECONNRESET))
            #expect(error?.isConnectionError == true)
            #expect(connection.isBroken)
            #expect(await connection.isValid(timeout: .milliseconds(200)) == false)

            // the idle observer finds out on its next command (blocking path), and breaks too
            let observerError = try await onThread { () -> RedisError? in
                do {
                    _ = try observer.commandBlocking("PING")
                    return nil
                } catch let error as RedisError { return error }
            }
            #expect(observerError?.isConnectionError == true)
            #expect(observer.isBroken)
        }
    }

    @Test func unixSocket() async throws {
        let server = try await SharedServer.get()
        let path = try #require(server.unixSocketPath)
        let connection = try await RedisConnection.connect(
            configuration: RedisConnectionConfiguration(url: "unix://\(path)?db=2"))
        defer { connection.closeBlocking() }
        #expect(try await connection.command("PING") == .status("PONG"))
        let info = try await connection.command("CLIENT", "INFO").string
        #expect(info.contains(" db=2 "))
        #expect(info.contains("laddr=\(path)") || info.contains("addr=/") || info.contains("flags=U"))

        let configuration = try RedisConnectionConfiguration(unixSocketPath: path)
        let pong = try await onThread {
            let blocking = try RedisConnection.connectBlocking(configuration: configuration)
            defer { blocking.closeBlocking() }
            return try blocking.commandBlocking("PING")
        }
        #expect(pong == .status("PONG"))

        let missing = await expectRedisError {
            _ = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(unixSocketPath: path + ".missing"))
        }
        #expect(missing == .connectionRefused(endpoint: "unix:\(path).missing"))
    }

    @Test func hostNameIsResolved() async throws {
        let server = try await SharedServer.get()
        let connection = try await RedisConnection.connect(
            configuration: RedisConnectionConfiguration(host: "localhost", port: server.port))
        defer { connection.closeBlocking() }
        #expect(try await connection.command("PING") == .status("PONG"))
        let error = await expectRedisError {
            _ = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(host: "no-such-host.invalid", port: server.port))
        }
        guard case .hostNotFound = error else {
            Issue.record("expected .hostNotFound, got \(String(describing: error))")
            return
        }
    }
}

@Suite("RedisConnection: writing to a dead server", .serialized, .processExclusive)
struct RedisDeadServerWriteTests {
    /// hiredis' own redisBufferWrite uses write(2), which raises SIGPIPE (killing the process by default)
    /// once the peer is gone; the connection's send(MSG_NOSIGNAL) twin must turn that into an error.
    @Test func writingToAKilledServerFailsWithoutSIGPIPE() async throws {
        var action = sigaction()
        sigaction(SIGPIPE, nil, &action)
        let sigpipeIsDefault = action.__sigaction_handler.sa_handler == nil  // SIG_DFL
        print("SIGPIPE disposition in the test process: \(sigpipeIsDefault ? "default (terminate)" : "changed")")

        try await RedisServerProcess.withServer { server in
            var configuration = try RedisConnectionConfiguration(port: server.port)
            configuration.commandTimeout = .seconds(5)
            let asyncConnection = try await RedisConnection.connect(configuration: configuration)
            let blockingConfiguration = configuration
            let blockingConnection = try await onThread {
                try RedisConnection.connectBlocking(configuration: blockingConfiguration)
            }
            defer {
                asyncConnection.closeBlocking()
                blockingConnection.closeBlocking()
            }
            try await server.kill(signal: SIGKILL)
            let big = [UInt8](repeating: 0x78, count: 8 << 20)

            let error = await expectRedisError { _ = try await asyncConnection.command("SET", "k", big) }
            #expect(error?.isConnectionError == true, "got \(String(describing: error))")
            #expect(asyncConnection.isBroken)

            let blockingError = try await onThread { () -> RedisError? in
                do {
                    _ = try blockingConnection.commandBlocking("SET", "k", big)
                    return nil
                } catch let error as RedisError { return error }
            }
            #expect(blockingError?.isConnectionError == true, "got \(String(describing: blockingError))")
            #expect(blockingConnection.isBroken)
        }
    }
}
