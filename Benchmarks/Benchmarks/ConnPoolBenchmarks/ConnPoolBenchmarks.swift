import Benchmark
import ConnPool
#if canImport(Glibc)
import Glibc
#endif

// How to read these benchmarks
// - Every fast benchmark runs `scalingFactor` (1,000) operations per sample. The default output divides
//   by that factor (per-operation figures, rounded to integers, so 0.5 mallocs/op would print as 0);
//   `--scale` prints the raw figures of a sample. The zero-allocation thresholds are checked on the raw
//   per-sample counts (see Scripts/run-hot-benchmarks.sh and README.md): one malloc in any 1,000
//   operations fails the check.
// - Pools are created and pre-warmed in `setup` (every connection opened, all idle), and every sample runs
//   a few unmeasured operations before `startMeasurement()`, so a sample measures the steady state.

/// Absolute tolerance of zero at every percentile: any malloc in a sample is a regression.
func zeroAllocations() -> BenchmarkThresholds {
    BenchmarkThresholds(absolute: [.p0: 0, .p25: 0, .p50: 0, .p75: 0, .p90: 0, .p99: 0, .p100: 0])
}

/// Absolute tolerance of zero up to the median: at least half of the samples allocate nothing.
func zeroAllocationsUpToMedian() -> BenchmarkThresholds {
    BenchmarkThresholds(absolute: [.p0: 0, .p25: 0, .p50: 0])
}

/// The waiter hand-off: 1,000 measured rounds (2,000 hand-offs) per sample.
func handOffConfiguration(mallocThresholds: BenchmarkThresholds) -> Benchmark.Configuration {
    .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, partnerRoundsMetric],
        warmupIterations: 5,
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 100_000,
        thresholds: [.mallocCountTotal: mallocThresholds])
}

/// The thread both tasks of the one-executor hand-off run on, created once for the process.
let handOffExecutor = SingleThreadTaskExecutor(name: "bench-hand-off")

/// Uncontended operations of tens of nanoseconds: 1,000 per sample.
func fastConfiguration(zeroMallocs: Bool) -> Benchmark.Configuration {
    .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 10,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000,
        thresholds: zeroMallocs ? [.mallocCountTotal: zeroAllocations()] : nil)
}

/// Contended throughput: 1,000,000 operations per sample, shared by 8 workers.
func contendedConfiguration() -> Benchmark.Configuration {
    .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 1,
        scalingFactor: .mega,
        maxDuration: .seconds(6),
        maxIterations: 40)
}

/// The hand-off benchmark's partner rounds per measured round (1 in a strict ping-pong).
let partnerRoundsMetric = BenchmarkMetric.custom("partner rounds", polarity: .prefersSmaller, useScalingFactor: true)

/// Unmeasured operations at the start of every sample.
let warmOperations = 64

let contendedWorkers = 8
let contendedConnections = 4

let benchmarks: @Sendable () -> Void = {
    // MARK: Baseline

    Benchmark("bare pthread lock/unlock pair", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, mutex in
        for _ in benchmark.scaledIterations {
            pthread_mutex_lock(mutex.pointer)
            pthread_mutex_unlock(mutex.pointer)
        }
    } setup: {
        BareMutex()
    }

    // MARK: Hot paths (zero allocations)

    Benchmark("hot/sync acquire+release", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, pool in
        for _ in 0..<warmOperations { syncAcquireRelease(pool) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let lease = try! pool.acquireBlocking()
            blackHole(lease.connection)
        }
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    Benchmark("hot/async acquire+release", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, pool in
        for _ in 0..<warmOperations { await asyncAcquireRelease(pool) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let lease = try! await pool.acquire()
            blackHole(lease.connection)
        }
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    Benchmark("hot/withConnection sync", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, pool in
        for _ in 0..<warmOperations { syncAcquireRelease(pool) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try! pool.withConnectionBlocking { connection in blackHole(connection) }
        }
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    Benchmark("hot/withConnection async", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, pool in
        for _ in 0..<warmOperations { await asyncAcquireRelease(pool) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try! await pool.withConnection { connection in blackHole(connection) }
        }
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    // MARK: Waiter hand-off

    // Two tasks ping-pong the only connection. In steady state every acquire finds it leased and waits,
    // and every release hands it straight to the waiting task: one measured iteration (an acquire and a
    // release by the measured task) contains two hand-offs, one to each task, one after the other.
    //
    // Twice: on the default global executor, as an application's tasks run, and with both tasks on one
    // dedicated thread (a task executor preference), which takes libdispatch's scheduling out of the
    // figure. On the default executor the two tasks are sometimes resumed on two threads, and libdispatch
    // then mallocs continuations in a share of the samples (see Benchmarks/README.md, "Noise"): its zero
    // is required at p50, the target. On one executor nothing but the pool runs between two
    // hand-offs, and its zero is required in every sample.
    Benchmark(
        "waiter hand-off (2 tasks, pool of 1)",
        configuration: handOffConfiguration(mallocThresholds: zeroAllocationsUpToMedian())
    ) { benchmark, pool in
        await measureHandOff(benchmark, pool)
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    Benchmark(
        "waiter hand-off, one executor (2 tasks, pool of 1)",
        configuration: handOffConfiguration(mallocThresholds: zeroAllocations())
    ) { benchmark, pool in
        await withTaskExecutorPreference(handOffExecutor) {
            await measureHandOff(benchmark, pool)
        }
    } setup: {
        try await makeWarmPool(maxSize: 1)
    }

    // MARK: Naive pool

    Benchmark("naive pool (locked array + condition variable)", configuration: fastConfiguration(zeroMallocs: false)) { benchmark, naive in
        for _ in benchmark.scaledIterations {
            let connection = naive.acquire()
            blackHole(connection)
            naive.release(connection)
        }
    } setup: {
        NaivePool([BenchConnection(id: -1)])
    }

    // The runtime's own cost of the suspension the contended tasks make while holding a lease: on this
    // toolchain (Linux, Swift 6.3) one `Task.yield()` costs a few hundred nanoseconds and one malloc.
    Benchmark("Task.yield alone (runtime baseline)", configuration: fastConfiguration(zeroMallocs: false)) { benchmark in
        for _ in 0..<warmOperations { await Task.yield() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { await Task.yield() }
    }

    // MARK: Contended throughput

    // Each task holds its lease across one `Task.yield()`, as it would across real I/O: without a
    // suspension the tasks never overlap (ordo-one leaves an async benchmark one cooperative thread on 2
    // cores) and nothing is contended. The yield's own cost and malloc: see the runtime baseline above.
    Benchmark("contended 8 tasks / 4 connections", configuration: contendedConfiguration()) { benchmark, pool in
        let perTask = benchmark.scaledIterations.count / contendedWorkers
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<contendedWorkers {
                group.addTask {
                    for _ in 0..<perTask {
                        let lease = try! await pool.acquire()
                        await Task.yield()
                        blackHole(lease.connection)
                    }
                }
            }
        }
    } setup: {
        try await makeWarmPool(maxSize: contendedConnections)
    }

    Benchmark("contended 8 threads / 4 connections", configuration: contendedConfiguration()) { _, gang in
        gang.run()
    } setup: {
        let pool = try await makeWarmPool(maxSize: contendedConnections)
        let perThread = contendedConfiguration().scalingFactor.rawValue / contendedWorkers
        return WorkerGang(count: contendedWorkers) { _ in
            for _ in 0..<perThread {
                let lease = try! pool.acquireBlocking()
                blackHole(lease.connection)
            }
        }
    }

    Benchmark("naive pool 8 threads / 4 connections", configuration: contendedConfiguration()) { _, gang in
        gang.run()
    } setup: {
        let naive = NaivePool((0..<contendedConnections).map { BenchConnection(id: -1 - $0) })
        let perThread = contendedConfiguration().scalingFactor.rawValue / contendedWorkers
        return WorkerGang(count: contendedWorkers) { _ in
            for _ in 0..<perThread {
                let connection = naive.acquire()
                blackHole(connection)
                naive.release(connection)
            }
        }
    }

    // MARK: Slot count

    for slots in [8, 512, 4096] {
        Benchmark("acquire+release at \(slots) slots", configuration: fastConfiguration(zeroMallocs: true)) { benchmark, pool in
            for _ in 0..<warmOperations { syncAcquireRelease(pool) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let lease = try! pool.acquireBlocking()
                blackHole(lease.connection)
            }
        } setup: {
            try await makeWarmPool(maxSize: slots)
        }
    }

    // MARK: A real socket: plain vs TLS (RedisSocketBenchmarks.swift)

    registerRedisSocketBenchmarks()
}

@inline(never)
func syncAcquireRelease(_ pool: BenchPool) {
    let lease = try! pool.acquireBlocking()
    blackHole(lease.connection)
}

@inline(never)
func asyncAcquireRelease(_ pool: BenchPool) async {
    let lease = try! await pool.acquire()
    blackHole(lease.connection)
}

/// One sample of the hand-off benchmark: the measured task and ``handOffPartner(_:_:)`` ping-pong the pool's
/// only connection, on whatever executor the calling task prefers (child tasks inherit the preference).
func measureHandOff(_ benchmark: Benchmark, _ pool: BenchPool) async {
    let state = HandOffState()
    await withTaskGroup(of: Void.self) { group in
        group.addTask { await handOffPartner(pool, state) }
        // Unmeasured bootstrap: hold the connection until the partner waits for it, then release it
        // (the first hand-off). From then on the ping-pong sustains itself: each release hands the
        // connection to the waiting task, and the releaser's next acquire finds it leased and waits.
        // Yield rather than spin: 2 cores, and ordo-one blocks one cooperative thread while an async
        // benchmark runs (and on one executor, spinning would keep the partner from ever running).
        do {
            let lease = try! await pool.acquire()
            while pool.metrics().waiting == 0 { await Task.yield() }
            blackHole(lease.connection)
        }
        var round = 0
        for _ in 0..<256 {
            await asyncAcquireRelease(pool)
            round &+= 1
            state.mainRound.store(round, ordering: .relaxed)
        }
        let partnerRoundsBefore = state.partnerRounds.load(ordering: .relaxed)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            do {
                let lease = try! await pool.acquire()
                blackHole(lease.connection)
            }
            round &+= 1
            state.mainRound.store(round, ordering: .relaxed)
        }
        benchmark.stopMeasurement()
        // The partner's rounds while measuring, per measured round: 1 in a strict ping-pong (every
        // acquire of either task waited for the other's release), more if the partner ran alone.
        let partnerRounds = state.partnerRounds.load(ordering: .relaxed) - partnerRoundsBefore
        benchmark.measurement(partnerRoundsMetric, partnerRounds)
        state.stop.store(true, ordering: .relaxed)
    }
}

/// The other task of the hand-off benchmark: acquire and release until told to stop. If the measured
/// task makes no progress for a few rounds (it is not running), yield so that it can: never spin
/// unboundedly on a 2-core cooperative pool.
func handOffPartner(_ pool: BenchPool, _ state: HandOffState) async {
    var rounds = 0
    var lastMainRound = -1
    var stalls = 0
    while !state.stop.load(ordering: .relaxed) {
        do {
            let lease = try! await pool.acquire()
            blackHole(lease.connection)
        }
        rounds &+= 1
        state.partnerRounds.store(rounds, ordering: .relaxed)
        let mainRound = state.mainRound.load(ordering: .relaxed)
        if mainRound == lastMainRound {
            stalls += 1
            if stalls >= 4 {
                stalls = 0
                await Task.yield()
            }
        } else {
            stalls = 0
            lastMainRound = mainRound
        }
    }
}
