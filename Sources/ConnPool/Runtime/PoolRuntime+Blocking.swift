#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Tracing

/// Where a blocked thread is on its way to the wait queue (see `PoolRuntime.blockingWaitHook`).
@usableFromInline
enum BlockingWaitStep: Sendable {
    /// About to spin for a connection released meanwhile.
    case spin
    /// The spin found none; about to queue (or to lease one that went idle meanwhile).
    case enqueue
}

extension PoolRuntime {
    /// See ``ConnectionPool/acquireBlocking(timeout:file:line:)``.
    @inlinable
    func acquireBlocking(
        timeout: Duration? = nil, file: StaticString = #fileID, line: UInt = #line
    ) throws(ConnectionPoolError) -> ConnectionLease<Factory> {
        guard plainAcquire else {
            return try acquireBlockingFull(timeout: timeout ?? configuration.acquireTimeout, file: file, line: line)
        }
        if idleStack.isOpen, let index = idleStack.pop() { return lendParked(index) }
        core.mutex.lock()
        if let token = core.state.pointee.leaseIdle() {
            let connection = connections[Int(token.index)].unsafelyUnwrapped
            core.mutex.unlock()
            return ConnectionLease(pool: self, token: token, connection: connection)
        }
        let id = core.state.pointee.reserveWaiterID()
        core.mutex.unlock()
        let acquired = try acquireBlockingWaiting(
            id: id, deadline: nil, timeout: timeout ?? configuration.acquireTimeout, file: file, line: line)
        return ConnectionLease(pool: self, token: acquired.token, connection: acquired.connection)
    }

    /// The blocking acquire path with every optional feature (see ``acquireFull(timeout:file:line:)``);
    /// checks run on the calling thread with ``Connection/isValidBlocking(timeout:)``.
    @usableFromInline
    func acquireBlockingFull(timeout: Duration, file: StaticString, line: UInt) throws(ConnectionPoolError) -> ConnectionLease<Factory> {
        guard let tracer else { return try acquireBlockingChecked(timeout: timeout, file: file, line: line) }
        let (span, start) = startAcquireSpan(tracer)
        do {
            let lease = try acquireBlockingChecked(timeout: timeout, file: file, line: line)
            endAcquireSpan(span, start: start, error: nil)
            return lease
        } catch {
            endAcquireSpan(span, start: start, error: error)
            throw error
        }
    }

    /// The blocking form of ``acquireChecked(timeout:file:line:)``: the same rules, checks with
    /// ``Connection/isValidBlocking(timeout:)``.
    @usableFromInline
    func acquireBlockingChecked(timeout: Duration, file: StaticString, line: UInt) throws(ConnectionPoolError) -> ConnectionLease<Factory> {
        let deadline = later(clock.now(), by: timeout.nanosecondsClamped)
        let bypassWindow = configuration.validationBypassWindow.nanosecondsClamped
        while true {
            let candidate: (token: LeaseToken, connection: PooledConnection, needsCheck: Bool)
            switch leaseIdleOrReserveWaiter(bypassWindow: bypassWindow, file: file, line: line) {
            case .idle(let token, let connection, let needsCheck):
                candidate = (token, connection, needsCheck)
            case .wait(let id):
                let acquired = try acquireBlockingWaiting(id: id, deadline: deadline, timeout: timeout, file: file, line: line)
                candidate = (acquired.token, acquired.connection,
                             acquired.fromIdle && needsValidation(acquired.token, bypassWindow: bypassWindow))
            }
            if !candidate.needsCheck {
                return ConnectionLease(pool: self, token: candidate.token, connection: candidate.connection)
            }
            if candidate.connection.isValidBlocking(timeout: checkTimeout(until: deadline)) {
                recordCheck(candidate.token)
                return ConnectionLease(pool: self, token: candidate.token, connection: candidate.connection)
            }
            releaseFailedCheck(candidate.token)
            if clock.now() >= deadline { throw timeoutError(after: timeout) }
        }
    }

    /// Before a blocked thread queues, it yields a few times (bounded: 16 `sched_yield`, a few µs) and
    /// takes a connection that a running thread released meanwhile. Only when nobody is queued and the
    /// pool is full (no connection is being opened for this caller): a released connection then goes
    /// idle, and the spinning thread takes it without sleeping, instead of queueing and being handed a
    /// connection it can only use once the kernel wakes it, while running threads find nothing idle and
    /// queue behind it (a lock convoy, measured at ~300,000 context switches per 2 M operations with
    /// 8 threads on 4 connections). Queued waiters keep their turn: a release goes to them first.
    ///
    /// Returns the lease's token with its connection, read in the same step (a connection read later
    /// could have been closed by force meanwhile).
    @usableFromInline
    func spinForIdle(file: StaticString, line: UInt) -> (LeaseToken, PooledConnection)? {
        for _ in 0..<16 {
            if let index = idleStack.pop() {
                idleStack.countLend(index)
                return unpark(index)
            }
            let now = tracksLeases ? clock.coarseNow() : 0
            core.mutex.lock()
            let state = core.state
            guard state.pointee.waiters.isEmpty, state.pointee.slots.occupiedCount >= state.pointee.maxSize,
                  state.pointee.lifecycle == .running
            else {
                core.mutex.unlock()
                return nil
            }
            if let token = state.pointee.leaseIdle() {
                if tracksLeases { state.pointee.slots.stampLease(token.index, now: now, file: file, line: line) }
                let connection = connections[Int(token.index)].unsafelyUnwrapped
                core.mutex.unlock()
                return (token, connection)
            }
            core.mutex.unlock()
            sched_yield()
        }
        return nil
    }

    /// The waiting part of ``acquireBlocking(timeout:file:line:)``. The thread waits on a condition
    /// variable in its own stack frame; the pool's timer fails it at its deadline.
    ///
    /// - Returns: the lease's token and connection; `fromIdle` when the connection was idle (found by
    ///   the spin or while queueing) rather than handed over, so a checked acquire must check it.
    /// - Throws: the waiter's error; ``ConnectionPoolError/shutDown`` when the connection handed over
    ///   was closed by force (the grace period ended) before this thread woke.
    @usableFromInline
    func acquireBlockingWaiting(
        id: UInt64, deadline: Int64?, timeout: Duration, file: StaticString, line: UInt
    ) throws(ConnectionPoolError) -> (token: LeaseToken, connection: PooledConnection, fromIdle: Bool) {
        blockingWaitHook?(.spin)
        if let (token, connection) = spinForIdle(file: file, line: line) { return (token, connection, true) }
        blockingWaitHook?(.enqueue)
        let now = clock.now()
        let deadline = deadline ?? later(now, by: timeout.nanosecondsClamped)
        typealias Outcome = Result<(token: LeaseToken, connection: PooledConnection, fromIdle: Bool), ConnectionPoolError>
        let outcome: Outcome = withUnsafeTemporaryAllocation(of: BlockingWaitCell.self, capacity: 1) { buffer in
            let cell = buffer.baseAddress!
            cell.initialize(to: BlockingWaitCell())
            pthread_cond_init(&cell.pointee.condition, nil)
            defer {
                pthread_cond_destroy(&cell.pointee.condition)
                cell.deinitialize(count: 1)
            }
            let waiter = Waiter(id: id, deadline: deadline, handle: .blocking(cell), timeout: timeout)
            var connection: PooledConnection?
            switch enqueue(waiter, now: now, checkingCancellation: false, leased: &connection, file: file, line: line) {
            case .leased(let token)?:
                return .success((token, connection.unsafelyUnwrapped, true))
            case .failed(let error)?:
                return .failure(error)
            case nil:
                preconditionFailure("an enqueue that does not check for cancellation is never cancelled")
            case .waiting?:
                let stampTime = tracksLeases ? clock.coarseNow() : 0
                core.mutex.lock()
                // The result may already be there: the same change can hand the waiter a parked lease.
                while cell.pointee.result == nil {
                    core.mutex.wait(on: &cell.pointee.condition)
                }
                let outcome: Outcome
                switch cell.pointee.result! {
                case .failure(let error):
                    outcome = .failure(error)
                case .success(let raw):
                    let token = LeaseToken(rawValue: raw)
                    if let connection = handedOverConnectionLocked(token, now: stampTime, file: file, line: line) {
                        outcome = .success((token, connection, false))
                    } else {
                        outcome = .failure(.shutDown)
                        core.mutex.unlock()
                        returnStaleLease(token)
                        return outcome
                    }
                }
                core.mutex.unlock()
                return outcome
            }
        }
        let acquired = try outcome.get()
        recordWait(since: now)
        return acquired
    }
}
