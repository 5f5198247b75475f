import ConnPoolTestSupport
import Foundation
import Logging
import Synchronization
import Testing
@testable import ConnPool

/// Deterministic simulation of the pool's runtime: a manual clock, a scripted factory whose connects,
/// checks and closes end when the driver says, and a task executor whose jobs run only when the driver
/// runs them, in an order drawn from the seed. A seeded random driver interleaves async and blocking
/// acquires, releases (also as broken), cancellations, timeouts, resizes, warm-ups, metrics and shutdowns
/// with and without a grace period; after every step it checks the invariants (limit, no double lend,
/// consistent counts, no lend of a closed connection) and liveness (every waiter is resumed by its
/// deadline, shutdown returns by grace period + close timeout, warm-up returns), and at the end that
/// nothing leaked: every connection closed and the runtime freed.
///
/// A failing seed prints itself and its trace; replay it alone with
/// `CONNPOOL_SIM_SEED=<seed> swift test --filter SimulationTests`. `CONNPOOL_SIM_SEEDS` sets how many
/// seeds run (default 10,000).
@Suite("Deterministic simulation of the pool runtime", .serialized, .processExclusive)
struct SimulationTests {
    @Test("seeded simulation: invariants and liveness hold for every seed")
    func seededSimulation() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seeds: [UInt64]
        if let one = environment["CONNPOOL_SIM_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let count = environment["CONNPOOL_SIM_SEEDS"].flatMap(Int.init) ?? 10_000
            seeds = (0..<UInt64(count)).map { $0 }
        }
        let verbose = seeds.count == 1
        // The whole simulation runs on a thread of its own: it never holds a cooperative thread.
        let failures = await runOnThread { () -> [String] in
            var failures: [String] = []
            // CONNPOOL_SIM_PROGRESS=1 names each seed before it runs (to find one that crashes the process).
            let progress = environment["CONNPOOL_SIM_PROGRESS"] != nil
            for seed in seeds {
                if progress { FileHandle.standardError.write(Data("simulation seed \(seed)\n".utf8)) }
                if let failure = Simulation(seed: seed, verbose: verbose).run() {
                    failures.append(failure)
                    if failures.count >= 3 { break }
                }
            }
            return failures
        }
        for failure in failures { Issue.record(Comment(rawValue: failure)) }
    }
}

/// Runs `body` on a new thread and returns its result without blocking the caller's thread.
func runOnThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

/// A simulation failure: the step that broke a rule and why.
struct SimulationFailure: Error {
    var message: String
}

/// One seeded run.
final class Simulation {
    typealias Pool = ConnectionPool<ScriptedFactory>

    let seed: UInt64
    let verbose: Bool
    var random: SeededRandom
    var jobOrder: SeededRandom?
    let clock = ManualClock()
    let factory = ScriptedFactory()
    let executor = SimulationExecutor()
    var pool: Pool!
    let configuration: PoolConfiguration
    var trace: [String] = []
    var step = 0

    /// An async acquire under way or done.
    final class AsyncAcquirer: @unchecked Sendable {
        // @unchecked Sendable: written by its task and read by the driver, both on the driver's thread
        // (the task runs on the simulation executor, whose jobs the driver runs).
        let id: Int
        let deadline: Int64
        var task: Task<Void, Never>?
        var holder: LeaseHolder<ScriptedFactory>?
        var error: (any Error)?
        var done = false

        init(id: Int, deadline: Int64) {
            self.id = id
            self.deadline = deadline
        }
    }

    /// A blocking acquire on a thread of its own.
    final class BlockingAcquirer: @unchecked Sendable {
        // @unchecked Sendable: `holder` and `error` are written by the acquiring thread before it sets
        // `done` (releasing) and read by the driver only after it reads `done` true (acquiring).
        let id: Int
        let deadline: Int64
        let done = Atomic<Bool>(false)
        var holder: LeaseHolder<ScriptedFactory>?
        var error: (any Error)?
        /// Let go of before `done` is set: a thread's closure may be released only after the thread
        /// ends, which must not keep the pool alive past the run.
        var pool: Pool?

        init(id: Int, deadline: Int64, pool: Pool, timeout: Duration) {
            self.id = id
            self.deadline = deadline
            self.pool = pool
            let thread = Thread { [self] in
                do {
                    holder = LeaseHolder(try self.pool!.acquireBlocking(timeout: timeout))
                } catch {
                    self.error = error
                }
                self.pool = nil
                done.store(true, ordering: .releasing)
            }
            thread.start()
        }

        var isDone: Bool { done.load(ordering: .acquiring) }

        /// Whether the thread ends within 5 s of real time. The driver sees a blocked thread's waiter in
        /// the queue as soon as its enqueue unlocks, but the thread arms the timer for its deadline
        /// only after that (outside the lock): a thread descheduled in between (a loaded machine) arms
        /// it after the driver's advance, and the timer then fires at once on that thread. A deadline
        /// never armed leaves the thread waiting for good, and fails the check.
        func endsSoon() -> Bool {
            for _ in 0..<5_000 {
                if isDone { return true }
                usleep(1_000)
            }
            return isDone
        }
    }

    var acquirers: [AsyncAcquirer] = []
    var blocking: BlockingAcquirer?
    var blockingDone: [BlockingAcquirer] = []
    /// Leases held by the driver (taken from finished acquirers).
    var held: [LeaseHolder<ScriptedFactory>] = []
    var successes = 0
    var nextID = 0
    var warmTask: (task: Task<Void, Never>, done: LockedValue<Bool>, deadline: Int64)?
    var shutdownTask: (task: Task<Void, Never>, done: LockedValue<Bool>, deadline: Int64?)?
    /// The most connections (not closing) the pool may hold now: the maximum, or more right after a
    /// shrink until the extras are gone.
    var allowedHeld: Int
    var maxSize: Int
    let minSize: Int
    let validatesOnAcquire: Bool

    init(seed: UInt64, verbose: Bool) {
        self.seed = seed
        self.verbose = verbose
        random = SeededRandom(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        jobOrder = SeededRandom(seed: seed ^ 0xA5A5_A5A5)
        maxSize = 1 + random.below(4)
        minSize = random.below(maxSize + 1)
        allowedHeld = maxSize
        validatesOnAcquire = random.chance(25)
        var configuration = PoolConfiguration().maxSize(maxSize).minSize(minSize)
            .acquireTimeout(.seconds(2)).maintenanceInterval(.seconds(1))
            .healthCheck(interval: random.chance(50) ? .seconds(2) : nil, timeout: .seconds(1))
            .idleTimeout(random.chance(50) ? .seconds(3) : nil)
            .maxLifetime(random.chance(50) ? .seconds(8) : nil, jitter: 0)
            .validateOnAcquire(validatesOnAcquire, bypassWindow: random.chance(50) ? .zero : .milliseconds(500))
            .circuitBreakerThreshold(random.chance(50) ? 3 : nil)
            .maxWaiters(random.chance(30) ? 3 : nil)
            .warmUpOnInit(random.chance(50))
            .reuseOrder(random.chance(80) ? .lifo : .fifo)
            .maxConcurrentConnects(1 + random.below(3))
            .operationTimeouts(connect: .seconds(2), close: .seconds(2))
            .connectRetryBackoff(initial: .milliseconds(100), multiplier: 2, max: .seconds(1), jitter: 0)
        if random.chance(20) { configuration = configuration.recordsLeaseHoldTime(true) }
        self.configuration = configuration
    }

    var now: Int64 { clock.now.nanosecondsClamped }

    func log(_ line: String) {
        trace.append("[\(step) t=\(now / 1_000_000)ms] \(line)")
        if verbose { print("sim \(seed): \(trace.last!)") }
    }

    /// Runs the seed; returns a failure report, or nil.
    func run() -> String? {
        do {
            try body()
            return nil
        } catch let failure as SimulationFailure {
            cleanUp()
            return "simulation seed \(seed) failed at step \(step): \(failure.message)\n"
                + "configuration: \(configuration)\n"
                + "replay: CONNPOOL_SIM_SEED=\(seed) swift test --filter SimulationTests\n"
                + trace.suffix(40).joined(separator: "\n")
        } catch {
            cleanUp()
            return "simulation seed \(seed): unexpected \(error)"
        }
    }

    /// Lets every suspended operation end so no task or thread stays behind after a failure.
    func cleanUp() {
        factory.policy = .init()
        for holder in held { holder.drop() }
        held = []
        if let pool { _ = pool.runtime.modifyState(drainingFastLane: true) { state, effects in state.beginShutdown(now: now, gracePeriod: 0, into: &effects) } }
        for _ in 0..<50 {
            factory.resolveAll(succeed: false)
            clock.advance(by: .seconds(1))
            settle()
        }
    }

    func body() throws {
        let logger = Logger(label: "sim") { _ in SwiftLogNoOpLogHandler() }
        pool = try Pool(factory: factory, configuration: configuration, clock: .manual(clock), logger: logger, taskExecutor: executor)
        log("pool max \(maxSize) min \(minSize) validate \(validatesOnAcquire)")
        settle()
        let steps = 30 + random.below(50)
        for _ in 0..<steps {
            step += 1
            try randomStep()
            settle()
            try check()
        }
        try finish()
    }

    func randomStep() throws {
        switch random.below(100) {
        case 0..<20: startAsyncAcquire()
        case 20..<28: startBlockingAcquire()
        case 28..<46: releaseOne()
        case 46..<51: cancelOne()
        case 51..<66: advance(by: Int64(random.below(1_500)) * 1_000_000)
        case 66..<80: resolveOne()
        case 80..<86: changePolicy()
        case 86..<90: resize()
        case 90..<93: startWarm()
        case 93..<97: _ = pool.metrics()
        default: startShutdown()
        }
    }

    func startAsyncAcquire() {
        let timeout = Int64(500 + random.below(3_000)) * 1_000_000
        let acquirer = AsyncAcquirer(id: nextID, deadline: now + timeout)
        nextID += 1
        log("async acquire #\(acquirer.id) timeout \(timeout / 1_000_000)ms")
        let pool = pool!
        acquirer.task = Task(executorPreference: executor) {
            do {
                let lease = try await pool.acquire(timeout: .nanoseconds(timeout))
                acquirer.holder = LeaseHolder(lease)
            } catch {
                acquirer.error = error
            }
            acquirer.done = true
        }
        acquirers.append(acquirer)
    }

    func startBlockingAcquire() {
        guard blocking == nil, shutdownTask == nil else { return }
        let timeout = Int64(500 + random.below(3_000)) * 1_000_000
        log("blocking acquire #\(nextID) timeout \(timeout / 1_000_000)ms")
        blocking = BlockingAcquirer(id: nextID, deadline: now + timeout, pool: pool, timeout: .nanoseconds(timeout))
        nextID += 1
    }

    func releaseOne() {
        guard !held.isEmpty else { return }
        let holder = held.remove(at: random.below(held.count))
        let connection = holder.connection
        connection.endBorrow()
        switch random.below(10) {
        case 0:
            log("release connection \(connection.id) as broken")
            holder.dropAsBroken()
        case 1:
            log("release connection \(connection.id) reporting isBroken")
            connection.broken.store(true, ordering: .relaxed)
            holder.drop()
        default:
            log("release connection \(connection.id)")
            holder.drop()
        }
    }

    func cancelOne() {
        let pending = acquirers.filter { !$0.done }
        guard !pending.isEmpty else { return }
        let acquirer = pending[random.below(pending.count)]
        log("cancel async acquire #\(acquirer.id)")
        acquirer.task?.cancel()
    }

    func advance(by nanoseconds: Int64) {
        log("advance \(nanoseconds / 1_000_000)ms")
        clock.advance(by: .nanoseconds(nanoseconds))
    }

    func resolveOne() {
        let pending = factory.pending
        guard !pending.isEmpty else { return }
        let operation = pending[random.below(pending.count)]
        let succeed = random.chance(70)
        log("resolve \(operation) \(succeed ? "ok" : "fail")")
        factory.resolve(operation, succeed: succeed)
    }

    func changePolicy() {
        func outcome(pend: Bool) -> ScriptedOutcome {
            switch random.below(10) {
            case 0..<6: return .succeed
            case 6..<8: return .fail
            default: return pend ? .pend : .succeed
            }
        }
        // A check on acquire that pends would hold its acquire past the deadline: the pool cannot
        // interrupt a connection's own `isValid`, which is bounded by the timeout it is given.
        let policy = ScriptedFactory.Policy(
            connect: outcome(pend: true), check: outcome(pend: !validatesOnAcquire),
            close: random.chance(80) ? .succeed : .pend)
        log("policy \(policy)")
        factory.policy = policy
    }

    func resize() {
        let newSize = max(minSize, 1) + random.below(4)
        log("resize \(maxSize) -> \(newSize)")
        do {
            try pool.resize(maxSize: newSize)
            if newSize > maxSize { allowedHeld = max(allowedHeld, newSize) }
            maxSize = newSize
        } catch {
            log("resize refused: \(error)")
        }
    }

    func startWarm() {
        guard warmTask == nil else { return }
        log("warm")
        let done = LockedValue(false)
        let pool = pool!
        let task = Task(executorPreference: executor) {
            _ = try? await pool.warm()
            done.withLock { $0 = true }
        }
        warmTask = (task, done, now)
    }

    func startShutdown() {
        guard shutdownTask == nil else { return }
        let grace: Int64? = random.chance(60) ? Int64(random.below(3_000)) * 1_000_000 : nil
        log("shutdown grace \(grace.map { "\($0 / 1_000_000)ms" } ?? "none")")
        let done = LockedValue(false)
        let pool = pool!
        let task = Task(executorPreference: executor) {
            _ = await pool.shutdown(gracePeriod: grace.map { .nanoseconds($0) })
            done.withLock { $0 = true }
        }
        shutdownTask = (task, done, grace.map { now + $0 })
    }

    /// Runs every runnable job (in seeded order) and waits for the blocking acquirer, if any, to finish
    /// or to be queued: afterwards nothing moves until the next step.
    func settle() {
        while true {
            executor.runUntilIdle(using: &jobOrder)
            guard let blocking, !blocking.isDone else { break }
            if executor.queued == 0, blockingWaiterQueued() { break }
            usleep(20)
        }
        collect()
    }

    /// Whether a blocked thread is in the pool's waiter queue.
    func blockingWaiterQueued() -> Bool {
        pool.runtime.modifyState { state, _ in
            (0..<state.waiters.count).contains { position in
                if case .blocking = state.waiters.waiter(at: position).handle { return true }
                return false
            }
        }
    }

    /// Takes the leases of finished acquirers.
    func collect() {
        for acquirer in acquirers where acquirer.done {
            if let holder = acquirer.holder {
                acquirer.holder = nil
                lend(holder, to: "async #\(acquirer.id)")
            }
        }
        if let blocking, blocking.isDone {
            if let holder = blocking.holder {
                blocking.holder = nil
                lend(holder, to: "blocking #\(blocking.id)")
            } else {
                log("blocking #\(blocking.id) failed: \(blocking.error.map { "\($0)" } ?? "?")")
            }
            blockingDone.append(blocking)
            self.blocking = nil
        }
    }

    var lendFailures: [String] = []

    func lend(_ holder: LeaseHolder<ScriptedFactory>, to who: String) {
        let connection = holder.connection
        successes += 1
        log("\(who) got connection \(connection.id)")
        if !connection.beginBorrow() { lendFailures.append("connection \(connection.id) lent to \(who) while already lent") }
        if connection.closesStarted.load(ordering: .relaxed) > 0, shutdownTask == nil {
            lendFailures.append("connection \(connection.id) lent to \(who) after its close began")
        }
        held.append(holder)
    }

    func fail(_ message: String) -> SimulationFailure {
        log("FAIL: \(message)")
        return SimulationFailure(message: message)
    }

    func check() throws {
        if let failure = lendFailures.first { throw fail(failure) }
        if let violation = pool.invariantViolation() { throw fail("invariant: \(violation)") }
        let metrics = pool.metrics()
        let heldCount = metrics.idle + metrics.inUse + metrics.connecting + metrics.validating
        if heldCount <= maxSize { allowedHeld = maxSize }
        if heldCount > allowedHeld { throw fail("\(heldCount) connections held, limit \(allowedHeld)") }
        if metrics.acquires < successes { throw fail("metrics count \(metrics.acquires) acquires, \(successes) seen") }
        // (After a grace period ends, leases still held were closed by force and count as nothing.)
        if shutdownTask == nil, metrics.inUse < held.count { throw fail("\(held.count) leases held but \(metrics.inUse) in use") }
        // Liveness: every waiter is resumed by its deadline.
        for acquirer in acquirers where !acquirer.done && now >= acquirer.deadline {
            throw fail("async acquire #\(acquirer.id) still waiting past its deadline")
        }
        if let blocking, !blocking.isDone, now >= blocking.deadline, !blocking.endsSoon() {
            throw fail("blocking acquire #\(blocking.id) still waiting past its deadline")
        }
        // Shutdown with a grace period returns by grace period + close timeout.
        if let shutdownTask, let deadline = shutdownTask.deadline, now >= deadline + 2_000_000_000,
           !shutdownTask.done.withLock({ $0 }) {
            throw fail("shutdown still running past grace period + close timeout")
        }
    }

    /// Ends the run: operations succeed again, every lease comes back, the pool shuts down (if it has
    /// not), time passes; then everything must have ended and every connection must be closed.
    func finish() throws {
        step += 1
        log("finish")
        factory.policy = .init()
        factory.resolveAll(succeed: random.chance(50))
        settle()
        for holder in held {
            holder.connection.endBorrow()
            holder.drop()
        }
        held = []
        settle()
        startShutdown()
        settle()
        for _ in 0..<12 {
            factory.resolveAll(succeed: true)
            clock.advance(by: .milliseconds(500))
            settle()
            for holder in held {
                holder.connection.endBorrow()
                holder.drop()
            }
            held = []
            settle()
        }
        try check()
        guard let shutdownTask, shutdownTask.done.withLock({ $0 }) else { throw fail("shutdown did not return") }
        if let warmTask, !warmTask.done.withLock({ $0 }) { throw fail("warm() did not return") }
        if let acquirer = acquirers.first(where: { !$0.done }) { throw fail("async acquire #\(acquirer.id) never ended") }
        if blocking != nil { throw fail("blocking acquire never ended") }
        let metrics = pool.metrics()
        if metrics.total != 0 || metrics.waiting != 0 { throw fail("after shutdown: \(metrics)") }
        for connection in factory.connections where connection.closesStarted.load(ordering: .relaxed) == 0 {
            throw fail("connection \(connection.id) was never closed")
        }
        weak let runtime = pool.runtime
        pool = nil
        settle()
        if runtime != nil { throw fail("the runtime was not freed after shutdown") }
    }
}
