#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
public import Tracing

/// The working part of a ``ConnectionPool``: slots, state machine, timer and every acquire and
/// release path. The public `ConnectionPool` is a thin handle around it (see that type for the design).
///
/// ## One executor for every change
/// Every change of the state machine goes through ``modifyState(drainingFastLane:_:)`` (or
/// ``runLocked(drainingFastLane:_:)`` when the lock is already held): the change appends its effects,
/// `finishLocked` turns them into work under the lock (signals blocked threads, takes the connections to
/// close, keeps the fast lane in step, completes shutdown and warm-up waits, notes whether the pool is
/// finished), and `perform` does the work once the lock is released. No call site carries out effects by
/// hand, so none can forget one. The files split the rest by job: `+Release` (release and the fast
/// lane), `+Creation` (opening and closing connections), `+Timer` (timer and maintenance),
/// `+Lifecycle` (warm-up and shutdown), `+Inspection` (metrics, status, resize), `+Async` and
/// `+Blocking` (the two acquire interfaces), `+Effects` (the executor).
///
/// ## Why a handle and a runtime
/// Acquire and release must not touch a reference count that every thread shares: an atomic increment
/// and decrement of the pool object per lease is a contended cache line under load, and once anything
/// holds a `weak` reference to an object, Swift moves its count to a side table and every retain and
/// release of it takes a slow path (measured: 27% of the instructions of an acquire+release). So:
/// - a ``ConnectionLease`` holds the runtime **unretained** (`Unmanaged`), and nothing holds it weakly;
/// - the timer's handler holds the runtime **strongly**, a deliberate cycle that keeps the runtime alive
///   while any lease may still come back;
/// - the public handle's `deinit` (the user dropped the pool) calls ``handleReleased()``, which shuts
///   the pool down if it still runs; the cycle is broken (``stopTimerIfFinished()``) only once the pool
///   has stopped running, every slot is empty and no lease closed by force is still out. A lease can
///   therefore never outlive the runtime it points at: while a lease is out, either its slot is
///   `.leased` (the pool is not drained) or it was closed by force and is counted in
///   `PoolStateMachine.forcedLeasesOutstanding`.
/// - the release that returns a pool's last lease is the one that may finish it, and it reached the
///   runtime unretained: a release that leaves the fast path holds a reference of its own for its
///   duration (``whileRetained(_:)``), so stopping the timer never frees the runtime under it.
///
/// `@unchecked Sendable` is safe because every mutable piece of state is either behind `PoolCore`'s
/// mutex (the state machine; `connections`, whose elements are written and read with the mutex held;
/// and the private `var`s below, each documented as guarded by it) or immutable after `init`.
@usableFromInline
final class PoolRuntime<Factory: ConnectionFactory>: @unchecked Sendable {
    /// The type of the pooled connections.
    @usableFromInline typealias PooledConnection = Factory.PooledConnectionType

    @usableFromInline let core: PoolCore
    /// Points at the buffer of one optional connection per slot, indexed like the state machine's
    /// slots. Both the pointer and the elements are guarded by `core.mutex`; the buffer is replaced
    /// only by ``resize(maxSize:)``.
    @usableFromInline let connectionBuffer: UnsafeMutablePointer<UnsafeMutablePointer<PooledConnection?>>
    @usableFromInline let clock: PoolClock
    /// False when a feature needs the full acquire path: validate on acquire, tracing or lease
    /// tracking. Lets the common case skip them with one predictable branch.
    @usableFromInline let plainAcquire: Bool
    /// Lends are stamped with time and call site (lease hold time, leak detection).
    @usableFromInline let tracksLeases: Bool
    /// Spans for acquires and connection attempts, when given.
    @usableFromInline let tracer: (any Tracer)?

    /// The lock-free fast lane for idle connections (see ``IdleStack``). Its gate stays closed when
    /// every acquire needs the locked path (FIFO reuse, validation on acquire, lease tracking, tracing).
    @usableFromInline let idleStack: IdleStack
    /// Whether this pool uses the fast lane at all.
    let usesFastLane: Bool

    /// Lock-free distributions, recorded outside the lock.
    @usableFromInline let acquireWaitHistogram = LatencyHistogram()
    @usableFromInline let leaseHoldHistogram = LatencyHistogram()
    let lifetimeHistogram = LatencyHistogram()

    /// The connection buffer. Read or write it only with `core.mutex` held.
    @inlinable var connections: UnsafeMutablePointer<PooledConnection?> { connectionBuffer.pointee }

    /// The factory that opens this pool's connections.
    let factory: Factory
    /// The configuration the pool was created with.
    @usableFromInline let configuration: PoolConfiguration
    /// Where the pool logs (creation failures, shutdown, a pool dropped without shutdown).
    let logger: Logger
    /// Where the pool's own tasks run (connection attempts, closes, health checks): nil, the default
    /// executor; a test's ``SimulationExecutor``-like executor to make a run reproducible.
    let taskExecutor: (any TaskExecutor)?
    /// A test seam, nil outside tests: called on a blocked thread's way to the wait queue, before its
    /// spin and before it queues, so a test can release a connection at exactly that point (the
    /// regression test of `validateOnAcquire` on the spin and enqueue paths). Read only on the blocking
    /// wait path, never on the hot path.
    @usableFromInline let blockingWaitHook: (@Sendable (BlockingWaitStep) -> Void)?

    let timer: PoolTimer
    /// Callers of ``shutdown(gracePeriod:)`` waiting for the end. Guarded by `core.mutex`.
    var shutdownWaiters: [CheckedContinuation<ShutdownReport, Never>] = []
    /// Callers of ``warm()`` waiting for a connection attempt to end. Guarded by `core.mutex`.
    var warmWaiters: [CheckedContinuation<Void, Never>] = []
    /// The periodic metrics handler. Guarded by `core.mutex`.
    var metricsHandler: (@Sendable (PoolMetrics) -> Void)?

    /// See ``ConnectionPool/init(factory:configuration:clock:logger:tracer:)``, whose defaults apply.
    init(
        factory: Factory, configuration: PoolConfiguration, clock: PoolClock, logger: Logger, tracer: (any Tracer)?,
        taskExecutor: (any TaskExecutor)?, blockingWaitHook: (@Sendable (BlockingWaitStep) -> Void)? = nil
    ) throws(PoolConfigurationError) {
        try configuration.validate()
        self.factory = factory
        self.configuration = configuration
        self.clock = clock
        var logger = logger
        logger[metadataKey: "pool"] = "\(configuration.name)"
        self.logger = logger
        self.tracer = tracer
        self.taskExecutor = taskExecutor
        self.blockingWaitHook = blockingWaitHook
        tracksLeases = configuration.leakDetectionThreshold != nil || configuration.recordsLeaseHoldTime
        plainAcquire = !configuration.validateOnAcquire && tracer == nil && !tracksLeases
        let capacity = configuration.maxSize
        core = PoolCore(configuration: configuration, capacity: capacity)
        let buffer = UnsafeMutablePointer<PooledConnection?>.allocate(capacity: capacity)
        buffer.initialize(repeating: nil, count: capacity)
        connectionBuffer = .allocate(capacity: 1)
        connectionBuffer.initialize(to: buffer)
        idleStack = IdleStack(capacity: capacity)
        usesFastLane = plainAcquire && configuration.reuseOrder == .lifo
        let target = TimerTarget<Factory>()
        timer = clock.makeTimer { now in target.runtime?.timerFired(now: now) }
        target.runtime = self

        let now = clock.now()
        let warmUp = configuration.warmUpOnInit
        modifyState { state, effects in
            state.startMaintenance(now: now)
            if warmUp {
                while case .create(let token) = state.creationDecision(now: now) { effects.creations.append(token) }
            }
        }
    }

    deinit {
        // Runs once the timer has let go (the pool is finished) and no task holds the runtime: every
        // slot is empty. A connection still here was handed over by an operation given up on.
        for index in idleStack.closeAndTakeAll() { _ = unpark(index) }
        let capacity = core.state.pointee.slots.capacity
        for index in 0..<capacity {
            if let connection = connections[index] { Task.detached { await connection.close() } }
        }
        connections.deinitialize(count: capacity)
        connections.deallocate()
        connectionBuffer.deallocate()
    }

    /// Called by the public handle's `deinit`: nobody can start an acquire any more. A pool still
    /// running is shut down, with a warning (idle connections close now, leased ones when they come
    /// back, no grace period); the runtime lives on until that is done, then lets itself go.
    func handleReleased() {
        let now = clock.now()
        let open = modifyState(drainingFastLane: true) { state, effects -> Int? in
            guard state.lifecycle == .running else { return nil }
            let open = state.slots.liveCount
            state.beginShutdown(now: now, gracePeriod: nil, into: &effects)
            return open
        }
        if let open, open > 0 {
            logger.warning(
                "connection pool released without shutdown(); closing its connections",
                metadata: ["connections": "\(open)"])
        }
    }

    /// Runs `body` holding a strong reference to the runtime, for a lease's release that leaves the
    /// fast path. A lease reaches the runtime unretained, and a slow release can finish the pool (its
    /// last lease closed, or the last one closed by force, comes back): stopping the timer then drops
    /// what may be the last other reference. Holding one here keeps the runtime alive until the release
    /// is done; it may be freed when this returns, after its last use.
    ///
    /// Not optimized (`@_optimize(none)`) on purpose: `self` is a guaranteed argument here, so the
    /// optimizer may treat a retain/release pair around `body` as redundant and remove it, which would
    /// remove the guarantee. Slow path only.
    @usableFromInline @inline(never) @_optimize(none)
    func whileRetained(_ body: () -> Void) {
        let retained = Unmanaged.passRetained(self)
        body()
        retained.release()
    }

    /// Starts one of the pool's own tasks (a connection attempt, a close, a round of health checks) on
    /// the pool's task executor.
    func spawn(_ body: @escaping @Sendable () async -> Void) {
        Task(executorPreference: taskExecutor) { await body() }
    }

    /// The connection in `index`, taken out of the buffer (to be closed). Call with the mutex held.
    func takeConnectionLocked(_ index: Int32) -> PooledConnection? {
        let connection = connections[Int(index)]
        connections[Int(index)] = nil
        return connection
    }
}

/// What the pool's timer calls: the runtime, held strongly on purpose (see `PoolRuntime`); the timer
/// lets go of it when stopped.
///
/// `@unchecked Sendable` is safe because `runtime` is written once, in the runtime's `init`, before the
/// timer can fire (it fires only after a deadline is scheduled, which only the initialized runtime does,
/// through the timer's own lock, which orders the write before the handler's read); afterwards it is
/// only read.
final class TimerTarget<Factory: ConnectionFactory>: @unchecked Sendable {
    var runtime: PoolRuntime<Factory>?
}
