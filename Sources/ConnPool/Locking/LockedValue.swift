/// A value guarded by a ``PThreadMutex``. For cold paths (clock registrations, timers, the export
/// modules of this package, which see it through `package` access); the pool's hot path uses
/// ``PoolCore`` directly.
///
/// Lock the state a critical section touches, not an empty value: with `LockedValue<Void>` used as a bare
/// lock, ThreadSanitizer reported a race on the zero-sized `value` (its access is not kept inside the
/// lock), although nothing was shared.
///
/// `@unchecked Sendable` (when `Value` is `Sendable`) is safe because `value` is only reachable through
/// ``withLock(_:)``, which holds the mutex for the whole access, the mutex itself is never moved or freed
/// before `deinit`, and whatever leaves the lock is a `Sendable` value, free to cross threads.
package final class LockedValue<Value> {
    private let mutex = PThreadMutex()
    private var value: Value

    package init(_ value: Value) {
        self.value = value
    }

    deinit {
        mutex.deallocate()
    }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&value)
    }
}

extension LockedValue: @unchecked Sendable where Value: Sendable {}
