public import ConnPoolIO
import Glibc

/// What went wrong with a ``TCPConnection``, its configuration or its connect.
///
/// Every error after a successful connect also marks the connection broken
/// (``TCPConnection/isBroken``): the position in the byte stream is unknown, so a pool closes it instead
/// of lending it out again.
public enum TCPConnectionError: Error, Hashable, Sendable {
    /// The configuration breaks a rule: `field` names the setting, `reason` the rule.
    case invalidConfiguration(field: String, reason: String)
    /// `getaddrinfo` could not turn `host` into an address; `reason` is its explanation.
    case resolutionFailed(host: String, reason: String)
    /// Every address of `host` refused the connection (nothing listens on `port`).
    case connectionRefused(host: String, port: Int)
    /// No address of `host` accepted the connection within `timeout`.
    case connectTimedOut(host: String, port: Int, timeout: Duration)
    /// Connecting failed for another reason (`errno` of the last address tried: unreachable network,
    /// no route, …).
    case connectFailed(host: String, port: Int, errno: Int32)
    /// A read did not complete within `timeout`.
    case readTimedOut(timeout: Duration)
    /// A write did not complete within `timeout` (the peer does not read).
    case writeTimedOut(timeout: Duration)
    /// The peer closed the connection (end of stream while reading, or `EPIPE` while writing).
    case peerClosed
    /// The peer reset the connection (`ECONNRESET`).
    case connectionReset
    /// ``TCPConnection/read(until:maxLength:)`` saw more than `maxLength` bytes without the delimiter.
    case delimiterNotFound(maxLength: Int)
    /// The connection was closed locally by ``TCPConnection/close()``: the call was made after it, or
    /// was in progress when it came (the close woke it).
    case connectionClosed
    /// The connection was used after an earlier error or timeout had marked it broken.
    case connectionBroken
    /// A system call failed unexpectedly; `operation` names it.
    case systemError(operation: String, errno: Int32)
    /// Two calls at once on one connection: a connection serves one borrower at a time.
    case concurrentUse
    /// TLS failed: the server's certificate did not verify, the server wants a client certificate, the
    /// port does not speak TLS, the TLS configuration cannot be loaded, or a TLS record failed.
    case tls(TLSError)
}

extension TCPConnectionError {
    /// Runs `body`, turning a ``TransportError`` it throws into a ``TCPConnectionError``.
    @inline(__always)
    static func converting<Result>(_ body: () throws(TransportError) -> Result) throws(TCPConnectionError) -> Result {
        do {
            return try body()
        } catch {
            throw TCPConnectionError(error)
        }
    }

    /// The TCP error for a transport error during a call (a timeout is the caller's business: it passes
    /// `timeoutError`).
    init(_ error: TransportError, timeoutError: TCPConnectionError = .readTimedOut(timeout: .zero)) {
        switch error {
        case .timedOut, .connectTimedOut: self = timeoutError
        case .io(let operation, let code), .connectFailed(let operation, let code): self = .systemError(operation: operation, errno: code)
        case .endOfStream: self = .peerClosed
        case .connectionReset: self = .connectionReset
        case .reactorShutDown: self = .systemError(operation: "IOReactor (shut down)", errno: ECANCELED)
        case .closedLocally: self = .connectionClosed
        case .concurrentUse: self = .concurrentUse
        case .tls(let tlsError): self = .tls(tlsError)
        case .hostNotFound(let host, let detail): self = .resolutionFailed(host: host, reason: detail)
        case .connectionRefused: self = .systemError(operation: "connect", errno: ECONNREFUSED)
        }
    }
}

extension TCPConnectionError: CustomStringConvertible {
    /// What went wrong and what to do about it.
    public var description: String {
        switch self {
        case .invalidConfiguration(let field, let reason):
            return "Invalid TCP connection configuration: \(field) \(reason). Fix the configuration."
        case .resolutionFailed(let host, let reason):
            return "Could not resolve host '\(host)': \(reason). Check the host name or use a numeric address."
        case .connectionRefused(let host, let port):
            return "Connection to \(host):\(port) refused: nothing is listening there. Check the port and that the server is running."
        case .connectTimedOut(let host, let port, let timeout):
            return "Connecting to \(host):\(port) timed out after \(timeout). The server may be overloaded (its accept backlog full) or unreachable; raise connectTimeout or check the server."
        case .connectFailed(let host, let port, let code):
            return "Connecting to \(host):\(port) failed: \(errorText(code)) (errno \(code)). Check the address and the network."
        case .readTimedOut(let timeout):
            return "Read timed out after \(timeout); the connection is now broken (the reply may still arrive). Raise readTimeout if the server is slow."
        case .writeTimedOut(let timeout):
            return "Write timed out after \(timeout): the peer is not reading; the connection is now broken. Raise writeTimeout or check the server."
        case .peerClosed:
            return "The peer closed the connection; open a new one."
        case .connectionReset:
            return "The peer reset the connection; open a new one."
        case .delimiterNotFound(let maxLength):
            return "No delimiter within \(maxLength) bytes; the connection is now broken. Raise maxLength or check the protocol framing."
        case .connectionClosed:
            return "The connection was closed locally by close() (before or during this call); open a new one."
        case .connectionBroken:
            return "The connection was used after an earlier error or timeout left it in an unknown state; close it and open a new one."
        case .systemError(let operation, let code):
            return "\(operation) failed: \(errorText(code)) (errno \(code))."
        case .concurrentUse:
            return "The connection was used by two callers at once; a connection serves one borrower at a time (borrow one per task from the pool)."
        case .tls(let error):
            return "\(error)"
        }
    }
}

func errorText(_ code: Int32) -> String {
    String(cString: strerror(code))
}
