public import Logging
public import Tracing

/// A pool of connections made by a ``ConnectionFactory``, lent through `~Copyable` leases, with a
/// suspending interface for Swift concurrency and a blocking one for plain threads.
///
/// ## Design
/// - **Slots.** Connections live in a slot array allocated once, at init, for `maxSize` connections.
///   Idle slots sit in an O(1) ring (LIFO or FIFO reuse); nothing is ever scanned on the hot path.
/// - **One lock.** A pthread mutex guards a non-generic state machine (`PoolStateMachine`); connection I/O
///   (create, check, close) and task resumption happen outside it.
/// - **A lock-free fast lane.** A release with nobody waiting parks its lease on a lock-free stack and
///   the next acquire takes it back, one compare-and-swap each, without the mutex (LIFO reuse without
///   validation on acquire, lease tracking or tracing; see `IdleStack`).
/// - **Zero allocation** to acquire and release an idle connection, in both interfaces: the lease is a
///   `~Copyable` struct, waiters carry a packed token, and a blocked thread waits on stack memory.
/// - **No shared reference count on the hot path.** This class is a thin handle; the work is done by an
///   internal runtime that leases reference unretained and that keeps itself alive until every lease
///   has come back, so a lease costs no atomic increment of a count all threads share.
/// - **Waiters** are served first come, first served, with direct hand-off: a released connection goes
///   to the oldest waiter, never back to the idle set while someone waits.
/// - **Limits.** The number of connections (idle + leased + connecting + validating + closing) never
///   exceeds `maxSize`: a slot is reserved before a connection is created and freed only after it is
///   closed (or, for an attempt, check or close that hangs, after ``PoolConfiguration/connectTimeout``,
///   ``PoolConfiguration/healthCheckTimeout`` or ``PoolConfiguration/closeTimeout``). A connection
///   created for a waiter that gave up becomes idle, never lost.
/// - **One timer** per pool fails waiters at their deadline, retries failed connection attempts after
///   their backoff, and runs maintenance (lifetime, idle timeout, health checks, `minSize`), so
///   sync-only users get all of it without writing async code. On the system clock the timers of every
///   pool of the process share one thread (`connpool-timer`, started with the first pool, gone after the
///   last); on a ``ManualClock`` they fire on the thread that advances it.
///
/// ## Lifetime
/// Call ``shutdown(gracePeriod:)`` (or run the pool in a `ServiceGroup`) when you are done. A pool
/// released without it logs a warning and shuts itself down without a grace period: idle connections
/// close at once, leased ones when their leases end, and the pool's memory and timer go away after the
/// last one.
public final class ConnectionPool<Factory: ConnectionFactory>: Sendable {
    /// The type of the pooled connections.
    public typealias PooledConnection = Factory.PooledConnectionType

    @usableFromInline let runtime: PoolRuntime<Factory>

    /// The factory that opens this pool's connections.
    public var factory: Factory { runtime.factory }
    /// The configuration the pool was created with.
    public var configuration: PoolConfiguration { runtime.configuration }
    /// Where the pool logs (creation failures, shutdown, a pool dropped without shutdown).
    public var logger: Logger { runtime.logger }

    /// Creates a pool and starts its maintenance. With ``PoolConfiguration/warmUpOnInit`` it starts
    /// opening `minSize` connections in the background; otherwise the first maintenance round (or
    /// ``warm()``) opens them.
    ///
    /// - Parameters:
    ///   - factory: opens the connections.
    ///   - configuration: sizes, timeouts and health rules; validated here.
    ///   - clock: ``PoolClock/system`` in production; ``PoolClock/manual(_:)`` in tests.
    ///   - logger: where the pool logs, with the pool's name as `pool` metadata; it never logs secrets.
    ///   - tracer: a swift-distributed-tracing tracer for spans of acquires (`connpool.acquire`, with
    ///     the wait and the outcome) and connection attempts (`connpool.connect`); `nil` (the default)
    ///     traces nothing and costs nothing.
    /// - Throws: ``PoolConfigurationError`` if `configuration` breaks a rule.
    public init(
        factory: Factory,
        configuration: PoolConfiguration = PoolConfiguration(),
        clock: PoolClock = .system,
        logger: Logger = Logger(label: "connpool"),
        tracer: (any Tracer)? = nil
    ) throws(PoolConfigurationError) {
        runtime = try PoolRuntime(
            factory: factory, configuration: configuration, clock: clock, logger: logger, tracer: tracer, taskExecutor: nil)
    }

    /// Creates a pool whose own tasks (connection attempts, closes, health checks) run on
    /// `taskExecutor`: a deterministic test executor makes every interleaving reproducible.
    /// `blockingWaitHook` runs on a blocked thread before its spin and before it queues (see
    /// `PoolRuntime.blockingWaitHook`).
    init(
        factory: Factory, configuration: PoolConfiguration, clock: PoolClock, logger: Logger = Logger(label: "connpool"),
        taskExecutor: (any TaskExecutor)?, blockingWaitHook: (@Sendable (BlockingWaitStep) -> Void)? = nil
    ) throws(PoolConfigurationError) {
        runtime = try PoolRuntime(
            factory: factory, configuration: configuration, clock: clock, logger: logger, tracer: nil,
            taskExecutor: taskExecutor, blockingWaitHook: blockingWaitHook)
    }

    deinit {
        runtime.handleReleased()
    }

    // MARK: Async interface

    /// Borrows a connection, suspending until one is available.
    ///
    /// Lends an idle connection at once if there is one (no allocation, no suspension); otherwise
    /// opens a new one if the pool is below `maxSize`, or waits, first come first served, for a
    /// connection to be released. Never blocks a cooperative thread.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait; `nil` uses ``PoolConfiguration/acquireTimeout``.
    ///   - file: recorded for leak detection (``PoolConfiguration/leakDetectionThreshold``).
    ///   - line: recorded for leak detection.
    /// - Returns: a lease; the connection returns to the pool when the lease goes out of scope.
    /// - Throws: ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)`` when no connection came
    ///   in time; ``ConnectionPoolError/connectFailing(lastConnectError:consecutiveFailures:)`` at once
    ///   while the backend looks down; ``ConnectionPoolError/shutDown`` after
    ///   ``shutdown(gracePeriod:)``; ``ConnectionPoolError/tooManyWaiters(limit:)`` beyond
    ///   `maxWaiters`; `CancellationError` if the task is cancelled while waiting (the waiter is
    ///   removed at once, nothing leaks).
    @inlinable
    public nonisolated(nonsending) func acquire(
        timeout: Duration? = nil, file: StaticString = #fileID, line: UInt = #line
    ) async throws -> ConnectionLease<Factory> {
        try await runtime.acquire(timeout: timeout, file: file, line: line)
    }

    /// Runs `body` with a borrowed connection and returns it to the pool afterwards, whether `body`
    /// returns or throws. Allocation-free for an idle connection.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait for a connection; `nil` uses ``PoolConfiguration/acquireTimeout``.
    ///   - file: recorded for leak detection (``PoolConfiguration/leakDetectionThreshold``).
    ///   - line: recorded for leak detection.
    ///   - body: the work; it must not keep the connection after it returns.
    /// - Throws: what ``acquire(timeout:file:line:)`` throws, or what `body` throws.
    @inlinable
    public nonisolated(nonsending) func withConnection<Result>(
        timeout: Duration? = nil,
        file: StaticString = #fileID,
        line: UInt = #line,
        _ body: nonisolated(nonsending) (PooledConnection) async throws -> Result
    ) async throws -> Result {
        let lease = try await runtime.acquire(timeout: timeout, file: file, line: line)
        return try await body(lease.connection)
    }

    // MARK: Blocking interface

    /// Borrows a connection, blocking the calling thread until one is available.
    ///
    /// For plain threads. It blocks only the caller; never call it from a Swift concurrency task (it
    /// would block a cooperative thread): use ``acquire(timeout:file:line:)`` there.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait; `nil` uses ``PoolConfiguration/acquireTimeout``.
    ///   - file: recorded for leak detection.
    ///   - line: recorded for leak detection.
    /// - Returns: a lease; the connection returns to the pool when the lease goes out of scope.
    /// - Throws: ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)``,
    ///   ``ConnectionPoolError/connectFailing(lastConnectError:consecutiveFailures:)``,
    ///   ``ConnectionPoolError/shutDown`` or ``ConnectionPoolError/tooManyWaiters(limit:)``.
    @inlinable
    public func acquireBlocking(
        timeout: Duration? = nil, file: StaticString = #fileID, line: UInt = #line
    ) throws(ConnectionPoolError) -> ConnectionLease<Factory> {
        try runtime.acquireBlocking(timeout: timeout, file: file, line: line)
    }

    /// Runs `body` with a borrowed connection on the calling thread and returns the connection
    /// afterwards, whether `body` returns or throws. Allocation-free for an idle connection.
    ///
    /// - Throws: what ``acquireBlocking(timeout:file:line:)`` throws, or what `body` throws.
    @inlinable
    public func withConnectionBlocking<Result>(
        timeout: Duration? = nil,
        file: StaticString = #fileID,
        line: UInt = #line,
        _ body: (PooledConnection) throws -> Result
    ) throws -> Result {
        let lease = try runtime.acquireBlocking(timeout: timeout, file: file, line: line)
        return try body(lease.connection)
    }

    // MARK: Warm-up

    /// Opens connections until the pool holds `minSize`, at most
    /// ``PoolConfiguration/maxConcurrentConnects`` at a time, and returns when they are open.
    ///
    /// - Throws: the first error from ``ConnectionFactory/makeConnection()`` among the attempts this
    ///   call started (the connections that did open stay in the pool; maintenance keeps retrying the
    ///   rest with backoff), or ``ConnectionPoolError/shutDown``.
    public func warm() async throws {
        try await runtime.warm()
    }

    /// Blocking form of ``warm()`` for plain threads. Never call it from a cooperative thread.
    ///
    /// - Throws: what ``warm()`` throws.
    public func warmBlocking() throws {
        try runtime.warmBlocking()
    }

    // MARK: Shutdown

    /// Shuts the pool down: new acquires fail with ``ConnectionPoolError/shutDown``, waiting callers
    /// are failed with it, idle connections are closed now and leased ones as they come back.
    ///
    /// Returns once every connection is closed, or when `gracePeriod` has passed: leased connections
    /// still out then are closed by force (their leases become stale) and the report says so.
    /// Calling it again waits for the same end; a shorter grace period takes effect.
    ///
    /// - Parameter gracePeriod: how long to wait for leased connections; `nil` waits for all of them.
    /// - Returns: what the shutdown had to do.
    @discardableResult
    public func shutdown(gracePeriod: Duration? = nil) async -> ShutdownReport {
        await runtime.shutdown(gracePeriod: gracePeriod)
    }

    /// Blocking form of ``shutdown(gracePeriod:)`` for plain threads. Never call it from a cooperative
    /// thread.
    @discardableResult
    public func shutdownBlocking(gracePeriod: Duration? = nil) -> ShutdownReport {
        runtime.shutdownBlocking(gracePeriod: gracePeriod)
    }

    // MARK: Inspection and control

    /// A snapshot of the pool: connection and waiter counts, event counters (exactly consistent:
    /// taken under the lock) and the wait, hold and lifetime distributions.
    public func metrics() -> PoolMetrics {
        runtime.metrics()
    }

    /// Calls `handler` with a fresh ``metrics()`` snapshot every `interval`, on the timer thread,
    /// until the pool shuts down or another handler (or `nil`) replaces it. Keep the handler short:
    /// the timer thread is shared by every pool of the process, and their timeouts wait while it runs.
    ///
    /// - Precondition: `interval` is positive.
    public func setMetricsHandler(every interval: Duration, _ handler: (@Sendable (PoolMetrics) -> Void)?) {
        runtime.setMetricsHandler(every: interval, handler)
    }

    /// The pool's health, metrics and configuration, for a status endpoint. Holds no secret.
    public func status() -> PoolStatus {
        runtime.status()
    }

    /// Changes the maximum number of connections at runtime.
    ///
    /// Growing serves waiting callers at once (new connections are opened for them). Shrinking closes
    /// idle connections above the new maximum now, leased ones when they come back and ones being
    /// opened when they open; from then on the new maximum holds. Safe to call concurrently with
    /// acquires and other resizes. Growing above the largest size so far reallocates the slot array
    /// (the only allocation a resize makes).
    ///
    /// - Throws: ``PoolConfigurationError`` if `maxSize` is below 1, below `minSize` or above
    ///   ``PoolConfiguration/maxSizeLimit``.
    public func resize(maxSize: Int) throws(PoolConfigurationError) {
        try runtime.resize(maxSize: maxSize)
    }

    /// Checks the state machine's invariants (for tests): a description of the first violation.
    func invariantViolation() -> String? {
        runtime.invariantViolation()
    }
}
