#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one thread of the process that fires the timers of every pool on the system clock: it sleeps
/// until the earliest deadline of all registered timers (a waiter's acquire timeout, the end of a
/// creation backoff, a maintenance tick), calls that timer's handler, and sleeps again. An application
/// with fifty pools (a cluster client with one per node) runs one timer thread, not fifty.
///
/// A plain pthread rather than a task: waiting for a connection then allocates nothing, blocking and
/// async waiters time out through the same path, and a program that only uses the blocking interface
/// needs no async code.
///
/// ## Handlers
/// Handlers run one at a time on this thread, in deadline order, outside any lock, so a handler may
/// call ``SharedTimer/schedule(at:)`` and ``SharedTimer/stop()`` (its own or another timer's). A handler
/// delays every other timer of the process while it runs: it must be short. The pool's is (lock,
/// collect the due work, unlock, start tasks for anything slow).
///
/// ## Thread lifetime
/// The thread starts lazily, when the first timer is registered, and exits once no timer is registered
/// (every pool is gone); the next registration starts a new one. Both decisions are taken with `mutex`
/// held, with `threadRunning` recording whether a thread runs the loop, so at most one thread ever runs
/// it and a registration never finds none running. The thread is named ``threadName`` (`connpool-timer`
/// for ``shared``), so tools and tests can tell it apart.
///
/// `@unchecked Sendable` is safe because `queue`, `threadRunning` and `sleepingUntil` are only read or
/// written with `mutex` held; `condition` is only used with `mutex`; `threadName` is immutable; and the
/// mutex and condition are freed in `deinit`, which runs only when no thread can reach the scheduler any
/// more (the running thread holds a strong reference until after its last unlock, and every
/// ``SharedTimer`` holds one).
final class TimerScheduler: @unchecked Sendable {
    /// The scheduler of every pool on the system clock.
    static let shared = TimerScheduler(threadName: "connpool-timer")

    /// The name of the thread (at most 15 bytes: Linux truncates longer names).
    let threadName: String
    private let mutex = PThreadMutex()
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    /// Every registered timer and its pending deadline. Guarded by `mutex`.
    private var queue = TimerQueue()
    /// Whether a thread runs (or is about to run) the loop of ``run()``. Guarded by `mutex`.
    private var threadRunning = false
    /// The deadline the thread sleeps until (`.max`: until a deadline is scheduled), nil while it is
    /// awake. Guarded by `mutex`. Lets ``schedule(_:at:)`` signal only a thread that must wake earlier.
    private var sleepingUntil: Int64?

    /// Creates a scheduler whose thread will be named `threadName`. The pools use ``shared``; tests
    /// make their own, isolated from the pools that other tests run meanwhile.
    init(threadName: String) {
        self.threadName = threadName
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if os(Linux)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Registers a timer that calls `handler` at the deadlines it is given, and starts the thread if
    /// none runs. No deadline is pending until the first ``SharedTimer/schedule(at:)``.
    func register(handler: @escaping @Sendable (Int64) -> Int64?) -> SharedTimer {
        mutex.lock()
        let id = queue.register(handler)
        let startsThread = !threadRunning
        threadRunning = true
        mutex.unlock()
        if startsThread { startThread() }
        return SharedTimer(scheduler: self, id: id)
    }

    /// Moves the pending deadline of timer `id` earlier (see ``TimerQueue/schedule(_:at:)``), and wakes
    /// the thread if it sleeps past the new deadline.
    fileprivate func schedule(_ id: TimerQueue.ID, at deadline: Int64) {
        mutex.lock()
        if queue.schedule(id, at: deadline), let sleepingUntil, deadline < sleepingUntil {
            pthread_cond_signal(condition)
        }
        mutex.unlock()
    }

    /// Unregisters timer `id`; returns its handler, released by the caller outside the lock.
    fileprivate func remove(_ id: TimerQueue.ID) -> TimerQueue.Handler? {
        mutex.lock()
        let handler = queue.remove(id)
        // A thread sleeping with no timer left wakes to exit.
        if queue.isEmpty, sleepingUntil != nil { pthread_cond_signal(condition) }
        mutex.unlock()
        return handler
    }

    /// What tests observe: registered timers, pending deadlines, whether a thread runs the loop, and
    /// the deadline it sleeps until (nil: awake; `.max`: until a deadline is scheduled).
    var snapshot: (registered: Int, scheduled: Int, threadRunning: Bool, sleepingUntil: Int64?) {
        mutex.lock()
        defer { mutex.unlock() }
        return (queue.registeredCount, queue.scheduledCount, threadRunning, sleepingUntil)
    }

    private func startThread() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let scheduler = Unmanaged<TimerScheduler>.fromOpaque(context!).takeRetainedValue()
            scheduler.run()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// The thread's loop: fire what is due, earliest first, else sleep until the earliest deadline;
    /// return once no timer is registered.
    private func run() {
        Self.nameCurrentThread(threadName)
        mutex.lock()
        while !queue.isEmpty {
            let now = PoolClock.monotonicNanoseconds(CLOCK_MONOTONIC)
            if case let (id, handler)? = queue.popDue(now: now) {
                mutex.unlock()
                // `consume`: no copy of the handler outlives the call (see `fire`), even in a debug build.
                let next = Self.fire(consume handler, now: now)
                mutex.lock()
                // Ignored if the handler stopped its timer; merged with what it scheduled meanwhile.
                if let next { _ = queue.schedule(id, at: next) }
                continue
            }
            let deadline = queue.earliestDeadline ?? .max
            sleepingUntil = deadline
            if deadline == .max {
                mutex.wait(on: condition)
            } else {
                var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                pthread_cond_timedwait(condition, mutex.pointer, &ts)
            }
            sleepingUntil = nil
        }
        threadRunning = false
        mutex.unlock()
    }

    #if os(Linux)
    private typealias SetNameFunction = @convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32

    /// `pthread_setname_np`, which Swift's `Glibc` module does not declare (it is a GNU extension), looked
    /// up once with `dlsym` in the C library the process already links; nil if it is missing.
    private static let setName: SetNameFunction? = {
        // A null handle is RTLD_DEFAULT: the global symbol scope, which holds the C library.
        guard let address = dlsym(nil, "pthread_setname_np") else { return nil }
        return unsafeBitCast(address, to: SetNameFunction.self)
    }()
    #endif

    /// Names the calling thread, best effort (a thread without a name works the same).
    private static func nameCurrentThread(_ name: String) {
        #if os(Linux)
        _ = setName?(pthread_self(), name)
        #elseif canImport(Darwin)
        pthread_setname_np(name)
        #endif
    }

    /// Calls `handler`, which the caller took from the queue, and releases it before returning.
    ///
    /// A `consuming` parameter of a function that is never inlined: the handler's copy is released
    /// here, before the caller takes the lock again. If the timer was stopped during the call, this copy
    /// is the last reference, and releasing it may free the pool's runtime, whose `deinit` may do
    /// anything, so it must not happen under the lock. Until then, the copy keeps the handler (and what
    /// it captured) alive for the whole call, whatever ``SharedTimer/stop()`` does meanwhile.
    @inline(never)
    private static func fire(_ handler: consuming @escaping TimerQueue.Handler, now: Int64) -> Int64? {
        handler(now)
    }
}

/// A pool's timer on the process-wide ``TimerScheduler``: a handle on one registered timer.
///
/// ``schedule(at:)`` only moves the pending deadline earlier; after the handler runs, its return value
/// is merged the same way. ``stop()`` unregisters the timer and lets go of the handler; dropping the
/// handle without calling it does the same.
final class SharedTimer: Sendable {
    private let scheduler: TimerScheduler
    private let id: TimerQueue.ID

    fileprivate init(scheduler: TimerScheduler, id: TimerQueue.ID) {
        self.scheduler = scheduler
        self.id = id
    }

    deinit {
        _ = scheduler.remove(id)  // the handler, if still registered, is released here, outside the lock
    }

    /// Asks for the handler to run at or after `deadline` (monotonic nanoseconds). Ignored if a deadline
    /// at or before it is pending, or once the timer is stopped. Safe to call from any handler.
    func schedule(at deadline: Int64) {
        scheduler.schedule(id, at: deadline)
    }

    /// Stops the timer for good: once this returns, the handler is not called again, except that a
    /// call already under way on the timer thread finishes. The stored handler is released here, outside
    /// the scheduler's lock. Safe to call from any handler, including the timer's own.
    func stop() {
        let released = scheduler.remove(id)
        _ = released  // dropped here, outside the lock: it may release the pool's runtime
    }
}
