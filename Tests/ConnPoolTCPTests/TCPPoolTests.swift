import ConnPool
import ConnPoolTCP
import ConnPoolTestSupport
import Foundation
import Testing

@Suite("ConnectionPool over TCPConnection", .serialized, .processExclusive)
struct TCPPoolTests {
    @Test("64 concurrent tasks share a pool of 8 TCP connections to a loopback line server")
    func sixtyFourConcurrentTasks() async throws {
        let server = try TestServer(handler: Handlers.redisLike)
        defer { server.stop() }
        let probe = TCPValidationProbe(request: "PING\r\n", expectedResponse: "+PONG\r\n")
        let factory = try TCPConnectionFactory(configuration: testConfiguration(server, probe: probe))
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(8).acquireTimeout(.seconds(20)))

        let tasks = 64
        let requestsPerTask = 25
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var mismatches = 0
                    for request in 0..<requestsPerTask {
                        let text = "task \(task) request \(request)"
                        let reply = try await pool.withConnection { connection in
                            try await connection.send("ECHO \(text)\n")
                            return try await connection.readLine()
                        }
                        if reply != text { mismatches += 1 }
                        #expect(pool.metrics().total <= 8)
                    }
                    return mismatches
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        let metrics = pool.metrics()
        #expect(metrics.total <= 8)
        #expect(metrics.inUse == 0)
        #expect(server.accepted <= 8)

        // A lease works the same way, and the pooled connection passes the probe.
        let lease = try await pool.acquire()
        #expect(await lease.connection.isValid(timeout: .seconds(2)))
        try await lease.connection.send("PING\n")
        #expect(try await lease.connection.readLine() == "+PONG")
        lease.release()
        await pool.shutdown()
    }

    @Test("plain threads share the pool through the blocking interface")
    func blockingThreads() async throws {
        let server = try TestServer(handler: Handlers.echoLines)
        defer { server.stop() }
        let factory = try TCPConnectionFactory(configuration: testConfiguration(server))
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(4))
        let results = try await withThrowingTaskGroup(of: Bool.self) { group in
            for thread in 0..<8 {
                group.addTask {
                    try await onThread {
                        for request in 0..<20 {
                            let text = "thread \(thread) request \(request)"
                            let reply = try pool.withConnectionBlocking { connection in
                                try connection.sendBlocking(text + "\n")
                                return try connection.readLineBlocking()
                            }
                            if reply != text { return false }
                        }
                        return true
                    }
                }
            }
            return try await group.reduce(true) { $0 && $1 }
        }
        #expect(results)
        #expect(pool.metrics().total <= 4)
        _ = try await onThread { pool.shutdownBlocking() }  // the blocking form, from a plain thread too
    }

    @Test("a connection broken by a timeout is discarded by the pool and replaced")
    func brokenConnectionIsReplaced() async throws {
        // Answers every line but "SLOW", which it never answers.
        let server = try TestServer { peer in
            while let line = peer.readLine() {
                if line == "SLOW" { continue }
                guard peer.write(line + "\n") else { return }
            }
        }
        defer { server.stop() }
        let factory = try TCPConnectionFactory(configuration: testConfiguration(server, readTimeout: .milliseconds(100)))
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(1))
        await #expect(throws: TCPConnectionError.readTimedOut(timeout: .milliseconds(100))) {
            try await pool.withConnection { connection in
                try await connection.send("SLOW\n")
                return try await connection.readLine()
            }
        }
        // The broken connection was closed on release; the next borrower gets a fresh one.
        let reply = try await pool.withConnection { connection in
            try await connection.send("fresh\n")
            return try await connection.readLine()
        }
        #expect(reply == "fresh")
        #expect(await eventually(pollingEvery: .milliseconds(2)) { server.accepted == 2 })
        await pool.shutdown()
    }
}
