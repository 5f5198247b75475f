import Synchronization

/// A clock that moves only when you advance it. Pools built with ``PoolClock/manual(_:)`` use it for
/// every deadline, so tests of timeouts and backoff are deterministic and never sleep.
///
/// Timers that fall due fire synchronously on the thread that calls ``advance(by:)``.
public final class ManualClock: Sendable {
    private let current: Atomic<Int64>
    private let registrations = LockedValue<[Registration]>([])

    /// Creates a clock reading `start`.
    public init(start: Duration = .zero) {
        current = Atomic(start.nanosecondsClamped)
    }

    /// The current reading, as a duration since the clock's origin.
    public var now: Duration { .nanoseconds(current.load(ordering: .acquiring)) }

    @usableFromInline
    var nanoseconds: Int64 { current.load(ordering: .acquiring) }

    /// Moves the clock forward by `duration` and fires every timer that fell due.
    ///
    /// - Precondition: `duration` is not negative.
    public func advance(by duration: Duration) {
        precondition(duration >= .zero, "ManualClock cannot go backwards")
        let now = current.add(duration.nanosecondsClamped, ordering: .acquiringAndReleasing).newValue
        fireDue(now: now)
    }

    /// Fires the timers that are due at the current reading without moving the clock.
    public func fireDueTimers() {
        fireDue(now: nanoseconds)
    }

    private func fireDue(now: Int64) {
        let all = registrations.withLock { $0 }
        for registration in all {
            registration.fireIfDue(now: now)
        }
    }

    func register(handler: @escaping @Sendable (Int64) -> Int64?) -> Registration {
        let registration = Registration(clock: self, handler: handler)
        registrations.withLock { $0.append(registration) }
        return registration
    }

    private func unregister(_ registration: Registration) {
        registrations.withLock { $0.removeAll { $0 === registration } }
    }

    /// A pool's timer on a manual clock. Like a real timer, a deadline scheduled at or before the
    /// clock's current reading fires at once, on the scheduling thread.
    final class Registration: Sendable {
        private struct State {
            var deadline: Int64 = .max
            /// Let go of by ``stop()``, with whatever it keeps alive.
            var handler: (@Sendable (Int64) -> Int64?)?
        }

        private let state: LockedValue<State>
        private unowned let clock: ManualClock

        init(clock: ManualClock, handler: @escaping @Sendable (Int64) -> Int64?) {
            self.clock = clock
            state = LockedValue(State(handler: handler))
        }

        func schedule(at deadline: Int64) {
            state.withLock { $0.deadline = min($0.deadline, deadline) }
            let now = clock.nanoseconds
            if deadline <= now { fireIfDue(now: now) }
        }

        func stop() {
            let released = state.withLock { state in
                defer { state.handler = nil }
                return state.handler
            }
            clock.unregister(self)
            _ = released  // dropped outside the lock: it may release the pool's runtime
        }

        func fireIfDue(now: Int64) {
            while true {
                let handler = state.withLock { state -> (@Sendable (Int64) -> Int64?)? in
                    guard state.handler != nil, state.deadline <= now else { return nil }
                    state.deadline = .max
                    return state.handler
                }
                guard let handler else { return }
                if let next = handler(now) { schedule(at: next) }
            }
        }
    }
}
