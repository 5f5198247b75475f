public import Histogram

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One worker's measurements: a latency histogram in nanoseconds and error counts by category.
///
/// Each worker owns one recorder (no sharing, no lock on the hot path); the harness merges them when the
/// run ends. Recording a latency does not allocate: the histogram's buckets are allocated at init.
public struct LatencyRecorder: Sendable {
    /// The highest latency kept exactly; longer ones are recorded as this value (60 s).
    public static let highestTrackableNanoseconds: UInt64 = 60_000_000_000

    /// Latencies of successful requests, in nanoseconds, 3 significant digits.
    public private(set) var histogram: Histogram<UInt64>
    /// Failed requests by category.
    public private(set) var errors: [String: Int] = [:]
    /// Successful requests recorded.
    public private(set) var successes = 0

    /// An empty recorder.
    public init() {
        histogram = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: Self.highestTrackableNanoseconds,
            numberOfSignificantValueDigits: .three)
    }

    /// Records one successful request that took `nanoseconds`.
    public mutating func record(nanoseconds: UInt64) {
        histogram.record(Swift.min(nanoseconds, Self.highestTrackableNanoseconds))
        successes &+= 1
    }

    /// Records one failed request.
    public mutating func recordError(category: String) {
        errors[category, default: 0] += 1
    }

    /// Every request recorded, successful or not.
    public var requests: Int { successes + errorCount }

    /// Failed requests.
    public var errorCount: Int { errors.values.reduce(0, +) }

    /// Adds `other`'s latencies and errors to this recorder.
    public mutating func merge(_ other: LatencyRecorder) {
        histogram.add(other.histogram)
        successes += other.successes
        for (category, count) in other.errors { errors[category, default: 0] += count }
    }

    /// The percentiles of the recorded latencies.
    public var summary: LatencySummary { LatencySummary(histogram) }
}

/// Latency percentiles in microseconds (resolution: 3 significant digits of the nanosecond value).
public struct LatencySummary: Sendable, Hashable, Codable {
    /// Median.
    public var p50: Double
    /// 90th percentile.
    public var p90: Double
    /// 99th percentile.
    public var p99: Double
    /// 99.9th percentile.
    public var p999: Double
    /// The largest latency recorded.
    public var max: Double
    /// The arithmetic mean.
    public var mean: Double

    /// Percentiles of `histogram`, whose values are nanoseconds. All zero when it is empty.
    public init(_ histogram: Histogram<UInt64>) {
        func microseconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1_000 }
        guard histogram.totalCount > 0 else {
            self.init(p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0)
            return
        }
        self.init(
            p50: microseconds(histogram.valueAtPercentile(50)),
            p90: microseconds(histogram.valueAtPercentile(90)),
            p99: microseconds(histogram.valueAtPercentile(99)),
            p999: microseconds(histogram.valueAtPercentile(99.9)),
            max: microseconds(histogram.maxRecorded),
            mean: histogram.mean / 1_000)
    }

    /// A summary from given values, in microseconds.
    public init(p50: Double, p90: Double, p99: Double, p999: Double, max: Double, mean: Double) {
        self.p50 = p50
        self.p90 = p90
        self.p99 = p99
        self.p999 = p999
        self.max = max
        self.mean = mean
    }
}

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`, a vDSO call: no system call, no allocation).
@inline(__always)
public func benchMonotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}
