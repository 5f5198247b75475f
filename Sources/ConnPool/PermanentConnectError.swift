/// An error from ``ConnectionFactory/makeConnection()`` that tells whether another attempt with the
/// same settings could succeed.
///
/// The pool retries failed connection attempts with exponential backoff, because most failures pass
/// (the server restarts, the network recovers). Some do not: a wrong password, a database that does
/// not exist, an invalid configuration. An error that conforms and says ``isPermanent`` makes the
/// pool stop treating it like a refused connect:
/// - the circuit breaker opens at once, whatever ``PoolConfiguration/circuitBreakerThreshold`` is,
///   so every waiter and every new acquire fails at once with
///   ``ConnectionPoolError/connectFailing(lastConnectError:consecutiveFailures:)``, whose description
///   says the failure is permanent, instead of waiting out its acquire timeout;
/// - the one probe that keeps retrying in the background (the settings may be fixed on the server's
///   side, for example a password added to an ACL) waits the longest backoff,
///   ``PoolConfiguration/connectRetryMaxBackoff``, between attempts.
public protocol ConnectErrorClassifying: Error {
    /// `true` when retrying with the same settings fails the same way until someone changes the
    /// configuration or the server's (authentication, authorization, a missing database).
    var isPermanent: Bool { get }
}

extension ConnectionPoolError {
    /// Whether `error` says that retrying cannot help (see ``ConnectErrorClassifying``).
    static func isPermanent(_ error: (any Error)?) -> Bool {
        (error as? any ConnectErrorClassifying)?.isPermanent == true
    }
}
