import ConnPoolIO
import ConnPoolRedis
import ConnPoolTestSupport
import Testing

/// `RedisConnection` counts every operation in and out of ``ReplySpin`` (the signal that lets a lone
/// request spin for its reply). A count that leaked up would turn the spin off for good; one that leaked
/// down would make every request spin, also under load.
@Suite("RedisConnection: ReplySpin accounting", .serialized, .processExclusive)
struct ReplySpinCountTests {
    @Test("every operation, served or failed, async or blocking, counts itself out again")
    func operationsCountThemselvesOut() async throws {
        var configuration = try await SharedServer.configuration()
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        let key = uniqueKey()

        // Served: commands, a pipeline and checks, async and blocking.
        #expect(try await connection.command("SET", key, "1") == .status("OK"))
        #expect(try await connection.pipeline([["INCR", .string(key)], ["GET", .string(key)]]).count == 2)
        #expect(await connection.isValid(timeout: .seconds(2)))
        let blocking = connection
        let value = try await onThread { () -> RedisReply in
            #expect(blocking.isValidBlocking(timeout: .seconds(2)))
            _ = try blocking.pipelineBlocking([["PING"], ["PING"]])
            return try blocking.commandBlocking("GET", key)
        }
        #expect(value == .bulkString(Array("2".utf8)))

        // Failed with a server error.
        let serverError = await expectRedisError { _ = try await connection.command("NOSUCHCOMMAND") }
        #expect(serverError?.isConnectionError == false)

        // Failed without I/O (the connection is in use: it cannot be claimed, nothing is counted in), then
        // by cancellation (the connection breaks), then on a broken and on a closed connection.
        let name = "spin-count-\(UInt32.random(in: 0...UInt32.max))"
        configuration.clientName = name
        let other = try await RedisConnection.connect(configuration: configuration)
        defer { other.closeBlocking() }
        let blocked = Task { try await other.command("BLPOP", uniqueKey(), 0) }
        #expect(try await waitUntilClientRuns("blpop", named: name, observer: connection))
        #expect(await expectRedisError { _ = try await other.command("PING") } == .concurrentUse)
        #expect(other.isValidBlocking(timeout: .seconds(1)) == false)
        blocked.cancel()
        _ = try? await blocked.value
        #expect(other.isBroken)
        _ = await expectRedisError { _ = try await other.command("PING") }
        #expect(await other.isValid(timeout: .seconds(1)) == false)
        await other.close()
        _ = await expectRedisError { _ = try await other.command("PING") }

        // Nothing of this test is under way any more: the count is back to zero (other tests that run
        // in parallel may hold it up for a moment, hence the poll).
        #expect(await eventually(pollingEvery: .milliseconds(1)) { ReplySpin.operationsUnderWay == 0 })
    }
}
