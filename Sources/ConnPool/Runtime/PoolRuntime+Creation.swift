public import Tracing

/// Opening and closing connections, each on a task of the pool's own.
extension PoolRuntime {
    /// Starts an attempt for the slot reserved under `token`.
    func startCreation(_ token: LeaseToken) {
        spawn { await self.createConnection(token) }
    }

    /// Opens a connection for the slot reserved under `token` and installs it; a late connection (the
    /// attempt was given up on after `connectTimeout`) is closed outside the pool's accounting.
    func createConnection(_ token: LeaseToken) async {
        let span = tracer?.startSpan("connpool.connect", ofKind: .client)
        span?.attributes["connpool.pool"] = configuration.name
        let result: Result<PooledConnection, any Error>
        do {
            result = .success(try await factory.makeConnection())
        } catch {
            result = .failure(error)
            span?.recordError(error)
            span?.setStatus(SpanStatus(code: .error))
        }
        span?.end()
        let now = clock.now()
        switch result {
        case .success(let connection):
            let accepted = modifyState { state, effects -> Bool in
                guard state.isConnecting(token) else { return false }
                let index = Int(token.index)
                // Installed first: the effects of the success (a hand-off, a close) find it in its slot.
                connections[index] = connection
                _ = state.creationSucceeded(token, now: now, into: &effects)
                if index < idleStack.capacity { idleStack.slots[index].expiresAt = state.slots.expiresAt[index] }
                return true
            }
            if !accepted { closeInBackground(connection, nil) }
        case .failure(let error):
            modifyState { state, effects in state.creationFailed(token, error: error, now: now, into: &effects) }
        }
    }

    /// Closes `connection` on a task of its own; then frees the slot named by `closing` (nil: the
    /// connection is not the pool's, there is no slot to free).
    func closeInBackground(_ connection: PooledConnection?, _ closing: LeaseToken?) {
        spawn {
            if let connection { await connection.close() }
            if let closing { self.closeFinished(closing) }
        }
    }

    /// A close finished: frees its slot (the executor then completes a shutdown that waited for it,
    /// starts an attempt that waited for the slot, …).
    func closeFinished(_ closing: LeaseToken) {
        let now = clock.now()
        let lifetime = modifyState { state, effects in state.closeFinished(closing, now: now, into: &effects) }
        if let lifetime { lifetimeHistogram.record(nanoseconds: UInt64(max(0, lifetime))) }
    }
}
