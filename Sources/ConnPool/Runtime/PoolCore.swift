/// The non-generic heart of a pool: one mutex and the state machine it guards, both pinned behind
/// pointers.
///
/// Pointers rather than stored `var`s: a class's stored `var` touched on the hot path costs a dynamic
/// exclusivity check per access once inlined across modules; state behind an `UnsafeMutablePointer`
/// does not. Non-generic so its code is shared by every pool and needs no type metadata.
///
/// `@unchecked Sendable` is safe because `state` is only read or written while `mutex` is held (every
/// access site in ``ConnectionPool`` is bracketed by `mutex.lock()`/`mutex.unlock()`), both pointers
/// are allocated in `init` and freed in `deinit`, when no other reference exists.
@usableFromInline
final class PoolCore: @unchecked Sendable {
    @usableFromInline let mutex: PThreadMutex
    @usableFromInline let state: UnsafeMutablePointer<PoolStateMachine>

    init(configuration: PoolConfiguration, capacity: Int) {
        mutex = PThreadMutex()
        state = .allocate(capacity: 1)
        state.initialize(to: PoolStateMachine(configuration: configuration, capacity: capacity))
    }

    deinit {
        state.pointee.deallocate()
        state.deinitialize(count: 1)
        state.deallocate()
        mutex.deallocate()
    }
}
