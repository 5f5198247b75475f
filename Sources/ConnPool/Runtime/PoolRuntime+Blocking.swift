#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Tracing

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
        let token = try acquireBlockingWaiting(id: id, deadline: nil, timeout: timeout ?? configuration.acquireTimeout)
        return ConnectionLease(pool: self, token: token, connection: leasedConnection(token))
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

    @usableFromInline
    func acquireBlockingChecked(timeout: Duration, file: StaticString, line: UInt) throws(ConnectionPoolError) -> ConnectionLease<Factory> {
        let deadline = later(clock.now(), by: timeout.nanosecondsClamped)
        let bypassWindow = configuration.validationBypassWindow.nanosecondsClamped
        while true {
            switch leaseIdleOrReserveWaiter(bypassWindow: bypassWindow, file: file, line: line) {
            case .idle(let token, let connection, let needsCheck):
                if !needsCheck {
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                if connection.isValidBlocking(timeout: checkTimeout(until: deadline)) {
                    recordCheck(token)
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                releaseFailedCheck(token)
                if clock.now() >= deadline { throw timeoutError(after: timeout) }
            case .wait(let id):
                let token = try acquireBlockingWaiting(id: id, deadline: deadline, timeout: timeout)
                return ConnectionLease(pool: self, token: token, connection: leasedConnection(token, file: file, line: line))
            }
        }
    }

    /// Before a blocked thread queues, it yields a few times (bounded: 16 `sched_yield`, a few µs) and
    /// takes a connection that a running thread released meanwhile. Only when nobody is queued and the
    /// pool is full (no connection is being opened for this caller): a released connection then goes
    /// idle, and the spinning thread takes it without sleeping, instead of queueing and being handed a
    /// connection it can only use once the kernel wakes it, while running threads find nothing idle and
    /// queue behind it (a lock convoy, measured at ~300,000 context switches per 2 M operations with
    /// 8 threads on 4 connections). Queued waiters keep their turn: a release goes to them first.
    @usableFromInline
    func spinForIdle() -> LeaseToken? {
        for _ in 0..<16 {
            if idleStack.isOpen, let index = idleStack.pop() {
                // The caller reads the connection from `connections`; the parked reference just goes.
                idleStack.countLend(index)
                return unpark(index).token
            }
            core.mutex.lock()
            let state = core.state
            guard state.pointee.waiters.isEmpty, state.pointee.slots.occupiedCount >= state.pointee.maxSize,
                  state.pointee.lifecycle == .running
            else {
                core.mutex.unlock()
                return nil
            }
            if let token = core.state.pointee.leaseIdle() {
                core.mutex.unlock()
                return token
            }
            core.mutex.unlock()
            sched_yield()
        }
        return nil
    }

    /// The waiting part of ``acquireBlocking(timeout:file:line:)``. The thread waits on a condition
    /// variable in its own stack frame; the pool's timer fails it at its deadline.
    @usableFromInline
    func acquireBlockingWaiting(id: UInt64, deadline: Int64?, timeout: Duration) throws(ConnectionPoolError) -> LeaseToken {
        if let token = spinForIdle() { return token }
        let now = clock.now()
        let deadline = deadline ?? later(now, by: timeout.nanosecondsClamped)
        let result: WaiterResult = withUnsafeTemporaryAllocation(of: BlockingWaitCell.self, capacity: 1) { buffer in
            let cell = buffer.baseAddress!
            cell.initialize(to: BlockingWaitCell())
            pthread_cond_init(&cell.pointee.condition, nil)
            defer {
                pthread_cond_destroy(&cell.pointee.condition)
                cell.deinitialize(count: 1)
            }
            core.mutex.lock()
            // About to wait: close the fast lane and take back what is parked there (see IdleStack).
            idleStack.setOpen(false)
            let parked = drainIdleStackLocked()
            let waiter = Waiter(id: id, deadline: deadline, handle: .blocking(cell), timeout: timeout)
            let action = core.state.pointee.enqueue(waiter, now: now)
            syncGateLocked()
            switch action {
            case .leased(let token):
                core.mutex.unlock()
                run(parked)
                return .success(token.rawValue)
            case .failed(let error):
                core.mutex.unlock()
                run(parked)
                return .failure(error)
            case .waiting(let createSlot, let scheduleTimer):
                core.mutex.unlock()
                run(parked)
                afterEnqueue(createSlot: createSlot, scheduleTimer: scheduleTimer)
                core.mutex.lock()
                while cell.pointee.result == nil {
                    core.mutex.wait(on: &cell.pointee.condition)
                }
                let result = cell.pointee.result!
                core.mutex.unlock()
                return result
            }
        }
        let token = LeaseToken(rawValue: try result.get())
        recordWait(since: now)
        return token
    }
}
