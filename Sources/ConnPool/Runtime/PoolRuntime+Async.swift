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
        let acquired = try await acquireWaiting(
            id: id, deadline: nil, timeout: timeout ?? configuration.acquireTimeout, file: file, line: line)
        return ConnectionLease(pool: self, token: acquired.token, connection: acquired.connection)
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
    /// unused for longer than the bypass window is checked first, however it was found (at once, or
    /// while queueing); one that fails is closed and the acquire moves on to the next idle one, or waits
    /// for a new one, within the same deadline. A connection handed over by a release or newly opened
    /// was just known to work and is not checked.
    @usableFromInline
    nonisolated(nonsending) func acquireChecked(
        timeout: Duration, file: StaticString, line: UInt
    ) async throws -> ConnectionLease<Factory> {
        let deadline = later(clock.now(), by: timeout.nanosecondsClamped)
        let bypassWindow = configuration.validationBypassWindow.nanosecondsClamped
        while true {
            try Task.checkCancellation()
            let candidate: (token: LeaseToken, connection: PooledConnection, needsCheck: Bool)
            switch leaseIdleOrReserveWaiter(bypassWindow: bypassWindow, file: file, line: line) {
            case .idle(let token, let connection, let needsCheck):
                candidate = (token, connection, needsCheck)
            case .wait(let id):
                let acquired = try await acquireWaiting(id: id, deadline: deadline, timeout: timeout, file: file, line: line)
                candidate = (acquired.token, acquired.connection,
                             acquired.fromIdle && needsValidation(acquired.token, bypassWindow: bypassWindow))
            }
            if !candidate.needsCheck {
                return ConnectionLease(pool: self, token: candidate.token, connection: candidate.connection)
            }
            if await candidate.connection.isValid(timeout: checkTimeout(until: deadline)) {
                recordCheck(candidate.token)
                return ConnectionLease(pool: self, token: candidate.token, connection: candidate.connection)
            }
            releaseFailedCheck(candidate.token)
            if clock.now() >= deadline { throw timeoutError(after: timeout) }
        }
    }

    /// The waiting part of an acquire: queues a waiter and suspends until it is served, times out or
    /// is cancelled. Allocates nothing in steady state (the continuation lives in the task's own
    /// allocator; the waiter queue reuses its storage).
    ///
    /// - Returns: the lease's token and connection; `fromIdle` when the connection was idle (found while
    ///   queueing) rather than handed over, so a checked acquire must check it.
    /// - Throws: the waiter's error; `CancellationError`; ``ConnectionPoolError/shutDown`` when the
    ///   connection handed over was closed by force (the grace period ended) before this task ran.
    @usableFromInline
    nonisolated(nonsending) func acquireWaiting(
        id: UInt64, deadline: Int64?, timeout: Duration, file: StaticString, line: UInt
    ) async throws -> (token: LeaseToken, connection: PooledConnection, fromIdle: Bool) {
        let start = clock.now()
        let deadline = deadline ?? later(start, by: timeout.nanosecondsClamped)
        // Set when the enqueue itself finds an idle connection (then the continuation carries no token).
        var direct: (LeaseToken, PooledConnection)?
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        let raw = try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<UInt64, any Error>) in
                let now = clock.now()
                let waiter = Waiter(id: id, deadline: deadline, handle: .async(continuation), timeout: timeout)
                var connection: PooledConnection?
                let result = enqueue(waiter, now: now, checkingCancellation: true, leased: &connection, file: file, line: line)
                switch result {
                case nil:
                    continuation.resume(throwing: CancellationError())
                case .leased(let token):
                    direct = (token, connection.unsafelyUnwrapped)
                    continuation.resume(returning: Self.directLease)
                case .failed(let error):
                    continuation.resume(throwing: error)
                case .waiting:
                    break
                }
            }
        } onCancel: {
            self.cancelWaiter(id: id)
        }
        recordWait(since: start)
        if raw == Self.directLease, let (token, connection) = direct { return (token, connection, true) }
        let token = LeaseToken(rawValue: raw)
        guard let connection = handedOverConnection(token, file: file, line: line) else {
            returnStaleLease(token)
            throw ConnectionPoolError.shutDown
        }
        return (token, connection, false)
    }
}
