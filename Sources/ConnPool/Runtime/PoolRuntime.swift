#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
public import Tracing

/// The working part of a ``ConnectionPool``: slots, state machine, timer and every acquire and
/// release path. The public `ConnectionPool` is a thin handle around it (see that type for the design).
///
/// ## Why a handle and a runtime
/// Acquire and release must not touch a reference count that every thread shares: an atomic increment
/// and decrement of the pool object per lease is a contended cache line under load, and once anything
/// holds a `weak` reference to an object, Swift moves its count to a side table and every retain and
/// release of it takes a slow path (measured: 27% of the instructions of an acquire+release). So:
/// - a ``ConnectionLease`` holds the runtime **unretained** (`Unmanaged`), and nothing holds it weakly;
/// - the timer's handler holds the runtime **strongly**, a deliberate cycle that keeps the runtime alive
///   while any lease may still come back;
/// - the public handle's `deinit` (the user dropped the pool) calls ``handleReleased()``, which shuts
///   the pool down if it still runs; the cycle is broken (``stopTimerIfFinished()``) only once the pool
///   has stopped running, every slot is empty and no lease closed by force is still out. A lease can
///   therefore never outlive the runtime it points at: while a lease is out, either its slot is
///   `.leased` (the pool is not drained) or it was closed by force and is counted in
///   `PoolStateMachine.forcedLeasesOutstanding`.
/// - the release that returns a pool's last lease is the one that may finish it, and it reached the
///   runtime unretained: a release that leaves the fast path holds a reference of its own for its
///   duration (``whileRetained(_:)``), so stopping the timer never frees the runtime under it.
///
/// `@unchecked Sendable` is safe because every mutable piece of state is either behind `PoolCore`'s
/// mutex (the state machine; `connections`, whose elements are written and read with the mutex held;
/// and the private `var`s below, each documented as guarded by it) or immutable after `init`.
@usableFromInline
final class PoolRuntime<Factory: ConnectionFactory>: @unchecked Sendable {
    /// The type of the pooled connections.
    @usableFromInline typealias PooledConnection = Factory.PooledConnectionType

    @usableFromInline let core: PoolCore
    /// Points at the buffer of one optional connection per slot, indexed like the state machine's
    /// slots. Both the pointer and the elements are guarded by `core.mutex`; the buffer is replaced
    /// only by ``resize(maxSize:)``.
    @usableFromInline let connectionBuffer: UnsafeMutablePointer<UnsafeMutablePointer<PooledConnection?>>
    @usableFromInline let clock: PoolClock
    /// False when a feature needs the full acquire path: validate on acquire, tracing or lease
    /// tracking. Lets the common case skip them with one predictable branch.
    @usableFromInline let plainAcquire: Bool
    /// Lends are stamped with time and call site (lease hold time, leak detection).
    @usableFromInline let tracksLeases: Bool
    /// Spans for acquires and connection attempts, when given.
    @usableFromInline let tracer: (any Tracer)?

    /// The lock-free fast lane for idle connections (see ``IdleStack``). Its gate stays closed when
    /// every acquire needs the locked path (FIFO reuse, validation on acquire, lease tracking, tracing).
    @usableFromInline let idleStack: IdleStack
    /// Whether this pool uses the fast lane at all.
    let usesFastLane: Bool

    /// Lock-free distributions, recorded outside the lock.
    @usableFromInline let acquireWaitHistogram = LatencyHistogram()
    @usableFromInline let leaseHoldHistogram = LatencyHistogram()
    let lifetimeHistogram = LatencyHistogram()

    /// The connection buffer. Read or write it only with `core.mutex` held.
    @inlinable var connections: UnsafeMutablePointer<PooledConnection?> { connectionBuffer.pointee }

    /// The factory that opens this pool's connections.
    let factory: Factory
    /// The configuration the pool was created with.
    @usableFromInline let configuration: PoolConfiguration
    /// Where the pool logs (creation failures, shutdown, a pool dropped without shutdown).
    let logger: Logger

    let timer: PoolTimer
    /// Callers of ``shutdown(gracePeriod:)`` waiting for the end. Guarded by `core.mutex`.
    private var drainContinuations: [CheckedContinuation<ShutdownReport, Never>] = []
    /// Callers of ``warm()`` waiting for an attempt under way to finish. Guarded by `core.mutex`.
    private var creationWatchers: [CheckedContinuation<Void, Never>] = []
    /// What the shutdown did so far; final once `shutdownFinished`. Guarded by `core.mutex`.
    private var shutdownReport = ShutdownReport()
    private var shutdownFinished = false
    /// The periodic metrics handler. Guarded by `core.mutex`.
    private var metricsHandler: (@Sendable (PoolMetrics) -> Void)?

    /// See ``ConnectionPool/init(factory:configuration:clock:logger:tracer:)``, whose defaults apply.
    init(
        factory: Factory, configuration: PoolConfiguration, clock: PoolClock, logger: Logger, tracer: (any Tracer)?
    ) throws(PoolConfigurationError) {
        try configuration.validate()
        self.factory = factory
        self.configuration = configuration
        self.clock = clock
        var logger = logger
        logger[metadataKey: "pool"] = "\(configuration.name)"
        self.logger = logger
        self.tracer = tracer
        tracksLeases = configuration.leakDetectionThreshold != nil || configuration.recordsLeaseHoldTime
        plainAcquire = !configuration.validateOnAcquire && tracer == nil && !tracksLeases
        let capacity = configuration.maxSize
        core = PoolCore(configuration: configuration, capacity: capacity)
        let buffer = UnsafeMutablePointer<PooledConnection?>.allocate(capacity: capacity)
        buffer.initialize(repeating: nil, count: capacity)
        connectionBuffer = .allocate(capacity: 1)
        connectionBuffer.initialize(to: buffer)
        idleStack = IdleStack(capacity: capacity)
        usesFastLane = plainAcquire && configuration.reuseOrder == .lifo
        let target = TimerTarget<Factory>()
        timer = clock.makeTimer { now in target.runtime?.timerFired(now: now) }
        target.runtime = self

        let now = clock.now()
        core.mutex.lock()
        let firstTick = core.state.pointee.startMaintenance(now: now)
        syncGateLocked()
        var warmUp: [LeaseToken] = []
        if configuration.warmUpOnInit {
            while case .create(let token) = core.state.pointee.creationDecision(now: now) { warmUp.append(token) }
        }
        core.mutex.unlock()
        if let firstTick { timer.schedule(at: firstTick) }
        for token in warmUp { startCreation(token) }
    }

    deinit {
        // Runs once the timer has let go (the pool is finished) and no task holds the runtime: every
        // slot is empty. A connection still here was handed over by an operation given up on.
        while let index = idleStack.pop() { _ = unpark(index) }
        let capacity = core.state.pointee.slots.capacity
        for index in 0..<capacity {
            if let connection = connections[index] { Task.detached { await connection.close() } }
        }
        connections.deinitialize(count: capacity)
        connections.deallocate()
        connectionBuffer.deallocate()
    }

    /// Called by the public handle's `deinit`: nobody can start an acquire any more. A pool still
    /// running is shut down, with a warning (idle connections close now, leased ones when they come
    /// back, no grace period); the runtime lives on until that is done, then lets itself go.
    func handleReleased() {
        let now = clock.now()
        core.mutex.lock()
        let wasRunning = core.state.pointee.lifecycle == .running
        let open = core.state.pointee.slots.liveCount
        core.mutex.unlock()
        if wasRunning {
            if open > 0 {
                logger.warning(
                    "connection pool released without shutdown(); closing its connections",
                    metadata: ["connections": "\(open)"])
            }
            for (token, connection) in beginShutdown(now: now, gracePeriod: nil) {
                closeInBackground(connection, token)
            }
        }
        stopTimerIfFinished()
    }

    /// Stops the timer, breaking the cycle that keeps the runtime alive, once the pool is finished
    /// (`PoolStateMachine.isFinished`: not running, every slot empty, no lease closed by force still
    /// out). Call it only where the runtime is held strongly: a task, the handle, the timer's handler,
    /// or a lease's release inside ``whileRetained(_:)`` (a lease holds the runtime unretained).
    func stopTimerIfFinished() {
        core.mutex.lock()
        let finished = core.state.pointee.isFinished
        core.mutex.unlock()
        if finished { timer.stop() }
    }

    // MARK: Release

    /// Returns a leased connection. Called by the lease's `deinit`.
    @inlinable
    func release(_ token: LeaseToken, connection: PooledConnection, broken: Bool) {
        let now = clock.coarseNow()
        let broken = broken || connection.isBroken
        let index = Int(token.index)
        if !broken, index < idleStack.capacity, idleStack.isOpen, now < idleStack.slots[index].expiresAt {
            park(token, connection: connection, now: now)
            return
        }
        core.mutex.lock()
        if !broken, !tracksLeases, core.state.pointee.releaseToIdle(token, now: now) {
            core.mutex.unlock()
            return
        }
        whileRetained { releaseSlow(token, broken: broken, now: now, reason: .broken) }
    }

    /// Runs `body` holding a strong reference to the runtime, for a lease's release that leaves the
    /// fast path. A lease reaches the runtime unretained, and a slow release can finish the pool (its
    /// last lease closed, or the last one closed by force, comes back): stopping the timer then drops
    /// what may be the last other reference. Holding one here keeps the runtime alive until the release
    /// is done; it may be freed when this returns, after its last use.
    ///
    /// Not optimized (`@_optimize(none)`) on purpose: `self` is a guaranteed argument here, so the
    /// optimizer may treat a retain/release pair around `body` as redundant and remove it, which would
    /// remove the guarantee. Slow path only.
    @usableFromInline @inline(never) @_optimize(none)
    func whileRetained(_ body: () -> Void) {
        let retained = Unmanaged.passRetained(self)
        body()
        retained.release()
    }

    /// The release path for hand-offs, broken or expired connections, shutdown and lease tracking.
    /// Called with the mutex held; returns with it released.
    @usableFromInline
    func releaseSlow(_ token: LeaseToken, broken: Bool, now: Int64, reason: CloseReason) {
        var heldFor: Int64?
        if tracksLeases {
            let slot = Int(token.index)
            let slots = core.state.pointee.slots
            if slots.states[slot] == .leased, slots.generations[slot] == token.generation {
                heldFor = now &- slots.leasedAt[slot]
            }
        }
        defer {
            if let heldFor, configuration.recordsLeaseHoldTime {
                leaseHoldHistogram.record(nanoseconds: UInt64(max(0, heldFor)))
            }
        }
        if !broken, core.state.pointee.releaseToIdle(token, now: now) {
            syncGateLocked()
            core.mutex.unlock()
            return
        }
        switch core.state.pointee.release(token, broken: broken, now: now, brokenReason: reason) {
        case .idle:
            syncGateLocked()
            core.mutex.unlock()
        case .stale:
            // The last lease closed by force may just have come back (the caller holds the runtime
            // strongly: see `whileRetained`).
            let finished = core.state.pointee.isFinished
            core.mutex.unlock()
            if finished { timer.stop() }
        case .handOff(let waiter, let newToken):
            let continuation = deliverLocked(waiter, .success(newToken.rawValue))
            syncGateLocked()
            core.mutex.unlock()
            continuation?.resume(returning: newToken.rawValue)
        case .close(let closing, let closeReason):
            if closeReason == .shutdown { shutdownReport.closedOnReturn += 1 }
            let connection = takeConnectionLocked(closing.index)
            syncGateLocked()
            core.mutex.unlock()
            closeInBackground(connection, closing)
        }
    }

    // MARK: Fast lane

    /// Parks a released lease on the fast lane, the gate having been read open. The slot is the
    /// caller's until the push publishes it. Then reads the gate again: if it closed meanwhile (a caller
    /// started waiting, or shutdown began), drains, so the connection reaches that caller (see
    /// ``IdleStack``, "Gate vs. parking").
    ///
    /// A lease parked here is always current: a lease goes stale only when shutdown closes its slot
    /// by force, and by then the gate is closed for good.
    @inlinable
    func park(_ token: LeaseToken, connection: PooledConnection, now: Int64) {
        let index = Int(token.index)
        idleStack.slots[index].generation = token.generation
        idleStack.slots[index].parkedAt = now
        idleStack.slots[index].connection = Unmanaged.passRetained(connection).toOpaque()
        idleStack.push(index)
        if idleStack.closedAfterPush { whileRetained { drainIdleStack() } }
    }

    /// Lends the slot just popped from the idle stack: the parked lease, with its generation, and the
    /// parked connection moved into it.
    @inlinable
    func lendParked(_ index: Int) -> ConnectionLease<Factory> {
        idleStack.countLend(index)
        let (token, connection) = unpark(index)
        return ConnectionLease(pool: self, token: token, connection: connection)
    }

    /// Takes over the lease parked in slot `index` (which the caller just popped): its token, and its
    /// connection with the reference the park retained.
    @inlinable
    func unpark(_ index: Int) -> (token: LeaseToken, connection: PooledConnection) {
        let token = LeaseToken(index: Int32(truncatingIfNeeded: index), generation: idleStack.slots[index].generation)
        let connection = Unmanaged<PooledConnection>.fromOpaque(idleStack.slots[index].connection.unsafelyUnwrapped)
        idleStack.slots[index].connection = nil
        return (token, connection.takeRetainedValue())
    }

    /// Opens the fast lane's gate if the state machine allows it, closes it otherwise. Call with the
    /// mutex held, after any change to lifecycle, waiters or occupancy. Opening late only costs speed;
    /// the places that must close it (a caller about to wait, shutdown, a shrinking resize) close it
    /// and drain before relying on it.
    @usableFromInline
    func syncGateLocked() {
        idleStack.setOpen(usesFastLane && core.state.pointee.fastLaneAllowed)
    }

    /// What a drain of the idle stack left to do once the mutex is released.
    struct DrainWork {
        var handOffs: [(UnsafeContinuation<UInt64, any Error>, UInt64)] = []
        var closes: [(PooledConnection?, LeaseToken)] = []
        var finished = false
    }

    /// Returns every parked lease through the locked release path: to the idle ring, to the oldest
    /// waiter, or to be closed. Call with the mutex held; pass the result to ``run(_:)`` after
    /// releasing it.
    func drainIdleStackLocked() -> DrainWork {
        var work = DrainWork()
        guard !idleStack.isEmpty else { return work }
        for index in idleStack.popAllOldestFirst() {
            let now = idleStack.slots[index].parkedAt
            // The slot's connection is also in `connections`: the parked reference just goes.
            let token = unpark(index).token
            if core.state.pointee.releaseToIdle(token, now: now) { continue }
            switch core.state.pointee.release(token, broken: false, now: now) {
            case .idle:
                break
            case .stale:
                work.finished = core.state.pointee.isFinished
            case .handOff(let waiter, let newToken):
                if let continuation = deliverLocked(waiter, .success(newToken.rawValue)) {
                    work.handOffs.append((continuation, newToken.rawValue))
                }
            case .close(let closing, let reason):
                if reason == .shutdown { shutdownReport.closedOnReturn += 1 }
                work.closes.append((takeConnectionLocked(closing.index), closing))
            }
        }
        return work
    }

    /// Carries out a drain's work, without the mutex.
    func run(_ work: DrainWork) {
        for (continuation, token) in work.handOffs { continuation.resume(returning: token) }
        for (connection, closing) in work.closes { closeInBackground(connection, closing) }
        // Every caller holds the runtime strongly (a lease's release through `whileRetained`).
        if work.finished { timer.stop() }
    }

    /// Drains the idle stack (see ``drainIdleStackLocked()``) and brings the gate up to date. Called by
    /// a releaser that parked a connection and then found the gate closed, and before inspection.
    @usableFromInline
    func drainIdleStack() {
        core.mutex.lock()
        let work = drainIdleStackLocked()
        syncGateLocked()
        core.mutex.unlock()
        run(work)
    }

    // MARK: Waiters

    /// Wakes `waiter` with `result`. Must be called with the mutex held. A blocked thread is signalled
    /// here (its wait cell must not be touched after the mutex is released); an async waiter's
    /// continuation is returned, for the caller to resume once the mutex is released.
    @usableFromInline
    func deliverLocked(_ waiter: Waiter, _ result: WaiterResult) -> UnsafeContinuation<UInt64, any Error>? {
        switch waiter.handle {
        case .blocking(let cell):
            cell.pointee.result = result
            pthread_cond_signal(&cell.pointee.condition)
            return nil
        case .async(let continuation):
            return continuation
        }
    }

    @usableFromInline
    static func resume(_ continuation: UnsafeContinuation<UInt64, any Error>?, with result: WaiterResult) {
        guard let continuation else { return }
        switch result {
        case .success(let token): continuation.resume(returning: token)
        case .failure(let error): continuation.resume(throwing: error)
        }
    }

    /// Removes a cancelled async waiter and fails it with `CancellationError`.
    @usableFromInline
    func cancelWaiter(id: UInt64) {
        core.mutex.lock()
        guard let waiter = core.state.pointee.cancelWaiter(id: id) else {
            core.mutex.unlock()
            return
        }
        syncGateLocked()
        core.mutex.unlock()
        if case .async(let continuation) = waiter.handle {
            continuation.resume(throwing: CancellationError())
        }
    }

    /// Fails, with the mutex held, every waiter that must fail fast (breaker open and nothing open
    /// to serve them). Returns the async ones to resume once the mutex is released.
    private func failFastWaitersLocked() -> [(UnsafeContinuation<UInt64, any Error>, ConnectionPoolError)] {
        var toResume: [(UnsafeContinuation<UInt64, any Error>, ConnectionPoolError)] = []
        while let (waiter, error) = core.state.pointee.popWaiterForFailFast() {
            if let continuation = deliverLocked(waiter, .failure(error)) { toResume.append((continuation, error)) }
        }
        return toResume
    }

    /// Carries out what an enqueue asked for, outside the mutex.
    @usableFromInline
    func afterEnqueue(createSlot: LeaseToken?, scheduleTimer: Int64?) {
        if let createSlot { startCreation(createSlot) }
        if let scheduleTimer { timer.schedule(at: scheduleTimer) }
    }

    /// Reads the connection in a slot the caller holds a lease for. Takes the mutex so the read is
    /// ordered after the write that stored it, for ThreadSanitizer as for the memory model.
    @usableFromInline
    func leasedConnection(_ token: LeaseToken) -> PooledConnection {
        core.mutex.lock()
        let connection = connections[Int(token.index)].unsafelyUnwrapped
        core.mutex.unlock()
        return connection
    }

    /// ``leasedConnection(_:)`` that also stamps the lease's time and call site when leases are
    /// tracked.
    @usableFromInline
    func leasedConnection(_ token: LeaseToken, file: StaticString, line: UInt) -> PooledConnection {
        let now = tracksLeases ? clock.coarseNow() : 0
        core.mutex.lock()
        if tracksLeases { core.state.pointee.slots.stampLease(token.index, now: now, file: file, line: line) }
        let connection = connections[Int(token.index)].unsafelyUnwrapped
        core.mutex.unlock()
        return connection
    }

    /// The locked first step of ``acquireChecked(timeout:file:line:)`` and
    /// ``acquireBlockingChecked(timeout:file:line:)``: what the caller does next.
    @usableFromInline
    enum CheckedAcquireStep {
        /// An idle connection is now leased (and stamped when leases are tracked); validate it first
        /// when `needsCheck`.
        case idle(LeaseToken, PooledConnection, needsCheck: Bool)
        /// None is idle: wait, with this waiter ID.
        case wait(id: UInt64)
    }

    /// Leases an idle connection, or reserves a waiter ID when there is none, under the mutex. Shared by
    /// both interfaces' checked acquires, which differ only in how they validate and wait.
    @usableFromInline
    func leaseIdleOrReserveWaiter(bypassWindow: Int64, file: StaticString, line: UInt) -> CheckedAcquireStep {
        let now = clock.coarseNow()
        core.mutex.lock()
        defer { core.mutex.unlock() }
        guard let token = core.state.pointee.leaseIdle() else {
            return .wait(id: core.state.pointee.reserveWaiterID())
        }
        if tracksLeases { core.state.pointee.slots.stampLease(token.index, now: now, file: file, line: line) }
        let needsCheck = configuration.validateOnAcquire
            && core.state.pointee.needsValidation(token, now: now, bypassWindow: bypassWindow)
        return .idle(token, connections[Int(token.index)].unsafelyUnwrapped, needsCheck: needsCheck)
    }

    /// Records how long a served waiter waited.
    @usableFromInline
    func recordWait(since start: Int64) {
        acquireWaitHistogram.record(nanoseconds: UInt64(max(0, clock.now() &- start)))
    }

    // MARK: Creation and closing

    func handle(_ decision: PoolStateMachine.CreationDecision) {
        switch decision {
        case .none: break
        case .create(let token): startCreation(token)
        case .retryAt(let deadline): timer.schedule(at: deadline)
        }
    }

    @usableFromInline
    func startCreation(_ token: LeaseToken) {
        Task { _ = await self.createConnection(token) }
    }

    /// Opens a connection for the slot reserved under `token` and installs it. Returns the error if
    /// it failed.
    func createConnection(_ token: LeaseToken) async -> (any Error)? {
        let span = tracer?.startSpan("connpool.connect", ofKind: .client)
        span?.attributes["connpool.pool"] = configuration.name
        let result: Result<PooledConnection, any Error>
        do {
            result = .success(try await factory.makeConnection())
        } catch {
            result = .failure(error)
            span?.recordError(error)
            span?.setStatus(SpanStatus(code: .error))
        }
        span?.end()
        let now = clock.now()
        core.mutex.lock()
        var failed: [(UnsafeContinuation<UInt64, any Error>, ConnectionPoolError)] = []
        var logFailure: (error: any Error, failures: Int, breakerOpen: Bool)?
        var next: PoolStateMachine.CreationDecision = .none
        var toClose: (PooledConnection?, LeaseToken?)?
        var handOff: (UnsafeContinuation<UInt64, any Error>, UInt64)?
        switch result {
        case .success(let connection):
            let action = core.state.pointee.creationSucceeded(token, now: now)
            if case .discard = action {
                toClose = (connection, nil)
            } else {
                let index = Int(token.index)
                connections[index] = connection
                if index < idleStack.capacity { idleStack.slots[index].expiresAt = core.state.pointee.slots.expiresAt[index] }
            }
            switch action {
            case .idle, .discard:
                break
            case .handOff(let waiter, let leaseToken):
                if let continuation = deliverLocked(waiter, .success(leaseToken.rawValue)) {
                    handOff = (continuation, leaseToken.rawValue)
                }
            case .close(let closing, _):
                toClose = (takeConnectionLocked(closing.index), closing)
            }
            next = core.state.pointee.nextCreation(now: now)
        case .failure(let error):
            next = core.state.pointee.creationFailed(token, error: error, now: now)
            logFailure = (error, core.state.pointee.backoff.consecutiveFailures, core.state.pointee.breakerOpen)
            failed = failFastWaitersLocked()
        }
        let watchers = creationWatchers
        creationWatchers = []
        syncGateLocked()
        core.mutex.unlock()

        if let (continuation, leaseToken) = handOff { continuation.resume(returning: leaseToken) }
        if let (connection, closing) = toClose { closeInBackground(connection, closing) }
        for (continuation, error) in failed { continuation.resume(throwing: error) }
        if let logFailure {
            logger.warning(
                "connection pool: opening a connection failed",
                metadata: [
                    "error": "\(logFailure.error)",
                    "consecutive_failures": "\(logFailure.failures)",
                    "fail_fast": "\(logFailure.breakerOpen)",
                ])
        }
        handle(next)
        for watcher in watchers { watcher.resume() }
        if case .failure(let error) = result {
            stopTimerIfFinished()  // a failed attempt during shutdown may have emptied the last slot
            return error
        }
        return nil
    }

    private func takeConnectionLocked(_ index: Int32) -> PooledConnection? {
        let connection = connections[Int(index)]
        connections[Int(index)] = nil
        return connection
    }

    /// Closes `connection` on a task of its own; then frees the slot named by `closing` (nil: the
    /// connection is not the pool's, there is no slot to free).
    private func closeInBackground(_ connection: PooledConnection?, _ closing: LeaseToken?) {
        Task {
            if let connection { await connection.close() }
            if let closing { self.closeFinished(closing) }
        }
    }

    private func closeFinished(_ closing: LeaseToken) {
        let now = clock.now()
        core.mutex.lock()
        let (decision, lifetime) = core.state.pointee.closeFinished(closing, now: now)
        let failed = failFastWaitersLocked()
        let drained = takeDrainContinuationsIfDrainedLocked()
        let finished = core.state.pointee.isFinished
        syncGateLocked()
        core.mutex.unlock()
        if let lifetime { lifetimeHistogram.record(nanoseconds: UInt64(max(0, lifetime))) }
        for (continuation, error) in failed { continuation.resume(throwing: error) }
        handle(decision)
        for (continuation, report) in drained { continuation.resume(returning: report) }
        // Called from a task or from shutdown(), both holding the runtime strongly.
        if finished { timer.stop() }
    }

    // MARK: Timer and maintenance

    /// Fails waiters past their deadline, ends a shutdown's grace period, runs a due maintenance
    /// round and retries creation after a backoff. Runs on the timer thread (or the thread advancing
    /// a manual clock). Returns the next deadline.
    func timerFired(now: Int64) -> Int64? {
        core.mutex.lock()
        // Maintenance, shutdown and metrics see parked connections as the idle ones they are.
        let parked = drainIdleStackLocked()
        core.state.pointee.timerFired()
        while let waiter = core.state.pointee.popExpiredWaiter(now: now) {
            let result = WaiterResult.failure(core.state.pointee.timeoutError(for: waiter))
            if let continuation = deliverLocked(waiter, result) {
                core.mutex.unlock()
                Self.resume(continuation, with: result)
                core.mutex.lock()
            }
        }
        var toClose: [(PooledConnection?, LeaseToken)] = []
        var drained: [(CheckedContinuation<ShutdownReport, Never>, ShutdownReport)] = []
        if core.state.pointee.shutdownDeadlinePassed(now: now) {
            let forced = core.state.pointee.takeLeasedForForcedClose(now: now)
            shutdownReport.forceClosed += forced.count
            for closing in forced { toClose.append((takeConnectionLocked(closing.index), closing)) }
            drained = takeDrainContinuationsLocked(gaveUp: true)
        }
        var toValidate: [(PooledConnection, LeaseToken)] = []
        var leaks: [PoolStateMachine.LeakReport] = []
        var abandoned: [PoolStateMachine.AbandonedOperation] = []
        var toCloseUntracked: [PooledConnection?] = []
        var failedFast: [(UnsafeContinuation<UInt64, any Error>, ConnectionPoolError)] = []
        if core.state.pointee.maintenanceDue(now: now) || core.state.pointee.lifecycle == .shuttingDown {
            abandoned = core.state.pointee.abandonStuckOperations(now: now)
            for operation in abandoned where operation.kind == .validating {
                // Close it now, outside the pool's accounting: closing is also what unblocks a check
                // stuck in I/O. The check's task, if it ever returns, finds its token stale.
                toCloseUntracked.append(connections[Int(operation.index)])
                connections[Int(operation.index)] = nil
            }
            if !abandoned.isEmpty {
                failedFast = failFastWaitersLocked()
                drained += takeDrainContinuationsIfDrainedLocked()
            }
        }
        if core.state.pointee.maintenanceDue(now: now) {
            leaks = core.state.pointee.detectLeaks(now: clock.coarseNow())
            for action in core.state.pointee.planMaintenance(now: now) {
                switch action {
                case .close(let closing, _):
                    toClose.append((takeConnectionLocked(closing.index), closing))
                case .validate(let checking):
                    if let connection = connections[Int(checking.index)] { toValidate.append((connection, checking)) }
                }
            }
        }
        var toCreate: [LeaseToken] = []
        while case .create(let token) = core.state.pointee.creationDecision(now: now) { toCreate.append(token) }
        var report: (@Sendable (PoolMetrics) -> Void, PoolMetrics)?
        if core.state.pointee.takeMetricsReportDue(now: now), let metricsHandler {
            report = (metricsHandler, metricsLocked())
        }
        let next = core.state.pointee.nextTimerDeadline()
        let finished = core.state.pointee.isFinished
        syncGateLocked()
        core.mutex.unlock()
        run(parked)
        if finished { timer.stop() }  // the handler's caller holds the runtime strongly

        for (continuation, error) in failedFast { continuation.resume(throwing: error) }
        for operation in abandoned {
            logger.warning(
                "connection pool: gave up on an operation that outlived its deadline",
                metadata: ["operation": "\(operation.kind.rawValue)", "slot": "\(operation.index)"])
        }
        for leak in leaks {
            logger.warning(
                "connection pool: a lease is still held past the leak detection threshold",
                metadata: [
                    "acquired_at": "\(leak.file):\(leak.line)",
                    "held_ms": "\(leak.heldFor / 1_000_000)",
                ])
        }
        if let (handler, metrics) = report { handler(metrics) }

        for (connection, closing) in toClose { closeInBackground(connection, closing) }
        for connection in toCloseUntracked { closeInBackground(connection, nil) }
        for token in toCreate { startCreation(token) }
        if !toValidate.isEmpty {
            Task { await self.validate(toValidate) }
        }
        for (continuation, report) in drained { continuation.resume(returning: report) }
        return next
    }

    /// The maintenance task's health checks: each idle connection in turn, outside the lock.
    private func validate(_ batch: [(PooledConnection, LeaseToken)]) async {
        for (connection, checking) in batch {
            let valid = await connection.isValid(timeout: configuration.healthCheckTimeout)
            finishValidation(checking, connection: connection, valid: valid)
        }
    }

    private func finishValidation(_ checking: LeaseToken, connection checked: PooledConnection, valid: Bool) {
        let now = clock.now()
        core.mutex.lock()
        switch core.state.pointee.validationFinished(checking, valid: valid, now: now) {
        case .idle:
            syncGateLocked()
            core.mutex.unlock()
        case .handOff(let waiter, let token):
            let continuation = deliverLocked(waiter, .success(token.rawValue))
            syncGateLocked()
            core.mutex.unlock()
            continuation?.resume(returning: token.rawValue)
        case .close(let closing, _):
            let connection = takeConnectionLocked(closing.index)
            syncGateLocked()
            core.mutex.unlock()
            if !valid {
                logger.info("connection pool: closing a connection that failed its health check")
            }
            closeInBackground(connection, closing)
        case .discard:
            // The check outlived its deadline: the pool gave up on it and already closed the connection.
            syncGateLocked()
            core.mutex.unlock()
            _ = checked
        }
    }

    /// The timeout for a check on acquire: ``PoolConfiguration/healthCheckTimeout``, but never past the
    /// acquire's own deadline, so a check against a frozen server cannot make the acquire overrun.
    @usableFromInline
    func checkTimeout(until deadline: Int64) -> Duration {
        let remaining = deadline &- clock.now()
        return min(configuration.healthCheckTimeout, .nanoseconds(max(remaining, 1)))
    }

    /// Records a passed check of a leased connection (validate on acquire).
    @usableFromInline
    func recordCheck(_ token: LeaseToken) {
        let now = clock.coarseNow()
        core.mutex.lock()
        core.state.pointee.recordCheck(token, now: now)
        core.mutex.unlock()
    }

    /// The timeout error for an acquire that gave up after `timeout`, with the last connect error.
    @usableFromInline
    func timeoutError(after timeout: Duration) -> ConnectionPoolError {
        core.mutex.lock()
        defer { core.mutex.unlock() }
        return .acquireTimeout(after: timeout, lastConnectError: core.state.pointee.lastConnectError)
    }

    /// Returns a leased connection that failed its check on acquire: the pool closes it.
    @usableFromInline
    func releaseFailedCheck(_ token: LeaseToken) {
        let now = clock.coarseNow()
        core.mutex.lock()
        releaseSlow(token, broken: true, now: now, reason: .health)
    }

    // MARK: Warm-up

    /// See ``ConnectionPool/warm()``.
    func warm() async throws {
        while true {
            core.mutex.lock()
            guard core.state.pointee.lifecycle == .running else {
                core.mutex.unlock()
                throw ConnectionPoolError.shutDown
            }
            var reserved: [LeaseToken] = []
            let now = clock.now()
            while let token = core.state.pointee.reserveForWarmUp(now: now) { reserved.append(token) }
            let slots = core.state.pointee.slots
            if reserved.isEmpty {
                if slots.liveCount >= configuration.minSize || slots.connectingCount == 0 {
                    core.mutex.unlock()
                    return
                }
                // Attempts started elsewhere are under way: wait for one to finish, then look again.
                defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
                await withCheckedContinuation { continuation in
                    creationWatchers.append(continuation)
                    core.mutex.unlock()
                }
                continue
            }
            core.mutex.unlock()
            let firstError = await withTaskGroup(of: (any Error)?.self) { group in
                for token in reserved {
                    group.addTask { await self.createConnection(token) }
                }
                var firstError: (any Error)?
                for await error in group where firstError == nil { firstError = error }
                return firstError
            }
            if let firstError { throw firstError }
        }
    }

    /// See ``ConnectionPool/warmBlocking()``.
    func warmBlocking() throws {
        let result: Result<Void, any Error> = BlockingBridge.wait {
            do { return .success(try await self.warm()) } catch { return .failure(error) }
        }
        try result.get()
    }

    // MARK: Shutdown

    /// See ``ConnectionPool/shutdown(gracePeriod:)``.
    func shutdown(gracePeriod: Duration? = nil) async -> ShutdownReport {
        for (token, connection) in beginShutdown(now: clock.now(), gracePeriod: gracePeriod) {
            if let connection { await connection.close() }
            closeFinished(token)
        }
        // (closeFinished records each connection's lifetime.)
        let report = await withCheckedContinuation { (continuation: CheckedContinuation<ShutdownReport, Never>) in
            // (resumed by whoever closes the last connection; see ThreadSanitizerAnnotations)
            core.mutex.lock()
            if core.state.pointee.isDrained || shutdownFinished {
                shutdownFinished = true
                let report = finalReportLocked()
                core.mutex.unlock()
                continuation.resume(returning: report)
            } else {
                drainContinuations.append(continuation)
                core.mutex.unlock()
            }
        }
        ThreadSanitizerAnnotations.acquireCurrentTask()
        stopTimerIfFinished()
        if report.forceClosed > 0 || report.stillInFlight > 0 {
            logger.warning("connection pool: shutdown grace period ended", metadata: ["report": "\(report)"])
        }
        return report
    }

    /// Stops lending, fails the waiters, arms the end of the grace period and takes the idle
    /// connections for closing, which the caller closes (each followed by `closeFinished`).
    private func beginShutdown(now: Int64, gracePeriod: Duration?) -> [(LeaseToken, PooledConnection?)] {
        core.mutex.lock()
        // Close the fast lane, then take the parked connections back as the idle ones they are.
        idleStack.setOpen(false)
        let parked = drainIdleStackLocked()
        let deadline = core.state.pointee.beginShutdown(now: now, gracePeriod: gracePeriod?.nanosecondsClamped)
        var continuations: [UnsafeContinuation<UInt64, any Error>] = []
        while let waiter = core.state.pointee.popWaiterForShutdown() {
            shutdownReport.failedWaiters += 1
            if let continuation = deliverLocked(waiter, .failure(.shutDown)) { continuations.append(continuation) }
        }
        var closing: [(LeaseToken, PooledConnection?)] = []
        while let token = core.state.pointee.takeIdleForClosing(now: now) {
            closing.append((token, takeConnectionLocked(token.index)))
        }
        shutdownReport.closedIdle += closing.count
        core.mutex.unlock()
        run(parked)
        if let deadline { timer.schedule(at: deadline) }
        for continuation in continuations { continuation.resume(throwing: ConnectionPoolError.shutDown) }
        return closing
    }

    /// See ``ConnectionPool/shutdownBlocking(gracePeriod:)``.
    func shutdownBlocking(gracePeriod: Duration? = nil) -> ShutdownReport {
        BlockingBridge.wait { await self.shutdown(gracePeriod: gracePeriod) }
    }

    private func finalReportLocked() -> ShutdownReport {
        var report = shutdownReport
        let slots = core.state.pointee.slots
        report.stillInFlight = slots.connectingCount + slots.closingCount + slots.validatingCount
        return report
    }

    private func takeDrainContinuationsIfDrainedLocked() -> [(CheckedContinuation<ShutdownReport, Never>, ShutdownReport)] {
        guard core.state.pointee.lifecycle == .shuttingDown, core.state.pointee.isDrained else { return [] }
        return takeDrainContinuationsLocked(gaveUp: false)
    }

    private func takeDrainContinuationsLocked(gaveUp: Bool) -> [(CheckedContinuation<ShutdownReport, Never>, ShutdownReport)] {
        shutdownFinished = true
        let report = finalReportLocked()
        defer { drainContinuations = [] }
        return drainContinuations.map { ($0, report) }
    }

    // MARK: Inspection

    /// See ``ConnectionPool/metrics()``.
    func metrics() -> PoolMetrics {
        drainIdleStack()  // parked connections count as idle
        core.mutex.lock()
        defer { core.mutex.unlock() }
        return metricsLocked()
    }

    private func metricsLocked() -> PoolMetrics {
        let state = core.state.pointee
        var metrics = PoolMetrics(
            idle: state.slots.idleCount,
            inUse: state.slots.leasedCount,
            connecting: state.slots.connectingCount,
            closing: state.slots.closingCount,
            validating: state.slots.validatingCount,
            waiting: state.waiters.count,
            maxSize: state.maxSize)
        let counters = state.counters
        let fastLends = idleStack.lendCount()
        metrics.acquires = counters.immediateAcquires + fastLends + counters.waitedAcquires
        metrics.acquiresAfterWaiting = counters.waitedAcquires
        metrics.created = counters.created
        metrics.creationFailures = counters.creationFailures
        metrics.acquireTimeouts = counters.acquireTimeouts
        metrics.healthCheckFailures = counters.healthCheckFailures
        metrics.failedFast = counters.failedFast
        metrics.shedWaiters = counters.shedWaiters
        metrics.cancelledWaiters = counters.cancelledWaiters
        metrics.leaksDetected = counters.leaksDetected
        metrics.closedByReason = counters.closedByReason
        metrics.acquireWait = acquireWaitHistogram.snapshot(extraZeros: UInt64(counters.immediateAcquires + fastLends))
        metrics.leaseHold = leaseHoldHistogram.snapshot()
        metrics.connectionLifetime = lifetimeHistogram.snapshot()
        return metrics
    }

    /// See ``ConnectionPool/setMetricsHandler(every:_:)``.
    func setMetricsHandler(every interval: Duration, _ handler: (@Sendable (PoolMetrics) -> Void)?) {
        precondition(interval > .zero, "the metrics interval must be positive")
        let now = clock.now()
        core.mutex.lock()
        metricsHandler = handler
        let deadline = core.state.pointee.setMetricsInterval(handler == nil ? nil : interval.nanosecondsClamped, now: now)
        core.mutex.unlock()
        if let deadline { timer.schedule(at: deadline) }
    }

    /// See ``ConnectionPool/status()``.
    func status() -> PoolStatus {
        drainIdleStack()
        core.mutex.lock()
        let state = core.state.pointee
        let metrics = metricsLocked()
        let health: PoolStatus.Health
        if state.lifecycle != .running {
            health = .shuttingDown
        } else if state.breakerOpen {
            health = .failing
        } else if state.lastConnectError != nil || (metrics.waiting > 0 && metrics.total >= metrics.maxSize) {
            health = .degraded
        } else {
            health = .healthy
        }
        let lastError = state.lastConnectError.map { "\($0)" }
        let failures = state.backoff.consecutiveFailures
        core.mutex.unlock()
        var configuration = self.configuration
        configuration.maxSize = metrics.maxSize
        return PoolStatus(
            name: configuration.name, health: health, metrics: metrics, configuration: configuration,
            factory: "\(factory)", lastConnectError: lastError, consecutiveConnectFailures: failures)
    }

    // MARK: Resize

    /// See ``ConnectionPool/resize(maxSize:)``.
    func resize(maxSize: Int) throws(PoolConfigurationError) {
        if maxSize < max(1, configuration.minSize) || maxSize > PoolConfiguration.maxSizeLimit {
            throw PoolConfigurationError(
                field: "maxSize", value: "\(maxSize)",
                rule: "must be at least 1, at least minSize (\(configuration.minSize)) and at most \(PoolConfiguration.maxSizeLimit)")
        }
        let now = clock.now()
        core.mutex.lock()
        // Parked leases return first, so that a shrink closes the idle extras among them.
        idleStack.setOpen(false)
        let parked = drainIdleStackLocked()
        let capacity = core.state.pointee.slots.capacity
        if maxSize > capacity {
            let grown = UnsafeMutablePointer<PooledConnection?>.allocate(capacity: maxSize)
            grown.moveInitialize(from: connections, count: capacity)
            (grown + capacity).initialize(repeating: nil, count: maxSize - capacity)
            connections.deallocate()
            connectionBuffer.pointee = grown
        }
        let action = core.state.pointee.resize(maxSize: maxSize, now: now)
        let toClose = action.close.map { ($0, takeConnectionLocked($0.index)) }
        syncGateLocked()
        core.mutex.unlock()
        run(parked)
        for (closing, connection) in toClose { closeInBackground(connection, closing) }
        for token in action.create { startCreation(token) }
    }

    /// Checks the state machine's invariants (for tests): a description of the first violation.
    func invariantViolation() -> String? {
        drainIdleStack()
        core.mutex.lock()
        defer { core.mutex.unlock() }
        if let violation = core.state.pointee.invariantViolation() { return violation }
        for index in 0..<core.state.pointee.slots.capacity {
            let state = core.state.pointee.slots.states[index]
            let hasConnection = connections[index] != nil
            let shouldHave = state == .idle || state == .leased || state == .validating
            if hasConnection != shouldHave { return "slot \(index) is \(state) but connection present = \(hasConnection)" }
        }
        return nil
    }
}

/// What the pool's timer calls: the runtime, held strongly on purpose (see `PoolRuntime`); the timer
/// lets go of it when stopped.
///
/// `@unchecked Sendable` is safe because `runtime` is written once, in the runtime's `init`, before the
/// timer can fire (it fires only after a deadline is scheduled, which only the initialized runtime does,
/// through the timer's own lock, which orders the write before the handler's read); afterwards it is
/// only read.
final class TimerTarget<Factory: ConnectionFactory>: @unchecked Sendable {
    var runtime: PoolRuntime<Factory>?
}
