/// What ``ConnectionPool/shutdown(gracePeriod:)`` had to do.
public struct ShutdownReport: Sendable, Hashable, Codable, CustomStringConvertible {
    /// Idle connections closed when the shutdown began.
    public var closedIdle = 0
    /// Leased connections closed as their leases came back within the grace period.
    public var closedOnReturn = 0
    /// Leased connections still out when the grace period ended, closed by force. Their leases are
    /// stale afterwards: returning them does nothing.
    public var forceClosed = 0
    /// Connections still opening or closing when the shutdown returned (their task finishes in the
    /// background and closes them). Non-zero only when the grace period ended first.
    public var stillInFlight = 0
    /// Waiting callers failed with ``ConnectionPoolError/shutDown``.
    public var failedWaiters = 0

    /// A report of a shutdown that had nothing to do.
    public init() {}

    /// `shutdown: 2 idle closed, 1 closed on return, 0 force-closed, 0 still in flight, 0 waiters failed`.
    public var description: String {
        "shutdown: \(closedIdle) idle closed, \(closedOnReturn) closed on return, \(forceClosed) force-closed, "
            + "\(stillInFlight) still in flight, \(failedWaiters) waiters failed"
    }
}
