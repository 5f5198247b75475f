/// The timer's round: everything that happens because time passed.
extension PoolStateMachine {
    /// Runs when the timer fires: fails waiters past their deadline, gives up on operations past theirs,
    /// ends a shutdown's grace period, runs a due maintenance round, retries creation after a backoff
    /// and reports metrics; then requests the next deadline.
    mutating func timerFired(now: Int64, leakClock: Int64, into effects: inout Effects) {
        timerDeadline = .max
        while let waiter = waiters.removeFirstExpired(now: now) {
            counters.acquireTimeouts += 1
            effects.wakeups.append(Wakeup(waiter: waiter, result: .failure(timeoutError(for: waiter))))
        }
        // Stuck operations first: a close given up on before the grace period's end counts as done.
        if maintenanceDue(now: now) || lifecycle == .shuttingDown {
            abandonStuckOperations(now: now, into: &effects)
        }
        if shutdownDeadlinePassed(now: now) {
            takeLeasedForForcedClose(now: now, into: &effects)
        }
        if maintenanceDue(now: now) {
            for leak in detectLeaks(now: leakClock) { effects.events.append(.leak(leak)) }
            planMaintenance(now: now, into: &effects)
        }
        while case .create(let token) = creationDecision(now: now) { effects.creations.append(token) }
        if takeMetricsReportDue(now: now) { effects.metricsReportDue = true }
        requestNextDeadline(after: now)
    }

    /// Requests the next deadline the timer must wake for: the earliest waiter's, the next maintenance
    /// round, the end of the grace period, the next metrics report, the end of a creation backoff and,
    /// while shutting down (no maintenance rounds any more), every operation's.
    ///
    /// Only deadlines after `now`: whatever was due at `now` this round has handled, except a retry
    /// whose backoff is over but that cannot start yet (every slot taken, or `maxConcurrentConnects`
    /// attempts under way). The end of what blocks it (an attempt or a close ending) starts it, so
    /// waking for it again would only spin the timer (found by the simulation: a manual clock recursed
    /// without end, a real timer thread would have spun).
    mutating func requestNextDeadline(after now: Int64) {
        var next = min(waiters.earliestDeadline, nextMaintenanceAt, shutdownDeadline, nextMetricsAt)
        if lifecycle == .shuttingDown { next = min(next, earliestOperationDeadline) }
        if retryNotBefore > now, creationWanted { next = min(next, retryNotBefore) }
        if next != .max, next > now { requestTimer(at: next) }
    }

    /// The earliest deadline of an operation under way (connecting, validating, closing). O(slots):
    /// asked only while shutting down.
    var earliestOperationDeadline: Int64 {
        var earliest = Int64.max
        for slot in 0..<slots.capacity {
            switch slots.states[slot] {
            // An idle or leased slot keeps the deadline of the attempt that opened it: not an operation.
            case .connecting, .validating, .closing: earliest = min(earliest, slots.operationDeadlines[slot])
            case .empty, .idle, .leased: continue
            }
        }
        return earliest
    }
}
