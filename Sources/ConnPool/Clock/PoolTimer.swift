/// The one timer of a pool: fires the pool's handler at the earliest deadline it was given.
///
/// `schedule(at:)` only ever moves the deadline earlier; after firing, the handler's return value is the
/// next deadline. A deadline that turns out to be early is harmless: the handler finds nothing due and
/// returns the real next deadline.
///
/// On the system clock the timer is one entry of the process-wide ``TimerScheduler``, whose single
/// thread fires the timers of every pool; on a ``ManualClock`` it fires on the thread that advances the
/// clock. Either way the handler may call ``schedule(at:)`` and ``stop()`` itself.
@usableFromInline
final class PoolTimer: Sendable {
    enum Driver: Sendable {
        case shared(SharedTimer)
        case manual(ManualClock.Registration)
    }

    let driver: Driver

    init(_ driver: Driver) {
        self.driver = driver
    }

    /// Asks for the handler to run at or after `deadline` (monotonic nanoseconds).
    func schedule(at deadline: Int64) {
        switch driver {
        case .shared(let timer): timer.schedule(at: deadline)
        case .manual(let registration): registration.schedule(at: deadline)
        }
    }

    /// Stops the timer for good; the handler is not called again (a call already under way may finish)
    /// and is released, outside any lock.
    func stop() {
        switch driver {
        case .shared(let timer): timer.stop()
        case .manual(let registration): registration.stop()
        }
    }
}
