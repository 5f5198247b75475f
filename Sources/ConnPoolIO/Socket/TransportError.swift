import Glibc

/// A failure of the socket layer (``Transport``, ``SocketConnector``, ``Resolver``), before a backend
/// turns it into its own error type (`RedisError`, `TCPConnectionError`).
///
/// The cases say what happened to the socket, not what it meant to the protocol above: a backend
/// decides, for example, that an end of stream in the middle of a reply breaks its connection.
package enum TransportError: Error, Sendable, Hashable {
    /// The host name could not be resolved; `detail` is the resolver's explanation.
    case hostNotFound(host: String, detail: String)
    /// Every address refused the connection (nothing listens there).
    case connectionRefused
    /// Resolving, connecting and the TLS handshake did not finish before the deadline.
    case connectTimedOut
    /// Connecting failed for another reason; `operation` names the system call.
    case connectFailed(operation: String, errno: Int32)
    /// A wait for readiness reached its deadline.
    case timedOut
    /// A system call on a connected socket failed (`recv`, `send`, `poll`, the reactor's `epoll_ctl`).
    case io(operation: String, errno: Int32)
    /// The peer closed the connection (end of stream, `EPIPE`).
    case endOfStream
    /// The peer reset the connection (`ECONNRESET`).
    case connectionReset
    /// The transport was closed locally (``Transport/close()``), before or during the call.
    case closedLocally
    /// Two calls at once on one transport: a connection serves one borrower at a time.
    case concurrentUse
    /// The ``IOReactor`` the call waited on was shut down.
    case reactorShutDown
    /// The TLS layer failed: the handshake, the peer's certificate, or a record.
    case tls(TLSError)
}

/// `strerror(code) (errno code)`.
package func describeErrno(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
