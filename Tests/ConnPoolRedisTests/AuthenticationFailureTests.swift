import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Testing

/// A wrong password is permanent: the pool must not retry it like a refused connect.
@Suite("Redis: authentication failures are permanent", .serialized, .processExclusive)
struct AuthenticationFailureTests {
    @Test("a wrong password fails acquires at once with connectFailing that says so, not after the acquire timeout")
    func wrongPasswordFailsFast() async throws {
        try await RedisServerProcess.withServer(extraArguments: ["--requirepass", "right-password"]) { server in
            var redis = try RedisConnectionConfiguration(port: server.port)
            redis.password = "wrong-password"
            // No circuit breaker threshold and a long acquire timeout: only the permanent error makes
            // the acquire fail before 60 s.
            let pool = try ConnectionPool(
                factory: RedisConnectionFactory(configuration: redis),
                configuration: PoolConfiguration().maxSize(2).minSize(0).acquireTimeout(.seconds(60))
                    .circuitBreakerThreshold(nil).connectRetryBackoff(initial: .milliseconds(1), multiplier: 2, max: .seconds(30), jitter: 0))
            let started = ContinuousClock.now
            do {
                try await pool.withConnection { _ in Issue.record("lent a connection with a wrong password") }
            } catch let error as ConnectionPoolError {
                #expect(error.code == .connectFailing)
                #expect(ContinuousClock.now - started < .seconds(30))
                let text = "\(error)"
                #expect(text.contains("permanent"))
                #expect(text.contains("WRONGPASS") || text.contains("invalid"))
                #expect(!text.contains("wrong-password"))
                let cause = error.lastConnectError as? RedisError
                #expect(cause?.isPermanent == true)
                if case .authenticationFailed? = cause {} else { Issue.record("expected authenticationFailed, got \(String(describing: cause))") }
            }
            // Not retried like a refused connect (1 ms, 2 ms, 4 ms, …): the probe waits the maximum backoff.
            #expect(pool.metrics().creationFailures == 1)
            await pool.shutdown()
        }
    }
}
