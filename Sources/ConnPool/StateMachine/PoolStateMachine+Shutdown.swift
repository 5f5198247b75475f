/// Graceful shutdown: stop lending, fail waiters, close idle connections now and leased ones as they
/// return, and close by force whatever is still out when the grace period ends.
extension PoolStateMachine {
    /// Stops lending. Returns the timer deadline for the end of the grace period, if one must be
    /// armed. Afterwards drain ``popWaiterForShutdown()`` and ``takeIdleForClosing()``.
    mutating func beginShutdown(now: Int64, gracePeriod: Int64?) -> Int64? {
        lifecycle = .shuttingDown
        nextMaintenanceAt = .max
        guard let gracePeriod else { return nil }
        shutdownDeadline = min(shutdownDeadline, later(now, by: gracePeriod))
        return requestTimer(at: shutdownDeadline)
    }

    mutating func popWaiterForShutdown() -> Waiter? {
        guard lifecycle == .shuttingDown else { return nil }
        return waiters.popFirst()
    }

    /// Moves one idle slot to closing and returns it.
    mutating func takeIdleForClosing(now: Int64) -> LeaseToken? {
        guard !slots.idle.isEmpty else { return nil }
        let index = slots.idle.element(at: slots.idle.count - 1)
        // markClosing also removes it from the idle ring.
        return slots.markClosing(index, reason: .shutdown, deadline: later(now, by: closeTimeout))
    }

    /// Whether the grace period is over.
    func shutdownDeadlinePassed(now: Int64) -> Bool {
        lifecycle == .shuttingDown && now >= shutdownDeadline
    }

    /// At the end of the grace period: moves every leased slot to closing and returns them. Their
    /// leases become stale: returning them later does nothing.
    mutating func takeLeasedForForcedClose(now: Int64) -> [LeaseToken] {
        shutdownDeadline = .max
        var forced: [LeaseToken] = []
        for slot in 0..<slots.capacity where slots.states[slot] == .leased {
            forced.append(slots.markClosing(Int32(slot), reason: .shutdown, deadline: later(now, by: closeTimeout)))
        }
        forcedLeasesOutstanding += forced.count
        return forced
    }

    /// True once every slot is empty.
    var isDrained: Bool { slots.occupiedCount == 0 }

    /// True once the pool has stopped lending, every slot is empty and every lease closed by force has
    /// come back: nothing can call into the pool any more except its owner.
    var isFinished: Bool { lifecycle != .running && isDrained && forcedLeasesOutstanding == 0 }
}
