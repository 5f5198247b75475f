#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a pthread mutex (not `Synchronization.Mutex`: a contended one draws false
/// ThreadSanitizer reports on this platform, a pthread mutex does not).
///
/// `@unchecked Sendable` is safe because `value` is only read or written inside ``withLock(_:)``,
/// with `mutex` held, and `mutex` points at a heap-pinned `pthread_mutex_t` that is initialized in
/// `init`, never moved, and destroyed in `deinit`, when no other reference can exist.
final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
