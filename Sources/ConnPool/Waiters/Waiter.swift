#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// How a waiting caller is woken: an async task's continuation, or a blocked thread's wait cell.
///
/// Both carry only a packed lease token (slot index and generation), never an object: the waiter
/// rebuilds its lease after waking, so a hand-off allocates nothing.
@usableFromInline
enum WaiterHandle {
    case async(UnsafeContinuation<UInt64, any Error>)
    case blocking(UnsafeMutablePointer<BlockingWaitCell>)
}

/// One caller waiting for a connection, in arrival order (`id` grows with every waiter).
///
/// A top-level, non-generic type on purpose: a type nested in the generic pool would be generic too,
/// and an unspecialized build would look up its metadata on every operation.
@usableFromInline
struct Waiter {
    @usableFromInline var id: UInt64
    /// Monotonic nanoseconds after which the waiter times out.
    @usableFromInline var deadline: Int64
    @usableFromInline var handle: WaiterHandle
    /// The timeout the caller asked for, reported in the timeout error.
    @usableFromInline var timeout: Duration

    @usableFromInline
    init(id: UInt64, deadline: Int64, handle: WaiterHandle, timeout: Duration) {
        self.id = id
        self.deadline = deadline
        self.handle = handle
        self.timeout = timeout
    }
}

/// What a woken waiter receives: a lease token or the reason it was not served.
@usableFromInline
typealias WaiterResult = Result<UInt64, ConnectionPoolError>

/// The memory a blocked thread waits on: a condition variable used with the pool's mutex, and the
/// result slot the waker fills. Lives in the waiting thread's stack frame
/// (`withUnsafeTemporaryAllocation`), so blocking waits allocate nothing.
///
/// The waker writes `result` and signals `condition` while holding the pool's mutex; the waiting thread
/// reads `result` with the mutex held, so the cell is never touched after the waiter returns.
@usableFromInline
struct BlockingWaitCell {
    @usableFromInline var condition: pthread_cond_t
    @usableFromInline var result: WaiterResult?

    @usableFromInline
    init() {
        condition = pthread_cond_t()
        result = nil
    }
}
