extension PoolStateMachine {
    /// What an acquire that found no idle connection must do.
    @usableFromInline
    enum EnqueueAction {
        /// A connection became idle meanwhile: here is its lease.
        case leased(LeaseToken)
        /// The acquire fails at once.
        case failed(ConnectionPoolError)
        /// The waiter is queued; start creating a connection in `createSlot` and (re)arm the timer.
        case waiting(createSlot: LeaseToken?, scheduleTimer: Int64?)
    }

    /// What to do with a returned connection that could not simply go idle.
    @usableFromInline
    enum ReleaseAction {
        /// It went idle (the fast path's case, reached here after a race).
        case idle
        /// Hand it to this waiter under this new token.
        case handOff(Waiter, LeaseToken)
        /// Close the connection in this slot (the token names the closing).
        case close(LeaseToken, CloseReason)
        /// The token is stale: the slot was already taken back (for instance closed by force at the
        /// end of a shutdown's grace period). Nothing to do.
        case stale
    }

    /// What to do with a connection that became available (just created, or passed a check).
    @usableFromInline
    enum AvailableAction {
        case idle
        case handOff(Waiter, LeaseToken)
        case close(LeaseToken, CloseReason)
        /// The slot was given up on while the operation ran (it took longer than its deadline): the
        /// connection is not the pool's; close it without touching any slot.
        case discard
    }

    /// Whether to open one more connection.
    @usableFromInline
    enum CreationDecision: Equatable {
        case none
        case create(LeaseToken)
        case retryAt(Int64)
    }

    /// One thing a maintenance round must do to an idle connection.
    @usableFromInline
    enum MaintenanceAction: Equatable {
        /// Close it (the slot is already `closing`).
        case close(LeaseToken, CloseReason)
        /// Check it with `isValid` (the slot is already `validating`).
        case validate(LeaseToken)
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
}

extension CloseReason: CodingKeyRepresentable {}
