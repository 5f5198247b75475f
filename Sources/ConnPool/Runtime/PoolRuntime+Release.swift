/// Returning leases: the lock-free fast lane, the locked idle return, and the slow path through the
/// effects executor.
extension PoolRuntime {
    /// Returns a leased connection. Called by the lease's `deinit`.
    ///
    /// A clean connection costs one read of its ``Connection/reuseCondition``; a dirty one takes the
    /// slow path and is reset before it is lent again.
    @inlinable
    func release(_ token: LeaseToken, connection: PooledConnection, broken: Bool) {
        let now = clock.coarseNow()
        let condition = broken ? .broken : connection.reuseCondition
        let index = Int(token.index)
        if condition == .clean, index < idleStack.capacity, idleStack.isOpen, now < idleStack.slots[index].expiresAt,
           park(token, connection: connection, now: now) {
            // Parked: the runtime must not be touched any more (see `park`).
            return
        }
        core.mutex.lock()
        if condition == .clean, !tracksLeases, core.state.pointee.releaseToIdle(token, now: now) {
            core.mutex.unlock()
            return
        }
        whileRetained {
            releaseSlow(token, broken: condition == .broken, dirty: condition == .dirty, now: now, reason: .broken)
        }
    }

    /// The release path for hand-offs, broken or expired connections, shutdown and lease tracking.
    /// Called with the mutex held; returns with it released.
    @usableFromInline
    func releaseSlow(_ token: LeaseToken, broken: Bool, dirty: Bool = false, now: Int64, reason: CloseReason) {
        var heldFor: Int64?
        if tracksLeases {
            let slot = Int(token.index)
            let slots = core.state.pointee.slots
            if slots.states[slot] == .leased, slots.generations[slot] == token.generation {
                heldFor = now &- slots.leasedAt[slot]
            }
        }
        runLocked { state, effects in
            if !broken, !dirty, state.releaseToIdle(token, now: now) { return }
            state.release(token, broken: broken, dirty: dirty, now: now, brokenReason: reason, into: &effects)
        }
        if let heldFor, configuration.recordsLeaseHoldTime {
            leaseHoldHistogram.record(nanoseconds: UInt64(max(0, heldFor)))
        }
    }

    /// Returns a lease whose slot was closed by force before its holder could use it (a waiter woken
    /// with a hand-off after the grace period ended): the pool counts it as back.
    func returnStaleLease(_ token: LeaseToken) {
        let now = clock.coarseNow()
        modifyState { state, effects in state.release(token, broken: true, now: now, into: &effects) }
    }

    // MARK: Fast lane

    /// Tries to park a released lease on the fast lane. The slot's parked data is the caller's until
    /// the push publishes it; a push onto a closed lane fails, and the caller keeps the lease (and
    /// takes the locked path). After a successful push this must not touch the runtime again: the
    /// lease now belongs to the lane, a drain can return it, and the pool can finish and be freed
    /// before this returns.
    ///
    /// A lease parked here is always current: a lease goes stale only when shutdown closes its slot
    /// by force, and by then the lane is closed for good.
    @inlinable
    func park(_ token: LeaseToken, connection: PooledConnection, now: Int64) -> Bool {
        let index = Int(token.index)
        idleStack.slots[index].generation = token.generation
        idleStack.slots[index].parkedAt = now
        let retained = Unmanaged.passRetained(connection)
        idleStack.slots[index].connection = retained.toOpaque()
        if idleStack.push(index) { return true }
        // Still ours, and the runtime is alive: the lease was never given up.
        idleStack.slots[index].connection = nil
        retained.release()
        return false
    }

    /// Lends the slot just popped from the idle stack: the parked lease, with its generation, and the
    /// parked connection moved into it.
    @inlinable
    func lendParked(_ index: Int) -> ConnectionLease<Factory> {
        idleStack.countLend(index)
        let (token, connection) = unpark(index)
        return ConnectionLease(pool: self, token: token, connection: connection)
    }

    /// Takes over the lease parked in slot `index` (which the caller just took from the stack): its
    /// token, and its connection with the reference the park retained.
    @inlinable
    func unpark(_ index: Int) -> (token: LeaseToken, connection: PooledConnection) {
        let token = LeaseToken(index: Int32(truncatingIfNeeded: index), generation: idleStack.slots[index].generation)
        let connection = Unmanaged<PooledConnection>.fromOpaque(idleStack.slots[index].connection.unsafelyUnwrapped)
        idleStack.slots[index].connection = nil
        return (token, connection.takeRetainedValue())
    }
}
