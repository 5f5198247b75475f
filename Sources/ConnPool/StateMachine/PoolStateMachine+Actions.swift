extension PoolStateMachine {
    /// What an acquire that found no idle connection gets from ``enqueue(_:now:into:)``.
    @usableFromInline
    enum EnqueueResult {
        /// A connection became idle meanwhile: here is its lease.
        case leased(LeaseToken)
        /// The acquire fails at once.
        case failed(ConnectionPoolError)
        /// The waiter is queued.
        case waiting
    }

    /// Whether to open one more connection.
    @usableFromInline
    enum CreationDecision: Equatable {
        case none
        case create(LeaseToken)
        case retryAt(Int64)
    }

    /// An operation that outlived its deadline and was given up on: its slot is free again.
    @usableFromInline
    struct AbandonedOperation: Equatable {
        @usableFromInline
        enum Kind: String, Equatable { case connecting, validating, closing }
        var index: Int32
        var kind: Kind
    }
}

/// Why the pool closed a connection.
public enum CloseReason: String, Sendable, Hashable, Codable, CaseIterable {
    /// It reached `maxLifetime`.
    case lifetime
    /// It stayed idle past `idleTimeout` above `minSize`.
    case idle
    /// It failed a health check (background or on acquire).
    case health
    /// It was returned as broken, or reported itself broken.
    case broken
    /// The pool shut down.
    case shutdown
    /// ``ConnectionPool/resize(maxSize:)`` lowered the maximum below the number of connections.
    case resize
    /// Its borrower changed its session state and resetting it failed, or was not possible (see
    /// ``Connection/resetSession(timeout:)``).
    case dirty
}

extension CloseReason: CodingKeyRepresentable {}
