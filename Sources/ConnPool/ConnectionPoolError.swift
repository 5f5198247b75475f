/// Errors thrown by ``ConnectionPool`` when it cannot lend a connection.
public enum ConnectionPoolError: Error, CustomStringConvertible {
    /// No connection became available within the acquire timeout.
    ///
    /// `lastConnectError` is the most recent error from ``ConnectionFactory/makeConnection()`` (or
    /// ``connectTimedOut(after:)`` for an attempt that outlived ``PoolConfiguration/connectTimeout``), if
    /// any creation failed since the last success: usually the real reason the caller waited (the server
    /// is down, the password is wrong).
    case acquireTimeout(after: Duration, lastConnectError: (any Error)?)

    /// The pool is shutting down or has shut down; it lends no more connections.
    case shutDown

    /// The backend looks down: `consecutiveFailures` connection attempts in a row failed (at least
    /// ``PoolConfiguration/circuitBreakerThreshold``) and no open connection could serve the acquire,
    /// so it fails at once instead of waiting for its timeout. One probe keeps retrying in the
    /// background; the first success lets acquires wait again.
    case connectFailing(lastConnectError: any Error, consecutiveFailures: Int)

    /// The configured limit of waiting callers (`maxWaiters`) is reached; the acquire was shed at once
    /// instead of queueing without bound. Retry later, or raise `maxWaiters`/`maxSize`.
    case tooManyWaiters(limit: Int)

    /// A connection attempt took longer than ``PoolConfiguration/connectTimeout`` and was given up
    /// on. Reported as the `lastConnectError` of ``acquireTimeout(after:lastConnectError:)`` and
    /// ``connectFailing(lastConnectError:consecutiveFailures:)``, never thrown by an acquire directly.
    case connectTimedOut(after: Duration)

    /// One line that says what happened and what to check, with the last connection error when there
    /// is one (the backends keep passwords out of their errors' descriptions).
    public var description: String {
        switch self {
        case .acquireTimeout(let after, let lastConnectError):
            var text = "connection pool: acquire timed out after \(Self.format(after))"
            if let lastConnectError {
                text += "; last connect error: \(lastConnectError)"
            } else {
                text += "; every connection was in use (raise maxSize, shorten leases, or raise acquireTimeout)"
            }
            return text
        case .shutDown:
            return "connection pool: the pool is shut down and lends no more connections"
        case .connectFailing(let lastConnectError, let consecutiveFailures):
            return "connection pool: failing fast after \(consecutiveFailures) consecutive connect failures; "
                + "last connect error: \(lastConnectError) (a probe keeps retrying; check the server)"
        case .connectTimedOut(let after):
            return "connection pool: a connection attempt took longer than \(Self.format(after)) (connectTimeout) and was given up on"
        case .tooManyWaiters(let limit):
            return "connection pool: \(limit) callers are already waiting (maxWaiters); request shed, retry later"
        }
    }

    /// "2 s", "250 ms", "1.5 s": short human units for error texts.
    static func format(_ duration: Duration) -> String {
        let nanoseconds = duration.nanosecondsClamped
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000) s" }
        if nanoseconds >= 1_000_000_000 { return "\(Double(nanoseconds) / 1e9) s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000) ms" }
        if nanoseconds >= 1_000 { return "\(Double(nanoseconds) / 1e3) µs" }
        return "\(nanoseconds) ns"
    }
}
