/// A connection that a ``ConnectionPool`` can hold and lend out.
///
/// The pool never uses a connection from two borrowers at once: between
/// ``ConnectionFactory/makeConnection()`` and ``close()`` a connection is either idle inside the pool,
/// being checked by the pool, or lent to exactly one lease holder. A conforming type therefore needs no
/// internal locking for that exclusive use; it must still be `Sendable` because it moves between threads
/// and tasks.
///
/// Both kinds of client conform naturally:
/// - A Swift-native async client implements ``isValid(timeout:)`` and ``close()``; the blocking
///   variants default to running the async ones on a detached task and waiting for them.
/// - A blocking C client implements ``isValidBlocking(timeout:)`` and ``closeBlocking()`` directly, and
///   its async requirements either use a non-blocking I/O path or offload the blocking call with
///   ``BlockingOffload/run(_:)`` so that no cooperative thread is ever blocked.
public protocol Connection: AnyObject, Sendable {
    /// Checks that the connection is usable, for example with a round trip such as a PING.
    ///
    /// Must return within `timeout` (give or take scheduling); a check that cannot finish in time
    /// returns `false`. Must not throw: any failure means "not valid". Must not block a cooperative
    /// thread.
    func isValid(timeout: Duration) async -> Bool

    /// Closes the connection and releases its resources. Called exactly once by the pool.
    ///
    /// Must not throw and must not block a cooperative thread. After `close()` the pool never touches
    /// the connection again. The one case where it overlaps another call: when a health check
    /// (``isValid(timeout:)``) outlives ``PoolConfiguration/healthCheckTimeout`` by a maintenance round,
    /// the pool gives up on it and calls `close()` while the check may still be running, which should
    /// make the check return (close the socket under it).
    func close() async

    /// Blocking form of ``isValid(timeout:)``, used by the pool's synchronous interface on the
    /// caller's thread. May block the calling thread up to `timeout`.
    ///
    /// The default runs ``isValid(timeout:)`` on a detached task and waits for it: never call it
    /// from a cooperative thread.
    func isValidBlocking(timeout: Duration) -> Bool

    /// Blocking form of ``close()``. May block the calling thread.
    ///
    /// The default runs ``close()`` on a detached task and waits for it.
    func closeBlocking()

    /// `true` once the connection knows, without any I/O, that it can no longer be used (for example
    /// after an I/O error or a timeout left its protocol state unknown).
    ///
    /// Read by the pool on every release, so it must be cheap: a stored flag. A broken connection is
    /// closed instead of being returned to the idle set. The default is `false`.
    var isBroken: Bool { get }
}

extension Connection {
    /// Runs ``isValid(timeout:)`` on a detached task and blocks the calling thread until it returns.
    /// Allocates; never call it from a cooperative thread.
    public func isValidBlocking(timeout: Duration) -> Bool {
        BlockingBridge.wait { await self.isValid(timeout: timeout) }
    }

    /// Runs ``close()`` on a detached task and blocks the calling thread until it returns.
    /// Allocates; never call it from a cooperative thread.
    public func closeBlocking() {
        BlockingBridge.wait { await self.close() }
    }

    /// `false`: a connection that cannot tell without I/O is never reported broken, and the pool
    /// relies on its health checks.
    @inlinable
    public var isBroken: Bool { false }
}

/// Creates the connections a ``ConnectionPool`` holds.
///
/// The pool calls ``makeConnection()`` outside any lock, on a task of its own, never on the hot path.
/// A factory may hold what a connection needs (an address, credentials, TLS settings); it must not
/// log secrets.
public protocol ConnectionFactory: Sendable {
    /// The type of connection this factory makes.
    associatedtype PooledConnectionType: Connection

    /// Opens a new connection, ready for use (connected, authenticated, configured).
    ///
    /// - Throws: any error that explains why the connection could not be made (refused, timed out,
    ///   authentication failed, …). The pool keeps the most recent one and reports it in
    ///   ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)``.
    /// - Note: Must honour task cancellation where it can and must not block a cooperative thread:
    ///   a blocking client should offload with ``BlockingOffload/run(_:)``.
    func makeConnection() async throws -> PooledConnectionType
}
