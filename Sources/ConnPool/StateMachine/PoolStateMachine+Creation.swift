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

    /// Starts one more connection attempt if the pool wants one, or arms the timer for the end of the
    /// backoff.
    mutating func startCreationIfWanted(now: Int64, into effects: inout Effects) {
        switch creationDecision(now: now) {
        case .none: break
        case .create(let token): effects.creations.append(token)
        case .retryAt(let deadline): requestTimer(at: deadline)
        }
    }

    /// Reserves a slot for an explicit warm-up, ignoring the backoff (the caller asked for it now)
    /// but not the concurrency bound, and starts the attempt. Nil when `minSize` is reached or covered
    /// by attempts under way.
    mutating func reserveForWarmUp(now: Int64, into effects: inout Effects) -> LeaseToken? {
        guard lifecycle == .running,
              slots.liveCount + slots.connectingCount < minSize,
              slots.connectingCount < maxConcurrentConnects,
              slots.occupiedCount < maxSize,
              let token = slots.reserveEmpty(deadline: later(now, by: connectTimeout))
        else { return nil }
        effects.creations.append(token)
        return token
    }

    /// Whether the attempt named by `token` is still under way (not finished, failed or given up on).
    func isConnecting(_ token: LeaseToken) -> Bool {
        slots.states[Int(token.index)] == .connecting && slots.isCurrent(token)
    }

    /// A connection was opened in `index`, and the runtime installed it in the slot: resets the
    /// backoff, closes the breaker, stamps its lifetime, and lends it, parks it, or closes it (shutting
    /// down, or over the maximum). Returns false if the attempt was given up on meanwhile: the
    /// connection is not the pool's, and the caller closes it without touching any slot.
    mutating func creationSucceeded(_ token: LeaseToken, now: Int64, into effects: inout Effects) -> Bool {
        let index = token.index
        // An attempt that outlived `connectTimeout` was given up on: its connection is not ours.
        guard isConnecting(token) else { return false }
        attemptsEnded += 1
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
            effects.closes.append(slots.markClosing(index, reason: .shutdown, deadline: later(now, by: closeTimeout)))
            return true
        }
        slots.connectingCount -= 1
        makeAvailable(index, now: now, into: &effects)
        startCreationIfWanted(now: now, into: &effects)
        return true
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
    /// `breakerThreshold` consecutive failures (then waiters that nothing can serve fail at once).
    mutating func creationFailed(_ token: LeaseToken, error: any Error, now: Int64, into effects: inout Effects) {
        // An attempt given up on was already counted as failed when it was abandoned.
        guard isConnecting(token) else { return }
        attemptsEnded += 1
        slots.markEmpty(token.index)
        recordConnectFailure(error, now: now)
        effects.events.append(.connectFailed(
            error: error, consecutiveFailures: backoff.consecutiveFailures, failingFast: breakerOpen))
        startCreationIfWanted(now: now, into: &effects)
        failFastWaiters(into: &effects)
    }

    /// Counts a failed attempt: the last error, the backoff, and the breaker. A permanent failure (see
    /// ``ConnectErrorClassifying``) opens the breaker at once and retries after the longest backoff.
    mutating func recordConnectFailure(_ error: any Error, now: Int64) {
        counters.creationFailures += 1
        lastConnectError = error
        let delay = backoff.nextDelay()
        if ConnectionPoolError.isPermanent(error) {
            breakerOpen = true
            retryNotBefore = later(now, by: max(delay, backoff.maximum))
            return
        }
        retryNotBefore = later(now, by: delay)
        if let breakerThreshold, backoff.consecutiveFailures >= breakerThreshold { breakerOpen = true }
    }

    /// The error an acquire gets at once while the breaker is open and no open connection exists
    /// that could serve it; nil when it may wait.
    func failFastError() -> ConnectionPoolError? {
        guard breakerOpen, slots.liveCount == 0, let lastConnectError else { return nil }
        return .connectFailing(lastConnectError: lastConnectError, consecutiveFailures: backoff.consecutiveFailures)
    }

    /// Fails every waiter that must fail fast (breaker open, nothing open to serve it).
    mutating func failFastWaiters(into effects: inout Effects) {
        while let error = failFastError(), let waiter = waiters.popFirst() {
            counters.failedFast += 1
            effects.wakeups.append(Wakeup(waiter: waiter, result: .failure(error)))
        }
    }
}
