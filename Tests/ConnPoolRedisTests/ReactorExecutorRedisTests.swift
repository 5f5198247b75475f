import ConnPool
import ConnPoolIO
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Testing

/// Redis connections used by tasks that prefer ``IOReactor/shared`` as their executor: every command's
/// wait resumes on the reactor thread, and pooled use (with waiters) works there as anywhere.
@Suite("Redis on the reactor executor", .serialized, .processExclusive)
struct ReactorExecutorRedisTests {
    @Test("pooled commands from 32 tasks on the reactor thread, 8 connections (waiters included), plain and TLS")
    func pooledCommandsOnTheReactor() async throws {
        let set = try await onThread { try TestCertificates.shared() }
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            var plain = try RedisConnectionConfiguration(host: "127.0.0.1", port: server.port)
            plain.commandTimeout = .seconds(10)
            var tls = try RedisConnectionConfiguration(host: "127.0.0.1", port: server.tlsPort!)
            tls.tls = TLSConfiguration(trustRoots: .certificateFile(set.caCertificatePath))
            tls.commandTimeout = .seconds(10)
            for (name, configuration) in [("plain", plain), ("tls", tls)] {
                let pool = try ConnectionPool(
                    factory: RedisConnectionFactory(configuration: configuration),
                    configuration: PoolConfiguration().maxSize(8).acquireTimeout(.seconds(20)))
                let key = "reactor:\(name)"
                let results = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
                    for _ in 0..<32 {
                        group.addTask(executorPreference: IOReactor.shared) {
                            var count = 0
                            var onReactor = true
                            for _ in 0..<100 {
                                _ = try await pool.withConnection { try await $0.command("INCR", key) }
                                onReactor = onReactor && IOReactor.shared.isCurrentThread
                                count += 1
                            }
                            return (count, onReactor)
                        }
                    }
                    return try await group.reduce(into: [(Int, Bool)]()) { $0.append($1) }
                }
                #expect(results.map(\.0).reduce(0, +) == 3200)
                let allOnReactor = results.allSatisfy { $0.1 }
                #expect(allOnReactor, "\(name): a task left the reactor thread")
                let total = try await pool.withConnection { try await $0.command("GET", key).string }
                #expect(total == "3200", "\(name)")
                _ = await pool.shutdown()
            }
        }
    }
}
