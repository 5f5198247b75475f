public import ConnPool

/// How the workers of a run drive the pool: plain threads on the blocking API, or tasks on the async API.
public enum BenchMode: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    /// `concurrency` plain threads, each calling the blocking API (`withConnectionBlocking`).
    case sync
    /// `concurrency` child tasks, each calling the async API (`withConnection`).
    case async

    /// The raw value: the label used in tables and JSON.
    public var description: String { rawValue }
}

/// What a run measures: the pool, or one of the baselines it is compared with.
public enum BenchBaseline: String, Sendable, Hashable, Codable, CaseIterable, CustomStringConvertible {
    /// Every request borrows a connection from a ``ConnectionPool``.
    case pooled
    /// Every request opens a new connection with the factory and closes it afterwards: what a client
    /// without a pool pays. Slow; its request count is capped (see ``BenchRunSpec/perRequestCap``).
    case perRequest = "per-request"
    /// All workers share ONE connection, serialized by a lock. At concurrency 1 this is the raw
    /// connection's figure: the pool's own overhead is `1 - pooled / shared`.
    case shared
    /// An external tool's figure (`redis-benchmark` from redis-tools), imported with
    /// ``BenchResult/external(backend:workload:baseline:concurrency:requests:commandsPerRequest:opsPerSecond:p50Microseconds:p99Microseconds:maxMicroseconds:)``.
    /// The harness cannot run it itself.
    case redisBenchmark = "redis-benchmark"

    /// The raw value: the label used in tables and JSON.
    public var description: String { rawValue }
}

/// When the measured phase of a run ends.
public enum BenchStopCondition: Sendable, Hashable, CustomStringConvertible {
    /// After exactly this many requests, counted over all workers (errors included).
    case requests(Int)
    /// When this much time has passed since the measured phase began (requests in flight finish).
    case duration(Duration)
    /// After this many requests or this much time, whichever comes first.
    case requestsOrDuration(Int, Duration)

    /// `50000 requests`, `10 seconds`, …
    public var description: String {
        switch self {
        case .requests(let count): return "\(count) requests"
        case .duration(let duration): return "\(duration)"
        case .requestsOrDuration(let count, let duration): return "\(count) requests or \(duration)"
        }
    }
}

/// Everything that describes one run of ``BenchHarness/run(_:operation:)``.
public struct BenchRunSpec: Sendable, Hashable {
    /// Label: the backend, for example `redis` or `tcp`.
    public var backend: String
    /// Label: the workload, for example `ping` or `get`.
    public var workload: String
    /// Whether workers are plain threads (blocking API) or tasks (async API).
    public var mode: BenchMode
    /// What is measured: the pool or a baseline. ``BenchBaseline/redisBenchmark`` cannot be run.
    public var baseline: BenchBaseline
    /// The number of workers issuing requests at the same time. At least 1.
    public var concurrency: Int
    /// The pool's `maxSize` (pooled runs; reported for the others). At least 1.
    public var poolSize: Int
    /// When the measured phase ends.
    public var stop: BenchStopCondition
    /// Requests run (over all workers) before measuring, to open connections and warm caches. Not recorded.
    public var warmupRequests: Int
    /// Commands sent per request (a pipeline of N commands is one request). Throughput is reported in
    /// commands per second, latency per request.
    public var commandsPerRequest: Int
    /// The most requests a ``BenchBaseline/perRequest`` run makes (it opens a connection per request,
    /// which is slow and fills the ephemeral port range with TIME_WAIT sockets). Default 2,000.
    public var perRequestCap: Int
    /// The pool settings for pooled runs; `maxSize` is replaced by ``poolSize``.
    public var poolConfiguration: PoolConfiguration

    /// Creates a run description; see the properties for the meaning of each parameter.
    public init(
        backend: String,
        workload: String,
        mode: BenchMode,
        baseline: BenchBaseline = .pooled,
        concurrency: Int,
        poolSize: Int? = nil,
        stop: BenchStopCondition,
        warmupRequests: Int = 0,
        commandsPerRequest: Int = 1,
        perRequestCap: Int = 2_000,
        poolConfiguration: PoolConfiguration = PoolConfiguration().idleTimeout(nil)
    ) {
        self.backend = backend
        self.workload = workload
        self.mode = mode
        self.baseline = baseline
        self.concurrency = concurrency
        self.poolSize = poolSize ?? concurrency
        self.stop = stop
        self.warmupRequests = warmupRequests
        self.commandsPerRequest = commandsPerRequest
        self.perRequestCap = perRequestCap
        self.poolConfiguration = poolConfiguration
    }

    /// The stop condition actually used: the per-request cap applied for ``BenchBaseline/perRequest``
    /// (also to a duration run, which then ends at the cap if it comes first).
    public var effectiveStop: BenchStopCondition {
        guard baseline == .perRequest else { return stop }
        switch stop {
        case .requests(let count): return .requests(min(count, perRequestCap))
        case .duration(let duration): return .requestsOrDuration(perRequestCap, duration)
        case .requestsOrDuration(let count, let duration): return .requestsOrDuration(min(count, perRequestCap), duration)
        }
    }

    /// Every combination of concurrency level, mode and baseline for one workload, in run order: for each
    /// level, for each mode, the baselines in the order given (so that each pooled run sits next to the
    /// baselines it is compared with).
    ///
    /// - Parameters:
    ///   - poolSize: the pool size of every run; `nil` uses each run's concurrency level.
    ///   - template: the settings copied into every spec (stop condition, warm-up, pipeline depth, …);
    ///     its concurrency, pool size, mode and baseline are replaced.
    public static func matrix(
        _ template: BenchRunSpec, concurrencyLevels: [Int], modes: [BenchMode],
        baselines: [BenchBaseline] = [.shared, .pooled, .perRequest], poolSize: Int? = nil
    ) -> [BenchRunSpec] {
        var specs: [BenchRunSpec] = []
        for level in concurrencyLevels {
            for mode in modes {
                for baseline in baselines {
                    var spec = template
                    spec.concurrency = level
                    spec.poolSize = poolSize ?? level
                    spec.mode = mode
                    spec.baseline = baseline
                    specs.append(spec)
                }
            }
        }
        return specs
    }

    /// Checks the spec.
    ///
    /// - Throws: ``BenchError/invalidSpec(_:)`` naming what is wrong.
    public func validate() throws(BenchError) {
        if concurrency < 1 { throw .invalidSpec("concurrency must be at least 1 (is \(concurrency))") }
        if poolSize < 1 { throw .invalidSpec("pool size must be at least 1 (is \(poolSize))") }
        if warmupRequests < 0 { throw .invalidSpec("warm-up requests must not be negative (is \(warmupRequests))") }
        if commandsPerRequest < 1 {
            throw .invalidSpec("commands per request must be at least 1 (is \(commandsPerRequest))")
        }
        if perRequestCap < 1 { throw .invalidSpec("the per-request cap must be at least 1 (is \(perRequestCap))") }
        if baseline == .redisBenchmark {
            throw .invalidSpec("the redis-benchmark baseline is an external tool; import its figures instead")
        }
        switch stop {
        case .requests(let count) where count < 1, .requestsOrDuration(let count, _) where count < 1:
            throw .invalidSpec("the request count must be at least 1 (is \(count))")
        case .duration(let duration) where duration <= .zero, .requestsOrDuration(_, let duration) where duration <= .zero:
            throw .invalidSpec("the duration must be positive (is \(duration))")
        default:
            break
        }
    }
}

/// Errors of the harness itself (not of the requests it runs, which are counted, not thrown).
public enum BenchError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A ``BenchRunSpec`` breaks a rule.
    case invalidSpec(String)
    /// The pool could not be created (its configuration is invalid).
    case poolConfiguration(String)
    /// The connection a ``BenchBaseline/shared`` run needs could not be opened.
    case sharedConnectionFailed(String)

    /// What went wrong, for people.
    public var description: String {
        switch self {
        case .invalidSpec(let reason): return "invalid benchmark run: \(reason)"
        case .poolConfiguration(let reason): return "could not create the pool: \(reason)"
        case .sharedConnectionFailed(let reason): return "could not open the shared connection: \(reason)"
        }
    }
}

/// The work one request does with a connection, in an async and a blocking form.
///
/// Both closures receive the request's index (0-based, unique within a phase of a run), so a workload
/// can vary its commands, for example 80 % reads and 20 % writes. A request fails by throwing; the
/// harness counts the error by category and carries on. A closure that finds the connection unusable
/// should throw: a pool closes a connection whose `isBroken` is `true` when it comes back.
public struct BenchOperation<PooledConnection: Connection>: Sendable {
    /// Runs one request on a task (``BenchMode/async``). Must not block the thread.
    public var run: @Sendable (PooledConnection, Int) async throws -> Void
    /// Runs one request on a plain thread (``BenchMode/sync``). May block the thread.
    public var runBlocking: @Sendable (PooledConnection, Int) throws -> Void

    /// Creates an operation from its two forms.
    public init(
        run: @escaping @Sendable (PooledConnection, Int) async throws -> Void,
        runBlocking: @escaping @Sendable (PooledConnection, Int) throws -> Void
    ) {
        self.run = run
        self.runBlocking = runBlocking
    }
}
