import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A heap-pinned pthread mutex: the bare cost of a lock/unlock pair, the floor of any locked pool.
final class BareMutex: @unchecked Sendable {
    // @unchecked Sendable: a pthread mutex is made to be shared between threads.
    let pointer: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: pthread_mutex_t())
        pthread_mutex_init(pointer, nil)
    }

    deinit {
        pthread_mutex_destroy(pointer)
        pointer.deallocate()
    }
}

/// `count` plain threads created once and parked on semaphores: ``run()`` releases all of them, each
/// runs `body(worker)` once, and returns when all are done. Creating threads per sample would add tens
/// of microseconds and allocations to every sample; parking and waking them allocates nothing.
final class WorkerGang: @unchecked Sendable {
    // @unchecked Sendable: the semaphores are thread-safe and `body` is immutable.
    let count: Int
    private let starts: [DispatchSemaphore]
    private let done = DispatchSemaphore(value: 0)
    private let body: @Sendable (Int) -> Void

    init(count: Int, body: @escaping @Sendable (_ worker: Int) -> Void) {
        self.count = count
        self.body = body
        starts = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        for worker in 0..<count {
            let thread = Thread { [self] in
                while true {
                    starts[worker].wait()
                    self.body(worker)
                    done.signal()
                }
            }
            thread.name = "bench-worker-\(worker)"
            thread.start()
        }
    }

    /// Runs `body` once on every worker, in parallel, and waits for all of them.
    func run() {
        for start in starts { start.signal() }
        for _ in 0..<count { done.wait() }
    }
}

/// Shared flags of the hand-off benchmark's two tasks.
final class HandOffState: Sendable {
    /// Set once the measured task is done: the partner leaves its loop.
    let stop = Atomic<Bool>(false)
    /// Rounds the partner has completed.
    let partnerRounds = Atomic<Int>(0)
    /// The measured task's latest round (a plain store per round, no read-modify-write).
    let mainRound = Atomic<Int>(0)
}
