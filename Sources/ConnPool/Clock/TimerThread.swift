#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One dedicated thread per pool that sleeps until the pool's earliest deadline (a waiter's acquire
/// timeout, the end of a creation backoff, a maintenance tick) and then calls the pool's handler.
///
/// One thread rather than a task or timer per waiter: waiting for a connection then allocates nothing,
/// and both blocking and async waiters time out through the same path.
///
/// ``stop()`` also lets go of the handler, so whatever the handler keeps alive (the pool's runtime) is
/// released with it.
///
/// `@unchecked Sendable` is safe because `deadline`, `stopped` and `handler` are only read or written
/// with `mutex` held, `condition` is only used with `mutex`, and both are freed by the thread itself after it has
/// seen `stopped`, when no other thread can reach them (``stop()`` is the last call the owner makes).
final class TimerThread: @unchecked Sendable {
    private let mutex = PThreadMutex()
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var deadline: Int64 = .max
    private var stopped = false
    private var handler: (@Sendable (Int64) -> Int64?)?

    init(handler: @escaping @Sendable (Int64) -> Int64?) {
        self.handler = handler
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if os(Linux)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)

        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let timer = Unmanaged<TimerThread>.fromOpaque(context!).takeRetainedValue()
            timer.run()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        mutex.deallocate()
    }

    func schedule(at newDeadline: Int64) {
        mutex.lock()
        if newDeadline < deadline {
            deadline = newDeadline
            pthread_cond_signal(condition)
        }
        mutex.unlock()
    }

    func stop() {
        mutex.lock()
        stopped = true
        let released = handler
        handler = nil
        pthread_cond_signal(condition)
        mutex.unlock()
        // Dropped here, outside the mutex: releasing the handler may release the pool's runtime.
        _ = released
    }

    private func run() {
        mutex.lock()
        while !stopped {
            if deadline == .max {
                mutex.wait(on: condition)
                continue
            }
            let now = PoolClock.monotonicNanoseconds(CLOCK_MONOTONIC)
            if now < deadline {
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                pthread_cond_timedwait(condition, mutex.pointer, &ts)
                continue
            }
            deadline = .max
            // A strong copy: a stop() during the call releases the stored handler, not this one.
            guard let handler else { break }
            mutex.unlock()
            let next = handler(now)
            mutex.lock()
            if let next, next < deadline { deadline = next }
        }
        mutex.unlock()
    }
}
