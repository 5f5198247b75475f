#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A heap-pinned `pthread_mutex_t`, allocated once and never moved.
///
/// Why not `Synchronization.Mutex`: on this platform a contended `Mutex` draws false ThreadSanitizer
/// race reports, while a pthread mutex is understood by TSan. Why a raw pointer: a mutex must not move
/// after `pthread_mutex_init`, and keeping it behind a pointer avoids exclusivity checks on the hot path.
///
/// Not `Sendable` by itself: the owner (``PoolCore``) documents why sharing it is safe.
@usableFromInline
struct PThreadMutex {
    @usableFromInline
    let pointer: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: pthread_mutex_t())
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        // Error checking stays off on the hot path; debug builds assert on return codes below.
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_NORMAL))
        let rc = pthread_mutex_init(pointer, &attributes)
        pthread_mutexattr_destroy(&attributes)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    /// Destroys and frees the mutex. Call once, when no thread can touch it any more.
    func deallocate() {
        pthread_mutex_destroy(pointer)
        pointer.deallocate()
    }

    @inlinable @inline(__always)
    func lock() {
        let rc = pthread_mutex_lock(pointer)
        assert(rc == 0, "pthread_mutex_lock failed: \(rc)")
    }

    @inlinable @inline(__always)
    func unlock() {
        let rc = pthread_mutex_unlock(pointer)
        assert(rc == 0, "pthread_mutex_unlock failed: \(rc)")
    }

    /// Waits on `condition`, which must be used with this mutex only. The mutex must be held.
    @inlinable
    func wait(on condition: UnsafeMutablePointer<pthread_cond_t>) {
        let rc = pthread_cond_wait(condition, pointer)
        assert(rc == 0, "pthread_cond_wait failed: \(rc)")
    }
}
