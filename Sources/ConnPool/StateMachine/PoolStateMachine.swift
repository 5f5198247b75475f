/// The pool's whole bookkeeping as a plain struct: which slot is empty, connecting, idle, leased,
/// validating or closing, who is waiting, when to retry a failed connection attempt, what the
/// maintenance task must do, and when the timer must fire.
///
/// It performs no I/O, takes no lock, resumes no continuation and reads no clock: every method takes
/// the current time, and every method that changes more than the hot path's counters appends what
/// follows from the change to an ``Effects`` value, which the runtime's one executor carries out
/// (outside the lock, except signalling a blocked thread, which must happen under it). That keeps every
/// rule testable by feeding it inputs and asserting the exact effects.
///
/// Non-generic: the connections live in the generic pool's buffer, indexed like ``SlotTable``.
/// The rules are split by concern: creation and the circuit breaker in `+Creation`, maintenance in
/// `+Maintenance`, shutdown in `+Shutdown`, the timer in `+Timer`, the action types in `+Actions` and
/// the effects in `+Effects`.
@usableFromInline
struct PoolStateMachine {
    @usableFromInline
    enum Lifecycle { case running, shuttingDown }

    @usableFromInline var slots: SlotTable
    @usableFromInline var waiters: WaiterQueue
    @usableFromInline let lifo: Bool
    @usableFromInline var lifecycle: Lifecycle = .running

    /// The largest number of occupied slots allowed (at most `slots.capacity`).
    @usableFromInline var maxSize: Int
    let minSize: Int
    let maxWaiters: Int?
    let maxConcurrentConnects: Int
    @usableFromInline var nextWaiterID: UInt64 = 1

    /// The most recent connection failure since the last success, reported in timeout errors.
    var lastConnectError: (any Error)?
    var backoff: RetryBackoff
    /// Monotonic nanoseconds before which no new connection attempt starts (after failures).
    var retryNotBefore: Int64 = .min
    /// Consecutive failures after which the circuit breaker opens; nil: never.
    let breakerThreshold: Int?
    /// While open, acquires no open connection can serve fail at once and one probe retries.
    var breakerOpen = false

    /// Lifetime rules, in nanoseconds.
    let maxLifetime: Int64?
    let maxLifetimeJitter: Double
    let idleTimeout: Int64?
    let healthCheckInterval: Int64?
    let maintenanceInterval: Int64
    /// How long a connection attempt, a health check or a close may take before the pool gives up on
    /// it and frees its slot.
    let connectTimeout: Int64
    let healthCheckTimeout: Int64
    let closeTimeout: Int64
    /// When the next maintenance round is due.
    var nextMaintenanceAt: Int64 = .max
    /// Draws lifetime jitter.
    var random: SplitMix64

    /// When shutdown gives up waiting for leased connections and closes them by force.
    var shutdownDeadline: Int64 = .max
    /// Leases whose slot was closed by force at the end of a shutdown's grace period and that have not
    /// come back yet. While any is out the pool's runtime must stay alive (see `PoolRuntime`).
    var forcedLeasesOutstanding = 0

    /// The earliest deadline handed to the timer that has not fired yet.
    var timerDeadline: Int64 = .max
    /// A deadline requested since the executor last took it (see ``takeTimerRequest()``); `.max`: none.
    var timerRequest: Int64 = .max
    /// Connection attempts that ended (opened, failed or given up on), ever: ``ConnectionPool/warm()``
    /// waits for this to move.
    var attemptsEnded = 0

    /// What the shutdown did so far; final once `shutdownComplete`.
    var shutdownReport = ShutdownReport()
    /// Whether the shutdown is over: every slot emptied, or the grace period ended.
    var shutdownComplete = false

    /// Event counters, read by ``ConnectionPool/metrics()``.
    @usableFromInline var counters = PoolCounters()
    /// Whether lends are stamped with time and call site (lease hold time, leak detection).
    @usableFromInline let tracksLeases: Bool
    let leakThreshold: Int64?
    /// How often the metrics handler runs, and when next; nil/max: no handler.
    var metricsInterval: Int64?
    var nextMetricsAt: Int64 = .max

    init(configuration: PoolConfiguration, capacity: Int? = nil, randomSeed: UInt64 = 0x9E37_79B9_7F4A_7C15) {
        slots = SlotTable(capacity: capacity ?? configuration.maxSize)
        waiters = WaiterQueue()
        lifo = configuration.reuseOrder == .lifo
        maxSize = configuration.maxSize
        minSize = configuration.minSize
        maxWaiters = configuration.maxWaiters
        maxConcurrentConnects = configuration.maxConcurrentConnects
        backoff = RetryBackoff(configuration: configuration, seed: randomSeed)
        breakerThreshold = configuration.circuitBreakerThreshold
        maxLifetime = configuration.maxLifetime?.nanosecondsClamped
        maxLifetimeJitter = configuration.maxLifetimeJitter
        idleTimeout = configuration.idleTimeout?.nanosecondsClamped
        healthCheckInterval = configuration.healthCheckInterval?.nanosecondsClamped
        maintenanceInterval = configuration.maintenanceInterval.nanosecondsClamped
        connectTimeout = configuration.connectTimeout.nanosecondsClamped
        healthCheckTimeout = configuration.healthCheckTimeout.nanosecondsClamped
        closeTimeout = configuration.closeTimeout.nanosecondsClamped
        random = SplitMix64(seed: randomSeed ^ 0xD1B5_4A32_D192_ED03)
        leakThreshold = configuration.leakDetectionThreshold?.nanosecondsClamped
        tracksLeases = configuration.leakDetectionThreshold != nil || configuration.recordsLeaseHoldTime
    }

    func deallocate() {
        slots.deallocate()
        waiters.deallocate()
    }

    // MARK: Hot path

    /// Lends an idle connection, if there is one. O(1), no allocation.
    @inlinable
    mutating func leaseIdle() -> LeaseToken? {
        guard lifecycle == .running else { return nil }
        guard let index = lifo ? slots.idle.popBack() : slots.idle.popFront() else { return nil }
        slots.leasedCount &+= 1
        counters.immediateAcquires &+= 1
        return grant(index)
    }

    /// Marks `index` leased under a new generation and returns its token.
    @inlinable
    mutating func grant(_ index: Int32) -> LeaseToken {
        slots.states[Int(index)] = .leased
        let generation = slots.generations[Int(index)] &+ 1
        slots.generations[Int(index)] = generation
        return LeaseToken(index: index, generation: generation)
    }

    /// Whether released connections may be parked on the lock-free idle stack (see `IdleStack`): the
    /// pool runs, nobody waits, and it holds no more connections than its maximum.
    @inlinable
    var fastLaneAllowed: Bool { lifecycle == .running && waiters.isEmpty && slots.heldCount <= maxSize }

    /// Returns a healthy connection to the idle set when nobody waits and it has not outlived
    /// `maxLifetime`. Returns `false` when the release needs the slow path (waiters, expiry, shutdown,
    /// or a stale token).
    @inlinable
    mutating func releaseToIdle(_ token: LeaseToken, now: Int64) -> Bool {
        let index = Int(token.index)
        guard waiters.isEmpty, lifecycle == .running,
              slots.states[index] == .leased, slots.generations[index] == token.generation,
              now < slots.expiresAt[index], slots.heldCount <= maxSize
        else { return false }
        slots.states[index] = .idle
        slots.lastUsed[index] = now
        slots.leasedCount &-= 1
        slots.idle.pushBack(token.index)
        return true
    }

    /// Whether a connection just lent with `token` must be checked before use (validate on acquire):
    /// it was last used longer ago than `bypassWindow`. A zero window checks every time (`lastUsed`
    /// may come from the precise clock and `now` from the coarse one, a tick behind).
    @inlinable
    func needsValidation(_ token: LeaseToken, now: Int64, bypassWindow: Int64) -> Bool {
        bypassWindow <= 0 || now &- slots.lastUsed[Int(token.index)] > bypassWindow
    }

    // MARK: Waiting

    /// Reserves the id a waiter will have if it has to wait; ids grow in arrival order.
    @inlinable
    mutating func reserveWaiterID() -> UInt64 {
        let id = nextWaiterID
        nextWaiterID &+= 1
        return id
    }

    /// Queues `waiter` unless it can be served or must fail at once. A queued waiter may get a new
    /// connection attempt (in `effects`) and arms the timer for its deadline.
    @usableFromInline
    mutating func enqueue(_ waiter: Waiter, now: Int64, into effects: inout Effects) -> EnqueueResult {
        guard lifecycle == .running else { return .failed(.shutDown) }
        if let token = leaseIdle() { return .leased(token) }
        if let error = failFastError() {
            counters.failedFast += 1
            return .failed(error)
        }
        if let maxWaiters, waiters.count >= maxWaiters {
            counters.shedWaiters += 1
            return .failed(.tooManyWaiters(limit: maxWaiters))
        }
        waiters.insert(waiter)
        requestTimer(at: waiter.deadline)
        startCreationIfWanted(now: now, into: &effects)
        return .waiting
    }

    /// Removes a waiter that gave up (cancelled); if it was still queued, it is resumed with
    /// `CancellationError`.
    mutating func cancelWaiter(id: UInt64, into effects: inout Effects) {
        guard let waiter = waiters.remove(id: id) else { return }
        counters.cancelledWaiters += 1
        effects.cancelled.append(waiter)
    }

    /// The error a timed-out waiter receives.
    func timeoutError(for waiter: Waiter) -> ConnectionPoolError {
        .acquireTimeout(after: waiter.timeout, lastConnectError: lastConnectError)
    }

    // MARK: Release (slow path)

    /// Takes back a leased connection that could not simply go idle: hands it to the oldest waiter,
    /// closes it (broken, expired, over the maximum, shutting down) or puts it in the idle ring. A stale
    /// token (its slot was closed by force at the end of a shutdown's grace period) only counts the
    /// lease as returned.
    /// A `dirty` connection (its borrower changed its session state) that is not closed goes to
    /// `validating` while its session is reset (see ``resetFinished(_:succeeded:now:into:)``) instead of
    /// to a waiter or the idle ring.
    @usableFromInline
    mutating func release(
        _ token: LeaseToken, broken: Bool, dirty: Bool = false, now: Int64, brokenReason: CloseReason = .broken,
        into effects: inout Effects
    ) {
        let index = token.index
        guard slots.states[Int(index)] == .leased, slots.generations[Int(index)] == token.generation else {
            // Only a slot closed by force takes a lease's slot back before the lease returns.
            if forcedLeasesOutstanding > 0 { forcedLeasesOutstanding -= 1 }
            return
        }
        let reason: CloseReason?
        if lifecycle != .running {
            reason = .shutdown
            shutdownReport.closedOnReturn += 1
        } else if broken {
            reason = brokenReason
            if brokenReason == .health { counters.healthCheckFailures += 1 }
        } else if now >= slots.expiresAt[Int(index)] {
            reason = .lifetime
        } else if slots.heldCount > maxSize {
            reason = .resize
        } else {
            reason = nil
        }
        if let reason {
            effects.closes.append(slots.markClosing(index, reason: reason, deadline: later(now, by: closeTimeout)))
            startCreationIfWanted(now: now, into: &effects)
            return
        }
        slots.lastUsed[Int(index)] = now
        if dirty {
            effects.resets.append(slots.beginResetting(index, deadline: later(now, by: healthCheckTimeout)))
            return
        }
        if let waiter = waiters.popFirst() {
            counters.waitedAcquires += 1
            effects.wakeups.append(Wakeup(waiter: waiter, result: .success(grant(index).rawValue)))
            return
        }
        slots.states[Int(index)] = .idle
        slots.leasedCount -= 1
        slots.idle.pushBack(index)
    }

    /// The session reset of the connection in `index` finished: a connection reset in time is lent or
    /// parked like a new one; one whose reset failed (or any, once shutting down) is closed
    /// (``CloseReason/dirty``). A reset given up on meanwhile changes nothing (its connection was already
    /// closed outside the pool's accounting).
    mutating func resetFinished(_ token: LeaseToken, succeeded: Bool, now: Int64, into effects: inout Effects) {
        let index = token.index
        guard slots.states[Int(index)] == .validating, slots.isCurrent(token) else { return }
        if !succeeded || lifecycle != .running {
            effects.closes.append(
                slots.markClosing(index, reason: succeeded ? .shutdown : .dirty, deadline: later(now, by: closeTimeout)))
            startCreationIfWanted(now: now, into: &effects)
            return
        }
        counters.sessionResets += 1
        slots.validatingCount -= 1
        makeAvailable(index, now: now, into: &effects)
    }

    /// Hands a connection that became available in `index` (created, validated) to the oldest waiter,
    /// or puts it in the idle ring; closes it if the pool holds more than its maximum.
    mutating func makeAvailable(_ index: Int32, now: Int64, into effects: inout Effects) {
        if slots.heldCount > maxSize {
            slots.states[Int(index)] = .leased  // counted here, so markClosing can uncount it
            slots.leasedCount += 1
            effects.closes.append(slots.markClosing(index, reason: .resize, deadline: later(now, by: closeTimeout)))
            return
        }
        if let waiter = waiters.popFirst() {
            counters.waitedAcquires += 1
            slots.leasedCount += 1
            effects.wakeups.append(Wakeup(waiter: waiter, result: .success(grant(index).rawValue)))
            return
        }
        slots.states[Int(index)] = .idle
        slots.idle.pushBack(index)
    }

    /// A connection in `index` finished closing: the slot is free again, and may be used for a new
    /// attempt. Returns how long the connection lived (nanoseconds; nil if it never opened or the close
    /// was already given up on).
    mutating func closeFinished(_ token: LeaseToken, now: Int64, into effects: inout Effects) -> Int64? {
        let index = token.index
        let slot = Int(index)
        // A close that outlived its deadline was already given up on (counted and freed).
        guard slots.states[slot] == .closing, slots.isCurrent(token) else { return nil }
        counters.countClose(slots.closeReasons[slot])
        let lifetime = slots.createdAt[slot] != .min ? now &- slots.createdAt[slot] : nil
        slots.createdAt[slot] = .min
        slots.markEmpty(index)
        startCreationIfWanted(now: now, into: &effects)
        failFastWaiters(into: &effects)
        return lifetime
    }

    // MARK: Timer

    /// Asks for the timer to fire at `deadline`; the executor arms it (``takeTimerRequest()``) unless an
    /// earlier deadline is armed already.
    mutating func requestTimer(at deadline: Int64) {
        guard deadline < timerDeadline else { return }
        timerDeadline = deadline
        timerRequest = min(timerRequest, deadline)
    }

    /// The deadline to arm the timer at, if any was requested since the last call.
    mutating func takeTimerRequest() -> Int64? {
        defer { timerRequest = .max }
        return timerRequest == .max ? nil : timerRequest
    }

    // MARK: Inspection

    /// Checks the counting invariants; returns a description of the first violation, if any.
    func invariantViolation() -> String? {
        var counts = [SlotState: Int]()
        for index in 0..<slots.capacity { counts[slots.states[index], default: 0] += 1 }
        if counts[.idle, default: 0] != slots.idleCount { return "idle ring \(slots.idleCount) != idle slots \(counts[.idle, default: 0])" }
        if counts[.leased, default: 0] != slots.leasedCount { return "leasedCount \(slots.leasedCount) != \(counts[.leased, default: 0])" }
        if counts[.connecting, default: 0] != slots.connectingCount { return "connectingCount \(slots.connectingCount) != \(counts[.connecting, default: 0])" }
        if counts[.closing, default: 0] != slots.closingCount { return "closingCount \(slots.closingCount) != \(counts[.closing, default: 0])" }
        if counts[.validating, default: 0] != slots.validatingCount { return "validatingCount \(slots.validatingCount) != \(counts[.validating, default: 0])" }
        if counts[.empty, default: 0] != slots.emptyCount { return "emptyCount \(slots.emptyCount) != \(counts[.empty, default: 0])" }
        let total = slots.idleCount + slots.leasedCount + slots.connectingCount + slots.closingCount + slots.validatingCount
        if total != slots.occupiedCount { return "total \(total) != occupied \(slots.occupiedCount)" }
        if total > slots.capacity { return "total \(total) > capacity \(slots.capacity)" }
        if !waiters.isEmpty && slots.idleCount > 0 { return "\(waiters.count) waiters while \(slots.idleCount) connections idle" }
        return nil
    }
}
