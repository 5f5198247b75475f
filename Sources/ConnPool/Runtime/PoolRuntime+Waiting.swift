/// What both acquire interfaces share beyond the hot path: waiters, hand-offs, and checks on acquire.
extension PoolRuntime {
    /// The value an async waiter's continuation carries when the enqueue itself lent an idle
    /// connection: no real token has it (its slot index would be -1).
    @inlinable
    static var directLease: UInt64 { .max }

    /// Removes a cancelled async waiter and fails it with `CancellationError` (if it was still queued).
    @usableFromInline
    func cancelWaiter(id: UInt64) {
        modifyState { state, effects in state.cancelWaiter(id: id, into: &effects) }
    }

    /// Queues `waiter`, or leases it an idle connection at once (then `connection` is set, and the
    /// lease stamped when leases are tracked). With `checkingCancellation`, returns nil without queueing
    /// when the current task is cancelled: checked under the lock, so a cancellation handler that runs
    /// after it finds the waiter queued.
    ///
    /// The connection comes out through `inout`, not a tuple result: a tuple with the generic connection
    /// type would cost a type-metadata lookup per call (see `PoolWork`).
    @usableFromInline
    func enqueue(
        _ waiter: Waiter, now: Int64, checkingCancellation: Bool, leased connection: inout PooledConnection?,
        file: StaticString, line: UInt
    ) -> PoolStateMachine.EnqueueResult? {
        modifyState { state, effects -> PoolStateMachine.EnqueueResult? in
            if checkingCancellation, Task.isCancelled { return nil }
            let result = state.enqueue(waiter, now: now, into: &effects)
            guard case .leased(let token) = result else { return result }
            if tracksLeases { state.slots.stampLease(token.index, now: clock.coarseNow(), file: file, line: line) }
            connection = connections[Int(token.index)]
            return result
        }
    }

    /// The connection a waiter was handed with `token`, stamped when leases are tracked; nil when the
    /// slot was closed by force (the end of a shutdown's grace period) before the waiter ran: the lease
    /// is stale, and the caller returns it with ``returnStaleLease(_:)``.
    @usableFromInline
    func handedOverConnection(_ token: LeaseToken, file: StaticString, line: UInt) -> PooledConnection? {
        let now = tracksLeases ? clock.coarseNow() : 0
        core.mutex.lock()
        defer { core.mutex.unlock() }
        return handedOverConnectionLocked(token, now: now, file: file, line: line)
    }

    /// ``handedOverConnection(_:file:line:)`` with the mutex held.
    @usableFromInline
    func handedOverConnectionLocked(_ token: LeaseToken, now: Int64, file: StaticString, line: UInt) -> PooledConnection? {
        let slots = core.state.pointee.slots
        guard slots.states[Int(token.index)] == .leased, slots.isCurrent(token) else { return nil }
        if tracksLeases { core.state.pointee.slots.stampLease(token.index, now: now, file: file, line: line) }
        return connections[Int(token.index)]
    }

    /// The locked first step of ``acquireChecked(timeout:file:line:)`` and
    /// ``acquireBlockingChecked(timeout:file:line:)``: what the caller does next.
    @usableFromInline
    enum CheckedAcquireStep {
        /// An idle connection is now leased (and stamped when leases are tracked); validate it first
        /// when `needsCheck`.
        case idle(LeaseToken, PooledConnection, needsCheck: Bool)
        /// None is idle: wait, with this waiter ID.
        case wait(id: UInt64)
    }

    /// Leases an idle connection, or reserves a waiter ID when there is none, under the mutex. Shared by
    /// both interfaces' checked acquires, which differ only in how they validate and wait.
    @usableFromInline
    func leaseIdleOrReserveWaiter(bypassWindow: Int64, file: StaticString, line: UInt) -> CheckedAcquireStep {
        let now = clock.coarseNow()
        core.mutex.lock()
        defer { core.mutex.unlock() }
        guard let token = core.state.pointee.leaseIdle() else {
            return .wait(id: core.state.pointee.reserveWaiterID())
        }
        if tracksLeases { core.state.pointee.slots.stampLease(token.index, now: now, file: file, line: line) }
        let needsCheck = configuration.validateOnAcquire
            && core.state.pointee.needsValidation(token, now: now, bypassWindow: bypassWindow)
        return .idle(token, connections[Int(token.index)].unsafelyUnwrapped, needsCheck: needsCheck)
    }

    /// Whether the idle connection just lent under `token` must be checked (validate on acquire, and
    /// unused for longer than the bypass window).
    @usableFromInline
    func needsValidation(_ token: LeaseToken, bypassWindow: Int64) -> Bool {
        guard configuration.validateOnAcquire else { return false }
        let now = clock.coarseNow()
        core.mutex.lock()
        defer { core.mutex.unlock() }
        return core.state.pointee.needsValidation(token, now: now, bypassWindow: bypassWindow)
    }

    /// Records how long a served waiter waited.
    @usableFromInline
    func recordWait(since start: Int64) {
        acquireWaitHistogram.record(nanoseconds: UInt64(max(0, clock.now() &- start)))
    }

    /// The timeout for a check on acquire: ``PoolConfiguration/healthCheckTimeout``, but never past the
    /// acquire's own deadline, so a check against a frozen server cannot make the acquire overrun.
    @usableFromInline
    func checkTimeout(until deadline: Int64) -> Duration {
        let remaining = deadline &- clock.now()
        return min(configuration.healthCheckTimeout, .nanoseconds(max(remaining, 1)))
    }

    /// Records a passed check of a leased connection (validate on acquire).
    @usableFromInline
    func recordCheck(_ token: LeaseToken) {
        let now = clock.coarseNow()
        core.mutex.lock()
        core.state.pointee.recordCheck(token, now: now)
        core.mutex.unlock()
    }

    /// The timeout error for an acquire that gave up after `timeout`, with the last connect error.
    @usableFromInline
    func timeoutError(after timeout: Duration) -> ConnectionPoolError {
        core.mutex.lock()
        defer { core.mutex.unlock() }
        return .acquireTimeout(after: timeout, lastConnectError: core.state.pointee.lastConnectError)
    }

    /// Returns a leased connection that failed its check on acquire: the pool closes it.
    @usableFromInline
    func releaseFailedCheck(_ token: LeaseToken) {
        let now = clock.coarseNow()
        core.mutex.lock()
        releaseSlow(token, broken: true, now: now, reason: .health)
    }
}
