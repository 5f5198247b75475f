/// Opening connections: who needs one, how many attempts may run at once, the retry backoff and the
/// circuit breaker.
extension PoolStateMachine {
    /// Whether the pool wants one more connection attempt, ignoring the backoff and the concurrency
    /// bound: for a waiter that no attempt under way will serve, to reach `minSize`, or as the one
    /// probe of an open circuit breaker.
    var creationWanted: Bool {
        guard lifecycle == .running, slots.occupiedCount < maxSize else { return false }
        if breakerOpen { return slots.connectingCount == 0 }
        if waiters.count > slots.connectingCount { return true }
        return slots.liveCount + slots.connectingCount < minSize
    }

    /// Whether to open one more connection now, reserving its slot if so.
    mutating func creationDecision(now: Int64) -> CreationDecision {
        guard creationWanted, slots.connectingCount < maxConcurrentConnects else { return .none }
        if now < retryNotBefore { return .retryAt(retryNotBefore) }
        guard let token = slots.reserveEmpty(deadline: later(now, by: connectTimeout)) else { return .none }
        return .create(token)
    }

    /// The creation decision, with a retry time turned into a timer request (nil when already armed).
    mutating func nextCreation(now: Int64) -> CreationDecision {
        let decision = creationDecision(now: now)
        if case .retryAt(let deadline) = decision {
            return requestTimer(at: deadline).map { .retryAt($0) } ?? .none
        }
        return decision
    }

    /// Reserves a slot for an explicit warm-up, ignoring the backoff (the caller asked for it now)
    /// but not the concurrency bound. Nil when `minSize` is reached or covered by attempts under way.
    mutating func reserveForWarmUp(now: Int64) -> LeaseToken? {
        guard lifecycle == .running,
              slots.liveCount + slots.connectingCount < minSize,
              slots.connectingCount < maxConcurrentConnects,
              slots.occupiedCount < maxSize
        else { return nil }
        return slots.reserveEmpty(deadline: later(now, by: connectTimeout))
    }

    /// A connection was opened in `index`: resets the backoff, closes the breaker, stamps its
    /// lifetime, and lends or parks it.
    mutating func creationSucceeded(_ token: LeaseToken, now: Int64) -> AvailableAction {
        let index = token.index
        // An attempt that outlived `connectTimeout` was given up on: its connection is not ours.
        guard slots.states[Int(index)] == .connecting, slots.isCurrent(token) else { return .discard }
        counters.created += 1
        backoff.reset()
        retryNotBefore = .min
        lastConnectError = nil
        breakerOpen = false
        let slot = Int(index)
        slots.createdAt[slot] = now
        slots.lastUsed[slot] = now
        slots.lastChecked[slot] = now
        slots.expiresAt[slot] = expiry(createdAt: now)
        if lifecycle != .running {
            return .close(slots.markClosing(index, reason: .shutdown, deadline: later(now, by: closeTimeout)), .shutdown)
        }
        slots.connectingCount -= 1
        return makeAvailable(index, now: now)
    }

    /// The moment a connection created at `createdAt` reaches its lifetime, shortened by a random
    /// fraction up to `maxLifetimeJitter` so that connections opened together expire apart.
    mutating func expiry(createdAt: Int64) -> Int64 {
        guard let maxLifetime else { return .max }
        let shortened = Double(maxLifetime) * (1 - maxLifetimeJitter * random.nextUnit())
        // A lifetime of centuries must not overflow (found by the PoolConfiguration fuzzer).
        let lifetime = shortened >= Double(Int64.max) ? Int64.max : Int64(shortened)
        return later(createdAt, by: lifetime)
    }

    /// Frees the slot of a failed attempt, sets the retry backoff and opens the breaker after
    /// `breakerThreshold` consecutive failures. Returns what to do next.
    mutating func creationFailed(_ token: LeaseToken, error: any Error, now: Int64) -> CreationDecision {
        let index = token.index
        // An attempt given up on was already counted as failed when it was abandoned.
        guard slots.states[Int(index)] == .connecting, slots.isCurrent(token) else { return .none }
        counters.creationFailures += 1
        lastConnectError = error
        slots.markEmpty(index)
        retryNotBefore = later(now, by: backoff.nextDelay())
        if let breakerThreshold, backoff.consecutiveFailures >= breakerThreshold {
            breakerOpen = true
        }
        return nextCreation(now: now)
    }

    /// The error an acquire gets at once while the breaker is open and no open connection exists
    /// that could serve it; nil when it may wait.
    func failFastError() -> ConnectionPoolError? {
        guard breakerOpen, slots.liveCount == 0, let lastConnectError else { return nil }
        return .connectFailing(lastConnectError: lastConnectError, consecutiveFailures: backoff.consecutiveFailures)
    }

    /// Removes the next waiter that must fail fast (breaker open, nothing open to serve it).
    mutating func popWaiterForFailFast() -> (Waiter, ConnectionPoolError)? {
        guard let error = failFastError(), let waiter = waiters.popFirst() else { return nil }
        counters.failedFast += 1
        return (waiter, error)
    }
}
