/// The timer's handler, the maintenance round's health checks and the session resets of returned
/// connections.
extension PoolRuntime {
    /// Fails waiters past their deadline, gives up on stuck operations, ends a shutdown's grace period,
    /// runs a due maintenance round, retries creation after a backoff and reports metrics (see
    /// `PoolStateMachine.timerFired`). Runs on the timer thread (or the thread advancing a manual
    /// clock), which holds the runtime strongly. Returns the next deadline.
    func timerFired(now: Int64) -> Int64? {
        let leakClock = clock.coarseNow()
        core.mutex.lock()
        // Maintenance, shutdown and metrics see parked connections as the idle ones they are.
        var work = Work(effects: PoolStateMachine.Effects())
        returnParkedLocked(into: &work.effects)
        let attemptsBefore = core.state.pointee.attemptsEnded
        core.state.pointee.timerFired(now: now, leakClock: leakClock, into: &work.effects)
        finishLocked(&work, attemptsBefore: attemptsBefore)
        core.mutex.unlock()
        return perform(&work, armingTimer: false)
    }

    /// The maintenance round's health checks: each idle connection in turn, outside the lock.
    func validate(_ batch: [(PooledConnection, LeaseToken)]) async {
        for (connection, checking) in batch {
            let valid = await connection.isValid(timeout: configuration.healthCheckTimeout)
            let now = clock.now()
            modifyState { state, effects in state.validationFinished(checking, valid: valid, now: now, into: &effects) }
        }
    }

    /// Resets the session of a returned connection whose borrower changed it (its slot is `validating`
    /// meanwhile), bounded by `healthCheckTimeout` like a health check: a reset that outlives it is
    /// given up on by the timer and its connection closed.
    func resetSession(_ connection: PooledConnection, _ resetting: LeaseToken) async {
        let succeeded = await connection.resetSession(timeout: configuration.healthCheckTimeout)
        let now = clock.now()
        modifyState { state, effects in state.resetFinished(resetting, succeeded: succeeded, now: now, into: &effects) }
    }
}
