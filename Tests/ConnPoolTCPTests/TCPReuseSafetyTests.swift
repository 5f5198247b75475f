import ConnPool
import ConnPoolTCP
import ConnPoolTestSupport
import Dispatch
import Glibc
import Testing

/// Answers `PAIR x` with two lines in one write, `x-1` and `x-2` (so that a reader of one line leaves
/// the other buffered), and any other line with itself.
private let pairServer: @Sendable (ServerPeer) -> Void = { peer in
    while let line = peer.readLine() {
        let reply = line.hasPrefix("PAIR ") ? "\(line.dropFirst(5))-1\n\(line.dropFirst(5))-2\n" : line + "\n"
        guard peer.write(reply) else { return }
    }
}

/// Runs a read and a close on one serial executor: a read woken by the close cannot resume, let
/// alone end, before the closer has looked at the descriptor.
private actor Stage {
    func readLine(_ connection: TCPConnection) async -> Result<String, TCPConnectionError> {
        await readLineResult(connection)  // nonisolated(nonsending): runs on this actor
    }

    /// Closes the connection (synchronously, so the actor stays busy) and reports whether its
    /// descriptor is still open and how often it was closed.
    func closeAndLook(_ connection: TCPConnection) -> (descriptorOpen: Bool, closes: Int) {
        connection.closeBlocking()  // never blocks: shutdown, then close only if idle
        return (fcntl(connection.fileDescriptor, F_GETFD) != -1, connection.descriptorCloseCount)
    }
}

private struct AbortExchange: Error {}

/// A pool of at most one connection to `server`: every borrower after the first gets the same
/// connection again, unless the pool discarded it.
private func singleConnectionPool(_ server: TestServer) throws -> ConnectionPool<TCPConnectionFactory> {
    let factory = try TCPConnectionFactory(configuration: testConfiguration(server))
    return try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(1))
}

/// Borrows a connection from `pool`, sends `text` and a `\n`, and reads one line back; returns the
/// connection (to compare with others) and the line.
private func borrowSendingLine(_ pool: ConnectionPool<TCPConnectionFactory>, _ text: String) async throws -> (TCPConnection, String) {
    try await pool.withConnection { connection in
        try await connection.send(text + "\n")
        return (connection, try await connection.readLine())
    }
}

/// `connection.readLine()`, its error kept as a value (any other error than a `TCPConnectionError`
/// becomes a `systemError` naming it, so that a comparison fails).
private nonisolated(nonsending) func readLineResult(_ connection: TCPConnection) async -> Result<String, TCPConnectionError> {
    do {
        return .success(try await connection.readLine())
    } catch {
        return .failure(error as? TCPConnectionError ?? .systemError(operation: "\(error)", errno: 0))
    }
}

@Suite("TCPConnection: safe reuse and safe close", .serialized, .processExclusive)
struct TCPReuseSafetyTests {
    // MARK: Safe reuse

    @Test("unread buffered bytes, or a reply still expected, leave the connection mid-exchange until read")
    func midExchangeUntilRead() async throws {
        let server = try TestServer(handler: pairServer)
        defer { server.stop() }
        let configuration = testConfiguration(server)
        // (midExchange, broken) after each step, asserted here: an issue recorded on the plain thread
        // would not be attributed to this test.
        let states = try await onThread { () throws -> [String: [Bool]] in
            let connection = try TCPConnection.connectBlocking(configuration)
            defer { connection.closeBlocking() }
            var states: [String: [Bool]] = ["fresh": [connection.isMidExchange, connection.isBroken]]
            try connection.sendBlocking("PAIR a\n")
            states["sent"] = [connection.isMidExchange, connection.isBroken]  // a reply is expected
            states["a-1"] = [try connection.readLineBlocking() == "a-1", connection.isMidExchange, connection.isBroken]
            states["a-2"] = [try connection.readLineBlocking() == "a-2", connection.isMidExchange, connection.isBroken]
            try connection.sendBlocking("still usable\n")
            states["again"] = [try connection.readLineBlocking() == "still usable", connection.isMidExchange, connection.isBroken]
            return states
        }
        #expect(states["fresh"] == [false, false])
        #expect(states["sent"] == [true, true])
        #expect(states["a-1"] == [true, true, true])  // "a-2\n" is buffered
        #expect(states["a-2"] == [true, false, false])
        #expect(states["again"] == [true, false, false])
    }

    @Test("a connection released with unread buffered bytes is never lent again: the next borrower gets a fresh one and reads its own bytes")
    func unreadBytesNeverLentAgain() async throws {
        let server = try TestServer(handler: pairServer)
        defer { server.stop() }
        let pool = try singleConnectionPool(server)
        let first = try await pool.withConnection { connection in
            try await connection.send("PAIR first\n")
            #expect(try await connection.readLine() == "first-1")  // "first-2\n" stays buffered
            return connection
        }
        let (second, reply) = try await borrowSendingLine(pool, "PAIR second")
        #expect(reply == "second-1")
        #expect(second !== first)
        #expect(first.isClosed)
        #expect(await eventually(pollingEvery: .milliseconds(2)) { server.accepted == 2 })
        await pool.shutdown()
    }

    @Test("a request whose reply was never read (returned early, or an error thrown between send and read) is never lent again")
    func unreadReplyNeverLentAgain() async throws {
        let server = try TestServer(handler: Handlers.echoLines)
        defer { server.stop() }
        let pool = try singleConnectionPool(server)
        let first = try await pool.withConnection { connection in
            try await connection.send("never read\n")
            return connection
        }
        let (second, reply) = try await borrowSendingLine(pool, "mine")
        #expect(reply == "mine")
        #expect(second !== first)

        // Blocking borrowers, on a plain thread: the second borrower's body throws between its send
        // and its read.
        let third = try await onThread { () throws -> (TCPConnection, String) in
            do {
                _ = try pool.withConnectionBlocking { connection -> TCPConnection in
                    try connection.sendBlocking("lost\n")
                    throw AbortExchange()
                }
            } catch is AbortExchange {}
            return try pool.withConnectionBlocking { connection in
                try connection.sendBlocking("own\n")
                return (connection, try connection.readLineBlocking())
            }
        }
        #expect(third.1 == "own")
        #expect(third.0 !== second)  // `second` was clean, so it took "lost", and was then discarded
        #expect(await eventually(pollingEvery: .milliseconds(2)) { server.accepted == 3 })
        await pool.shutdown()
    }

    @Test("expectsReplyAfterSend: false keeps a sent-only connection reusable (a protocol without replies)")
    func fireAndForget() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        var configuration = testConfiguration(server)
        configuration.expectsReplyAfterSend = false
        let connection = try await TCPConnection.connect(configuration)
        defer { connection.closeBlocking() }
        try await connection.send("event\n")
        #expect(!connection.isMidExchange)
        #expect(!connection.isBroken)
    }

    // MARK: Safe close

    @Test("close during a blocking receive: the call ends promptly with connectionClosed; the descriptor stays open until it ends")
    func closeDuringBlockingReceive() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .seconds(20)))
        let woken = DispatchSemaphore(value: 0)
        let proceed = DispatchSemaphore(value: 0)
        // Holds the woken call (on its own plain thread) until the closer has looked.
        connection.onCallWokenByClose = {
            woken.signal()
            _ = proceed.wait(timeout: .now() + 10)
        }
        let read = Task {
            try await onThread { Result { () throws(TCPConnectionError) in try connection.readLineBlocking() } }
        }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { connection.isInUse })
        let start = ContinuousClock.now
        let seen = try await onThread { () -> (woken: Bool, descriptorOpen: Bool, closes: Int) in
            connection.closeBlocking()
            let wasWoken = woken.wait(timeout: .now() + 5) == .success
            // The call is woken but has not ended: its descriptor must still be open.
            let look = (wasWoken, fcntl(connection.fileDescriptor, F_GETFD) != -1, connection.descriptorCloseCount)
            proceed.signal()
            return look
        }
        #expect(seen.woken)
        #expect(seen.descriptorOpen)
        #expect(seen.closes == 0)
        #expect(try await read.value == .failure(.connectionClosed))
        #expect(start.duration(to: .now) < .seconds(5))  // the read timeout is 20 s
        #expect(connection.descriptorCloseCount == 1)
    }

    @Test("close during an async receive: the call ends promptly with connectionClosed; the descriptor stays open until it ends")
    func closeDuringAsyncReceive() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .seconds(20)))
        let stage = Stage()
        let read = Task { await stage.readLine(connection) }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { connection.isInUse })
        let start = ContinuousClock.now
        // Runs on the stage while the read waits there, so the read cannot end before it returns.
        let seen = await stage.closeAndLook(connection)
        #expect(seen.descriptorOpen)
        #expect(seen.closes == 0)
        #expect(await read.value == .failure(.connectionClosed))
        #expect(start.duration(to: .now) < .seconds(5))  // the read timeout is 20 s
        #expect(connection.descriptorCloseCount == 1)
    }

    @Test("closing twice, from two threads during a call and again after it, closes the descriptor once")
    func closingTwiceClosesOnce() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let idle = try await TCPConnection.connect(testConfiguration(server))
        await idle.close()
        await idle.close()
        #expect(idle.descriptorCloseCount == 1)
        await #expect(throws: TCPConnectionError.connectionClosed) { try await idle.send("x\n") }

        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .seconds(20)))
        let read = Task { await readLineResult(connection) }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { connection.isInUse })
        async let one: Void = onThread { connection.closeBlocking() }
        async let two: Void = onThread { connection.closeBlocking() }
        _ = try await (one, two)
        #expect(await read.value == .failure(.connectionClosed))
        await connection.close()
        #expect(connection.descriptorCloseCount == 1)
        #expect(connection.isClosed)
        await #expect(throws: TCPConnectionError.connectionClosed) { try await connection.readLine() }
    }
}
