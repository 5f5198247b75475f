import Logging

/// Warm-up and shutdown: the two calls that wait for the pool as a whole.
extension PoolRuntime {
    // MARK: Warm-up

    /// What ``warm()`` does after one look at the state.
    enum WarmStep {
        case done
        case failed(any Error)
        /// Wait until `attemptsEnded` moves past `seen`.
        case wait(seen: Int)
    }

    /// See ``ConnectionPool/warm()``. Starts attempts up to `minSize` (ignoring the backoff, within the
    /// concurrency bound) and waits until `minSize` connections are open. Throws the last connection
    /// error once its own attempts have ended without reaching `minSize` (a given-up attempt counts, as
    /// ``ConnectionPoolError/connectTimedOut(after:)``), and ``ConnectionPoolError/shutDown`` once the
    /// pool stops. Never waits on an attempt itself: attempts run on the pool's tasks, and maintenance
    /// gives up on one that outlives `connectTimeout`, which wakes this call.
    func warm() async throws {
        var mine: [LeaseToken] = []
        var startedAny = false
        while true {
            let now = clock.now()
            let step = modifyState { state, effects -> WarmStep in
                guard state.lifecycle == .running else { return .failed(ConnectionPoolError.shutDown) }
                mine.removeAll { !state.isConnecting($0) }
                if state.slots.liveCount >= configuration.minSize { return .done }
                if mine.isEmpty {
                    if startedAny, let error = state.lastConnectError { return .failed(error) }
                    while let token = state.reserveForWarmUp(now: now, into: &effects) { mine.append(token) }
                    startedAny = startedAny || !mine.isEmpty
                    if mine.isEmpty, state.slots.connectingCount == 0 { return .done }  // nothing more to do
                }
                return .wait(seen: state.attemptsEnded)
            }
            switch step {
            case .done: return
            case .failed(let error): throw error
            case .wait(let seen):
                defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    core.mutex.lock()
                    let state = core.state.pointee
                    if state.attemptsEnded != seen || state.lifecycle != .running {
                        core.mutex.unlock()
                        continuation.resume()
                    } else {
                        // Woken by the executor when an attempt ends or the pool stops.
                        warmWaiters.append(continuation)
                        core.mutex.unlock()
                    }
                }
            }
        }
    }

    /// See ``ConnectionPool/warmBlocking()``.
    func warmBlocking() throws {
        let result: Result<Void, any Error> = BlockingBridge.wait {
            do { return .success(try await self.warm()) } catch { return .failure(error) }
        }
        try result.get()
    }

    // MARK: Shutdown

    /// See ``ConnectionPool/shutdown(gracePeriod:)``. Returns once every slot is empty, or when the grace
    /// period ends (leased connections are then closed by force); closes run on the pool's tasks and
    /// are given up on after `closeTimeout`, so a close that hangs cannot hold this call.
    func shutdown(gracePeriod: Duration? = nil) async -> ShutdownReport {
        let now = clock.now()
        let report = await withCheckedContinuation { (continuation: CheckedContinuation<ShutdownReport, Never>) in
            modifyState(drainingFastLane: true) { state, effects in
                state.beginShutdown(now: now, gracePeriod: gracePeriod?.nanosecondsClamped, into: &effects)
                // Resumed by the executor once the shutdown is complete (possibly right away).
                shutdownWaiters.append(continuation)
            }
        }
        ThreadSanitizerAnnotations.acquireCurrentTask()
        if report.forceClosed > 0 || report.stillInFlight > 0 {
            logger.warning("connection pool: shutdown grace period ended", metadata: ["report": "\(report)"])
        }
        return report
    }

    /// See ``ConnectionPool/shutdownBlocking(gracePeriod:)``.
    func shutdownBlocking(gracePeriod: Duration? = nil) -> ShutdownReport {
        BlockingBridge.wait { await self.shutdown(gracePeriod: gracePeriod) }
    }
}
