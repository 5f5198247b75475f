/// The maintenance round: lifetime, idle timeout and health checks of idle connections.
extension PoolStateMachine {
    /// Arms the first maintenance round.
    mutating func startMaintenance(now: Int64) {
        nextMaintenanceAt = later(now, by: maintenanceInterval)
        requestTimer(at: nextMaintenanceAt)
    }

    func maintenanceDue(now: Int64) -> Bool {
        lifecycle == .running && now >= nextMaintenanceAt
    }

    /// Decides, for every idle connection, whether to close it (past its lifetime, or idle past
    /// `idleTimeout` while the pool stays at or above `minSize`) or check it (unused and unchecked
    /// for `healthCheckInterval`). Slots to close become `closing` and slots to check `validating`,
    /// so neither can be lent meanwhile. Schedules the next round.
    mutating func planMaintenance(now: Int64, into effects: inout Effects) {
        nextMaintenanceAt = later(now, by: maintenanceInterval)
        guard lifecycle == .running, !slots.idle.isEmpty else { return }
        var live = slots.liveCount
        // Oldest first (the front of the ring), so the least recently used close first.
        let idle = (0..<slots.idle.count).map { slots.idle.element(at: $0) }
        for index in idle {
            let slot = Int(index)
            if now >= slots.expiresAt[slot] {
                effects.closes.append(slots.markClosing(index, reason: .lifetime, deadline: later(now, by: closeTimeout)))
                live -= 1
            } else if let idleTimeout, now &- slots.lastUsed[slot] >= idleTimeout, live > minSize {
                effects.closes.append(slots.markClosing(index, reason: .idle, deadline: later(now, by: closeTimeout)))
                live -= 1
            } else if let healthCheckInterval,
                      now &- max(slots.lastUsed[slot], slots.lastChecked[slot]) >= healthCheckInterval {
                effects.validations.append(slots.beginValidating(index, deadline: later(now, by: healthCheckTimeout)))
            }
        }
    }

    /// The health check of `index` finished: a passing connection is lent or parked, a failing one
    /// (or any, once shutting down) is closed. A check given up on meanwhile changes nothing (its
    /// connection was already closed outside the pool's accounting).
    mutating func validationFinished(_ token: LeaseToken, valid: Bool, now: Int64, into effects: inout Effects) {
        let index = token.index
        guard slots.states[Int(index)] == .validating, slots.isCurrent(token) else { return }
        if !valid || lifecycle != .running {
            let reason: CloseReason = valid ? .shutdown : .health
            if !valid {
                counters.healthCheckFailures += 1
                effects.events.append(.failedHealthCheck)
            }
            effects.closes.append(slots.markClosing(index, reason: reason, deadline: later(now, by: closeTimeout)))
            startCreationIfWanted(now: now, into: &effects)
            return
        }
        slots.validatingCount -= 1
        slots.lastChecked[Int(index)] = now
        makeAvailable(index, now: now, into: &effects)
    }

    /// Gives up on connection attempts, health checks and closes that outlived their deadline (a
    /// factory, `isValid` or `close` that hangs): their slots become free, so a hung call never
    /// shrinks the pool for good. The late result, if it ever comes, is discarded (a late connection
    /// is closed outside the pool's accounting). Counted as a failed attempt, a failed check, or a
    /// close.
    mutating func abandonStuckOperations(now: Int64, into effects: inout Effects) {
        guard slots.connectingCount + slots.validatingCount + slots.closingCount > 0 else { return }
        var any = false
        for slot in 0..<slots.capacity where now >= slots.operationDeadlines[slot] {
            let index = Int32(slot)
            let kind: AbandonedOperation.Kind
            switch slots.states[slot] {
            case .connecting:
                attemptsEnded += 1
                slots.markEmpty(index)
                recordConnectFailure(ConnectionPoolError.connectTimedOut(after: .nanoseconds(connectTimeout)), now: now)
                kind = .connecting
            case .validating:
                // A health check (`health`) or a session reset (`dirty`; see `beginResetting`).
                let reason = slots.closeReasons[slot]
                if reason == .health { counters.healthCheckFailures += 1 }
                slots.markClosing(index, reason: reason, deadline: .max)
                counters.countClose(reason)
                slots.markEmpty(index)
                // Closing it now, outside the pool's accounting, is also what unblocks a check stuck in
                // I/O; the check, if it ever returns, finds its token stale.
                effects.discards.append(index)
                kind = .validating
            case .closing:
                counters.countClose(slots.closeReasons[slot])
                slots.markEmpty(index)
                kind = .closing
            default:
                continue
            }
            any = true
            effects.events.append(.abandoned(AbandonedOperation(index: index, kind: kind)))
        }
        if any {
            startCreationIfWanted(now: now, into: &effects)
            failFastWaiters(into: &effects)
        }
    }

    /// Records a passed check of a leased connection (validate on acquire).
    mutating func recordCheck(_ token: LeaseToken, now: Int64) {
        guard slots.generations[Int(token.index)] == token.generation else { return }
        slots.lastChecked[Int(token.index)] = now
    }
}
