#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A heap-pinned pthread mutex (not `Synchronization.Mutex`, which draws false ThreadSanitizer reports
/// when contended on this platform).
///
/// `@unchecked Sendable` is safe because the only state is the `pthread_mutex_t`, which is made for
/// use from many threads, lives at a fixed address from `init` to `deinit`, and is only touched
/// through `pthread_mutex_*` calls.
final class BenchMutex: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func lock() { pthread_mutex_lock(mutex) }

    @inline(__always)
    func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A first-come-first-served lock for tasks: `lock()` suspends (never blocks a thread) until the lock
/// is free; `unlock()` hands it to the oldest waiter. Serializes the workers of a
/// ``BenchBaseline/shared`` run in async mode.
///
/// `@unchecked Sendable` is safe because `held` and `waiters` are read and written only while `mutex`
/// is held, and continuations are resumed after it is released.
final class AsyncSerialLock: @unchecked Sendable {
    private let mutex = BenchMutex()
    private var held = false
    private var waiters: [UnsafeContinuation<Void, Never>] = []
    private var head = 0

    init() {}

    func lock() async {
        mutex.lock()
        if !held {
            held = true
            mutex.unlock()
            return
        }
        mutex.unlock()
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            mutex.lock()
            if !held {
                held = true
                mutex.unlock()
                continuation.resume()
                return
            }
            waiters.append(continuation)
            mutex.unlock()
        }
    }

    /// Releases the lock; ownership passes directly to the oldest waiter, if any.
    func unlock() {
        mutex.lock()
        guard head < waiters.count else {
            held = false
            waiters.removeAll(keepingCapacity: true)
            head = 0
            mutex.unlock()
            return
        }
        let next = waiters[head]
        head += 1
        if head == waiters.count {
            waiters.removeAll(keepingCapacity: true)
            head = 0
        }
        mutex.unlock()
        next.resume()
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
