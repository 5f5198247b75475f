/// The one timer of a pool: fires the pool's handler at the earliest deadline it was given.
///
/// `schedule(at:)` only ever moves the deadline earlier; after firing, the handler's return value is the
/// next deadline. A deadline that turns out to be early is harmless: the handler finds nothing due and
/// returns the real next deadline.
@usableFromInline
final class PoolTimer: Sendable {
    enum Driver: Sendable {
        case thread(TimerThread)
        case manual(ManualClock.Registration)
    }

    let driver: Driver

    init(_ driver: Driver) {
        self.driver = driver
    }

    /// Asks for the handler to run at or after `deadline` (monotonic nanoseconds).
    func schedule(at deadline: Int64) {
        switch driver {
        case .thread(let thread): thread.schedule(at: deadline)
        case .manual(let registration): registration.schedule(at: deadline)
        }
    }

    /// Stops the timer for good; the handler is not called again.
    func stop() {
        switch driver {
        case .thread(let thread): thread.stop()
        case .manual(let registration): registration.stop()
        }
    }
}
