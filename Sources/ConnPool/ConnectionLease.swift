/// Exclusive use of one pooled connection, returned to the pool when the lease goes out of scope.
///
/// A lease is `~Copyable`: it cannot be duplicated, so a connection is never held by two borrowers,
/// and its `deinit` returns the connection exactly once (the Swift form of an RAII guard). Returning it
/// costs no allocation. To give the connection back early, call ``release()``; if you know the
/// connection is unusable (a protocol error left it in an unknown state), call ``releaseAsBroken()``
/// and the pool closes it instead of lending it again.
///
/// ```swift
/// let lease = try await pool.acquire()
/// let reply = try await lease.connection.command("GET", "key")  // a ConnPoolRedis connection
/// // the connection goes back when `lease` goes out of scope
/// ```
///
/// Note: with Swift 6.3, a lease declared in a top-level `do { }` block of a `main.swift` file is not
/// destroyed at the end of the block; declare leases inside functions (or call ``release()``).
public struct ConnectionLease<Factory: ConnectionFactory>: ~Copyable, Sendable {
    /// The leased connection. Use it only while you hold the lease.
    public let connection: Factory.PooledConnectionType

    /// The pool's runtime, unretained: no reference count shared by every thread is touched per lease.
    /// Safe because the runtime keeps itself alive until every lease has come back (see `PoolRuntime`).
    @usableFromInline let pool: Unmanaged<PoolRuntime<Factory>>
    @usableFromInline let token: LeaseToken
    @usableFromInline var returnsBroken = false

    @inlinable
    init(pool: PoolRuntime<Factory>, token: LeaseToken, connection: Factory.PooledConnectionType) {
        self.pool = Unmanaged.passUnretained(pool)
        self.token = token
        self.connection = connection
    }

    /// Returns the connection to the pool now.
    @inlinable
    public consuming func release() {}

    /// Returns the connection as unusable: the pool closes it and, if callers wait, opens another.
    @inlinable
    public consuming func releaseAsBroken() {
        returnsBroken = true
    }

    @inlinable
    deinit {
        let broken = returnsBroken
        pool._withUnsafeGuaranteedRef { $0.release(token, connection: connection, broken: broken) }
    }
}
