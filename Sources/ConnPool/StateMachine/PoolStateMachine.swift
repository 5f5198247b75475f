/// The pool's whole bookkeeping as a plain struct: which slot is empty, connecting, idle, leased or
/// closing, who is waiting, when to retry a failed connection attempt, and what the timer must do.
///
/// It performs no I/O, takes no lock, resumes no continuation and reads no clock: every method takes
/// the current time and returns an action that ``ConnectionPool`` carries out (outside the lock,
/// except signalling a blocked thread, which must happen under it). That keeps every rule testable by
/// feeding it inputs and asserting the exact action.
///
/// Non-generic: the connections live in the generic pool's buffer, indexed like ``SlotTable``.
@usableFromInline
struct PoolStateMachine {
    @usableFromInline
    enum Lifecycle { case running, shuttingDown }

    @usableFromInline var slots: SlotTable
    @usableFromInline var waiters: WaiterQueue
    @usableFromInline let lifo: Bool
    @usableFromInline var lifecycle: Lifecycle = .running

    /// The largest number of occupied slots allowed (at most `slots.capacity`).
    var maxSize: Int
    var maxWaiters: Int?
    @usableFromInline var nextWaiterID: UInt64 = 1

    /// The most recent connection failure since the last success, reported in timeout errors.
    var lastConnectError: (any Error)?
    var backoff: RetryBackoff
    /// Monotonic nanoseconds before which no new connection attempt starts (after failures).
    var retryNotBefore: Int64 = .min

    /// The earliest deadline handed to the timer that has not fired yet.
    var timerDeadline: Int64 = .max

    init(configuration: PoolConfiguration, capacity: Int? = nil, randomSeed: UInt64 = 0x9E37_79B9_7F4A_7C15) {
        slots = SlotTable(capacity: capacity ?? configuration.maxSize)
        waiters = WaiterQueue()
        lifo = configuration.reuseOrder == .lifo
        maxSize = configuration.maxSize
        maxWaiters = configuration.maxWaiters
        backoff = RetryBackoff(configuration: configuration, seed: randomSeed)
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

    /// Returns a healthy connection to the idle set when nobody waits. Returns `false` when the
    /// release needs the slow path (waiters, shutdown, or a stale token).
    @inlinable
    mutating func releaseToIdle(_ token: LeaseToken, now: Int64) -> Bool {
        let index = Int(token.index)
        guard waiters.isEmpty, lifecycle == .running,
              slots.states[index] == .leased, slots.generations[index] == token.generation
        else { return false }
        slots.states[index] = .idle
        slots.lastUsed[index] = now
        slots.leasedCount &-= 1
        slots.idle.pushBack(token.index)
        return true
    }

    // MARK: Waiting

    /// Reserves the id a waiter will have if it has to wait; ids grow in arrival order.
    @inlinable
    mutating func reserveWaiterID() -> UInt64 {
        let id = nextWaiterID
        nextWaiterID &+= 1
        return id
    }

    /// What an acquire that found no idle connection must do.
    @usableFromInline
    enum EnqueueAction {
        /// A connection became idle meanwhile: here is its lease.
        case leased(LeaseToken)
        /// The acquire fails at once.
        case failed(ConnectionPoolError)
        /// The waiter is queued; start creating a connection in `createSlot` and (re)arm the timer.
        case waiting(createSlot: Int32?, scheduleTimer: Int64?)
    }

    /// Queues `waiter` unless it can be served or must fail at once.
    @usableFromInline
    mutating func enqueue(_ waiter: Waiter, now: Int64) -> EnqueueAction {
        guard lifecycle == .running else { return .failed(.shutDown) }
        if let token = leaseIdle() { return .leased(token) }
        if let maxWaiters, waiters.count >= maxWaiters { return .failed(.tooManyWaiters(limit: maxWaiters)) }
        waiters.insert(waiter)
        var timer = requestTimer(at: waiter.deadline)
        var createSlot: Int32?
        switch creationDecision(now: now) {
        case .create(let index): createSlot = index
        case .retryAt(let deadline): timer = min(timer ?? .max, requestTimer(at: deadline) ?? .max)
        case .none: break
        }
        return .waiting(createSlot: createSlot, scheduleTimer: timer == .max ? nil : timer)
    }

    /// Removes a waiter that gave up (cancelled). Returns it if it was still queued.
    mutating func cancelWaiter(id: UInt64) -> Waiter? {
        waiters.remove(id: id)
    }

    /// The error a timed-out waiter receives.
    func timeoutError(for waiter: Waiter) -> ConnectionPoolError {
        .acquireTimeout(after: waiter.timeout, lastConnectError: lastConnectError)
    }

    // MARK: Release (slow path)

    /// What to do with a returned connection that could not simply go idle.
    @usableFromInline
    enum ReleaseAction {
        /// It went idle (the fast path's case, reached here after a race).
        case idle
        /// Hand it to this waiter under this new token.
        case handOff(Waiter, LeaseToken)
        /// Close the connection in this slot (broken, or the pool is shutting down).
        case close(Int32)
        /// The token is stale: the slot was already taken back (for instance forced closed by a
        /// shutdown). Nothing to do with the slot; the caller's connection is not the pool's any more.
        case stale
    }

    @usableFromInline
    mutating func release(_ token: LeaseToken, broken: Bool, now: Int64) -> ReleaseAction {
        let index = token.index
        guard slots.states[Int(index)] == .leased, slots.generations[Int(index)] == token.generation else {
            return .stale
        }
        if broken || lifecycle != .running {
            slots.markClosing(index)
            return .close(index)
        }
        slots.lastUsed[Int(index)] = now
        if let waiter = waiters.popFirst() {
            return .handOff(waiter, grant(index))
        }
        slots.states[Int(index)] = .idle
        slots.leasedCount -= 1
        slots.idle.pushBack(index)
        return .idle
    }

    // MARK: Creation

    @usableFromInline
    enum CreationDecision: Equatable {
        case none
        case create(Int32)
        case retryAt(Int64)
    }

    /// Whether to open one more connection now: only for a waiter that no attempt under way will
    /// serve, only below `maxSize`, and not before the retry backoff has passed.
    mutating func creationDecision(now: Int64) -> CreationDecision {
        guard lifecycle == .running,
              waiters.count > slots.connectingCount,
              slots.occupiedCount < maxSize
        else { return .none }
        if now < retryNotBefore { return .retryAt(retryNotBefore) }
        guard let index = slots.reserveEmpty() else { return .none }
        return .create(index)
    }

    /// What to do with a connection that was just opened in `index`.
    @usableFromInline
    enum CreatedAction {
        case idle
        case handOff(Waiter, LeaseToken)
        case close(Int32)
    }

    mutating func creationSucceeded(_ index: Int32, now: Int64) -> CreatedAction {
        precondition(slots.states[Int(index)] == .connecting)
        backoff.reset()
        retryNotBefore = .min
        lastConnectError = nil
        slots.createdAt[Int(index)] = now
        slots.lastUsed[Int(index)] = now
        if lifecycle != .running {
            slots.markClosing(index)
            return .close(index)
        }
        slots.connectingCount -= 1
        if let waiter = waiters.popFirst() {
            slots.leasedCount += 1
            return .handOff(waiter, grant(index))
        }
        slots.states[Int(index)] = .idle
        slots.idle.pushBack(index)
        return .idle
    }

    /// Frees the slot of a failed attempt and sets the retry backoff. Returns when to retry, if a
    /// waiter still needs a connection.
    mutating func creationFailed(_ index: Int32, error: any Error, now: Int64) -> CreationDecision {
        lastConnectError = error
        slots.markEmpty(index)
        retryNotBefore = now &+ backoff.nextDelay()
        return nextCreation(now: now)
    }

    /// A connection in `index` finished closing: the slot is free again.
    mutating func closeFinished(_ index: Int32, now: Int64) -> CreationDecision {
        slots.markEmpty(index)
        return nextCreation(now: now)
    }

    /// The creation decision, with a retry time turned into a timer request.
    mutating func nextCreation(now: Int64) -> CreationDecision {
        let decision = creationDecision(now: now)
        if case .retryAt(let deadline) = decision {
            return requestTimer(at: deadline).map { .retryAt($0) } ?? .none
        }
        return decision
    }

    // MARK: Timer

    /// Records that the timer must fire at `deadline`; returns it if the timer must be (re)armed.
    mutating func requestTimer(at deadline: Int64) -> Int64? {
        guard deadline < timerDeadline else { return nil }
        timerDeadline = deadline
        return deadline
    }

    /// Marks the armed deadline as fired. Call first when the timer fires.
    mutating func timerFired() {
        timerDeadline = .max
    }

    /// Removes the next waiter whose deadline has passed.
    mutating func popExpiredWaiter(now: Int64) -> Waiter? {
        waiters.removeFirstExpired(now: now)
    }

    /// The next deadline the timer must wake for, recorded as requested.
    mutating func nextTimerDeadline() -> Int64? {
        var next = waiters.earliestDeadline
        if waiters.count > slots.connectingCount, retryNotBefore != .min { next = min(next, retryNotBefore) }
        guard next != .max else { return nil }
        return requestTimer(at: next)
    }

    // MARK: Shutdown

    /// Stops lending. Afterwards drain ``popWaiterForShutdown()`` and ``takeIdleForClosing()``.
    mutating func beginShutdown() {
        lifecycle = .shuttingDown
    }

    mutating func popWaiterForShutdown() -> Waiter? {
        guard lifecycle == .shuttingDown else { return nil }
        return waiters.popFirst()
    }

    /// Moves one idle slot to closing and returns it.
    mutating func takeIdleForClosing() -> Int32? {
        guard !slots.idle.isEmpty else { return nil }
        let index = slots.idle.element(at: slots.idle.count - 1)
        slots.markClosing(index)  // also removes it from the idle ring
        return index
    }

    /// True once every slot is empty.
    var isDrained: Bool { slots.occupiedCount == 0 }

    // MARK: Inspection

    /// Checks the counting invariants; returns a description of the first violation, if any.
    func invariantViolation() -> String? {
        var counts = [SlotState: Int]()
        for index in 0..<slots.capacity { counts[slots.states[index], default: 0] += 1 }
        if counts[.idle, default: 0] != slots.idleCount { return "idle ring \(slots.idleCount) != idle slots \(counts[.idle, default: 0])" }
        if counts[.leased, default: 0] != slots.leasedCount { return "leasedCount \(slots.leasedCount) != \(counts[.leased, default: 0])" }
        if counts[.connecting, default: 0] != slots.connectingCount { return "connectingCount \(slots.connectingCount) != \(counts[.connecting, default: 0])" }
        if counts[.closing, default: 0] != slots.closingCount { return "closingCount \(slots.closingCount) != \(counts[.closing, default: 0])" }
        if counts[.empty, default: 0] != slots.emptyCount { return "emptyCount \(slots.emptyCount) != \(counts[.empty, default: 0])" }
        let total = slots.idleCount + slots.leasedCount + slots.connectingCount + slots.closingCount
        if total != slots.occupiedCount { return "total \(total) != occupied \(slots.occupiedCount)" }
        if total > maxSize && lifecycle == .running && slots.capacity == maxSize { return "total \(total) > maxSize \(maxSize)" }
        if !waiters.isEmpty && slots.idleCount > 0 { return "\(waiters.count) waiters while \(slots.idleCount) connections idle" }
        return nil
    }
}
