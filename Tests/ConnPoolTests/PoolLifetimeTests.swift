import ConnPoolTestSupport
import Testing
@testable import ConnPool

/// The public `ConnectionPool` is a handle; leases point at its runtime unretained. These tests pin the
/// lifetime rules that make that safe: the runtime outlives every lease, and goes away once the pool
/// is released and finished (no reference cycle left behind).
@Suite("Pool lifetime: handle, runtime and leases", .serialized, .processExclusive)
struct PoolLifetimeTests {
    static let configuration = PoolConfiguration().maxSize(4).acquireTimeout(.seconds(60))
        .healthCheck(interval: nil).idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1))

    @Test("a pool released without shutdown closes its idle connections, then frees its runtime")
    func releasedWithoutShutdown() async throws {
        let clock = ManualClock()
        let factory = MockFactory()
        var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
            factory: factory, configuration: Self.configuration.minSize(2), clock: .manual(clock))
        #expect(await eventually { pool?.metrics().idle == 2 })
        weak let runtime = pool?.runtime
        #expect(runtime != nil)
        pool = nil
        #expect(await eventually { factory.connections.count == 2 && factory.connections.allSatisfy(\.isClosed) })
        #expect(await eventually { runtime == nil })
    }

    @Test("a lease outlives a released pool: it still works, and its connection closes when it returns")
    func leaseOutlivesHandle() async throws {
        let clock = ManualClock()
        let factory = MockFactory()
        var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
            factory: factory, configuration: Self.configuration, clock: .manual(clock))
        let held = LeaseHolder(try await pool!.acquire())
        let idle = LeaseHolder(try await pool!.acquire())
        idle.drop()
        weak let runtime = pool?.runtime
        pool = nil
        #expect(await eventually { idle.connection.isClosed })
        // The runtime stays alive for the lease: its connection is open and its slot still leased.
        #expect(!held.connection.isClosed)
        #expect(runtime?.metrics().inUse == 1)
        #expect(runtime?.invariantViolation() == nil)
        held.drop()
        #expect(await eventually { held.connection.isClosed })
        #expect(await eventually { runtime == nil })
        #expect(held.connection.closeCount.load(ordering: .relaxed) == 1)
    }

    @Test("a lease closed by force keeps the runtime alive until it comes back")
    func forcedLeaseKeepsRuntime() async throws {
        let clock = ManualClock()
        var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
            factory: MockFactory(), configuration: Self.configuration, clock: .manual(clock))
        let late = LeaseHolder(try await pool!.acquire())
        weak let runtime = pool?.runtime
        let shutdown = Task { [pool] in await pool!.shutdown(gracePeriod: .seconds(5)) }
        #expect(await eventually { runtime?.status().health == .shuttingDown })
        clock.advance(by: .seconds(5))
        let report = await shutdown.value
        #expect(report.forceClosed == 1)
        #expect(await eventually { late.connection.isClosed })
        pool = nil
        // Every slot is empty (once the close the test saw has been booked: `isClosed` turns true in
        // `close()`, before the pool records the close), but the lease closed by force is still out: the
        // runtime must stay.
        #expect(await eventually { runtime?.metrics().total == 0 })
        #expect(runtime != nil)
        late.drop()  // stale: does nothing to the connection, lets the runtime go
        #expect(await eventually { runtime == nil })
        #expect(late.connection.closeCount.load(ordering: .relaxed) == 1)
    }

    @Test("the lease that finishes a released pool frees it safely, whatever the timing (repeated; run under ASan in CI)")
    func lastLeaseFinishesPool() async throws {
        // The release of the last lease out (here one closed by force) stops the timer, which may drop the
        // runtime's last reference while that release still runs: it must hold one of its own. Both
        // orders of the stale and the broken release are covered; AddressSanitizer reports a use after
        // free if the release touches the runtime after letting it go.
        for round in 0..<200 {
            let clock = ManualClock()
            var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
                factory: MockFactory(), configuration: Self.configuration, clock: .manual(clock))
            let late = LeaseHolder(try await pool!.acquire())
            let other = LeaseHolder(try await pool!.acquire())
            weak let runtime = pool?.runtime
            let shutdown = Task { [pool] in await pool!.shutdown(gracePeriod: .seconds(1)) }
            #expect(await eventually { runtime?.status().health == .shuttingDown })
            clock.advance(by: .seconds(1))
            _ = await shutdown.value
            pool = nil
            if round % 2 == 0 {
                late.drop()
                other.dropAsBroken()
            } else {
                other.dropAsBroken()
                late.drop()
            }
            #expect(await eventually { runtime == nil })
        }
    }

    @Test("shutdown() stops the timer and releases the runtime once the handle goes")
    func shutdownThenRelease() async throws {
        var pool: ConnectionPool<MockFactory>? = try ConnectionPool(
            factory: MockFactory(), configuration: Self.configuration)  // the system clock: a timer thread
        do {
            let lease = try await pool!.acquire()
            _ = lease.connection
        }
        weak let runtime = pool?.runtime
        let report = await pool!.shutdown()
        #expect(report.closedIdle == 1)
        pool = nil
        #expect(await eventually { runtime == nil })
    }
}
