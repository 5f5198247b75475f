/// A snapshot of a pool: its connections and waiters, what happened to it since it was created, and
/// how long acquires waited, leases were held and connections lived.
///
/// Taken under the pool's lock, so the connection counts and counters are exactly consistent with
/// each other; the histograms are lock-free and may trail by the few values being recorded.
public struct PoolMetrics: Sendable, Hashable, Codable {
    // MARK: Connections now

    /// Connections open and not lent.
    public var idle: Int
    /// Connections lent to a lease holder.
    public var inUse: Int
    /// Connections being opened.
    public var connecting: Int
    /// Connections being closed (they still count towards `maxSize`).
    public var closing: Int
    /// Idle connections taken aside for a background health check.
    public var validating: Int
    /// Callers waiting for a connection.
    public var waiting: Int
    /// The pool's current maximum size.
    public var maxSize: Int

    // MARK: Since the pool was created

    /// Leases granted (at once or after waiting).
    public var acquires: Int = 0
    /// Leases granted after waiting.
    public var acquiresAfterWaiting: Int = 0
    /// Connections opened.
    public var created: Int = 0
    /// Failed connection attempts.
    public var creationFailures: Int = 0
    /// Acquires that timed out.
    public var acquireTimeouts: Int = 0
    /// Health checks that failed (background, or on acquire).
    public var healthCheckFailures: Int = 0
    /// Acquires that failed fast while the circuit breaker was open.
    public var failedFast: Int = 0
    /// Acquires shed because `maxWaiters` callers already waited.
    public var shedWaiters: Int = 0
    /// Waiting acquires whose task was cancelled.
    public var cancelledWaiters: Int = 0
    /// Leases reported as held past `leakDetectionThreshold`.
    public var leaksDetected: Int = 0
    /// Released connections whose session state their borrower had changed and the pool reset before
    /// lending them again (see ``Connection/reuseCondition``). One that could not be reset is closed
    /// with ``CloseReason/dirty``.
    public var sessionResets: Int = 0
    /// Connections closed, by reason.
    public var closedByReason: [CloseReason: Int] = [:]

    // MARK: Distributions

    /// How long acquires waited (0 for those served at once).
    public var acquireWait: HistogramSnapshot = .empty
    /// How long leases were held (only with ``PoolConfiguration/recordsLeaseHoldTime``).
    public var leaseHold: HistogramSnapshot = .empty
    /// How long closed connections lived.
    public var connectionLifetime: HistogramSnapshot = .empty

    /// Creates a snapshot from connection counts (the counters and histograms start empty).
    public init(idle: Int, inUse: Int, connecting: Int, closing: Int, validating: Int, waiting: Int, maxSize: Int) {
        self.idle = idle
        self.inUse = inUse
        self.connecting = connecting
        self.closing = closing
        self.validating = validating
        self.waiting = waiting
        self.maxSize = maxSize
    }

    /// Every connection the pool holds or is opening, checking or closing:
    /// idle + inUse + connecting + closing + validating.
    public var total: Int { idle + inUse + connecting + closing + validating }

    /// Connections closed, for any reason.
    public var closed: Int { closedByReason.values.reduce(0, +) }
}

extension PoolMetrics: CustomStringConvertible {
    /// One line for logs: the connection counts, then the main counters, e.g.
    /// `idle 3, in use 2, connecting 0, closing 0, validating 0, waiting 0 (max 10); acquires 1234
    /// (56 waited), timeouts 0, created 5, failures 0, closed 0`. It holds only numbers: no names,
    /// addresses or errors. ``closedByReason`` and the histograms are left out; read them from the
    /// properties.
    public var description: String {
        "idle \(idle), in use \(inUse), connecting \(connecting), closing \(closing), validating \(validating), "
            + "waiting \(waiting) (max \(maxSize)); acquires \(acquires) (\(acquiresAfterWaiting) waited), "
            + "timeouts \(acquireTimeouts), created \(created), failures \(creationFailures), closed \(closed)"
    }
}
