public import ConnPool

/// A task executor that runs nothing by itself: jobs enqueued on it wait until the test runs them, one at
/// a time, on the test's own thread, in an order the test chooses (first in, first out, or drawn by a
/// seeded generator). Tasks that prefer it (`Task(executorPreference:)`) therefore interleave exactly as
/// the test says, which makes a run of the pool's runtime reproducible from its seed.
///
/// `@unchecked Sendable`: the only mutable state, the job list, lives in a `LockedValue`; jobs run on the
/// thread that calls ``runNext(using:)``.
public final class SimulationExecutor: TaskExecutor, @unchecked Sendable {
    private let jobs = LockedValue<[UnownedJob]>([])

    public init() {}

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLock { $0.append(job) }
    }

    /// Jobs waiting to run.
    public var queued: Int { jobs.withLock { $0.count } }

    /// Runs one queued job, the oldest or one drawn by `random`; returns false if none was queued.
    @discardableResult
    public func runNext(using random: inout SeededRandom?) -> Bool {
        // Only this thread removes jobs (others only append), so an index below the count read here is
        // still valid when the job is removed.
        let count = queued
        guard count > 0 else { return false }
        let index = random?.below(count) ?? 0
        let job = jobs.withLock { $0.remove(at: index) }
        job.runSynchronously(on: asUnownedTaskExecutor())
        return true
    }

    /// Runs jobs until none is queued (jobs that enqueue others keep it going); at most `limit` jobs.
    /// Returns the number run.
    @discardableResult
    public func runUntilIdle(using random: inout SeededRandom?, limit: Int = 100_000) -> Int {
        var count = 0
        while count < limit, runNext(using: &random) { count += 1 }
        return count
    }

    /// ``runUntilIdle(using:limit:)`` in first-in, first-out order.
    @discardableResult
    public func runUntilIdle(limit: Int = 100_000) -> Int {
        var fifo: SeededRandom? = nil
        return runUntilIdle(using: &fifo, limit: limit)
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same sequence on every machine.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound`.
    public mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(max(bound, 1))) }

    /// True with probability `percent`/100.
    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}
