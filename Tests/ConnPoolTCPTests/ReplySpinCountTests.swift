import ConnPoolIO
import ConnPoolTCP
import ConnPoolTestSupport
import Testing

/// `TCPConnection` counts every call in and out of ``ReplySpin`` (the signal that lets a lone request
/// spin for its reply). A count that leaked up would turn the spin off for good; one that leaked down
/// would make every read spin, also under load.
@Suite("TCPConnection: ReplySpin accounting", .serialized, .processExclusive)
struct TCPReplySpinCountTests {
    @Test("every call, served, failed or cancelled, async or blocking, counts itself out again")
    func callsCountThemselvesOut() async throws {
        let server = try TestServer(handler: Handlers.redisLike)
        defer { server.stop() }
        let probe = TCPValidationProbe(request: "PING\r\n", expectedResponse: "+PONG\r\n")
        let connection = try await TCPConnection.connect(testConfiguration(server, probe: probe))
        defer { connection.closeBlocking() }

        // Served: sends, reads and probes, async and blocking.
        try await connection.send("PING\r\n")
        #expect(try await connection.readLine() == "+PONG")
        #expect(await connection.isValid(timeout: .seconds(2)))
        let blocking = connection
        try await onThread {
            try blocking.sendBlocking("PING\r\n")
            #expect(try blocking.readLineBlocking() == "+PONG")
            #expect(blocking.isValidBlocking(timeout: .seconds(2)))
        }

        // Failed: a read timeout (the connection breaks), then calls and a check on the broken
        // connection, which claim nothing; then on a closed one.
        let silent = try TestServer(handler: Handlers.silent)
        defer { silent.stop() }
        let quiet = try await TCPConnection.connect(testConfiguration(silent, readTimeout: .milliseconds(50)))
        await #expect(throws: TCPConnectionError.readTimedOut(timeout: .milliseconds(50))) { try await quiet.readLine() }
        await #expect(throws: TCPConnectionError.connectionBroken) { try await quiet.send("x") }
        #expect(await quiet.isValid(timeout: .seconds(1)) == false)
        await quiet.close()
        await #expect(throws: TCPConnectionError.connectionClosed) { try await quiet.readLine() }

        // Cancelled: a read that waits for data that never comes (the connection breaks).
        let waiting = try await TCPConnection.connect(testConfiguration(silent))
        defer { waiting.closeBlocking() }
        let read = Task { try await waiting.readLine() }
        read.cancel()
        await #expect(throws: CancellationError.self) { try await read.value }
        #expect(waiting.isBroken)

        // Nothing of this test is under way any more: the count is back to zero (other tests that run
        // in parallel may hold it up for a moment, hence the poll).
        #expect(await eventually(pollingEvery: .milliseconds(1)) { ReplySpin.operationsUnderWay == 0 })
    }
}
