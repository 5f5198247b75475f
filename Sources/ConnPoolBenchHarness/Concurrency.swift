import ConnPool
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A first-come-first-served lock for tasks: `lock()` suspends (never blocks a thread) until the lock
/// is free; `unlock()` hands it to the oldest waiter. Serializes the workers of a
/// ``BenchBaseline/shared`` run in async mode. Continuations are resumed outside the state's lock.
final class AsyncSerialLock: Sendable {
    private struct State {
        var held = false
        var waiters: [UnsafeContinuation<Void, Never>] = []
        var head = 0
    }

    private let state = LockedValue(State())

    init() {}

    func lock() async {
        let acquired = state.withLock { state -> Bool in
            if state.held { return false }
            state.held = true
            return true
        }
        if acquired { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let acquired = state.withLock { state -> Bool in
                if !state.held {
                    state.held = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
    }

    /// Releases the lock; ownership passes directly to the oldest waiter, if any.
    func unlock() {
        let next = state.withLock { state -> UnsafeContinuation<Void, Never>? in
            guard state.head < state.waiters.count else {
                state.held = false
                state.waiters.removeAll(keepingCapacity: true)
                state.head = 0
                return nil
            }
            let next = state.waiters[state.head]
            state.head += 1
            if state.head == state.waiters.count {
                state.waiters.removeAll(keepingCapacity: true)
                state.head = 0
            }
            return next
        }
        next?.resume()
    }
}

/// Runs work on plain (non-cooperative) threads and waits for them without blocking a cooperative thread.
enum PlainThreads {
    /// Starts `count` detached pthreads running `body(index)` and suspends until all have returned.
    ///
    /// - Returns: each thread's result, by index.
    static func run<T: Sendable>(count: Int, _ body: @escaping @Sendable (Int) -> T) async -> [T] {
        precondition(count >= 1)
        let slots = ResultSlots<T>(count: count)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let remaining = RemainingCounter(count, continuation)
            for index in 0..<count {
                let start = ThreadStart {
                    slots.store(body(index), at: index)
                    remaining.finishOne()
                }
                start.launch()
            }
        }
        return slots.collect()
    }
}

/// The results of ``PlainThreads/run(count:_:)``.
///
/// `@unchecked Sendable` is safe because slot `i` is written by thread `i` only, once, and read only by
/// `collect()`, which runs after every thread has called ``RemainingCounter/finishOne()``: that
/// acquire-release countdown (and the continuation resume after it) orders every write before the reads.
private final class ResultSlots<T>: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<T?>
    private let count: Int

    init(count: Int) {
        self.count = count
        storage = .allocate(capacity: count)
        storage.initialize(repeating: nil, count: count)
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    func store(_ value: T, at index: Int) { storage[index] = value }

    func collect() -> [T] { (0..<count).map { storage[$0]! } }
}

/// Resumes a continuation when the last of `count` threads finishes.
private final class RemainingCounter: Sendable {
    private let remaining: Atomic<Int>
    private let continuation: CheckedContinuation<Void, Never>

    init(_ count: Int, _ continuation: CheckedContinuation<Void, Never>) {
        remaining = Atomic(count)
        self.continuation = continuation
    }

    func finishOne() {
        if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            continuation.resume()
        }
    }
}

/// A closure to run on a new detached pthread.
private final class ThreadStart: Sendable {
    let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    func launch() {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let start = Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue()
            start.body()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }
}

/// Opens a connection from a plain thread by running async work on a detached task and waiting for it.
/// For the blocking forms of per-request and shared baselines when the caller gives no blocking connect.
enum BlockingWait {
    static func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        Task.detached {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            box.fulfil(result)
        }
        return try box.wait().get()
    }
}

/// `@unchecked Sendable` is safe because `result` is read and written only with `mutex` held.
private final class ResultBox<T>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var result: Result<T, any Error>?

    init() {
        mutex.initialize(to: pthread_mutex_t())
        condition.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func fulfil(_ value: Result<T, any Error>) {
        pthread_mutex_lock(mutex)
        result = value
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    func wait() -> Result<T, any Error> {
        pthread_mutex_lock(mutex)
        while result == nil { pthread_cond_wait(condition, mutex) }
        let value = result!
        pthread_mutex_unlock(mutex)
        return value
    }
}
