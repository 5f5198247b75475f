/// The pool's event counters.
///
/// Plain integers, not atomics, on purpose: every event they count already happens inside the
/// state machine, under the pool's one lock, so an increment costs a single add on memory the
/// critical section already touches, and ``ConnectionPool/metrics()`` reads all of them under the
/// same lock: the snapshot is exactly consistent (total = idle + inUse + connecting + validating +
/// closing at that instant, and created − closed = the connections that exist). Atomics would add a
/// locked instruction per event on the hot path and give a less consistent snapshot. The one event
/// counted elsewhere is a lend through the lock-free fast lane: `IdleStack` keeps a counter per slot,
/// each written only by the slot's owner, and the metrics add them up.
@usableFromInline
struct PoolCounters: Hashable {
    /// Acquires served at once by an idle connection.
    @usableFromInline var immediateAcquires = 0
    /// Acquires served after waiting (hand-off or a new connection).
    var waitedAcquires = 0
    var created = 0
    var creationFailures = 0
    var acquireTimeouts = 0
    var healthCheckFailures = 0
    var failedFast = 0
    var shedWaiters = 0
    var cancelledWaiters = 0
    var leaksDetected = 0
    var closedLifetime = 0
    var closedIdle = 0
    var closedHealth = 0
    var closedBroken = 0
    var closedShutdown = 0
    var closedResize = 0
    var closedDirty = 0
    /// Released connections whose session state was reset before they were lent again.
    var sessionResets = 0

    mutating func countClose(_ reason: CloseReason) {
        switch reason {
        case .lifetime: closedLifetime += 1
        case .idle: closedIdle += 1
        case .health: closedHealth += 1
        case .broken: closedBroken += 1
        case .shutdown: closedShutdown += 1
        case .resize: closedResize += 1
        case .dirty: closedDirty += 1
        }
    }

    var closedByReason: [CloseReason: Int] {
        [.lifetime: closedLifetime, .idle: closedIdle, .health: closedHealth,
         .broken: closedBroken, .shutdown: closedShutdown, .resize: closedResize, .dirty: closedDirty]
    }
}
