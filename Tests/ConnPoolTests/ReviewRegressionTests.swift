import ConnPoolTestSupport
import Synchronization
import Testing
@testable import ConnPool

/// Regression tests for the bugs an outside review of the pool found (issue "Pool core you can prove").
/// Each drives the public API with a manual clock and a scripted factory whose connects, checks and
/// closes end when the test says; a hang becomes a failed `eventually`, never a stuck test run.
@Suite("Review regressions: shutdown, resize, warm-up, forced close, validation", .serialized, .processExclusive)
struct ReviewRegressionTests {
    static let base = PoolConfiguration().acquireTimeout(.seconds(60)).healthCheck(interval: nil)
        .idleTimeout(nil).maxLifetime(nil).maintenanceInterval(.seconds(1)).circuitBreakerThreshold(nil)

    /// Runs `body` in a task and records its result, so a test can poll for the end of a call that
    /// might never return.
    final class Outcome<Value: Sendable>: Sendable {
        let value = LockedValue<Value?>(nil)
        let task: Task<Void, Never>

        init(_ body: @escaping @Sendable () async -> Value) {
            let value = self.value
            task = Task { let result = await body(); value.withLock { $0 = result } }
        }

        var result: Value? { value.withLock { $0 } }
        var finished: Bool { result != nil }
    }

    @Test("bug 1: shutdown returns when a connection attempt fails after it began")
    func shutdownReturnsAfterFailedConnect() async throws {
        let clock = ManualClock()
        let factory = ScriptedFactory(policy: .init(connect: .pend))
        let pool = try ConnectionPool(
            factory: factory, configuration: Self.base.minSize(1).maxSize(2), clock: .manual(clock))
        #expect(await eventually { factory.pending.count == 1 })
        let shutdown = Outcome { await pool.shutdown(gracePeriod: .seconds(1)) }
        #expect(await eventually { pool.status().health == .shuttingDown })
        factory.resolve(factory.pending[0], succeed: false)
        #expect(await eventually(timeout: .seconds(5)) { shutdown.finished })
        #expect(pool.metrics().total == 0)
        factory.resolveAll(succeed: false)
    }

    @Test("bug 2: shrinking by one closes one idle connection, not all of them")
    func shrinkClosesOnlyTheExtra() async throws {
        let clock = ManualClock()
        // Closes pend, so the shrink's close is still in flight while the others come back.
        let factory = ScriptedFactory(policy: .init(close: .pend))
        let pool = try ConnectionPool(
            factory: factory, configuration: Self.base.maxSize(10), clock: .manual(clock))
        // Lend ten, so every one comes back through a release while the shrink's close is under way.
        var holders: [LeaseHolder<ScriptedFactory>] = []
        for _ in 0..<10 { holders.append(LeaseHolder(try await pool.acquire())) }
        try pool.resize(maxSize: 9)
        for holder in holders { holder.drop() }
        let metrics = pool.metrics()
        #expect(metrics.closing == 1, "closing: \(metrics.closing)")
        #expect(metrics.idle == 9, "idle: \(metrics.idle)")
        #expect(metrics.closedByReason[.resize, default: 0] == 0)
        factory.policy.close = .succeed
        factory.resolveAll(succeed: true)
        #expect(await eventually { pool.metrics().closedByReason[.resize, default: 0] == 1 && pool.metrics().closing == 0 })
        #expect(pool.metrics().idle == 9)
        #expect(pool.invariantViolation() == nil)
        _ = await pool.shutdown()
    }

    @Test("bug 3: a waiter handed a connection that the end of the grace period closed by force fails with shutDown")
    func handOffRacingForcedClose() async throws {
        let clock = ManualClock()
        let factory = ScriptedFactory()
        let executor = SimulationExecutor()
        let pool = try ConnectionPool(factory: factory, configuration: Self.base.maxSize(1), clock: .manual(clock))
        let first = LeaseHolder(try await pool.acquire())
        // The waiter's task runs only when the executor is told to.
        let waiter = Task(executorPreference: executor) { () -> Result<Int, any Error> in
            do {
                let lease = try await pool.acquire()
                return .success(lease.connection.id)
            } catch {
                return .failure(error)
            }
        }
        executor.runUntilIdle()
        #expect(pool.metrics().waiting == 1)
        first.drop()  // handed to the waiter, whose task has not run yet
        let shutdown = Outcome { await pool.shutdown(gracePeriod: .seconds(1)) }
        #expect(await eventually { pool.status().health == .shuttingDown })
        clock.advance(by: .seconds(1))  // the grace period ends: the handed-over connection is closed by force
        #expect(await eventually { factory.connections[0].isClosed })
        executor.runUntilIdle()  // now the waiter wakes up
        let result = await waiter.value
        switch result {
        case .success(let id): Issue.record("the waiter got connection \(id), closed by force")
        case .failure(let error):
            guard case ConnectionPoolError.Code.shutDown = error else {
                Issue.record("expected shutDown, got \(error)")
                return
            }
        }
        #expect(await eventually(timeout: .seconds(5)) { shutdown.finished })
    }

    @Test("bug 5: a close that hangs holds shutdown no longer than grace period + closeTimeout")
    func shutdownWithHangingClose() async throws {
        let clock = ManualClock()
        let factory = ScriptedFactory(policy: .init(close: .pend))
        let pool = try ConnectionPool(
            factory: factory,
            configuration: Self.base.minSize(1).maxSize(1).operationTimeouts(connect: .seconds(10), close: .seconds(3)),
            clock: .manual(clock))
        #expect(await eventually { pool.metrics().idle == 1 })
        let shutdown = Outcome { await pool.shutdown(gracePeriod: .seconds(1)) }
        #expect(await eventually { factory.pending.count == 1 })
        clock.advance(by: .seconds(4))  // past the grace period and the close timeout
        #expect(await eventually(timeout: .seconds(5)) { shutdown.finished })
        #expect(shutdown.result?.stillInFlight == 0)
        factory.resolveAll(succeed: true)
    }

    @Test("bug 6: warm() returns when maintenance gives up on an attempt that hangs")
    func warmReturnsAfterAbandonedAttempt() async throws {
        let clock = ManualClock()
        let factory = ScriptedFactory(policy: .init(connect: .pend))
        let pool = try ConnectionPool(
            factory: factory,
            configuration: Self.base.minSize(1).maxSize(1).warmUpOnInit(false)
                .operationTimeouts(connect: .seconds(2)),
            clock: .manual(clock))
        let warm = Outcome { () -> String in
            do {
                try await pool.warm()
                return "ok"
            } catch {
                return "\(error)"
            }
        }
        #expect(await eventually { factory.pending.count == 1 })
        factory.policy.connect = .fail  // attempts after the abandoned one fail at once
        clock.advance(by: .seconds(3))  // a maintenance round gives up on the attempt
        #expect(await eventually(timeout: .seconds(5)) { warm.finished })
        #expect(warm.result != "ok")
        factory.resolveAll(succeed: false)
        _ = await pool.shutdown()
    }

    @Test(
        "bug 7: a checked blocking acquire validates an idle connection it takes on its way to the queue",
        arguments: [BlockingWaitStep.spin, .enqueue])
    func blockingWaitPathValidates(step: BlockingWaitStep) async throws {
        let factory = ScriptedFactory()
        let held = LockedValue<LeaseHolder<ScriptedFactory>?>(nil)
        // The spin runs only when the pool is full (maxSize 1, the one connection lent); with a free
        // slot (maxSize 2) the thread goes straight to the queue, whose step leases an idle connection.
        let pool = try ConnectionPool(
            factory: factory,
            configuration: Self.base.maxSize(step == .spin ? 1 : 2).warmUpOnInit(false)
                .validateOnAcquire(true, bypassWindow: .zero),
            clock: .manual(ManualClock()), taskExecutor: nil,
            // At `step`, connection #0 comes back: it is idle when the blocked thread looks again.
            blockingWaitHook: { at in
                if at == step { held.withLock { $0.take() }?.drop() }
            })
        let first = LeaseHolder(try await pool.acquire())
        let stale = first.connection
        #expect(stale.id == 0)
        held.withLock { $0 = first }
        factory.policy.check = .fail  // #0 fails any check from now on (#1 is handed over new, unchecked)

        let id = try await onThread { try pool.acquireBlocking().connection.id }
        #expect(held.withLock { $0 == nil }, "the hook ran")
        #expect(stale.checks.load(ordering: .relaxed) == 1, "connection #0 was lent without a check")
        #expect(id == 1, "the acquire got connection #\(id), not a new one")
        #expect(await eventually { stale.isClosed })
        _ = await pool.shutdown()
    }
}
