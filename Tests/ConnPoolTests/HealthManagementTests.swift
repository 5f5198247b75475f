import ConnPoolTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import ConnPool

/// Every timing rule of health management, driven by a manual clock: no sleeping.
@Suite("Health management with a manual clock", .serialized, .processExclusive)
struct HealthManagementTests {
    static func makePool(
        _ configuration: PoolConfiguration, factory: MockFactory = MockFactory(), clock: ManualClock
    ) throws -> ConnectionPool<MockFactory> {
        try ConnectionPool(factory: factory, configuration: configuration, clock: .manual(clock))
    }

    static let quiet = PoolConfiguration().maxSize(4).acquireTimeout(.seconds(60))
        .healthCheck(interval: nil).idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1))

    @Test("a connection past maxLifetime is closed: idle at the next round, leased on release")
    func maxLifetime() async throws {
        let clock = ManualClock()
        let factory = MockFactory()
        let pool = try Self.makePool(Self.quiet.maxLifetime(.seconds(10), jitter: 0), factory: factory, clock: clock)
        let idle = LeaseHolder(try await pool.acquire())
        let leased = LeaseHolder(try await pool.acquire())
        idle.drop()
        clock.advance(by: .seconds(9))
        #expect(pool.metrics().idle == 1)
        #expect(!idle.connection.isClosed)
        clock.advance(by: .seconds(1))  // the 10 s round
        #expect(await eventually { idle.connection.isClosed })
        #expect(!leased.connection.isClosed)
        leased.drop()  // returned after its lifetime: closed instead of parked
        #expect(await eventually { leased.connection.isClosed && pool.metrics().total == 0 })
        let fresh = try await pool.withConnection { $0.id }
        #expect(fresh == 2)
        await pool.shutdown()
    }

    @Test("lifetime jitter shortens each lifetime by at most the jitter fraction, and spreads them")
    func lifetimeJitterBounds() {
        var machine = PoolStateMachine(configuration: PoolConfiguration().maxLifetime(.seconds(100), jitter: 0.1))
        defer { machine.deallocate() }
        var seen = Set<Int64>()
        for _ in 0..<1_000 {
            let expiry = machine.expiry(createdAt: 5)
            #expect(expiry >= 5 + 90_000_000_000 && expiry <= 5 + 100_000_000_000)
            seen.insert(expiry / 1_000_000_000)
        }
        #expect(seen.count >= 8)
    }

    @Test("idle connections above minSize close after idleTimeout; minSize stays")
    func idleTimeout() async throws {
        let clock = ManualClock()
        let pool = try Self.makePool(Self.quiet.minSize(1).idleTimeout(.seconds(30)).warmUpOnInit(false), clock: clock)
        let a = LeaseHolder(try await pool.acquire())
        let b = LeaseHolder(try await pool.acquire())
        let c = LeaseHolder(try await pool.acquire())
        a.drop(); b.drop(); c.drop()
        clock.advance(by: .seconds(29))
        #expect(pool.metrics().idle == 3)
        clock.advance(by: .seconds(1))
        #expect(await eventually { pool.metrics().total == 1 })
        #expect(pool.metrics().idle == 1)
        // The least recently used closed first; the most recent (LIFO head) stays.
        #expect(a.connection.isClosed && b.connection.isClosed && !c.connection.isClosed)
        clock.advance(by: .seconds(60))
        #expect(pool.metrics().idle == 1)  // never below minSize
        await pool.shutdown()
    }

    @Test("background health checks close idle connections that fail and keep those that pass")
    func backgroundHealthCheck() async throws {
        let clock = ManualClock()
        let pool = try Self.makePool(Self.quiet.healthCheck(interval: .seconds(10)), clock: clock)
        let good = LeaseHolder(try await pool.acquire())
        let bad = LeaseHolder(try await pool.acquire())
        bad.connection.valid.store(false, ordering: .relaxed)
        good.drop(); bad.drop()
        clock.advance(by: .seconds(9))
        #expect(good.connection.validations.load(ordering: .relaxed) == 0)
        clock.advance(by: .seconds(1))
        #expect(await eventually { bad.connection.isClosed && pool.metrics().validating == 0 })
        #expect(good.connection.validations.load(ordering: .relaxed) == 1)
        #expect(!good.connection.isClosed)
        #expect(pool.metrics().idle == 1)
        // Checked again only after another full interval.
        clock.advance(by: .seconds(5))
        #expect(good.connection.validations.load(ordering: .relaxed) == 1)
        clock.advance(by: .seconds(5))
        #expect(await eventually { good.connection.validations.load(ordering: .relaxed) == 2 })
        #expect(await eventually { pool.metrics().idle == 1 })
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
    }

    @Test("validate on acquire: skipped inside the bypass window, a failing connection is replaced")
    func validateOnAcquire() async throws {
        let clock = ManualClock()
        let factory = MockFactory()
        let pool = try Self.makePool(
            Self.quiet.maxSize(1).validateOnAcquire(true, bypassWindow: .milliseconds(500)), factory: factory, clock: clock)
        let first = try await pool.withConnection { $0 }
        clock.advance(by: .milliseconds(400))
        first.valid.store(false, ordering: .relaxed)
        let again = try await pool.withConnection { $0.id }  // inside the window: no check
        #expect(again == 0)
        #expect(first.validations.load(ordering: .relaxed) == 0)
        clock.advance(by: .milliseconds(600))
        let replaced = try await pool.withConnection { $0.id }  // checked, failed, replaced
        #expect(replaced == 1)
        #expect(first.validations.load(ordering: .relaxed) == 1)
        #expect(await eventually { first.isClosed })
        // The blocking interface checks the same way.
        clock.advance(by: .seconds(1))
        let replacement = factory.connections[1]
        let outcome = LockedValue<Int>(-1)
        await TestThread { outcome.withLock { $0 = (try? pool.withConnectionBlocking { $0.id }) ?? -2 } }.join()
        #expect(outcome.withLock { $0 } == 1)
        #expect(replacement.validations.load(ordering: .relaxed) == 1)
        await pool.shutdown()
    }

    @Test("minSize is opened at init and refilled after a connection closes")
    func minSizeRefill() async throws {
        let clock = ManualClock()
        let factory = MockFactory()
        let pool = try Self.makePool(Self.quiet.minSize(2), factory: factory, clock: clock)
        #expect(await eventually { pool.metrics().idle == 2 })
        let lease = try await pool.acquire()
        lease.releaseAsBroken()
        #expect(await eventually { factory.connections.count == 3 && pool.metrics().idle == 2 })
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
    }

    @Test("warm() opens minSize with at most maxConcurrentConnects attempts at once")
    func warmRespectsConcurrency() async throws {
        let clock = ManualClock()
        let factory = MockFactory(Array(repeating: .suspend, count: 5))
        let pool = try Self.makePool(
            Self.quiet.maxSize(8).minSize(5).warmUpOnInit(false).maxConcurrentConnects(2), factory: factory, clock: clock)
        #expect(factory.attempts == 0)
        let warm = Task { try await pool.warm() }
        // Both permitted attempts start together; waiting for just one of them would race the second.
        #expect(await eventually { factory.suspendedCount == 2 })
        var maxInFlight = 0
        while factory.connections.count < 5 {
            #expect(await eventually { factory.suspendedCount > 0 })
            maxInFlight = max(maxInFlight, factory.suspendedCount)
            #expect(pool.metrics().connecting <= 2)
            factory.resumeSuspended()
            _ = await eventually { pool.metrics().connecting == 0 || factory.suspendedCount > 0 }
        }
        try await warm.value
        #expect(maxInFlight == 2)
        #expect(pool.metrics().idle == 5)
        await pool.shutdown()
    }

    @Test("after N consecutive failures acquires fail fast; the first success closes the breaker")
    func circuitBreaker() async throws {
        let clock = ManualClock()
        let factory = MockFactory(Array(repeating: .fail("connection refused"), count: 3))
        let pool = try Self.makePool(
            Self.quiet.maxSize(2).circuitBreakerThreshold(3)
                .connectRetryBackoff(initial: .milliseconds(100), multiplier: 2, max: .seconds(1), jitter: 0),
            factory: factory, clock: clock)
        let waiter = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(100))
        #expect(await eventually { factory.attempts == 2 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(200))  // third failure opens the breaker
        let error = await #expect(throws: ConnectionPoolError.self) { try await waiter.value }
        guard let error, error.code == .connectFailing else { Issue.record("wrong error \(String(describing: error))"); return }
        #expect(error.consecutiveFailures == 3)
        #expect(error.lastConnectError.map { "\($0)" } == "connection refused")
        // New acquires fail at once, without waiting for any timeout.
        await #expect(throws: ConnectionPoolError.self) { try await pool.acquire() }
        #expect(throws: ConnectionPoolError.self) { try pool.acquireBlocking() }
        // One probe retries after the backoff (400 ms) and succeeds: the breaker closes.
        #expect(factory.attempts == 3)
        clock.advance(by: .milliseconds(400))
        #expect(await eventually { pool.metrics().idle == 1 })
        #expect(factory.attempts == 4)
        let id = try await pool.withConnection { $0.id }
        #expect(id == 0)
        await pool.shutdown()
    }

    @Test("shutdown force-closes leases still out when the grace period ends and reports it")
    func shutdownGracePeriod() async throws {
        let clock = ManualClock()
        let pool = try Self.makePool(Self.quiet, clock: clock)
        let early = LeaseHolder(try await pool.acquire())
        let late = LeaseHolder(try await pool.acquire())
        let idle = LeaseHolder(try await pool.acquire())
        idle.drop()
        let shutdown = Task { await pool.shutdown(gracePeriod: .seconds(5)) }
        #expect(await eventually { idle.connection.isClosed })
        early.drop()
        #expect(await eventually { early.connection.isClosed })
        clock.advance(by: .seconds(4))
        #expect(!late.connection.isClosed)
        clock.advance(by: .seconds(1))
        let report = await shutdown.value
        #expect(report.closedIdle == 1)
        #expect(report.closedOnReturn == 1)
        #expect(report.forceClosed == 1)
        #expect(await eventually { late.connection.isClosed })
        late.drop()  // a stale lease: returning it does nothing
        #expect(late.connection.closeCount.load(ordering: .relaxed) == 1)
        #expect(pool.metrics().total == 0)
    }

    @Test("a ServiceGroup runs the pool and shuts it down on graceful shutdown")
    func serviceLifecycle() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(factory: factory, configuration: Self.quiet.minSize(1))
        let group = ServiceGroup(services: [pool], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        #expect(await eventually { pool.metrics().idle == 1 })
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(factory.connections.allSatisfy { $0.isClosed })
        await #expect(throws: ConnectionPoolError.self) { try await pool.acquire() }
    }

    @Test("timeouts and lifetimes of centuries mean never: no trap, no wrapped deadline in the past")
    func hugeDurationsSaturate() async throws {
        let clock = ManualClock(start: .seconds(1_000))
        var machine = PoolStateMachine(configuration: PoolConfiguration().maxLifetime(.seconds(Int64.max), jitter: 0))
        defer { machine.deallocate() }
        #expect(machine.expiry(createdAt: 1_000_000_000_000) == .max)
        let pool = try Self.makePool(
            Self.quiet.maxSize(1).maxLifetime(.seconds(Int64.max / 4), jitter: 0.01).acquireTimeout(.seconds(Int64.max)),
            clock: clock)
        let held = LeaseHolder(try await pool.acquire())
        let waiter = Task { try await pool.acquire().connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        clock.advance(by: .seconds(3_600))
        #expect(pool.metrics().waiting == 1)  // not timed out by a wrapped deadline
        held.drop()
        #expect(try await waiter.value == 0)  // handed over, not closed for an expired lifetime
        #expect(pool.metrics().closed == 0)
        await pool.shutdown()
    }
}
