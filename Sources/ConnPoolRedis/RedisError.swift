public import ConnPool
public import ConnPoolIO

/// An error from a Redis connection: a reply the server sent, or a failure to talk to the server.
///
/// Two families, told apart by ``isConnectionError``:
/// - ``server(_:)`` (and ``unexpectedReply(expected:actual:)``): the server answered; the connection is
///   still in a known state and stays usable.
/// - Every other case: the connection could not be made, or its protocol state is unknown (an I/O error,
///   a timeout, the peer closed it). The connection is then *broken* (``RedisConnection/isBroken``) and a
///   pool discards it.
///
/// No case ever carries a command's arguments or a password: errors are safe to log.
public enum RedisError: Error, Sendable, Equatable, CustomStringConvertible, ConnectErrorClassifying {
    /// The server answered with an error reply, for example `ERR unknown command` or `WRONGTYPE ...`.
    /// The connection stays usable.
    case server(String)
    /// A system call on the socket failed (`operation` is `read`, `write`, `poll`, …; `errno` the C error).
    case io(operation: String, errno: Int32)
    /// The server closed the connection (end of stream while a reply was expected).
    case connectionClosed
    /// A command did not complete within its timeout (``RedisConnectionConfiguration/commandTimeout`` or
    /// the timeout given to ``RedisConnection/isValid(timeout:)``).
    case timeout(Duration)
    /// Nothing listens at the endpoint (`ECONNREFUSED`, or a unix socket path that does not exist).
    case connectionRefused(endpoint: String)
    /// The connect (TCP or unix socket, plus the AUTH/SELECT/CLIENT SETNAME handshake) did not complete
    /// within ``RedisConnectionConfiguration/connectTimeout``.
    case connectTimeout(endpoint: String, timeout: Duration)
    /// The connect failed for another reason (`operation` names the system call).
    case connectFailed(endpoint: String, operation: String, errno: Int32)
    /// The host name could not be resolved.
    case hostNotFound(host: String, detail: String)
    /// The server rejected the credentials, or wants a password none was configured for (`NOAUTH`);
    /// the server's message, with any echo of the password removed.
    case authenticationFailed(String)
    /// A handshake command after AUTH failed: `SELECT` (for example an out-of-range database index),
    /// `CLIENT SETNAME`, or the `PING` sent when nothing else is configured.
    case handshakeFailed(command: String, message: String)
    /// The reply stream could not be parsed.
    case protocolError(String)
    /// TLS failed: the server's certificate did not verify (expired, wrong host name, unknown CA), the
    /// server wants a client certificate, the port does not speak TLS (or speaks only TLS), the TLS
    /// configuration cannot be loaded, or a TLS record failed.
    case tls(TLSError)
    /// A command was cancelled (task cancellation) while it waited for the server. Recorded as the cause
    /// of ``connectionBroken(cause:)``; the cancelled call itself throws `CancellationError`.
    case cancelled
    /// The connection was already broken by the earlier failure `cause`; it cannot be used again.
    indirect case connectionBroken(cause: RedisError)
    /// The connection was closed with ``RedisConnection/close()``.
    case connectionClosedLocally
    /// Two callers used one connection at the same time. A connection serves one borrower at a time.
    case concurrentUse
    /// A command had no arguments, or too many (more than `Int32.max`).
    case invalidCommand(String)
    /// A reply accessor (``RedisReply/string``, ``RedisReply/int``, …) found another kind of reply.
    /// `actual` names the kind (and size), never the content.
    case unexpectedReply(expected: String, actual: String)

    /// `true` when the error means the connection is unusable or could not be made (everything except
    /// ``server(_:)``, ``unexpectedReply(expected:actual:)``, ``invalidCommand(_:)`` and
    /// ``concurrentUse``).
    public var isConnectionError: Bool {
        switch self {
        case .server, .unexpectedReply, .invalidCommand, .concurrentUse: return false
        default: return true
        }
    }

    /// `true` for ``timeout(_:)``, ``connectTimeout(endpoint:timeout:)`` and a TLS handshake that timed
    /// out (``TLSError/handshakeTimedOut(serverAnswered:)``), also as the cause of
    /// ``connectionBroken(cause:)``.
    public var isTimeout: Bool {
        switch self {
        case .timeout, .connectTimeout, .tls(.handshakeTimedOut): return true
        case .connectionBroken(let cause): return cause.isTimeout
        default: return false
        }
    }

    /// `true` for ``authenticationFailed(_:)``, ``handshakeFailed(command:message:)`` (a wrong
    /// password, a missing ACL permission, a database index out of range) and the TLS failures that
    /// repeat (a certificate that does not verify, a missing client certificate, a port that does not
    /// speak TLS, or speaks only TLS, an unloadable TLS configuration): connecting again with the
    /// same configuration fails the same way, so a ``ConnectionPool`` fails acquires at once instead of
    /// retrying as it does for a refused or timed-out connect (see `ConnectErrorClassifying`).
    public var isPermanent: Bool {
        switch self {
        case .authenticationFailed, .handshakeFailed: return true
        case .tls(let error):
            switch error {
            // A certificate, a configuration or a port that is wrong stays wrong.
            case .invalidConfiguration, .certificateVerificationFailed, .clientCertificateRequired,
                .serverDidNotSpeakTLS, .serverRequiresTLS:
                return true
            case .handshakeFailed, .handshakeTimedOut, .recordFailed:
                return false
            }
        default: return false
        }
    }

    /// A readable explanation; never contains a command argument or a password.
    public var description: String {
        switch self {
        case .server(let message):
            return "Redis server error: \(message)"
        case .io(let operation, let errno):
            return "Redis I/O error: \(operation) failed: \(errnoText(errno))"
        case .connectionClosed:
            return "Redis I/O error: the server closed the connection"
        case .timeout(let duration):
            return "Redis timeout: no reply within \(duration)"
        case .connectionRefused(let endpoint):
            return "Redis connect error: connection refused by \(endpoint) (is redis-server running there?)"
        case .connectTimeout(let endpoint, let timeout):
            return "Redis connect error: connecting to \(endpoint) timed out after \(timeout)"
        case .connectFailed(let endpoint, let operation, let errno):
            return "Redis connect error: \(operation) for \(endpoint) failed: \(errnoText(errno))"
        case .hostNotFound(let host, let detail):
            return "Redis connect error: host '\(host)' not found: \(detail)"
        case .authenticationFailed(let message):
            return "Redis authentication failed (permanent: check the configured username and password): \(message)"
        case .handshakeFailed(let command, let message):
            return "Redis connection setup failed: \(command): \(message)"
        case .protocolError(let message):
            return "Redis protocol error: \(message)"
        case .tls(let error):
            return "Redis \(error)"
        case .cancelled:
            return "Redis command cancelled while waiting for the server"
        case .connectionBroken(let cause):
            return "Redis connection is broken by an earlier error (\(cause))"
        case .connectionClosedLocally:
            return "Redis connection has been closed"
        case .concurrentUse:
            return "Redis connection used by two callers at once (a connection serves one borrower at a time)"
        case .invalidCommand(let reason):
            return "invalid Redis command: \(reason)"
        case .unexpectedReply(let expected, let actual):
            return "unexpected Redis reply: expected \(expected), got \(actual)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func errnoText(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
