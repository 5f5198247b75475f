import ConnPoolTestSupport
import Foundation
import Synchronization
import Testing
@testable import ConnPool

@Suite("ConnectionPool with a mock factory and a manual clock", .serialized, .processExclusive)
struct ConnectionPoolTests {
    typealias Pool = ConnectionPool<MockFactory>

    static func makePool(
        _ configuration: PoolConfiguration = PoolConfiguration().maxSize(2).acquireTimeout(.seconds(2)),
        factory: MockFactory = MockFactory(),
        clock: ManualClock = ManualClock()
    ) throws -> Pool {
        try ConnectionPool(factory: factory, configuration: configuration, clock: .manual(clock))
    }

    @Test("acquire creates, release returns to idle, the next acquire reuses it")
    func acquireReleaseCycle() async throws {
        let factory = MockFactory()
        let pool = try Self.makePool(factory: factory)
        do {
            let lease = try await pool.acquire()
            #expect(lease.connection.id == 0)
            #expect(gauges(pool.metrics()) == [0, 1, 0, 0, 0, 0])
        }
        #expect(pool.metrics().idle == 1)
        let id = try await pool.withConnection { $0.id }
        #expect(id == 0)
        #expect(factory.attempts == 1)
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("blocking acquire, withConnectionBlocking and shutdownBlocking from a plain thread")
    func blockingInterface() async throws {
        let factory = MockFactory()
        let pool = try Self.makePool(factory: factory)
        let result = LockedValue<[Int]>([])
        await TestThread {
            do {
                let lease = try pool.acquireBlocking()
                let id = lease.connection.id
                lease.release()
                let again = try pool.withConnectionBlocking { $0.id }
                result.withLock { $0 = [id, again, pool.metrics().idle] }
                let report = pool.shutdownBlocking()
                result.withLock { $0.append(report.closedIdle) }
            } catch {
                Issue.record("unexpected \(error)")
            }
        }.join()
        #expect(result.withLock { $0 } == [0, 0, 1, 1])
        #expect(factory.connections[0].isClosed)
    }

    @Test("LIFO reuse lends the most recently released connection; FIFO the oldest")
    func reuseOrder() async throws {
        for order in [PoolConfiguration.ReuseOrder.lifo, .fifo] {
            let pool = try Self.makePool(PoolConfiguration().maxSize(3).reuseOrder(order))
            let a = LeaseHolder(try await pool.acquire())
            let b = LeaseHolder(try await pool.acquire())
            let c = LeaseHolder(try await pool.acquire())
            let ids = [a, b, c].map { $0.connection.id }
            a.drop(); b.drop(); c.drop()
            let next = try await pool.withConnection { $0.id }
            #expect(next == (order == .lifo ? ids[2] : ids[0]))
            await pool.shutdown()
        }
    }

    @Test("waiters are served first come, first served, by direct hand-off")
    func fifoHandOff() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)))
        let holder = LeaseHolder(try await pool.acquire())
        let order = LockedValue<[Int]>([])
        var tasks: [Task<Void, any Error>] = []
        for index in 0..<5 {
            tasks.append(Task {
                try await pool.withConnection { _ in order.withLock { $0.append(index) } }
            })
            // Let each waiter queue before the next one arrives.
            #expect(await eventually { pool.metrics().waiting == index + 1 })
        }
        // A newcomer arriving while the others wait must not barge past them.
        holder.drop()
        for task in tasks { try await task.value }
        #expect(order.withLock { $0 } == [0, 1, 2, 3, 4])
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
    }

    @Test("a timeout throws a typed error carrying the last connect error")
    func timeoutCarriesCause() async throws {
        let clock = ManualClock()
        let factory = MockFactory(Array(repeating: .fail("connection refused"), count: 1_000))
        let pool = try Self.makePool(
            PoolConfiguration().maxSize(1).acquireTimeout(.seconds(2)).circuitBreakerThreshold(nil)
                .connectRetryBackoff(initial: .milliseconds(100), max: .milliseconds(100), jitter: 0),
            factory: factory, clock: clock)
        let task = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        // Each 100 ms the backoff timer retries once.
        for attempt in 2...5 {
            clock.advance(by: .milliseconds(100))
            #expect(await eventually { factory.attempts == attempt && pool.metrics().connecting == 0 })
        }
        clock.advance(by: .seconds(2))
        let error = await #expect(throws: ConnectionPoolError.self) { try await task.value }
        guard let error, error.code == .acquireTimeout else { Issue.record("wrong error"); return }
        #expect(error.timeout == .seconds(2))
        #expect((error.lastConnectError as? MockConnectError)?.message == "connection refused")
        #expect(error.description == "connection pool: acquire timed out after 2 s; last connect error: connection refused")
        #expect(pool.metrics().waiting == 0)
        await pool.shutdown()
    }

    @Test("a timeout with every connection busy, sync and async, at exactly the deadline")
    func timeoutWhenBusy() async throws {
        let clock = ManualClock()
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(1)), clock: clock)
        let holder = LeaseHolder(try await pool.acquire())
        let asyncWaiter = Task { try await pool.acquire(timeout: .milliseconds(500)).connection.id }
        let blockingOutcome = LockedValue<String>("")
        let thread = TestThread {
            do throws(ConnectionPoolError) {
                _ = try pool.acquireBlocking()
                blockingOutcome.withLock { $0 = "served" }
            } catch {
                blockingOutcome.withLock { $0 = "\(error)" }
            }
        }
        #expect(await eventually { pool.metrics().waiting == 2 })
        clock.advance(by: .milliseconds(499))
        #expect(pool.metrics().waiting == 2)
        clock.advance(by: .milliseconds(1))
        await #expect(throws: ConnectionPoolError.self) { try await asyncWaiter.value }
        #expect(pool.metrics().waiting == 1)
        clock.advance(by: .milliseconds(500))
        await thread.join()
        #expect(blockingOutcome.withLock { $0 }.contains("timed out after 1 s; every connection was in use"))
        holder.drop()
        #expect(pool.metrics().idle == 1)
        await pool.shutdown()
    }

    @Test("cancelling a waiting task removes the waiter at once and throws CancellationError")
    func cancelWaiter() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)))
        let holder = LeaseHolder(try await pool.acquire())
        let task = Task { try await pool.acquire().connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(pool.metrics().waiting == 0)
        holder.drop()
        // The released connection went idle, not to the cancelled waiter.
        #expect(gauges(pool.metrics()) == [1, 0, 0, 0, 0, 0])
        await pool.shutdown()
    }

    @Test("a task cancelled before it waits throws CancellationError and leaves nothing queued")
    func cancelledBeforeWaiting() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1))
        let holder = LeaseHolder(try await pool.acquire())
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await pool.acquire().connection.id
        }
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(pool.metrics().waiting == 0)
        holder.drop()
        await pool.shutdown()
    }

    @Test("a connection created for a waiter that gave up becomes idle, never lost")
    func creationOutlivesCancelledWaiter() async throws {
        let factory = MockFactory([.suspend])
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)), factory: factory)
        let task = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.suspendedCount == 1 })
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(pool.metrics().connecting == 1)
        factory.resumeSuspended()
        #expect(await eventually { pool.metrics().idle == 1 })
        #expect(pool.metrics().total == 1)
        #expect(pool.invariantViolation() == nil)
        let id = try await pool.withConnection { $0.id }
        #expect(id == 0)
        #expect(factory.attempts == 1)
        await pool.shutdown()
    }

    @Test("a failed creation frees its slot and the next attempt serves the waiter")
    func creationFailureThenSuccess() async throws {
        let clock = ManualClock()
        let factory = MockFactory([.fail("refused"), .fail("refused")])
        let pool = try Self.makePool(
            PoolConfiguration().maxSize(1).connectRetryBackoff(initial: .milliseconds(10), max: .seconds(1), jitter: 0),
            factory: factory, clock: clock)
        let task = Task { try await pool.acquire().connection.id }
        #expect(await eventually { factory.attempts == 1 && pool.metrics().connecting == 0 })
        #expect(pool.metrics().total == 0)  // the failed attempt's slot is free
        clock.advance(by: .milliseconds(10))
        #expect(await eventually { factory.attempts == 2 && pool.metrics().connecting == 0 })
        clock.advance(by: .milliseconds(20))
        #expect(try await task.value == 0)
        #expect(factory.attempts == 3)
        await pool.shutdown()
    }

    @Test("a connection returned as broken, or reporting isBroken, is closed and replaced")
    func brokenRelease() async throws {
        let factory = MockFactory()
        let pool = try Self.makePool(PoolConfiguration().maxSize(1), factory: factory)
        let lease = try await pool.acquire()
        let first = lease.connection
        lease.releaseAsBroken()
        #expect(await eventually { first.isClosed && pool.metrics().total == 0 })
        let second = try await pool.withConnection { connection in
            connection.broken.store(true, ordering: .relaxed)
            return connection
        }
        #expect(second.id == 1)
        #expect(await eventually { second.isClosed && pool.metrics().total == 0 })
        let third = try await pool.withConnection { $0.id }
        #expect(third == 2)
        #expect(first.closeCount.load(ordering: .relaxed) == 1)
        await pool.shutdown()
    }

    @Test("a broken release with a waiter queued replaces the connection for that waiter")
    func brokenReleaseServesWaiter() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)))
        let holder = LeaseHolder(try await pool.acquire())
        let task = Task { try await pool.acquire().connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        holder.connection.broken.store(true, ordering: .relaxed)
        holder.drop()
        #expect(try await task.value == 1)
        await pool.shutdown()
    }

    @Test("shutdown closes idle connections now, leased ones on return, and refuses new acquires")
    func shutdown() async throws {
        let factory = MockFactory()
        let pool = try Self.makePool(PoolConfiguration().maxSize(2).acquireTimeout(.seconds(60)), factory: factory)
        let held = LeaseHolder(try await pool.acquire())
        let idle = LeaseHolder(try await pool.acquire())
        let idleConnection = idle.connection
        idle.drop()
        #expect(pool.metrics().idle == 1)
        let shutdown = Task { await pool.shutdown() }
        #expect(await eventually { idleConnection.isClosed })
        #expect(!held.connection.isClosed)
        await #expect(throws: ConnectionPoolError.self) { try await pool.acquire() }
        #expect(throws: ConnectionPoolError.self) { try pool.acquireBlocking() }
        held.drop()
        await shutdown.value
        #expect(held.connection.isClosed)
        #expect(pool.metrics().total == 0)
        #expect(factory.connections.allSatisfy { $0.closeCount.load(ordering: .relaxed) == 1 })
    }

    @Test("shutdown fails waiting callers, async and blocking, with shutDown")
    func shutdownFailsWaiters() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)))
        let held = LeaseHolder(try await pool.acquire())
        let waiter = Task { try await pool.acquire().connection.id }
        let blockingOutcome = LockedValue<String>("")
        let thread = TestThread {
            do throws(ConnectionPoolError) {
                _ = try pool.acquireBlocking()
                blockingOutcome.withLock { $0 = "served" }
            } catch {
                blockingOutcome.withLock { $0 = "\(error)" }
            }
        }
        #expect(await eventually { pool.metrics().waiting == 2 })
        let shutdown = Task { await pool.shutdown() }
        let error = await #expect(throws: ConnectionPoolError.self) { try await waiter.value }
        #expect(error?.code == .shutDown)
        #expect(error?.description.contains("shut down") == true)
        await thread.join()
        #expect(blockingOutcome.withLock { $0 }.contains("shut down"))
        held.drop()
        await shutdown.value
        #expect(held.connection.isClosed)
    }

    @Test("maxWaiters sheds acquires beyond the limit at once")
    func loadShedding() async throws {
        let pool = try Self.makePool(PoolConfiguration().maxSize(1).maxWaiters(1).acquireTimeout(.seconds(60)))
        let holder = LeaseHolder(try await pool.acquire())
        let waiter = Task { try await pool.acquire().connection.id }
        #expect(await eventually { pool.metrics().waiting == 1 })
        await #expect(throws: ConnectionPoolError.self) { try await pool.acquire() }
        holder.drop()
        _ = try await waiter.value
        await pool.shutdown()
    }
}
