import Tracing

extension PoolRuntime {
    /// See ``ConnectionPool/acquire(timeout:file:line:)``.
    @inlinable
    nonisolated(nonsending) func acquire(
        timeout: Duration? = nil, file: StaticString = #fileID, line: UInt = #line
    ) async throws -> ConnectionLease<Factory> {
        guard plainAcquire else {
            return try await acquireFull(timeout: timeout ?? configuration.acquireTimeout, file: file, line: line)
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
        let token = try await acquireWaiting(id: id, deadline: nil, timeout: timeout ?? configuration.acquireTimeout)
        return ConnectionLease(pool: self, token: token, connection: leasedConnection(token))
    }

    /// The acquire path with every optional feature: a tracing span around it, validation on
    /// acquire, and lease stamping.
    @usableFromInline
    nonisolated(nonsending) func acquireFull(
        timeout: Duration, file: StaticString, line: UInt
    ) async throws -> ConnectionLease<Factory> {
        guard let tracer else { return try await acquireChecked(timeout: timeout, file: file, line: line) }
        let (span, start) = startAcquireSpan(tracer)
        do {
            let lease = try await acquireChecked(timeout: timeout, file: file, line: line)
            endAcquireSpan(span, start: start, error: nil)
            return lease
        } catch {
            endAcquireSpan(span, start: start, error: error)
            throw error
        }
    }

    /// Starts a `connpool.acquire` span; returns it with the start time.
    func startAcquireSpan(_ tracer: any Tracer) -> (any Span, Int64) {
        let span = tracer.startSpan("connpool.acquire", ofKind: .internal)
        span.attributes["connpool.pool"] = configuration.name
        return (span, clock.now())
    }

    /// Ends an acquire span with the wait and the outcome (`ok`, or the error's short name).
    func endAcquireSpan(_ span: any Span, start: Int64, error: (any Error)?) {
        span.attributes["connpool.wait_ns"] = Int(clock.now() &- start)
        span.attributes["connpool.outcome"] = error.map(Self.outcome(of:)) ?? "ok"
        if let error {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
    }

    /// A short name for how an acquire ended, for spans.
    static func outcome(of error: any Error) -> String {
        switch error {
        case ConnectionPoolError.Code.acquireTimeout: return "timeout"
        case ConnectionPoolError.Code.connectFailing: return "fail_fast"
        case ConnectionPoolError.Code.shutDown: return "shut_down"
        case ConnectionPoolError.Code.tooManyWaiters: return "shed"
        case is CancellationError: return "cancelled"
        default: return "error"
        }
    }

    /// Acquire with validation on acquire (when configured) and lease stamping: an idle connection
    /// unused for longer than the bypass window is checked first; one that fails is closed and the
    /// acquire moves on to the next idle one, or waits for a new one, within the same deadline.
    @usableFromInline
    nonisolated(nonsending) func acquireChecked(
        timeout: Duration, file: StaticString, line: UInt
    ) async throws -> ConnectionLease<Factory> {
        let deadline = later(clock.now(), by: timeout.nanosecondsClamped)
        let bypassWindow = configuration.validationBypassWindow.nanosecondsClamped
        while true {
            try Task.checkCancellation()
            switch leaseIdleOrReserveWaiter(bypassWindow: bypassWindow, file: file, line: line) {
            case .idle(let token, let connection, let needsCheck):
                if !needsCheck {
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                if await connection.isValid(timeout: checkTimeout(until: deadline)) {
                    recordCheck(token)
                    return ConnectionLease(pool: self, token: token, connection: connection)
                }
                releaseFailedCheck(token)
                if clock.now() >= deadline { throw timeoutError(after: timeout) }
            case .wait(let id):
                // A connection handed over or newly opened was just known to work: no check needed.
                let token = try await acquireWaiting(id: id, deadline: deadline, timeout: timeout)
                return ConnectionLease(pool: self, token: token, connection: leasedConnection(token, file: file, line: line))
            }
        }
    }

    /// The waiting part of an acquire: queues a waiter and suspends until it is served, times out or
    /// is cancelled. Allocates nothing in steady state (the continuation lives in the task's own
    /// allocator; the waiter queue reuses its storage).
    @usableFromInline
    nonisolated(nonsending) func acquireWaiting(id: UInt64, deadline: Int64?, timeout: Duration) async throws -> LeaseToken {
        let start = clock.now()
        let deadline = deadline ?? later(start, by: timeout.nanosecondsClamped)
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        let raw = try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<UInt64, any Error>) in
                let now = clock.now()
                core.mutex.lock()
                if Task.isCancelled {
                    core.mutex.unlock()
                    continuation.resume(throwing: CancellationError())
                    return
                }
                // About to wait: close the fast lane and take back what is parked there (see IdleStack).
                idleStack.setOpen(false)
                let parked = drainIdleStackLocked()
                let waiter = Waiter(id: id, deadline: deadline, handle: .async(continuation), timeout: timeout)
                let action = core.state.pointee.enqueue(waiter, now: now)
                syncGateLocked()
                core.mutex.unlock()
                run(parked)
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
        recordWait(since: start)
        return LeaseToken(rawValue: raw)
    }
}
