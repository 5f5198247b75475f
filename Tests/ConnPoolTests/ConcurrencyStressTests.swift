import ConnPoolTestSupport
import Foundation
import Synchronization
import Testing
@testable import ConnPool

@Suite("ConnectionPool under concurrency", .serialized, .processExclusive)
struct ConcurrencyStressTests {
    /// Plain threads that each borrow `iterations` times, alternating the blocking closure and lease forms;
    /// errors are recorded in `violations`.
    static func blockingBorrowers(
        _ count: Int, iterations: Int, pool: ConnectionPool<MockFactory>, violations: LockedValue<[String]>,
        use: @escaping @Sendable (MockConnection) -> Void
    ) -> [TestThread] {
        (0..<count).map { _ in
            TestThread {
                for index in 0..<iterations {
                    do {
                        if index % 2 == 0 {
                            try pool.withConnectionBlocking { use($0) }
                        } else {
                            let lease = try pool.acquireBlocking()
                            use(lease.connection)
                        }
                    } catch {
                        violations.withLock { $0.append("thread: \(error)") }
                    }
                }
            }
        }
    }

    @Test("64 tasks and 8 threads mixing both interfaces never exceed maxSize nor share a connection")
    func maxSizeHeldUnderContention() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(6).acquireTimeout(.seconds(30)))
        let violations = LockedValue<[String]>([])
        let maxSeen = LockedValue<Int>(0)
        let iterations = 300

        @Sendable func use(_ connection: MockConnection) {
            if !connection.beginBorrow() {
                violations.withLock { $0.append("connection \(connection.id) held by two borrowers") }
            }
            let metrics = pool.metrics()
            maxSeen.withLock { $0 = max($0, metrics.total) }
            if let violation = pool.invariantViolation() {
                violations.withLock { $0.append(violation) }
            }
            connection.endBorrow()
        }

        let threads = Self.blockingBorrowers(8, iterations: iterations, pool: pool, violations: violations, use: use)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<64 {
                group.addTask {
                    for index in 0..<iterations {
                        if (index + task) % 3 == 0 {
                            try await pool.withConnection { use($0); await Task.yield() }
                        } else {
                            let lease = try await pool.acquire()
                            use(lease.connection)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        for thread in threads { await thread.join() }
        #expect(violations.withLock { $0 } == [])
        #expect(maxSeen.withLock { $0 } <= 6)
        #expect(factory.connections.count <= 6)
        #expect(pool.metrics().inUse == 0)
        #expect(pool.metrics().waiting == 0)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("random cancellation and short timeouts leak nothing and the pool still serves")
    func cancellationStorm() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(3).acquireTimeout(.milliseconds(5)))
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<200 {
                group.addTask {
                    let inner = Task {
                        try await pool.withConnection { connection in
                            #expect(connection.beginBorrow())
                            await Task.yield()
                            connection.endBorrow()
                        }
                    }
                    if task % 3 == 0 { inner.cancel() }
                    _ = try? await inner.value
                }
            }
        }
        #expect(await eventually { pool.metrics().inUse == 0 && pool.metrics().waiting == 0 && pool.metrics().connecting == 0 })
        #expect(pool.invariantViolation() == nil)
        #expect(pool.metrics().total == factory.connections.filter { !$0.isClosed }.count)
        #expect(pool.metrics().total <= 3)
        let id = try await pool.withConnection(timeout: .seconds(5)) { $0.id }
        #expect(id >= 0)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("the lock-free fast lane under contention: no double lease, exact acquire count, nothing lost")
    func fastLaneUnderContention() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(4).acquireTimeout(.seconds(30)))
        let violations = LockedValue<[String]>([])
        let threadOps = 4_000, taskOps = 1_000
        let stop = Atomic<Bool>(false)
        @Sendable func use(_ connection: MockConnection) {
            if !connection.beginBorrow() {
                violations.withLock { $0.append("connection \(connection.id) held by two borrowers") }
            }
            connection.endBorrow()
        }
        // Drains the idle stack over and over while the others park and take connections.
        let inspector = TestThread {
            while !stop.load(ordering: .relaxed) {
                let metrics = pool.metrics()
                if metrics.total > 4 { violations.withLock { $0.append("total \(metrics.total) > 4") } }
                if let violation = pool.invariantViolation() { violations.withLock { $0.append(violation) } }
                usleep(200)
            }
        }
        let threads = Self.blockingBorrowers(6, iterations: threadOps, pool: pool, violations: violations, use: use)
        var taskError: (any Error)?
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        for index in 0..<taskOps {
                            let lease = try await pool.acquire()
                            use(lease.connection)
                            if index % 64 == 0 { await Task.yield() }
                        }
                    }
                }
                try await group.waitForAll()
            }
        } catch {
            taskError = error
        }
        // Stop the inspector whatever happened: a failed run must not leave a thread polling forever.
        for thread in threads { await thread.join() }
        stop.store(true, ordering: .relaxed)
        await inspector.join()
        if let taskError { throw taskError }
        #expect(violations.withLock { $0 } == [])
        let metrics = pool.metrics()
        #expect(metrics.acquires == 6 * threadOps + 8 * taskOps)
        #expect(metrics.inUse == 0 && metrics.waiting == 0)
        #expect(metrics.idle == factory.connections.count && factory.connections.count <= 4)
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("a connection released while a caller waits goes to it: ping-pong on a pool of one never times out")
    func noLostHandOff() async throws {
        // A lost hand-off (a connection parked on the fast lane while a caller waits) would leave that
        // caller waiting until its timeout: every error here is one.
        let pool = try ConnectionPool(
            factory: MockFactory(), configuration: PoolConfiguration().maxSize(1).acquireTimeout(.seconds(10)))
        let errors = LockedValue<[String]>([])
        let rounds = 3_000
        let threads = (0..<2).map { _ in
            TestThread {
                for _ in 0..<rounds {
                    do { try pool.withConnectionBlocking { _ in } } catch { errors.withLock { $0.append("\(error)") } }
                }
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    for _ in 0..<rounds {
                        do { try await pool.withConnection { _ in } } catch { errors.withLock { $0.append("\(error)") } }
                    }
                }
            }
        }
        for thread in threads { await thread.join() }
        #expect(errors.withLock { $0 } == [])
        #expect(pool.metrics().acquires == 4 * rounds)
        #expect(pool.invariantViolation() == nil)
        await pool.shutdown()
    }

    @Test("a release that parks just as a caller starts waiting still hands the connection over")
    func parkRacingAWaiter() async throws {
        // The interleaving: a releaser reads the fast lane open; a caller then finds nothing idle, closes
        // the lane and waits; only then does the releaser try to park. The push must fail (the lane is
        // closed), so the releaser keeps its lease and returns it through the locked path, to the waiter.
        // Driven step by step: `park` is the tail of the release that runs after the lane was read open.
        // A manual clock: no timer rescues a lost connection.
        let clock = ManualClock()
        let pool = try ConnectionPool(
            factory: MockFactory(),
            configuration: PoolConfiguration().maxSize(1).acquireTimeout(.seconds(60)).healthCheck(interval: nil)
                .idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(3600)),
            clock: .manual(clock))
        let lease = try await pool.acquire()
        let token = lease.token
        let holder = LeaseHolder(lease)
        let served = LockedValue<Int?>(nil)
        let waiter = Task {
            try await pool.withConnection { connection in served.withLock { $0 = connection.id } }
        }
        #expect(await eventually { pool.metrics().waiting == 1 })
        #expect(!pool.runtime.idleStack.isOpen)
        #expect(!pool.runtime.park(token, connection: holder.connection, now: clock.now.nanosecondsClamped))
        holder.drop()
        let handedOver = await eventually { served.withLock { $0 } == holder.connection.id }
        #expect(handedOver)
        if !handedOver { waiter.cancel() }  // lost: fail now rather than hang
        _ = try? await waiter.value
        await pool.shutdown()
        #expect(pool.invariantViolation() == nil)
    }
}
