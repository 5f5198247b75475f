#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// The time source of a ``ConnectionPool``: the system's monotonic clock, or a ``ManualClock`` that a
/// test advances by hand.
///
/// The pool reads two kinds of time:
/// - a precise monotonic reading for deadlines (acquire timeouts, backoff), on slow paths only;
/// - a coarse monotonic reading (`CLOCK_MONOTONIC_COARSE`, a few milliseconds of resolution and about a
///   third of the cost) to stamp `lastUsed` on every release. Idle timeouts and validation bypass windows
///   are milliseconds to minutes, so the coarse reading is precise enough and keeps the hot path short.
///
/// A closed enum rather than a protocol: the hot path switches on it and inlines the system clock read,
/// with no witness-table call.
public struct PoolClock: Sendable {
    @usableFromInline
    enum Source: Sendable {
        case system
        case manual(ManualClock)
    }

    @usableFromInline
    let source: Source

    /// The system's monotonic clock. Deadlines are enforced by one timer thread shared by every pool
    /// of the process, started on first use.
    public static var system: PoolClock { PoolClock(source: .system) }

    /// A clock that only moves when `clock` is advanced; timers fire on the advancing thread.
    /// For deterministic tests.
    public static func manual(_ clock: ManualClock) -> PoolClock { PoolClock(source: .manual(clock)) }

    /// Monotonic nanoseconds, precise.
    @inlinable
    func now() -> Int64 {
        switch source {
        case .system: return Self.monotonicNanoseconds(CLOCK_MONOTONIC)
        case .manual(let clock): return clock.nanoseconds
        }
    }

    /// Monotonic nanoseconds, coarse (see the type's documentation).
    @inlinable
    func coarseNow() -> Int64 {
        switch source {
        case .system:
            #if os(Linux)
            return Self.monotonicNanoseconds(CLOCK_MONOTONIC_COARSE)
            #else
            return Self.monotonicNanoseconds(CLOCK_MONOTONIC)
            #endif
        case .manual(let clock): return clock.nanoseconds
        }
    }

    @inlinable @inline(__always)
    static func monotonicNanoseconds(_ id: clockid_t) -> Int64 {
        var ts = timespec()
        clock_gettime(id, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }

    /// Makes the pool's single timer. `handler` gets the current time and returns the next deadline
    /// it wants, if any. On the system clock it runs on the process-wide timer thread, with the
    /// handlers of every other pool, so it must be short.
    func makeTimer(handler: @escaping @Sendable (Int64) -> Int64?) -> PoolTimer {
        switch source {
        case .system: return PoolTimer(.shared(TimerScheduler.shared.register(handler: handler)))
        case .manual(let clock): return PoolTimer(.manual(clock.register(handler: handler)))
        }
    }
}

extension Duration {
    /// Whole nanoseconds, saturating at `Int64.max`.
    @usableFromInline
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (fromSeconds, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = fromSeconds.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }
}

/// `instant + delta` in monotonic nanoseconds, saturating at `Int64.max` (a timeout or lifetime of
/// centuries means "never", not a wrapped, negative deadline in the past).
@usableFromInline
func later(_ instant: Int64, by delta: Int64) -> Int64 {
    let (sum, overflow) = instant.addingReportingOverflow(delta)
    return overflow ? (delta > 0 ? .max : .min) : sum
}
