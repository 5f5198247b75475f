// The snippets of ConnPoolTCP.docc, verbatim (ModuleCatalogTests checks them), run against a real
// redis-server: its inline commands make it a line server (`PING\r\n` → `+PONG\r\n`).
import ConnPool
import ConnPoolTCP
import RedisServerLauncher
import Testing
import ConnPoolTestSupport

func askLineServer(port: Int) async throws -> String {
    let configuration = TCPConnectionConfiguration(
        host: "127.0.0.1", port: port, readTimeout: .seconds(2),
        validationProbe: TCPValidationProbe(request: "PING\r\n", expectedResponse: "+PONG\r\n"))
    let pool = try ConnectionPool(
        factory: TCPConnectionFactory(configuration: configuration),
        configuration: PoolConfiguration().maxSize(4).minSize(0))
    let reply = try await pool.withConnection { connection in
        try await connection.send("PING\r\n")
        return try await connection.readLine()  // without the "\r\n"
    }
    await pool.shutdown()
    return reply
}

@Suite("ConnPoolTCP.docc samples", .serialized, .processExclusive)
struct TCPGuideSampleTests {
    @Test("the TCP snippet runs against a line server")
    func sampleRuns() async throws {
        try await RedisServerProcess.withServer { server in
            let reply = try await askLineServer(port: server.port)
            #expect(reply == "+PONG")
        }
    }
}
