#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif
public import Logging

/// A pool of connections made by a ``ConnectionFactory``, lent through `~Copyable` leases, with a
/// suspending interface for Swift concurrency and a blocking one for plain threads.
///
/// ## Design
/// - **Slots.** Connections live in a slot array allocated once, at init, for `maxSize` connections.
///   Idle slots sit in an O(1) ring (LIFO or FIFO reuse); nothing is ever scanned on the hot path.
/// - **One lock.** A pthread mutex guards a non-generic ``PoolStateMachine``; connection I/O
///   (create, check, close) and task resumption happen outside it.
/// - **Zero allocation** to acquire and release an idle connection, in both interfaces: the lease is a
///   `~Copyable` struct, waiters carry a packed token, and a blocked thread waits on stack memory.
/// - **Waiters** are served first come, first served, with direct hand-off: a released connection goes
///   to the oldest waiter, never back to the idle set while someone waits.
/// - **Limits.** The number of connections (idle + leased + connecting + closing) never exceeds
///   `maxSize`: a slot is reserved before a connection is created and freed only after it is closed.
///   A connection created for a waiter that gave up becomes idle, never lost.
///
/// `@unchecked Sendable` is safe because every mutable piece of state is either behind ``PoolCore``'s
/// mutex (the state machine, and `connections`: each element is written only with the mutex held, and
/// read with it held) or immutable after `init`.
public final class ConnectionPool<Factory: ConnectionFactory>: @unchecked Sendable {
    /// The type of the pooled connections.
    public typealias PooledConnection = Factory.PooledConnectionType

    @usableFromInline let core: PoolCore
    /// One optional connection per slot, indexed like the state machine's slots. Guarded by `core.mutex`.
    @usableFromInline let connections: UnsafeMutablePointer<PooledConnection?>
    @usableFromInline let clock: PoolClock
    @usableFromInline let capacity: Int

    /// The factory that opens this pool's connections.
    public let factory: Factory
    /// The configuration the pool was created with.
    public let configuration: PoolConfiguration
    /// Where the pool logs (creation failures, shutdown, a pool dropped without shutdown).
    public let logger: Logger

    let timer: PoolTimer
    /// Callers of ``shutdown()`` waiting for the last connection to close. Guarded by `core.mutex`.
    private var drainContinuations: [CheckedContinuation<Void, Never>] = []
    private var isShutDownComplete = false

    /// Creates a pool. It opens no connection until the first acquire.
    ///
    /// - Parameters:
    ///   - factory: opens the connections.
    ///   - configuration: sizes and timeouts; validated here.
    ///   - clock: ``PoolClock/system`` in production; ``PoolClock/manual(_:)`` in tests.
    ///   - logger: where the pool logs; it never logs secrets.
    /// - Throws: ``PoolConfigurationError`` if `configuration` breaks a rule.
    public init(
        factory: Factory,
        configuration: PoolConfiguration = PoolConfiguration(),
        clock: PoolClock = .system,
        logger: Logger = Logger(label: "connpool")
    ) throws(PoolConfigurationError) {
        try configuration.validate()
        self.factory = factory
        self.configuration = configuration
        self.clock = clock
        self.logger = logger
        capacity = configuration.maxSize
        core = PoolCore(configuration: configuration, capacity: capacity)
        connections = .allocate(capacity: capacity)
        connections.initialize(repeating: nil, count: capacity)
        let reference = WeakPoolReference<Factory>()
        timer = clock.makeTimer { now in reference.pool?.timerFired(now: now) }
        reference.pool = self
    }

    deinit {
        timer.stop()
        core.mutex.lock()
        let wasRunning = core.state.pointee.lifecycle == .running
        var open: [PooledConnection] = []
        for index in 0..<capacity {
            if let connection = connections[index] { open.append(connection) }
        }
        core.mutex.unlock()
        if wasRunning && !open.isEmpty {
            logger.warning(
                "connection pool released without shutdown(); closing its idle connections",
                metadata: ["connections": "\(open.count)"])
        }
        for connection in open {
            Task.detached { await connection.close() }
        }
        connections.deinitialize(count: capacity)
        connections.deallocate()
    }

    // MARK: Release

    /// Returns a leased connection. Called by the lease's `deinit`.
    @inlinable
    func release(_ token: LeaseToken, connection: PooledConnection, broken: Bool) {
        let now = clock.coarseNow()
        let broken = broken || connection.isBroken
        core.mutex.lock()
        if !broken, core.state.pointee.releaseToIdle(token, now: now) {
            core.mutex.unlock()
            return
        }
        releaseSlow(token, broken: broken, now: now)
    }

    /// The release path for hand-offs, broken connections and shutdown. Called with the mutex held;
    /// returns with it released.
    @usableFromInline
    func releaseSlow(_ token: LeaseToken, broken: Bool, now: Int64) {
        switch core.state.pointee.release(token, broken: broken, now: now) {
        case .idle, .stale:
            core.mutex.unlock()
        case .handOff(let waiter, let newToken):
            let continuation = deliverLocked(waiter, .success(newToken.rawValue))
            core.mutex.unlock()
            continuation?.resume(returning: newToken.rawValue)
        case .close(let index):
            let connection = takeConnectionLocked(index)
            core.mutex.unlock()
            closeInBackground(connection, slot: index)
        }
    }

    // MARK: Waiters

    /// Wakes `waiter` with `result`. Must be called with the mutex held. A blocked thread is signalled
    /// here (its wait cell must not be touched after the mutex is released); an async waiter's
    /// continuation is returned, for the caller to resume once the mutex is released.
    @usableFromInline
    func deliverLocked(_ waiter: Waiter, _ result: WaiterResult) -> UnsafeContinuation<UInt64, any Error>? {
        switch waiter.handle {
        case .blocking(let cell):
            cell.pointee.result = result
            pthread_cond_signal(&cell.pointee.condition)
            return nil
        case .async(let continuation):
            return continuation
        }
    }

    @usableFromInline
    static func resume(_ continuation: UnsafeContinuation<UInt64, any Error>?, with result: WaiterResult) {
        guard let continuation else { return }
        switch result {
        case .success(let token): continuation.resume(returning: token)
        case .failure(let error): continuation.resume(throwing: error)
        }
    }

    /// Removes a cancelled async waiter and fails it with `CancellationError`.
    @usableFromInline
    func cancelWaiter(id: UInt64) {
        core.mutex.lock()
        guard let waiter = core.state.pointee.cancelWaiter(id: id) else {
            core.mutex.unlock()
            return
        }
        core.mutex.unlock()
        if case .async(let continuation) = waiter.handle {
            continuation.resume(throwing: CancellationError())
        }
    }

    /// Carries out what an enqueue asked for, outside the mutex.
    @usableFromInline
    func afterEnqueue(createSlot: Int32?, scheduleTimer: Int64?) {
        if let createSlot { startCreation(slot: createSlot) }
        if let scheduleTimer { timer.schedule(at: scheduleTimer) }
    }

    /// Reads the connection in a slot the caller holds a lease for. Takes the mutex so the read is
    /// ordered after the write that stored it, for ThreadSanitizer as for the memory model.
    @usableFromInline
    func leasedConnection(_ token: LeaseToken) -> PooledConnection {
        core.mutex.lock()
        let connection = connections[Int(token.index)].unsafelyUnwrapped
        core.mutex.unlock()
        return connection
    }

    // MARK: Creation and closing

    func handle(_ decision: PoolStateMachine.CreationDecision) {
        switch decision {
        case .none: break
        case .create(let index): startCreation(slot: index)
        case .retryAt(let deadline): timer.schedule(at: deadline)
        }
    }

    @usableFromInline
    func startCreation(slot: Int32) {
        Task { await self.createConnection(slot: slot) }
    }

    private func createConnection(slot: Int32) async {
        let result: Result<PooledConnection, any Error>
        do {
            result = .success(try await factory.makeConnection())
        } catch {
            result = .failure(error)
        }
        let now = clock.now()
        core.mutex.lock()
        switch result {
        case .success(let connection):
            connections[Int(slot)] = connection
            switch core.state.pointee.creationSucceeded(slot, now: now) {
            case .idle:
                core.mutex.unlock()
            case .handOff(let waiter, let token):
                let continuation = deliverLocked(waiter, .success(token.rawValue))
                core.mutex.unlock()
                continuation?.resume(returning: token.rawValue)
            case .close(let index):
                let connection = takeConnectionLocked(index)
                core.mutex.unlock()
                closeInBackground(connection, slot: index)
            }
        case .failure(let error):
            let decision = core.state.pointee.creationFailed(slot, error: error, now: now)
            let failures = core.state.pointee.backoff.consecutiveFailures
            core.mutex.unlock()
            logger.warning(
                "connection pool: opening a connection failed",
                metadata: ["error": "\(error)", "consecutive_failures": "\(failures)"])
            handle(decision)
        }
    }

    private func takeConnectionLocked(_ index: Int32) -> PooledConnection? {
        let connection = connections[Int(index)]
        connections[Int(index)] = nil
        return connection
    }

    private func closeInBackground(_ connection: PooledConnection?, slot: Int32) {
        Task {
            if let connection { await connection.close() }
            self.closeFinished(slot: slot)
        }
    }

    private func closeFinished(slot: Int32) {
        let now = clock.now()
        core.mutex.lock()
        let decision = core.state.pointee.closeFinished(slot, now: now)
        let drained = takeDrainContinuationsIfDrainedLocked()
        core.mutex.unlock()
        handle(decision)
        for continuation in drained { continuation.resume() }
    }

    // MARK: Timer

    /// Fails waiters past their deadline and retries creation after a backoff. Runs on the timer
    /// thread (or the thread advancing a manual clock). Returns the next deadline.
    func timerFired(now: Int64) -> Int64? {
        core.mutex.lock()
        core.state.pointee.timerFired()
        while let waiter = core.state.pointee.popExpiredWaiter(now: now) {
            let result = WaiterResult.failure(core.state.pointee.timeoutError(for: waiter))
            if let continuation = deliverLocked(waiter, result) {
                core.mutex.unlock()
                Self.resume(continuation, with: result)
                core.mutex.lock()
            }
        }
        while case .create(let index) = core.state.pointee.creationDecision(now: now) {
            core.mutex.unlock()
            startCreation(slot: index)
            core.mutex.lock()
        }
        let next = core.state.pointee.nextTimerDeadline()
        core.mutex.unlock()
        return next
    }

    // MARK: Shutdown

    /// Shuts the pool down: new acquires fail with ``ConnectionPoolError/shutDown``, waiting callers
    /// are failed with it, idle connections are closed now and leased ones as they come back.
    /// Returns once every connection is closed. Calling it again waits for the same end.
    public func shutdown() async {
        core.mutex.lock()
        core.state.pointee.beginShutdown()
        var continuations: [UnsafeContinuation<UInt64, any Error>] = []
        while let waiter = core.state.pointee.popWaiterForShutdown() {
            if let continuation = deliverLocked(waiter, .failure(.shutDown)) { continuations.append(continuation) }
        }
        var closing: [(Int32, PooledConnection?)] = []
        while let index = core.state.pointee.takeIdleForClosing() {
            closing.append((index, takeConnectionLocked(index)))
        }
        core.mutex.unlock()
        for continuation in continuations { continuation.resume(throwing: ConnectionPoolError.shutDown) }
        for (index, connection) in closing {
            if let connection { await connection.close() }
            closeFinished(slot: index)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            core.mutex.lock()
            if core.state.pointee.isDrained {
                core.mutex.unlock()
                continuation.resume()
            } else {
                drainContinuations.append(continuation)
                core.mutex.unlock()
            }
        }
        timer.stop()
    }

    /// Blocking form of ``shutdown()`` for plain threads. Never call it from a cooperative thread.
    public func shutdownBlocking() {
        BlockingBridge.wait { await self.shutdown() }
    }

    private func takeDrainContinuationsIfDrainedLocked() -> [CheckedContinuation<Void, Never>] {
        guard core.state.pointee.lifecycle == .shuttingDown, core.state.pointee.isDrained,
              !drainContinuations.isEmpty
        else { return [] }
        defer { drainContinuations = [] }
        return drainContinuations
    }

    // MARK: Inspection

    /// A consistent snapshot of the pool's connection and waiter counts, taken under the lock.
    public func metrics() -> PoolMetrics {
        core.mutex.lock()
        defer { core.mutex.unlock() }
        let state = core.state.pointee
        return PoolMetrics(
            idle: state.slots.idleCount,
            inUse: state.slots.leasedCount,
            connecting: state.slots.connectingCount,
            closing: state.slots.closingCount,
            waiting: state.waiters.count,
            maxSize: state.maxSize)
    }

    /// Checks the state machine's invariants (for tests): a description of the first violation.
    func invariantViolation() -> String? {
        core.mutex.lock()
        defer { core.mutex.unlock() }
        if let violation = core.state.pointee.invariantViolation() { return violation }
        for index in 0..<capacity {
            let state = core.state.pointee.slots.states[index]
            let hasConnection = connections[index] != nil
            let shouldHave = state == .idle || state == .leased
            if hasConnection != shouldHave { return "slot \(index) is \(state) but connection present = \(hasConnection)" }
        }
        return nil
    }
}

/// Lets the pool's timer reach the pool without keeping it alive.
///
/// `@unchecked Sendable` is safe because `pool` is written once, in the pool's `init`, before the timer
/// can fire (the timer fires only after a deadline is scheduled, which only the initialized pool does,
/// through the timer's own lock); afterwards it is only read (weak loads are atomic).
final class WeakPoolReference<Factory: ConnectionFactory>: @unchecked Sendable {
    weak var pool: ConnectionPool<Factory>?
}
