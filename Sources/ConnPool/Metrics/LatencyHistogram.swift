import Synchronization

/// A lock-free histogram of durations with fixed log-scale buckets, that never allocates when
/// recording.
///
/// Buckets: one for values under 1 µs, then four linear sub-buckets per power of two from 2¹⁰ ns
/// (≈1 µs) to 2³⁶ ns (≈69 s), then one overflow bucket. A recorded value lands in a bucket whose
/// bounds are within 25 % of each other, so a percentile read from the snapshot is within 25 % of the
/// true value (never more, whatever the distribution), and the count, sum, min and max are exact.
///
/// Recording is three relaxed atomic additions (bucket, count, sum) plus a compare-and-swap only when
/// the value is a new minimum or maximum. Relaxed ordering is enough: each counter is independent,
/// and a snapshot taken while others record may see a bucket increment before the matching count
/// increment (off by the few in-flight values), never a torn value. Hand-written rather than
/// hdrhistogram-swift's `Histogram`, which is a value type needing a lock around every record.
///
/// Package-internal: the pool records into it and exposes only ``HistogramSnapshot``, whose
/// ``HistogramSnapshot/upperBounds`` and ``HistogramSnapshot/bucketCount`` are the public description of
/// this bucket layout. The exporter modules of this package read the layout from either.
///
/// `@unchecked Sendable` is safe because the only non-`Sendable` stored property, `buckets`, is an
/// immutable pointer set in `init` and freed in `deinit`, to memory that holds nothing but `Atomic`
/// values, each only ever touched through its atomic operations.
@usableFromInline
package final class LatencyHistogram: @unchecked Sendable {
    /// Octaves covered by the sub-bucketed range: 2¹⁰ ns up to 2³⁶ ns.
    static let firstOctave = 10
    static let lastOctave = 36
    static let subBuckets = 4
    /// underflow + sub-buckets + overflow
    package static let bucketCount = 1 + (lastOctave - firstOctave) * subBuckets + 1

    private let buckets: UnsafeMutablePointer<Atomic<UInt64>>
    private let total = Atomic<UInt64>(0)
    private let sum = Atomic<UInt64>(0)
    private let minimum = Atomic<UInt64>(.max)
    private let maximum = Atomic<UInt64>(0)

    /// Creates an empty histogram.
    package init() {
        buckets = .allocate(capacity: Self.bucketCount)
        for index in 0..<Self.bucketCount { (buckets + index).initialize(to: Atomic(0)) }
    }

    deinit {
        buckets.deinitialize(count: Self.bucketCount)
        buckets.deallocate()
    }

    /// The bucket a value in nanoseconds falls into.
    package static func bucketIndex(nanoseconds value: UInt64) -> Int {
        guard value >= 1 << firstOctave else { return 0 }
        let octave = UInt64.bitWidth - 1 - value.leadingZeroBitCount
        guard octave < lastOctave else { return bucketCount - 1 }
        let sub = Int((value >> UInt64(octave - 2)) & 3)
        return 1 + (octave - firstOctave) * subBuckets + sub
    }

    /// The exclusive upper bound, in nanoseconds, of every bucket but the overflow one (whose bound is
    /// infinite), in order.
    package static let upperBounds: [UInt64] = {
        var bounds: [UInt64] = [1 << firstOctave]
        for octave in firstOctave..<lastOctave {
            let base = UInt64(1) << UInt64(octave)
            for sub in 1...subBuckets { bounds.append(base + base / UInt64(subBuckets) * UInt64(sub)) }
        }
        return bounds
    }()

    /// Records one duration. Lock-free, allocation-free.
    @inlinable
    package func record(_ duration: Duration) {
        record(nanoseconds: UInt64(clamping: duration.nanosecondsClamped))
    }

    /// Records one duration given in nanoseconds. Lock-free, allocation-free.
    @usableFromInline
    package func record(nanoseconds value: UInt64) {
        buckets[Self.bucketIndex(nanoseconds: value)].add(1, ordering: .relaxed)
        total.add(1, ordering: .relaxed)
        sum.add(value, ordering: .relaxed)
        var current = minimum.load(ordering: .relaxed)
        while value < current {
            let (exchanged, original) = minimum.compareExchange(expected: current, desired: value, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        current = maximum.load(ordering: .relaxed)
        while value > current {
            let (exchanged, original) = maximum.compareExchange(expected: current, desired: value, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
    }

    /// A copy of the counts. `extraZeros` adds that many values of 0 ns (the pool's acquires that
    /// found an idle connection at once, counted under its lock instead of recorded one by one).
    package func snapshot(extraZeros: UInt64 = 0) -> HistogramSnapshot {
        var counts = (0..<Self.bucketCount).map { buckets[$0].load(ordering: .relaxed) }
        counts[0] += extraZeros
        let count = total.load(ordering: .relaxed) + extraZeros
        let recordedMin = minimum.load(ordering: .relaxed)
        return HistogramSnapshot(
            counts: counts,
            count: count,
            sumNanoseconds: sum.load(ordering: .relaxed),
            minNanoseconds: count == 0 ? 0 : (extraZeros > 0 ? 0 : recordedMin),
            maxNanoseconds: maximum.load(ordering: .relaxed))
    }
}

/// A distribution of durations at one moment, as the pool's lock-free histograms recorded it:
/// ``PoolMetrics/acquireWait``, ``PoolMetrics/leaseHold`` and ``PoolMetrics/connectionLifetime``.
///
/// The buckets are fixed and log-scale: one for values under 1 µs, then four per power of two from
/// 2¹⁰ ns (about 1 µs) to 2³⁶ ns (about 69 s), then one for everything larger; ``bucketCount`` in
/// all, bounded by ``upperBounds``. The count, sum, minimum and maximum are exact; a percentile is
/// within 25 % of the true value.
public struct HistogramSnapshot: Sendable, Hashable, Codable {
    /// The number of buckets of every snapshot the pool takes (106): one under 1 µs, 104
    /// sub-buckets, one overflow bucket.
    public static let bucketCount = LatencyHistogram.bucketCount

    /// The exclusive upper bound, in nanoseconds, of every bucket but the last (whose bound is
    /// infinite), in increasing order: `upperBounds.count == bucketCount - 1`. Bucket `i` holds values
    /// at or above `upperBounds[i - 1]` (0 for the first) and below `upperBounds[i]`.
    public static let upperBounds: [UInt64] = LatencyHistogram.upperBounds

    /// Counts per bucket; bucket `i < counts.count - 1` holds values below
    /// ``upperBounds``[i] (and at or above the previous bound); the last one holds everything larger.
    public var counts: [UInt64]
    /// How many values were recorded.
    public var count: UInt64
    /// Their sum, in nanoseconds.
    public var sumNanoseconds: UInt64
    /// The smallest value, in nanoseconds (0 when empty).
    public var minNanoseconds: UInt64
    /// The largest value, in nanoseconds (0 when empty).
    public var maxNanoseconds: UInt64

    /// An empty snapshot.
    public static var empty: HistogramSnapshot {
        HistogramSnapshot(
            counts: Array(repeating: 0, count: bucketCount), count: 0,
            sumNanoseconds: 0, minNanoseconds: 0, maxNanoseconds: 0)
    }

    /// The value at `percentile` (0...100), in nanoseconds: the upper bound of the bucket holding it
    /// (within 25 % of the true value), never more than the recorded maximum. 0 when empty.
    public func percentile(_ percentile: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = UInt64((Double(count) * min(max(percentile, 0), 100) / 100).rounded(.up))
        var seen: UInt64 = 0
        for (index, bucketCount) in counts.enumerated() {
            seen += bucketCount
            if seen >= max(rank, 1) {
                if index == 0 && minNanoseconds == 0 { return 0 }
                guard index < Self.upperBounds.count else { return maxNanoseconds }
                return min(Self.upperBounds[index], maxNanoseconds)
            }
        }
        return maxNanoseconds
    }

    /// The mean, in nanoseconds (0 when empty).
    public var meanNanoseconds: Double { count == 0 ? 0 : Double(sumNanoseconds) / Double(count) }
}
