#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// What a change of the pool's state left to do once the lock is released (see ``PoolRuntime``'s
/// effects executor below).
///
/// Not nested in the generic `PoolRuntime` and free of its generic types (connections are held as
/// `AnyObject`): a nested or generic-dependent type would make the runtime, whose slow path is not
/// specialized, look up its type metadata at run time on every hand-off (tuple and generic metadata
/// caches, measured at about 2 µs per waiter round trip in the hand-off benchmark).
struct PoolWork {
    var effects: PoolStateMachine.Effects
    /// Async waiters to resume (blocked threads were already signalled under the lock).
    var resumes = InlineFirstArray<(UnsafeContinuation<UInt64, any Error>, WaiterResult)>()
    /// Connections (the pool's `PooledConnection`s) to close: with the slot's closing token, or nil for
    /// one outside the accounting.
    var closes: [(AnyObject?, LeaseToken?)] = []
    /// Idle connections (the pool's `PooledConnection`s) to check, each in its `validating` slot.
    var validations: [(AnyObject, LeaseToken)] = []
    /// Returned connections (the pool's `PooledConnection`s) to reset, each in its `validating` slot.
    var resets: [(AnyObject, LeaseToken)] = []
    /// The timer deadline to arm, if one was requested.
    var timerDeadline: Int64?
    var shutdownWaiters: [CheckedContinuation<ShutdownReport, Never>] = []
    var shutdownReport = ShutdownReport()
    var warmWaiters: [CheckedContinuation<Void, Never>] = []
    var metricsReport: (@Sendable (PoolMetrics) -> Void, PoolMetrics)?
    /// The pool is finished: stop the timer (which lets go of the runtime).
    var finished = false

    init(effects: PoolStateMachine.Effects) { self.effects = effects }
}

/// The effects executor: the one place that carries out what a change of the state machine implies
/// (postgres-nio's `modifyStateAndRunActions` is the model).
extension PoolRuntime {
    typealias Work = PoolWork

    /// Runs `body` on the state machine under the lock, then carries out every effect it appended:
    /// the only way the pool's state changes outside the two hot paths (`leaseIdle`, `releaseToIdle`).
    ///
    /// - Parameters:
    ///   - drainingFastLane: first close the fast lane and return its parked leases to the state
    ///     machine, so `body` sees them as the idle connections they are (maintenance, inspection,
    ///     resize, shutdown). The lane reopens afterwards if the state allows it.
    ///   - body: the change. It must not touch `core.state` except through its `state` argument.
    /// - Returns: what `body` returned.
    func modifyState<Result>(
        drainingFastLane: Bool = false,
        _ body: (inout PoolStateMachine, inout PoolStateMachine.Effects) -> Result
    ) -> Result {
        core.mutex.lock()
        return runLocked(drainingFastLane: drainingFastLane, body)
    }

    /// ``modifyState(drainingFastLane:_:)`` for a caller that already holds the lock; returns with it
    /// released.
    func runLocked<Result>(
        drainingFastLane: Bool = false,
        _ body: (inout PoolStateMachine, inout PoolStateMachine.Effects) -> Result
    ) -> Result {
        // One value from the change to `perform`, mutated in place: no copy of the effects on the way.
        var work = Work(effects: PoolStateMachine.Effects())
        if drainingFastLane { returnParkedLocked(into: &work.effects) }
        let attemptsBefore = core.state.pointee.attemptsEnded
        let result = body(&core.state.pointee, &work.effects)
        finishLocked(&work, attemptsBefore: attemptsBefore)
        core.mutex.unlock()
        _ = perform(&work, armingTimer: true)
        return result
    }

    /// Closes the fast lane and returns every lease parked there through the locked release path (to
    /// the idle ring, to the oldest waiter, or to be closed). Call with the mutex held.
    func returnParkedLocked(into effects: inout PoolStateMachine.Effects) {
        for index in idleStack.closeAndTakeAll() {
            let now = idleStack.slots[index].parkedAt
            // The slot's connection is also in `connections`: the parked reference just goes.
            let token = unpark(index).token
            if !core.state.pointee.releaseToIdle(token, now: now) {
                core.state.pointee.release(token, broken: false, now: now, into: &effects)
            }
        }
    }

    /// Turns a change's effects into work, with the mutex held: keeps the fast lane in step with the
    /// state machine, signals blocked waiters (their wait cell must not be touched once the mutex is
    /// released), takes the connections to close or check out of their slots, takes the timer request,
    /// completes shutdown and warm-up waits, and notes whether the pool is finished.
    func finishLocked(_ work: inout Work, attemptsBefore: Int) {
        let state = core.state
        if usesFastLane {
            if state.pointee.fastLaneAllowed {
                idleStack.open()
            } else {
                // Waiters, shutdown or a shrink: parked leases must reach the locked side.
                returnParkedLocked(into: &work.effects)
            }
        }
        state.pointee.completeShutdownIfDrained()
        let wakeups = work.effects.wakeups
        wakeups.forEach { wakeup in
            switch wakeup.waiter.handle {
            case .blocking(let cell):
                cell.pointee.result = wakeup.result
                pthread_cond_signal(&cell.pointee.condition)
            case .async(let continuation):
                work.resumes.append((continuation, wakeup.result))
            }
        }
        if !work.effects.closes.isEmpty || !work.effects.discards.isEmpty || !work.effects.validations.isEmpty
            || !work.effects.resets.isEmpty || work.effects.metricsReportDue {
            let effects = work.effects
            for closing in effects.closes { work.closes.append((takeConnectionLocked(closing.index), closing)) }
            for index in effects.discards { work.closes.append((takeConnectionLocked(index), nil)) }
            for checking in effects.validations {
                if let connection = connections[Int(checking.index)] { work.validations.append((connection, checking)) }
            }
            for resetting in effects.resets {
                if let connection = connections[Int(resetting.index)] { work.resets.append((connection, resetting)) }
            }
            if effects.metricsReportDue, let metricsHandler { work.metricsReport = (metricsHandler, metricsLocked(state.pointee)) }
        }
        if state.pointee.lifecycle == .shuttingDown {
            // No maintenance rounds any more: the timer wakes for stuck operations so shutdown ends.
            state.pointee.requestTimer(at: state.pointee.earliestOperationDeadline)
            if state.pointee.shutdownComplete, !shutdownWaiters.isEmpty {
                work.shutdownWaiters = shutdownWaiters
                work.shutdownReport = state.pointee.shutdownReport
                shutdownWaiters = []
            }
        }
        if !warmWaiters.isEmpty, state.pointee.attemptsEnded != attemptsBefore || state.pointee.lifecycle != .running {
            work.warmWaiters = warmWaiters
            warmWaiters = []
        }
        work.timerDeadline = state.pointee.takeTimerRequest()
        work.finished = state.pointee.isFinished
    }

    /// Does a change's work, without the mutex. Returns the timer deadline instead of arming it when
    /// `armingTimer` is false (the timer's own handler returns it).
    ///
    /// Every caller holds the runtime strongly (a task, the handle, the timer's handler, an acquire,
    /// or a lease's release inside ``whileRetained(_:)``), so stopping the timer here never frees the
    /// runtime under it.
    func perform(_ work: inout Work, armingTimer: Bool) -> Int64? {
        work.resumes.forEach { continuation, result in Self.resume(continuation, with: result) }
        work.effects.cancelled.forEach { waiter in
            if case .async(let continuation) = waiter.handle { continuation.resume(throwing: CancellationError()) }
        }
        if !work.effects.isEmpty || !work.closes.isEmpty {
            performSlowEffects(&work)
        }
        for waiter in work.shutdownWaiters { waiter.resume(returning: work.shutdownReport) }
        for waiter in work.warmWaiters { waiter.resume() }
        if work.finished {
            timer.stop()
            return nil
        }
        guard let deadline = work.timerDeadline else { return nil }
        if !armingTimer { return deadline }
        timer.schedule(at: deadline)
        return nil
    }

    /// The rarer effects: logs, closes, new attempts, health checks, session resets and the metrics report.
    func performSlowEffects(_ work: inout Work) {
        for event in work.effects.events { log(event) }
        if let (handler, metrics) = work.metricsReport { handler(metrics) }
        for (connection, closing) in work.closes {
            closeInBackground(connection.map { unsafeDowncast($0, to: PooledConnection.self) }, closing)
        }
        for token in work.effects.creations { startCreation(token) }
        if !work.validations.isEmpty {
            let batch = work.validations.map { (unsafeDowncast($0.0, to: PooledConnection.self), $0.1) }
            spawn { await self.validate(batch) }
        }
        for (connection, resetting) in work.resets {
            let connection = unsafeDowncast(connection, to: PooledConnection.self)
            spawn { await self.resetSession(connection, resetting) }
        }
    }

    /// Wakes an async waiter.
    static func resume(_ continuation: UnsafeContinuation<UInt64, any Error>, with result: WaiterResult) {
        switch result {
        case .success(let token): continuation.resume(returning: token)
        case .failure(let error): continuation.resume(throwing: error)
        }
    }

    private func log(_ event: PoolStateMachine.Event) {
        switch event {
        case .connectFailed(let error, let failures, let failingFast):
            logger.warning(
                "connection pool: opening a connection failed",
                metadata: ["error": "\(error)", "consecutive_failures": "\(failures)", "fail_fast": "\(failingFast)"])
        case .abandoned(let operation):
            logger.warning(
                "connection pool: gave up on an operation that outlived its deadline",
                metadata: ["operation": "\(operation.kind.rawValue)", "slot": "\(operation.index)"])
        case .leak(let leak):
            logger.warning(
                "connection pool: a lease is still held past the leak detection threshold",
                metadata: ["acquired_at": "\(leak.file):\(leak.line)", "held_ms": "\(leak.heldFor / 1_000_000)"])
        case .failedHealthCheck:
            logger.info("connection pool: closing a connection that failed its health check")
        }
    }
}
