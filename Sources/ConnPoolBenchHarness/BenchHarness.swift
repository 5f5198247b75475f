public import ConnPool
import Synchronization

/// Drives a ``ConnectionPool`` over any ``ConnectionFactory`` with a per-request operation, and runs the
/// baselines it is compared with through the same code, so that the figures are comparable.
///
/// ```swift
/// let harness = BenchHarness(factory: factory, connectBlocking: { try factory.makeConnectionBlocking() })
/// let spec = BenchRunSpec(backend: "redis", workload: "ping", mode: .async, concurrency: 8,
///                         stop: .requests(100_000), warmupRequests: 1_000)
/// let result = try await harness.run(spec, operation: ping)
/// print(BenchReport.table([result]))
/// ```
///
/// A run has a warm-up phase (not recorded) and a measured phase. Workers are `concurrency` child
/// tasks (``BenchMode/async``) or plain threads (``BenchMode/sync``); each claims request indices from
/// a shared atomic counter until the stop condition is met, times every request with the monotonic
/// clock into its own HdrHistogram (no lock, no allocation per request), and the histograms are merged
/// when the phase ends. Failed requests are counted by category and the run carries on.
public struct BenchHarness<Factory: ConnectionFactory>: Sendable {
    /// The connection type the operations receive.
    public typealias PooledConnection = Factory.PooledConnectionType

    /// Opens the connections of every run (through the pool, or directly for the baselines).
    public let factory: Factory
    /// Opens a connection on a plain thread, for the sync forms of the per-request and shared baselines.
    /// When `nil`, ``ConnectionFactory/makeConnection()`` runs on a detached task and the thread waits.
    public var connectBlocking: (@Sendable () throws -> PooledConnection)?
    /// Draw a live progress line while a run goes on. Default: only when standard output is a terminal.
    public var showProgress: Bool
    /// Names the category a failed request is counted under. Default ``BenchErrorCategory/default(_:)``.
    public var errorCategory: @Sendable (any Error) -> String
    /// Called with the pool of each pooled run, once created and before its first request (for a
    /// metrics endpoint, for instance). Default `nil`.
    public var onPoolCreated: (@Sendable (ConnectionPool<Factory>) -> Void)?
    /// The executor async workers prefer (SE-0417), for example `IOReactor.shared`, on whose thread a
    /// backend's waits then resume in place; `nil` runs them on the global concurrent executor, as
    /// plain tasks do. Default `nil`.
    public var taskExecutor: (any TaskExecutor)?

    /// A harness for `factory`; see the properties for the other parameters.
    public init(
        factory: Factory,
        connectBlocking: (@Sendable () throws -> PooledConnection)? = nil,
        showProgress: Bool = BenchProgress.standardOutputIsTerminal,
        errorCategory: @escaping @Sendable (any Error) -> String = BenchErrorCategory.default
    ) {
        self.factory = factory
        self.connectBlocking = connectBlocking
        self.showProgress = showProgress
        self.errorCategory = errorCategory
    }

    /// Runs one measurement: warm-up, then the measured phase, then tears down what it opened (the pool
    /// is shut down, the shared connection closed).
    ///
    /// - Parameters:
    ///   - spec: what to run (labels, mode, baseline, concurrency, pool size, stop condition, warm-up).
    ///   - operation: the work of one request.
    /// - Returns: the figures of the measured phase. Failed requests are counted in it, not thrown.
    /// - Throws: ``BenchError`` when the spec is invalid, the pool cannot be created, or the shared
    ///   connection cannot be opened at all.
    public func run(_ spec: BenchRunSpec, operation: BenchOperation<PooledConnection>) async throws -> BenchResult {
        try spec.validate()
        let driver = try await makeDriver(spec)
        let label = "\(spec.backend) \(spec.workload) \(spec.mode) \(spec.baseline) c=\(spec.concurrency)"

        if spec.warmupRequests > 0 {
            let warmup = spec.baseline == .perRequest ? min(spec.warmupRequests, 100) : spec.warmupRequests
            _ = await runPhase(
                spec, driver: driver, operation: operation, stop: .requests(warmup), label: label + " warm-up")
        }
        // The whole process's CPU over the measured phase (workers, the pool, the I/O reactor's thread,
        // the progress line), as for an external tool measured with wait4.
        let cpuBefore = ProcessCPU.selfMicroseconds()
        let (recorder, elapsed, rssBefore) = await runPhase(
            spec, driver: driver, operation: operation, stop: spec.effectiveStop, label: label)
        let cpuAfter = ProcessCPU.selfMicroseconds()
        let rssAfter = ResidentMemory.currentBytes()
        let cpuUsed = cpuBefore.flatMap { before in cpuAfter.map { $0 - before } }
        await driver.tearDown()

        let seconds = Double(elapsed) / 1e9
        return BenchResult(
            backend: spec.backend, workload: spec.workload, mode: spec.mode.rawValue, baseline: spec.baseline,
            concurrency: spec.concurrency, poolSize: spec.poolSize, requests: recorder.requests,
            commandsPerRequest: spec.commandsPerRequest, durationSeconds: seconds,
            opsPerSecond: seconds > 0 ? Double(recorder.successes * spec.commandsPerRequest) / seconds : 0,
            latency: recorder.summary, errors: recorder.errorCount, errorsByType: recorder.errors,
            rssBeforeBytes: rssBefore, rssAfterBytes: rssAfter,
            clientCPUMicrosecondsPerOp: ProcessCPU.perRequest(cpuMicroseconds: cpuUsed, requests: recorder.requests))
    }

    /// Runs several specs in order with the same operation (for example those of
    /// ``BenchRunSpec/matrix(_:concurrencyLevels:modes:baselines:poolSize:)``).
    ///
    /// - Parameter onResult: called after each run, for example to print a line as it finishes.
    /// - Returns: the results, in the order of `specs`.
    /// - Throws: the first ``BenchError`` a run throws (the results before it are lost).
    public func run(
        _ specs: [BenchRunSpec], operation: BenchOperation<PooledConnection>,
        onResult: (BenchResult) -> Void = { _ in }
    ) async throws -> [BenchResult] {
        var results: [BenchResult] = []
        for spec in specs {
            let result = try await run(spec, operation: operation)
            onResult(result)
            results.append(result)
        }
        return results
    }

    // MARK: - Drivers

    private func makeDriver(_ spec: BenchRunSpec) async throws -> Driver<Factory> {
        switch spec.baseline {
        case .pooled:
            var configuration = spec.poolConfiguration
            configuration.maxSize = spec.poolSize
            configuration.minSize = min(configuration.minSize, spec.poolSize)
            do {
                let pool = try ConnectionPool(factory: factory, configuration: configuration)
                onPoolCreated?(pool)
                return .pooled(pool)
            } catch {
                throw BenchError.poolConfiguration(error.description)
            }
        case .perRequest:
            return .perRequest(factory, connectBlocking: blockingConnector())
        case .shared:
            let shared = SharedConnection<Factory>(factory: factory, connectBlocking: blockingConnector())
            do {
                if spec.mode == .async {
                    _ = try await shared.connection()
                } else {
                    let connector = shared
                    _ = try await PlainThreads.run(count: 1) { _ in Result { try connector.withConnectionBlocking { _ in } } }[0].get()
                }
            } catch {
                throw BenchError.sharedConnectionFailed("\(error)")
            }
            return .shared(shared)
        case .redisBenchmark:
            throw BenchError.invalidSpec("the redis-benchmark baseline is an external tool")
        }
    }

    private func blockingConnector() -> @Sendable () throws -> PooledConnection {
        if let connectBlocking { return connectBlocking }
        let factory = self.factory
        return { try BlockingWait.run { try await factory.makeConnection() } }
    }

    // MARK: - Phases

    private func runPhase(
        _ spec: BenchRunSpec, driver: Driver<Factory>, operation: BenchOperation<PooledConnection>,
        stop: BenchStopCondition, label: String
    ) async -> (recorder: LatencyRecorder, elapsedNanoseconds: UInt64, rssAtStart: Int?) {
        let counters = PhaseCounters()
        // Every worker's histogram is allocated (and its pages touched) before the resident size is read
        // and the clock starts, so neither the memory figures nor the timing include it.
        let slots = RecorderSlots(count: spec.concurrency)
        let rssAtStart = ResidentMemory.currentBytes()
        let start = benchMonotonicNanoseconds()
        let phase = Phase(stop: stop, start: start, counters: counters)
        let progress = ProgressLine(
            enabled: showProgress, label: label, counters: counters, stop: stop,
            commandsPerRequest: spec.commandsPerRequest)
        progress.start()
        let recorders: [LatencyRecorder]
        let category = errorCategory
        let executor = taskExecutor
        switch spec.mode {
        case .async:
            recorders = await withTaskGroup(of: LatencyRecorder.self) { group in
                for index in 0..<spec.concurrency {
                    group.addTask(executorPreference: executor) {
                        await Self.asyncWorker(
                            recorder: slots.take(index), phase: phase, driver: driver, operation: operation,
                            category: category)
                    }
                }
                var all: [LatencyRecorder] = []
                for await recorder in group { all.append(recorder) }
                return all
            }
        case .sync:
            recorders = await PlainThreads.run(count: spec.concurrency) { index in
                Self.blockingWorker(
                    recorder: slots.take(index), phase: phase, driver: driver, operation: operation,
                    category: category)
            }
        }
        let elapsed = benchMonotonicNanoseconds() &- phase.startedAt(orIfNoneClaimed: start)
        progress.finish()
        var merged = recorders[0]
        for recorder in recorders.dropFirst() { merged.merge(recorder) }
        return (merged, elapsed, rssAtStart)
    }

    private static func asyncWorker(
        recorder: consuming LatencyRecorder, phase: Phase, driver: Driver<Factory>, operation: BenchOperation<PooledConnection>,
        category: @Sendable (any Error) -> String
    ) async -> LatencyRecorder {
        var recorder = recorder
        let run = operation.run
        while true {
            let begin = benchMonotonicNanoseconds()
            guard let index = phase.claim(now: begin) else { break }
            do {
                switch driver {
                case .pooled(let pool):
                    try await pool.withConnection { connection in try await run(connection, index) }
                case .perRequest(let factory, _):
                    let connection = try await factory.makeConnection()
                    do {
                        try await run(connection, index)
                    } catch {
                        await connection.close()
                        throw error
                    }
                    await connection.close()
                case .shared(let shared):
                    await shared.asyncLock.lock()
                    do {
                        try await run(try await shared.connection(), index)
                    } catch {
                        shared.asyncLock.unlock()
                        throw error
                    }
                    shared.asyncLock.unlock()
                }
                recorder.record(nanoseconds: benchMonotonicNanoseconds() &- begin)
            } catch {
                phase.counters.errors.add(1, ordering: .relaxed)
                recorder.recordError(category: category(error))
            }
        }
        return recorder
    }

    private static func blockingWorker(
        recorder: consuming LatencyRecorder, phase: Phase, driver: Driver<Factory>, operation: BenchOperation<PooledConnection>,
        category: @Sendable (any Error) -> String
    ) -> LatencyRecorder {
        var recorder = recorder
        let run = operation.runBlocking
        while true {
            let begin = benchMonotonicNanoseconds()
            guard let index = phase.claim(now: begin) else { break }
            do {
                switch driver {
                case .pooled(let pool):
                    try pool.withConnectionBlocking { connection in try run(connection, index) }
                case .perRequest(_, let connect):
                    let connection = try connect()
                    defer { connection.closeBlocking() }
                    try run(connection, index)
                case .shared(let shared):
                    try shared.withConnectionBlocking { connection in try run(connection, index) }
                }
                recorder.record(nanoseconds: benchMonotonicNanoseconds() &- begin)
            } catch {
                phase.counters.errors.add(1, ordering: .relaxed)
                recorder.recordError(category: category(error))
            }
        }
        return recorder
    }
}

/// How the requests of a run reach a connection.
private enum Driver<Factory: ConnectionFactory>: Sendable {
    case pooled(ConnectionPool<Factory>)
    case perRequest(Factory, connectBlocking: @Sendable () throws -> Factory.PooledConnectionType)
    case shared(SharedConnection<Factory>)

    func tearDown() async {
        switch self {
        case .pooled(let pool): await pool.shutdown()
        case .perRequest: break
        case .shared(let shared): await shared.close()
        }
    }
}

/// The state of one phase: the stop condition and the request counter the workers claim from.
///
/// A duration counts from the first claim, not from when the phase was set up: the workers are tasks
/// (or threads) that start when a thread is free, and on a busy machine (2 cores, other tests running)
/// that can be most of a short run; counted from set-up, such a run measured nothing at all.
private final class Phase: Sendable {
    let counters: PhaseCounters
    private let limit: Int
    /// The duration in nanoseconds, `.max` when the phase has none.
    private let duration: UInt64
    /// The monotonic time of the first claim; 0 until then.
    private let firstClaim = Atomic<UInt64>(0)

    init(stop: BenchStopCondition, start: UInt64, counters: PhaseCounters) {
        self.counters = counters
        func nanoseconds(_ duration: Duration) -> UInt64 {
            let (seconds, attoseconds) = duration.components
            return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
        }
        switch stop {
        case .requests(let count):
            limit = count
            duration = .max
        case .duration(let length):
            limit = .max
            duration = nanoseconds(length)
        case .requestsOrDuration(let count, let length):
            limit = count
            duration = nanoseconds(length)
        }
    }

    /// When the first request was claimed, or `start` when none was.
    func startedAt(orIfNoneClaimed start: UInt64) -> UInt64 {
        let first = firstClaim.load(ordering: .relaxed)
        return first == 0 ? start : first
    }

    /// The next request index, or `nil` once the phase is over.
    @inline(__always)
    func claim(now: UInt64) -> Int? {
        if duration != .max {
            var begun = firstClaim.load(ordering: .relaxed)
            if begun == 0 {
                let (exchanged, original) = firstClaim.compareExchange(expected: 0, desired: now, ordering: .relaxed)
                begun = exchanged ? now : original
            }
            // `now` may have been read just before another worker's first claim: not past the end then.
            if now > begun && now - begun >= duration { return nil }
        }
        let index = counters.claimed.wrappingAdd(1, ordering: .relaxed).oldValue
        return index < limit ? index : nil
    }
}

/// One pre-allocated ``LatencyRecorder`` per worker, each moved out (not copied: a copy would share the
/// histogram's storage and copy it on the first write) by the worker it belongs to.
///
/// `@unchecked Sendable` is safe because slot `i` is written once in `init` and taken once, by worker
/// `i` only; the task or thread start orders the init before the take.
private final class RecorderSlots: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<LatencyRecorder?>
    private let count: Int

    init(count: Int) {
        self.count = count
        storage = .allocate(capacity: count)
        for index in 0..<count { (storage + index).initialize(to: LatencyRecorder()) }
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    func take(_ index: Int) -> LatencyRecorder {
        let recorder = storage[index].take()
        precondition(recorder != nil, "recorder \(index) taken twice")
        return recorder.unsafelyUnwrapped
    }
}

/// The one connection of a ``BenchBaseline/shared`` run, reopened if it breaks.
///
/// In async mode workers are serialized by `asyncLock`, and `current` is additionally behind its own
/// lock (never held across a suspension), so its safety does not depend on how a checker sees the async
/// lock's hand-off (ThreadSanitizer reported a race on it once without that lock). In sync mode a worker
/// holds `current`'s lock for its whole request, which serializes the workers. The uncontended lock costs
/// a few tens of nanoseconds per request, against a round trip of 15 µs or more.
private final class SharedConnection<Factory: ConnectionFactory>: Sendable {
    let asyncLock = AsyncSerialLock()
    private let factory: Factory
    private let connectBlocking: @Sendable () throws -> Factory.PooledConnectionType
    private let current = LockedValue<Factory.PooledConnectionType?>(nil)

    init(factory: Factory, connectBlocking: @escaping @Sendable () throws -> Factory.PooledConnectionType) {
        self.factory = factory
        self.connectBlocking = connectBlocking
    }

    /// Takes the current connection out if it is broken; returns it if usable.
    private func usableOrTakeBroken() -> (usable: Factory.PooledConnectionType?, broken: Factory.PooledConnectionType?) {
        current.withLock { current in
            guard let connection = current else { return (nil, nil) }
            if !connection.isBroken { return (connection, nil) }
            current = nil
            return (nil, connection)
        }
    }

    private func store(_ connection: Factory.PooledConnectionType?) {
        current.withLock { $0 = connection }
    }

    /// The connection, reopened when missing or broken. Call with `asyncLock` held.
    func connection() async throws -> Factory.PooledConnectionType {
        let (usable, broken) = usableOrTakeBroken()
        if let usable { return usable }
        if let broken { await broken.close() }
        let connection = try await factory.makeConnection()
        store(connection)
        return connection
    }

    /// Runs `body` with the connection, reopened first when missing or broken, holding the connection's
    /// lock throughout: one worker at a time. For plain threads (sync mode) only.
    func withConnectionBlocking<T>(_ body: (Factory.PooledConnectionType) throws -> T) throws -> T {
        try current.withLock { current in
            if let broken = current, broken.isBroken {
                current = nil
                broken.closeBlocking()
            }
            let connection = try current ?? connectBlocking()
            current = connection
            return try body(connection)
        }
    }

    /// Closes the connection (no worker runs any more).
    func close() async {
        let connection = current.withLock { current in
            defer { current = nil }
            return current
        }
        if let connection { await connection.close() }
    }
}
