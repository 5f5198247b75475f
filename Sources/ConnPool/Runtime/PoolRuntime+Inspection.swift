/// Inspection and resize: metrics, status, the metrics handler and a runtime change of `maxSize`.
extension PoolRuntime {
    /// See ``ConnectionPool/metrics()``.
    func metrics() -> PoolMetrics {
        // Parked connections count as idle.
        modifyState(drainingFastLane: true) { state, _ in metricsLocked(state) }
    }

    /// A snapshot of `state` (the state machine, read with the mutex held) and the histograms.
    func metricsLocked(_ state: PoolStateMachine) -> PoolMetrics {
        var metrics = PoolMetrics(
            idle: state.slots.idleCount,
            inUse: state.slots.leasedCount,
            connecting: state.slots.connectingCount,
            closing: state.slots.closingCount,
            validating: state.slots.validatingCount,
            waiting: state.waiters.count,
            maxSize: state.maxSize)
        let counters = state.counters
        let fastLends = idleStack.lendCount()
        metrics.acquires = counters.immediateAcquires + fastLends + counters.waitedAcquires
        metrics.acquiresAfterWaiting = counters.waitedAcquires
        metrics.created = counters.created
        metrics.creationFailures = counters.creationFailures
        metrics.acquireTimeouts = counters.acquireTimeouts
        metrics.healthCheckFailures = counters.healthCheckFailures
        metrics.failedFast = counters.failedFast
        metrics.shedWaiters = counters.shedWaiters
        metrics.cancelledWaiters = counters.cancelledWaiters
        metrics.leaksDetected = counters.leaksDetected
        metrics.sessionResets = counters.sessionResets
        metrics.closedByReason = counters.closedByReason
        metrics.acquireWait = acquireWaitHistogram.snapshot(extraZeros: UInt64(counters.immediateAcquires + fastLends))
        metrics.leaseHold = leaseHoldHistogram.snapshot()
        metrics.connectionLifetime = lifetimeHistogram.snapshot()
        return metrics
    }

    /// See ``ConnectionPool/setMetricsHandler(every:_:)``.
    func setMetricsHandler(every interval: Duration, _ handler: (@Sendable (PoolMetrics) -> Void)?) {
        precondition(interval > .zero, "the metrics interval must be positive")
        let now = clock.now()
        modifyState { state, _ in
            metricsHandler = handler
            state.setMetricsInterval(handler == nil ? nil : interval.nanosecondsClamped, now: now)
        }
    }

    /// See ``ConnectionPool/status()``.
    func status() -> PoolStatus {
        let (metrics, health, lastError, failures) = modifyState(drainingFastLane: true) { state, _ in
            let metrics = metricsLocked(state)
            let health: PoolStatus.Health
            if state.lifecycle != .running {
                health = .shuttingDown
            } else if state.breakerOpen {
                health = .failing
            } else if state.lastConnectError != nil || (metrics.waiting > 0 && metrics.total >= metrics.maxSize) {
                health = .degraded
            } else {
                health = .healthy
            }
            return (metrics, health, state.lastConnectError.map { "\($0)" }, state.backoff.consecutiveFailures)
        }
        var configuration = self.configuration
        configuration.maxSize = metrics.maxSize
        return PoolStatus(
            name: configuration.name, health: health, metrics: metrics, configuration: configuration,
            factory: "\(factory)", lastConnectError: lastError, consecutiveConnectFailures: failures)
    }

    // MARK: Resize

    /// See ``ConnectionPool/resize(maxSize:)``.
    func resize(maxSize: Int) throws(PoolConfigurationError) {
        if maxSize < max(1, configuration.minSize) || maxSize > PoolConfiguration.maxSizeLimit {
            throw PoolConfigurationError(
                field: "maxSize", value: "\(maxSize)",
                rule: "must be at least 1, at least minSize (\(configuration.minSize)) and at most \(PoolConfiguration.maxSizeLimit)")
        }
        let now = clock.now()
        // Parked leases return first, so that a shrink closes the idle extras among them.
        modifyState(drainingFastLane: true) { state, effects in
            let capacity = state.slots.capacity
            if maxSize > capacity {
                let grown = UnsafeMutablePointer<PooledConnection?>.allocate(capacity: maxSize)
                grown.moveInitialize(from: connections, count: capacity)
                (grown + capacity).initialize(repeating: nil, count: maxSize - capacity)
                connections.deallocate()
                connectionBuffer.pointee = grown
            }
            state.resize(maxSize: maxSize, now: now, into: &effects)
        }
    }

    /// Checks the state machine's invariants (for tests): a description of the first violation.
    func invariantViolation() -> String? {
        modifyState(drainingFastLane: true) { state, _ -> String? in
            if let violation = state.invariantViolation() { return violation }
            for index in 0..<state.slots.capacity {
                let slotState = state.slots.states[index]
                let hasConnection = connections[index] != nil
                let shouldHave = slotState == .idle || slotState == .leased || slotState == .validating
                if hasConnection != shouldHave { return "slot \(index) is \(slotState) but connection present = \(hasConnection)" }
            }
            return nil
        }
    }
}
