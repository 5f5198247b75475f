extension ConnectionPool {
    /// Borrows a connection, suspending until one is available.
    ///
    /// Lends an idle connection at once if there is one (no allocation, no suspension); otherwise
    /// opens a new one if the pool is below `maxSize`, or waits, first come first served, for a
    /// connection to be released. Never blocks a cooperative thread.
    ///
    /// - Parameter timeout: how long to wait; `nil` uses ``PoolConfiguration/acquireTimeout``.
    /// - Returns: a lease; the connection returns to the pool when the lease goes out of scope.
    /// - Throws: ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)`` when no connection came
    ///   in time; ``ConnectionPoolError/shutDown`` after ``shutdown()``;
    ///   ``ConnectionPoolError/tooManyWaiters(limit:)`` beyond `maxWaiters`; `CancellationError` if the
    ///   task is cancelled while waiting (the waiter is removed at once, nothing leaks).
    @inlinable
    public nonisolated(nonsending) func acquire(timeout: Duration? = nil) async throws -> ConnectionLease<Factory> {
        if configuration.validateOnAcquire {
            return try await acquireValidating(timeout: timeout ?? configuration.acquireTimeout)
        }
        core.mutex.lock()
        if let token = core.state.pointee.leaseIdle() {
            let connection = connections[Int(token.index)].unsafelyUnwrapped
            core.mutex.unlock()
            return ConnectionLease(pool: self, token: token, connection: connection)
        }
        let id = core.state.pointee.reserveWaiterID()
        core.mutex.unlock()
        let token = try await acquireWaiting(id: id, deadline: nil, timeout: timeout ?? configuration.acquireTimeout)
        return ConnectionLease(pool: self, token: token, connection: leasedConnection(token))
    }

    /// ``acquire(timeout:)`` with ``PoolConfiguration/validateOnAcquire``: an idle connection unused
    /// for longer than the bypass window is checked first; one that fails is closed and the acquire
    /// moves on to the next idle one, or waits for a new one, within the same deadline.
    @usableFromInline
    nonisolated(nonsending) func acquireValidating(timeout: Duration) async throws -> ConnectionLease<Factory> {
        let deadline = clock.now() &+ timeout.nanosecondsClamped
        let bypassWindow = configuration.validationBypassWindow.nanosecondsClamped
        while true {
            try Task.checkCancellation()
            let now = clock.coarseNow()
            core.mutex.lock()
            if let token = core.state.pointee.leaseIdle() {
                let needsCheck = core.state.pointee.needsValidation(token, now: now, bypassWindow: bypassWindow)
                let connection = connections[Int(token.index)].unsafelyUnwrapped
                core.mutex.unlock()
                if !needsCheck {
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                if await connection.isValid(timeout: configuration.healthCheckTimeout) {
                    recordCheck(token)
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                releaseFailedCheck(token)
                if clock.now() >= deadline { throw timeoutError(after: timeout) }
                continue
            }
            let id = core.state.pointee.reserveWaiterID()
            core.mutex.unlock()
            // A connection handed over or newly opened was just known to work: no check needed.
            let token = try await acquireWaiting(id: id, deadline: deadline, timeout: timeout)
            return ConnectionLease(pool: self, token: token, connection: leasedConnection(token))
        }
    }

    /// Runs `body` with a borrowed connection and returns it to the pool afterwards, whether `body`
    /// returns or throws. Allocation-free for an idle connection.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait for a connection; `nil` uses ``PoolConfiguration/acquireTimeout``.
    ///   - body: the work; it must not keep the connection after it returns.
    /// - Throws: what ``acquire(timeout:)`` throws, or what `body` throws.
    @inlinable
    public nonisolated(nonsending) func withConnection<Result>(
        timeout: Duration? = nil,
        _ body: nonisolated(nonsending) (PooledConnection) async throws -> Result
    ) async throws -> Result {
        let lease = try await acquire(timeout: timeout)
        return try await body(lease.connection)
    }

    /// The waiting part of ``acquire(timeout:)``: queues a waiter and suspends until it is served,
    /// times out or is cancelled. Allocates nothing in steady state (the continuation lives in the
    /// task's own allocator; the waiter queue reuses its storage).
    @usableFromInline
    nonisolated(nonsending) func acquireWaiting(id: UInt64, deadline: Int64?, timeout: Duration) async throws -> LeaseToken {
        let deadline = deadline ?? clock.now() &+ timeout.nanosecondsClamped
        let raw = try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<UInt64, any Error>) in
                let now = clock.now()
                core.mutex.lock()
                if Task.isCancelled {
                    core.mutex.unlock()
                    continuation.resume(throwing: CancellationError())
                    return
                }
                let waiter = Waiter(id: id, deadline: deadline, handle: .async(continuation), timeout: timeout)
                let action = core.state.pointee.enqueue(waiter, now: now)
                core.mutex.unlock()
                switch action {
                case .leased(let token):
                    continuation.resume(returning: token.rawValue)
                case .failed(let error):
                    continuation.resume(throwing: error)
                case .waiting(let createSlot, let scheduleTimer):
                    afterEnqueue(createSlot: createSlot, scheduleTimer: scheduleTimer)
                }
            }
        } onCancel: {
            self.cancelWaiter(id: id)
        }
        return LeaseToken(rawValue: raw)
    }
}
