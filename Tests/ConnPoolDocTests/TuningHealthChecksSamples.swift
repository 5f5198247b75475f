import ConnPool
import ConnPoolTestSupport
import Testing

// The samples of TuningHealthChecks.md, verbatim. They run on a ManualClock against the KV example
// backend, whose server a test can take down and bring back.

func healthConfiguration() -> PoolConfiguration {
    PoolConfiguration()
        .minSize(2)
        .maxSize(20)
        .maintenanceInterval(.seconds(5))
        .healthCheck(interval: .seconds(30), timeout: .seconds(2))
        .validateOnAcquire(true, bypassWindow: .milliseconds(500))
        .maxLifetime(.seconds(1800), jitter: 0.1)
        .idleTimeout(.seconds(300))
        .connectRetryBackoff(initial: .milliseconds(50), multiplier: 2, max: .seconds(5), jitter: 0.2)
        .circuitBreakerThreshold(3)
        .shutdownGracePeriod(.seconds(20))
}

func backgroundCheckReplacesADeadConnection(server: FakeKVServer) async throws {
    let clock = ManualClock()
    let pool = try ConnectionPool(
        factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
        configuration: PoolConfiguration()
            .minSize(1)
            .healthCheck(interval: .seconds(30)),
        clock: .manual(clock))
    try await pool.warm()

    server.goDown()  // the server restarts: the idle connection is dead
    server.comeBack()
    clock.advance(by: .seconds(30))  // a maintenance round checks the connection, idle for 30 s

    // Closed, and minSize refilled. A close counts when it has finished, so the replacement can be
    // counted first: wait for both.
    #expect(await eventually {
        let metrics = pool.metrics()
        return metrics.created == 2 && metrics.closedByReason[.health] == 1
    })
    #expect(pool.metrics().healthCheckFailures == 1)
    await pool.shutdown()
}

func validateOnAcquireHidesADeadConnection(server: FakeKVServer) async throws {
    let clock = ManualClock()
    let pool = try ConnectionPool(
        factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
        configuration: PoolConfiguration()
            .maxSize(1)
            .healthCheck(interval: nil)
            .validateOnAcquire(true, bypassWindow: .milliseconds(500)),
        clock: .manual(clock))
    try await pool.withConnection { kv in try await kv.set("key", "value") }

    server.goDown()
    server.comeBack()
    clock.advance(by: .seconds(1))  // longer than the bypass window: the next acquire checks first

    let value = try await pool.withConnection { kv in try await kv.get("key") }
    #expect(value == "value")  // served by a new connection; the caller never saw the dead one
    #expect(await eventually { pool.metrics().closedByReason[.health] == 1 })  // counted once closed
    await pool.shutdown()
}

func circuitBreakerOpensAndCloses(server: FakeKVServer) async throws {
    let clock = ManualClock()
    let pool = try ConnectionPool(
        factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
        configuration: PoolConfiguration()
            .connectRetryBackoff(initial: .milliseconds(100), multiplier: 2, max: .seconds(1), jitter: 0)
            .circuitBreakerThreshold(3),
        clock: .manual(clock))
    server.goDown()

    // The first acquire waits while the pool tries, backing off 100 ms, then 200 ms.
    let first = Task { try await pool.withConnection { _ in } }
    #expect(await eventually { pool.metrics().creationFailures == 1 })
    clock.advance(by: .milliseconds(100))
    #expect(await eventually { pool.metrics().creationFailures == 2 })
    clock.advance(by: .milliseconds(200))

    // The third failure opens the breaker: waiting and new acquires fail fast.
    await #expect(throws: ConnectionPoolError.self) { try await first.value }
    do {
        try await pool.withConnection { _ in }
        Issue.record("expected the acquire to fail fast")
    } catch let error as ConnectionPoolError where error.code == .connectFailing {
        #expect(error.consecutiveFailures == 3)
        #expect(error.lastConnectError is KVError)
    }
    #expect(pool.status().health == .failing)

    // One probe keeps retrying; its first success closes the breaker.
    server.comeBack()
    clock.advance(by: .milliseconds(400))
    #expect(await eventually { pool.metrics().created == 1 })
    #expect(pool.status().health == .healthy)
    try await pool.withConnection { _ in }
    await pool.shutdown()
}

func warmUpExplicitly(factory: KVConnectionFactory) async throws -> ConnectionPool<KVConnectionFactory> {
    let pool = try ConnectionPool(
        factory: factory,
        configuration: PoolConfiguration().minSize(4).warmUpOnInit(false))
    try await pool.warm()  // returns once 4 connections are open, or throws the first connect error
    return pool
}

func shutdownWithAGracePeriod(server: FakeKVServer) async throws {
    let clock = ManualClock()
    let pool = try ConnectionPool(
        factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
        clock: .manual(clock))
    let forgotten = try await pool.acquire()  // a lease that is never returned

    let shutdown = Task { await pool.shutdown(gracePeriod: .seconds(5)) }
    #expect(await eventually { pool.status().health == .shuttingDown })
    clock.advance(by: .seconds(5))
    let report = await shutdown.value
    #expect(report.forceClosed == 1)
    print(report)  // shutdown: 0 idle closed, 0 closed on return, 1 force-closed, ...
    _ = consume forgotten  // stale now: returning it does nothing
}

@Suite("Tuning health checks", .serialized, .processExclusive)
struct TuningHealthChecksSamples {
    @Test("the configuration of the article is valid")
    func configurationIsValid() throws {
        try healthConfiguration().validate()
    }

    @Test("a background health check replaces a dead idle connection")
    func backgroundCheck() async throws {
        try await backgroundCheckReplacesADeadConnection(server: FakeKVServer.start())
    }

    @Test("validate on acquire hides a dead connection from the caller")
    func validateOnAcquire() async throws {
        try await validateOnAcquireHidesADeadConnection(server: FakeKVServer.start())
    }

    @Test("the circuit breaker opens after the threshold and closes on the probe's success")
    func circuitBreaker() async throws {
        try await circuitBreakerOpensAndCloses(server: FakeKVServer.start())
    }

    @Test("warm() opens minSize connections and waits for them")
    func warmUp() async throws {
        let server = FakeKVServer.start()
        let pool = try await warmUpExplicitly(factory: KVConnectionFactory(host: "127.0.0.1", port: server.port))
        #expect(pool.metrics().idle == 4)
        await pool.shutdown()
    }

    @Test("without warm-up on init, the first maintenance round opens minSize connections")
    func maintenanceRefillsMinSize() async throws {
        let server = FakeKVServer.start()
        let clock = ManualClock()
        let pool = try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().minSize(2).warmUpOnInit(false).maintenanceInterval(.seconds(5)),
            clock: .manual(clock))
        #expect(pool.metrics().total == 0)
        clock.advance(by: .seconds(5))
        #expect(await eventually { pool.metrics().idle == 2 })
        await pool.shutdown()
    }

    @Test("a lease still out at the end of the grace period is closed by force")
    func gracePeriod() async throws {
        try await shutdownWithAGracePeriod(server: FakeKVServer.start())
    }
}
