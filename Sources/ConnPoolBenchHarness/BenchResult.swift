/// The figures of one run (or one imported external measurement), as printed in the table and
/// written to JSON.
///
/// JSON keys (snake case): `backend`, `workload`, `mode`, `baseline`, `concurrency`, `pool_size`,
/// `requests`, `commands_per_request`, `duration_s`, `ops_per_sec`, `p50_us`, `p90_us`, `p99_us`,
/// `p999_us`, `max_us`, `mean_us`, `errors`, `errors_by_type`, `rss_before_bytes`, `rss_after_bytes`,
/// `client_cpu_us_per_op`, `tls`. Figures an external tool does not report (p90 and p99.9 for
/// `redis-benchmark`) are `null`. `tls` is `false` for a plain-text run, and decodes as `false` when
/// missing (JSON written before it existed).
public struct BenchResult: Sendable, Hashable, Codable {
    /// Label: the backend (`redis`, `tcp`, `mock`, …).
    public var backend: String
    /// Label: the workload (`ping`, `get`, …).
    public var workload: String
    /// `sync`, `async`, or `external` for a figure imported from another tool.
    public var mode: String
    /// What was measured: the pool or a baseline.
    public var baseline: BenchBaseline
    /// Workers (threads or tasks; connections for an external tool).
    public var concurrency: Int
    /// The pool's `maxSize` (`nil` where no pool is involved: external tools).
    public var poolSize: Int?
    /// Requests made in the measured phase, errors included.
    public var requests: Int
    /// Commands per request (pipeline depth).
    public var commandsPerRequest: Int
    /// Wall-clock length of the measured phase, in seconds.
    public var durationSeconds: Double
    /// Successful commands per second: `(requests - errors) * commandsPerRequest / durationSeconds`.
    public var opsPerSecond: Double
    /// Median request latency, µs.
    public var p50Microseconds: Double?
    /// 90th percentile request latency, µs.
    public var p90Microseconds: Double?
    /// 99th percentile request latency, µs.
    public var p99Microseconds: Double?
    /// 99.9th percentile request latency, µs.
    public var p999Microseconds: Double?
    /// Largest request latency, µs.
    public var maxMicroseconds: Double?
    /// Mean request latency, µs.
    public var meanMicroseconds: Double?
    /// Failed requests.
    public var errors: Int
    /// Failed requests by error category (type name, or type and case).
    public var errorsByType: [String: Int]
    /// Resident set size after the warm-up, before the measured phase (bytes; `nil` when unknown).
    public var rssBeforeBytes: Int?
    /// Resident set size after the measured phase (bytes; `nil` when unknown).
    public var rssAfterBytes: Int?
    /// The client's CPU time per request, µs: the CPU time (user + system) the client process used over
    /// the measured phase ÷ ``requests`` (see ``ProcessCPU/perRequest(cpuMicroseconds:requests:)``).
    /// For this process, the `getrusage(RUSAGE_SELF)` difference across the measured phase (every
    /// thread of the process counts, as for an external tool); for an external tool, the CPU time of its
    /// whole run from `wait4`. `nil` when not measured. JSON key `client_cpu_us_per_op`.
    public var clientCPUMicrosecondsPerOp: Double?
    /// Whether the connections measured spoke TLS (`redis-bench --tls`). A TLS result is compared only
    /// with TLS baselines, and with the plain pooled result of the same run (see
    /// ``BenchComparison/versusPlain``). JSON key `tls`; `false` when missing from older JSON.
    public var tls: Bool = false

    enum CodingKeys: String, CodingKey {
        case backend, workload, mode, baseline, concurrency
        case poolSize = "pool_size"
        case requests
        case commandsPerRequest = "commands_per_request"
        case durationSeconds = "duration_s"
        case opsPerSecond = "ops_per_sec"
        case p50Microseconds = "p50_us"
        case p90Microseconds = "p90_us"
        case p99Microseconds = "p99_us"
        case p999Microseconds = "p999_us"
        case maxMicroseconds = "max_us"
        case meanMicroseconds = "mean_us"
        case errors
        case errorsByType = "errors_by_type"
        case rssBeforeBytes = "rss_before_bytes"
        case rssAfterBytes = "rss_after_bytes"
        case clientCPUMicrosecondsPerOp = "client_cpu_us_per_op"
        case tls
    }

    /// A result from explicit figures; see the properties for the meaning of each parameter.
    public init(
        backend: String, workload: String, mode: String, baseline: BenchBaseline, concurrency: Int,
        poolSize: Int?, requests: Int, commandsPerRequest: Int, durationSeconds: Double, opsPerSecond: Double,
        latency: LatencySummary?, errors: Int, errorsByType: [String: Int], rssBeforeBytes: Int?,
        rssAfterBytes: Int?, clientCPUMicrosecondsPerOp: Double? = nil, tls: Bool = false
    ) {
        self.backend = backend
        self.workload = workload
        self.mode = mode
        self.baseline = baseline
        self.concurrency = concurrency
        self.poolSize = poolSize
        self.requests = requests
        self.commandsPerRequest = commandsPerRequest
        self.durationSeconds = durationSeconds
        self.opsPerSecond = opsPerSecond
        self.p50Microseconds = latency?.p50
        self.p90Microseconds = latency?.p90
        self.p99Microseconds = latency?.p99
        self.p999Microseconds = latency?.p999
        self.maxMicroseconds = latency?.max
        self.meanMicroseconds = latency?.mean
        self.errors = errors
        self.errorsByType = errorsByType
        self.rssBeforeBytes = rssBeforeBytes
        self.rssAfterBytes = rssAfterBytes
        self.clientCPUMicrosecondsPerOp = clientCPUMicrosecondsPerOp
        self.tls = tls
    }

    /// A figure measured by an external tool (mode `external`): only what such tools report.
    public static func external(
        backend: String, workload: String, baseline: BenchBaseline = .redisBenchmark, concurrency: Int,
        requests: Int, commandsPerRequest: Int = 1, opsPerSecond: Double, p50Microseconds: Double?,
        p99Microseconds: Double?, maxMicroseconds: Double?, meanMicroseconds: Double? = nil,
        clientCPUMicrosecondsPerOp: Double? = nil, tls: Bool = false
    ) -> BenchResult {
        var result = BenchResult(
            backend: backend, workload: workload, mode: "external", baseline: baseline, concurrency: concurrency,
            poolSize: nil, requests: requests, commandsPerRequest: commandsPerRequest,
            durationSeconds: opsPerSecond > 0 ? Double(requests * commandsPerRequest) / opsPerSecond : 0,
            opsPerSecond: opsPerSecond, latency: nil, errors: 0, errorsByType: [:], rssBeforeBytes: nil,
            rssAfterBytes: nil, clientCPUMicrosecondsPerOp: clientCPUMicrosecondsPerOp, tls: tls)
        result.p50Microseconds = p50Microseconds
        result.p99Microseconds = p99Microseconds
        result.maxMicroseconds = maxMicroseconds
        result.meanMicroseconds = meanMicroseconds
        return result
    }

    /// Decodes a result (missing optional figures decode as `nil`).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        backend = try container.decode(String.self, forKey: .backend)
        workload = try container.decode(String.self, forKey: .workload)
        mode = try container.decode(String.self, forKey: .mode)
        baseline = try container.decode(BenchBaseline.self, forKey: .baseline)
        concurrency = try container.decode(Int.self, forKey: .concurrency)
        poolSize = try container.decodeIfPresent(Int.self, forKey: .poolSize)
        requests = try container.decode(Int.self, forKey: .requests)
        commandsPerRequest = try container.decodeIfPresent(Int.self, forKey: .commandsPerRequest) ?? 1
        durationSeconds = try container.decodeIfPresent(Double.self, forKey: .durationSeconds) ?? 0
        opsPerSecond = try container.decode(Double.self, forKey: .opsPerSecond)
        p50Microseconds = try container.decodeIfPresent(Double.self, forKey: .p50Microseconds)
        p90Microseconds = try container.decodeIfPresent(Double.self, forKey: .p90Microseconds)
        p99Microseconds = try container.decodeIfPresent(Double.self, forKey: .p99Microseconds)
        p999Microseconds = try container.decodeIfPresent(Double.self, forKey: .p999Microseconds)
        maxMicroseconds = try container.decodeIfPresent(Double.self, forKey: .maxMicroseconds)
        meanMicroseconds = try container.decodeIfPresent(Double.self, forKey: .meanMicroseconds)
        errors = try container.decode(Int.self, forKey: .errors)
        errorsByType = try container.decodeIfPresent([String: Int].self, forKey: .errorsByType) ?? [:]
        rssBeforeBytes = try container.decodeIfPresent(Int.self, forKey: .rssBeforeBytes)
        rssAfterBytes = try container.decodeIfPresent(Int.self, forKey: .rssAfterBytes)
        clientCPUMicrosecondsPerOp = try container.decodeIfPresent(Double.self, forKey: .clientCPUMicrosecondsPerOp)
        tls = try container.decodeIfPresent(Bool.self, forKey: .tls) ?? false
    }

    /// Encodes every key, writing `null` for a figure that is not known (so that every result has the
    /// same keys).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(backend, forKey: .backend)
        try container.encode(workload, forKey: .workload)
        try container.encode(mode, forKey: .mode)
        try container.encode(baseline, forKey: .baseline)
        try container.encode(concurrency, forKey: .concurrency)
        try container.encode(poolSize, forKey: .poolSize)
        try container.encode(requests, forKey: .requests)
        try container.encode(commandsPerRequest, forKey: .commandsPerRequest)
        try container.encode(Self.rounded(durationSeconds, places: 4), forKey: .durationSeconds)
        try container.encode(Self.rounded(opsPerSecond, places: 1), forKey: .opsPerSecond)
        try container.encode(p50Microseconds.map { Self.rounded($0, places: 3) }, forKey: .p50Microseconds)
        try container.encode(p90Microseconds.map { Self.rounded($0, places: 3) }, forKey: .p90Microseconds)
        try container.encode(p99Microseconds.map { Self.rounded($0, places: 3) }, forKey: .p99Microseconds)
        try container.encode(p999Microseconds.map { Self.rounded($0, places: 3) }, forKey: .p999Microseconds)
        try container.encode(maxMicroseconds.map { Self.rounded($0, places: 3) }, forKey: .maxMicroseconds)
        try container.encode(meanMicroseconds.map { Self.rounded($0, places: 3) }, forKey: .meanMicroseconds)
        try container.encode(errors, forKey: .errors)
        try container.encode(errorsByType, forKey: .errorsByType)
        try container.encode(rssBeforeBytes, forKey: .rssBeforeBytes)
        try container.encode(rssAfterBytes, forKey: .rssAfterBytes)
        try container.encode(
            clientCPUMicrosecondsPerOp.map { Self.rounded($0, places: 3) }, forKey: .clientCPUMicrosecondsPerOp)
        try container.encode(tls, forKey: .tls)
    }

    private static func rounded(_ value: Double, places: Int) -> Double {
        guard value.isFinite else { return 0 }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        return (value * scale).rounded() / scale
    }

    /// The series a result belongs to in charts and comparisons: `pooled async`, `shared sync`,
    /// `redis-benchmark`, …, with ` TLS` appended for a TLS result (`pooled async TLS`,
    /// `redis-benchmark TLS`), so that a `--tls` run's plain pooled figures are a series of their own.
    public var seriesName: String {
        (mode == "external" ? baseline.rawValue : "\(baseline.rawValue) \(mode)") + (tls ? " TLS" : "")
    }
}
