/// What the state machine asks the runtime to do after a change: every entry point that changes the
/// pool's state appends what follows from the change to one `Effects` value, and the runtime's one
/// executor (`PoolRuntime.modifyState`) carries it out once the lock is released. Nothing a change
/// implies can be forgotten by a call site: the call site never sees the individual effects.
///
/// Allocation-free for the common cases: the first wake-up is stored inline (a hand-off to a waiter
/// allocates nothing); the arrays stay empty, and unallocated, unless a rarer effect (a close, a
/// creation, a log event) is needed, and those allocate a task anyway.
extension PoolStateMachine {
    @usableFromInline
    struct Effects {
        /// Waiters to wake with a lease or an error, in order.
        @usableFromInline var wakeups = InlineFirstArray<Wakeup>()
        /// Async waiters that were cancelled: they are resumed with `CancellationError`.
        var cancelled = InlineFirstArray<Waiter>()
        /// Slots reserved for a new connection: start an attempt for each.
        var creations: [LeaseToken] = []
        /// Slots moved to `closing`: take the slot's connection and close it; then `closeFinished`.
        var closes: [LeaseToken] = []
        /// Slots whose connection must be closed outside the pool's accounting (a health check given up
        /// on): the slot is already free again.
        var discards: [Int32] = []
        /// Slots moved to `validating` by maintenance: check each connection, then `validationFinished`.
        var validations: [LeaseToken] = []
        /// Slots moved to `validating` on release because their connection's session state must be reset:
        /// reset each connection, then `resetFinished`.
        var resets: [LeaseToken] = []
        /// Things to log once the lock is released.
        var events: [Event] = []
        /// The metrics handler is due.
        var metricsReportDue = false

        @usableFromInline
        init() {}

        /// Whether nothing at all must be done.
        var isEmpty: Bool {
            wakeups.isEmpty && cancelled.isEmpty && creations.isEmpty && closes.isEmpty && discards.isEmpty
                && validations.isEmpty && resets.isEmpty && events.isEmpty && !metricsReportDue
        }
    }

    /// A waiter to wake, and with what.
    @usableFromInline
    struct Wakeup {
        @usableFromInline var waiter: Waiter
        @usableFromInline var result: WaiterResult

        @usableFromInline
        init(waiter: Waiter, result: WaiterResult) {
            self.waiter = waiter
            self.result = result
        }
    }

    /// Something worth a log line.
    enum Event {
        /// A connection attempt failed.
        case connectFailed(error: any Error, consecutiveFailures: Int, failingFast: Bool)
        /// An operation outlived its deadline and was given up on.
        case abandoned(AbandonedOperation)
        /// A lease is held past the leak detection threshold.
        case leak(LeakReport)
        /// A connection failed its health check and is being closed.
        case failedHealthCheck
    }
}

/// A list whose first element is stored inline: appending one element allocates nothing, more spill
/// into an array. Hand-written because a hand-off to a waiter (one wake-up) is a hot path that must not
/// allocate.
@usableFromInline
struct InlineFirstArray<Element> {
    @usableFromInline var first: Element?
    @usableFromInline var rest: [Element] = []

    @usableFromInline
    init() { first = nil }

    @inlinable var isEmpty: Bool { first == nil }

    @inlinable var count: Int { first == nil ? 0 : 1 + rest.count }

    @inlinable
    mutating func append(_ element: Element) {
        if first == nil { first = element } else { rest.append(element) }
    }

    /// Calls `body` with each element, in order.
    @inlinable
    func forEach(_ body: (Element) throws -> Void) rethrows {
        guard let first else { return }
        try body(first)
        for element in rest { try body(element) }
    }

    /// The elements as an array (tests and cold paths).
    var elements: [Element] {
        var all: [Element] = []
        forEach { all.append($0) }
        return all
    }
}
