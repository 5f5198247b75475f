/// Graceful shutdown: stop lending, fail waiters, close idle connections now and leased ones as they
/// return, and close by force whatever is still out when the grace period ends.
extension PoolStateMachine {
    /// Stops lending: fails every waiter, closes every idle connection now, and arms the end of the
    /// grace period (nil: wait for every lease to come back). Leased connections close as they return.
    mutating func beginShutdown(now: Int64, gracePeriod: Int64?, into effects: inout Effects) {
        guard lifecycle == .running else { return }
        lifecycle = .shuttingDown
        nextMaintenanceAt = .max
        while let waiter = waiters.popFirst() {
            shutdownReport.failedWaiters += 1
            effects.wakeups.append(Wakeup(waiter: waiter, result: .failure(.shutDown)))
        }
        while !slots.idle.isEmpty {
            let index = slots.idle.element(at: slots.idle.count - 1)
            // markClosing also removes it from the idle ring.
            effects.closes.append(slots.markClosing(index, reason: .shutdown, deadline: later(now, by: closeTimeout)))
            shutdownReport.closedIdle += 1
        }
        if let gracePeriod {
            shutdownDeadline = min(shutdownDeadline, later(now, by: gracePeriod))
            requestTimer(at: shutdownDeadline)
        }
        completeShutdownIfDrained()
    }

    /// Marks the shutdown complete once every slot is empty.
    mutating func completeShutdownIfDrained() {
        guard lifecycle == .shuttingDown, !shutdownComplete, isDrained else { return }
        shutdownComplete = true
        shutdownReport.stillInFlight = 0
    }

    /// Whether the grace period is over.
    func shutdownDeadlinePassed(now: Int64) -> Bool {
        lifecycle == .shuttingDown && now >= shutdownDeadline
    }

    /// At the end of the grace period: closes every leased slot by force (their leases become stale:
    /// returning them later does nothing) and completes the shutdown, reporting what is still in flight.
    mutating func takeLeasedForForcedClose(now: Int64, into effects: inout Effects) {
        shutdownDeadline = .max
        var forced = 0
        for slot in 0..<slots.capacity where slots.states[slot] == .leased {
            effects.closes.append(slots.markClosing(Int32(slot), reason: .shutdown, deadline: later(now, by: closeTimeout)))
            forced += 1
        }
        forcedLeasesOutstanding += forced
        shutdownReport.forceClosed += forced
        if !shutdownComplete {
            shutdownComplete = true
            shutdownReport.stillInFlight = slots.connectingCount + slots.closingCount + slots.validatingCount
        }
    }

    /// True once every slot is empty.
    var isDrained: Bool { slots.occupiedCount == 0 }

    /// True once the pool has stopped lending, every slot is empty and every lease closed by force has
    /// come back: nothing can call into the pool any more except its owner.
    var isFinished: Bool { lifecycle != .running && isDrained && forcedLeasesOutstanding == 0 }
}
