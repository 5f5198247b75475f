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

    /// What the connection needs before the pool may lend it to someone else, read by the pool once on
    /// every release (instead of ``isBroken``), so it must be as cheap: one stored flag word.
    ///
    /// A connection whose borrower changed its session state (an open transaction, another database,
    /// a client name, a subscription) reports ``ReuseCondition/dirty``: the pool then calls
    /// ``resetSession(timeout:)`` before lending it again, and closes it (``CloseReason/dirty``) if the
    /// reset fails. The default is ``ReuseCondition/broken`` when ``isBroken``, else
    /// ``ReuseCondition/clean``.
    var reuseCondition: ReuseCondition { get }

    /// Restores the session state a new connection has (for Redis: leaves any transaction, forgets
    /// watched keys, selects the configured database again, …) after a borrower changed it. Called by
    /// the pool, on a task of its own, when a released connection reported ``ReuseCondition/dirty``;
    /// the connection is lent to nobody meanwhile.
    ///
    /// Must return within `timeout` (the pool's ``PoolConfiguration/healthCheckTimeout``) and must not
    /// block a cooperative thread. Returns `true` when the connection is as good as new, `false` to
    /// have the pool close it. The default returns `false`.
    func resetSession(timeout: Duration) async -> Bool
}

/// What a returned connection needs before it can be lent again (see ``Connection/reuseCondition``).
public enum ReuseCondition: UInt8, Sendable, Hashable {
    /// As good as a new connection: it goes back to the idle set at once.
    case clean
    /// Usable, but its borrower changed its session state: the pool resets it
    /// (``Connection/resetSession(timeout:)``) before lending it again, or closes it.
    case dirty
    /// Unusable: the pool closes it (``CloseReason/broken``).
    case broken
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

    /// ``ReuseCondition/broken`` when ``isBroken``, else ``ReuseCondition/clean``: a connection that does
    /// not track its session state is never reset.
    @inlinable
    public var reuseCondition: ReuseCondition { isBroken ? .broken : .clean }

    /// `false`: a connection that cannot reset its session is closed instead.
    public func resetSession(timeout: Duration) async -> Bool { false }
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
