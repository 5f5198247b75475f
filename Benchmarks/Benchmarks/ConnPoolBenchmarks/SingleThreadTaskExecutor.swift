import Foundation

/// A task executor that runs every job enqueued on it on one dedicated thread, in FIFO order, from a ring
/// of job slots allocated once.
///
/// Why the hand-off benchmark needs it: on the default global executor, two tasks that hand a connection
/// back and forth are resumed on whichever cooperative thread libdispatch picks. When they land on two
/// different threads, libdispatch's per-thread continuation caches run dry on one thread and fill up on
/// the other, and it refills them with `malloc` (64-byte blocks, no Swift frame on the stack). Those
/// mallocs belong to the runtime's scheduling, not to the pool. With both tasks preferring this executor
/// (`withTaskExecutorPreference`), a hand-off is exactly the pool's work: the waiter's continuation is
/// resumed, which enqueues its task here, into a slot that already exists.
///
/// Written by hand (not a `DispatchQueue`) because the enqueue path must not allocate: an `NSCondition`
/// (a pthread mutex and condition variable) and a ring of slots allocated once.
///
/// `@unchecked Sendable`: `head`, `count`, `sleeping` and `ring`'s slots are only read or written with
/// `condition` locked, and the `ring` pointer never changes after `init`.
final class SingleThreadTaskExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private let ring: UnsafeMutablePointer<UnownedJob?>
    private let capacity: Int
    private var head = 0
    private var count = 0
    private var sleeping = false

    /// Starts the executor's thread. `capacity` bounds the jobs queued at once (a precondition failure
    /// beyond it); the hand-off benchmark never has more than two.
    init(name: String, capacity: Int = 1_024) {
        self.capacity = capacity
        ring = .allocate(capacity: capacity)
        ring.initialize(repeating: nil, count: capacity)
        // The thread keeps the executor alive for the rest of the process, as a benchmark executor should.
        let thread = Thread { [self] in runLoop() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        precondition(count < capacity, "SingleThreadTaskExecutor: more than \(capacity) jobs queued")
        ring[(head + count) % capacity] = job
        count += 1
        let wake = sleeping
        condition.unlock()
        // A job enqueued from the executor's own thread (every hand-off once both tasks run here) finds
        // it awake and needs no signal.
        if wake { condition.signal() }
    }

    private func runLoop() -> Never {
        let executor = asUnownedTaskExecutor()
        while true {
            condition.lock()
            while count == 0 {
                sleeping = true
                condition.wait()
                sleeping = false
            }
            let job = ring[head]!
            ring[head] = nil
            head = (head + 1) % capacity
            count -= 1
            condition.unlock()
            job.runSynchronously(on: executor)
        }
    }
}
