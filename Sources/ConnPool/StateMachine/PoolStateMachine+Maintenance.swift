/// The maintenance round: lifetime, idle timeout and health checks of idle connections.
extension PoolStateMachine {
    /// Arms the first maintenance round; returns the timer deadline to arm, if any.
    mutating func startMaintenance(now: Int64) -> Int64? {
        nextMaintenanceAt = now &+ maintenanceInterval
        return requestTimer(at: nextMaintenanceAt)
    }

    func maintenanceDue(now: Int64) -> Bool {
        lifecycle == .running && now >= nextMaintenanceAt
    }

    /// Decides, for every idle connection, whether to close it (past its lifetime, or idle past
    /// `idleTimeout` while the pool stays at or above `minSize`) or check it (unused and unchecked
    /// for `healthCheckInterval`). Slots to close become `closing` and slots to check `validating`,
    /// so neither can be lent meanwhile. Schedules the next round.
    mutating func planMaintenance(now: Int64) -> [MaintenanceAction] {
        nextMaintenanceAt = now &+ maintenanceInterval
        guard lifecycle == .running, !slots.idle.isEmpty else { return [] }
        var actions: [MaintenanceAction] = []
        var live = slots.liveCount
        // Oldest first (the front of the ring), so the least recently used close first.
        let idle = (0..<slots.idle.count).map { slots.idle.element(at: $0) }
        for index in idle {
            let slot = Int(index)
            if now >= slots.expiresAt[slot] {
                slots.markClosing(index, reason: .lifetime)
                actions.append(.close(index, .lifetime))
                live -= 1
            } else if let idleTimeout, now &- slots.lastUsed[slot] >= idleTimeout, live > minSize {
                slots.markClosing(index, reason: .idle)
                actions.append(.close(index, .idle))
                live -= 1
            } else if let healthCheckInterval,
                      now &- max(slots.lastUsed[slot], slots.lastChecked[slot]) >= healthCheckInterval {
                slots.idle.remove(index)
                slots.states[slot] = .validating
                slots.validatingCount += 1
                actions.append(.validate(index))
            }
        }
        return actions
    }

    /// The health check of `index` finished: a passing connection is lent or parked, a failing one
    /// (or any, once shutting down) is closed.
    mutating func validationFinished(_ index: Int32, valid: Bool, now: Int64) -> AvailableAction {
        precondition(slots.states[Int(index)] == .validating)
        if !valid || lifecycle != .running {
            let reason: CloseReason = valid ? .shutdown : .health
            if !valid { counters.healthCheckFailures += 1 }
            slots.markClosing(index, reason: reason)
            return .close(index, reason)
        }
        slots.validatingCount -= 1
        slots.lastChecked[Int(index)] = now
        return makeAvailable(index)
    }

    /// Records a passed check of a leased connection (validate on acquire).
    mutating func recordCheck(_ token: LeaseToken, now: Int64) {
        guard slots.generations[Int(token.index)] == token.generation else { return }
        slots.lastChecked[Int(token.index)] = now
    }
}
