import ConnPool
import Glibc
import Synchronization

/// An error thrown by ``IOReactor/waitReadable(_:deadline:)`` and ``IOReactor/waitWritable(_:deadline:)``.
public enum IOReactorError: Error, Equatable {
    /// The deadline passed before the file descriptor became ready. The descriptor's state is
    /// unchanged; the caller decides whether to wait again or give up.
    case timedOut
    /// The reactor was shut down (see ``IOReactor/shutdown()``) before or while waiting. Use another
    /// reactor, for example ``IOReactor/shared``.
    case closed
    /// A system call failed. `operation` names the call and the descriptor, `errno` is the C error
    /// number (for example `EBADF` for a closed descriptor, `EPERM` for a regular file, which epoll
    /// cannot watch, or `EBUSY` when another task already waits on the same descriptor and direction).
    case systemError(errno: Int32, operation: String)
}

extension IOReactorError: CustomStringConvertible {
    /// What went wrong, in words, with the C error text for a system error.
    public var description: String {
        switch self {
        case .timedOut:
            return "IOReactor: the deadline passed before the descriptor became ready"
        case .closed:
            return "IOReactor: the reactor has been shut down; wait on another reactor such as IOReactor.shared"
        case .systemError(let code, let operation):
            return "IOReactor: \(operation) failed: \(String(cString: strerror(code))) (errno \(code))"
        }
    }
}

/// A readiness reactor: suspends tasks until a non-blocking file descriptor can be read or written,
/// without ever blocking a cooperative thread.
///
/// ## Design
/// One dedicated thread sits in `epoll_wait` on behalf of every waiting task. A wait registers the
/// descriptor with `EPOLLONESHOT` (`EPOLL_CTL_MOD`, falling back to `EPOLL_CTL_ADD` for a descriptor
/// epoll has not seen, or has forgotten because it was closed), stores the task's continuation in a
/// table indexed by descriptor and suspends. When epoll reports the descriptor, the reactor thread
/// takes the continuation out of the table and resumes it; the task then continues on its own
/// executor, so the reactor thread only ever does bookkeeping.
///
/// Why this shape:
/// - **Hundreds of connections on two cores.** A thread per connection would need hundreds of stacks
///   and context switches for every byte that arrives; a blocking call on a cooperative thread would
///   starve the whole Swift concurrency pool (it has one thread per core, two here). One epoll thread
///   multiplexes any number of descriptors with O(1) work per ready event, and the cooperative pool
///   keeps running tasks while they wait.
/// - **One-shot registrations** make each wait an explicit arm/fire pair: an event can never fire
///   twice for one wait, and no per-wait `EPOLL_CTL_DEL` is needed. Every arming bumps a per-descriptor
///   generation carried in the epoll event, so an event from an older arming (say, of a wait that was
///   cancelled a moment ago) is recognised and ignored instead of resuming a newer waiter.
/// - **Registration happens on the waiting thread**, under the lock, straight into the epoll set
///   (`epoll_ctl` is safe while another thread is in `epoll_wait`), so the reactor thread is only
///   woken (through an `eventfd`) when a new deadline is earlier than the time it sleeps until, or on
///   shutdown. While deadlines are in use it sleeps at most a one-second tick, so the usual waits
///   (with I/O timeouts of seconds) never need that wake-up; after ten seconds without deadlines it
///   sleeps until an event.
/// - **Deadlines live on the reactor thread**: an indexed binary min-heap of the pending deadlines gives
///   the `epoll_wait` timeout (rounded up to whole milliseconds, so a timeout never fires early), and
///   a wait that completes early leaves the heap at once (O(log n)), so no stale timers pile up.
/// - **Cancellation** goes through `withTaskCancellationHandler`: the handler removes the registration
///   under the lock and resumes the task with `CancellationError` at once, without waiting for the
///   reactor thread.
/// - **Allocation.** A wait uses `withUnsafeThrowingContinuation` and a cancellation handler, both of
///   which live in the task's own allocator; the descriptor table and the deadline heap are arrays that
///   grow to the high-water mark once and are then reused, so a wait in steady state does not call
///   `malloc`.
/// - **Locking.** The state sits behind a plain pthread mutex, held only for table and heap updates
///   and the `epoll_ctl` call; continuations are always resumed after the lock is released.
///
/// ## Rules for callers
/// - The descriptor must be non-blocking, and readiness is a hint: after a wake, read or write until
///   `EAGAIN` and wait again. A spurious wake is rare but allowed.
/// - At most one task at a time may wait for readability and one for writability of one descriptor
///   (a second concurrent wait for the same descriptor and direction throws
///   ``IOReactorError/systemError(errno:operation:)`` with `EBUSY`).
/// - Do not close a descriptor while a task waits on it: epoll silently forgets closed descriptors, so
///   such a wait would only end at its deadline or on cancellation.
public final class IOReactor: @unchecked Sendable {
    // @unchecked Sendable is safe because:
    // - every stored property is a `let`;
    // - `state` (the descriptor table, the deadline heap and the flags) is read and written only while
    //   `mutex` is held, by the waiting threads and the reactor thread alike;
    // - `events` is touched only by the reactor thread (and freed in deinit, which runs after that
    //   thread has released its reference to the reactor);
    // - `epollFD` and `wakeFD` are immutable integers, and the kernel calls on them (`epoll_ctl`,
    //   `epoll_wait`, `read`/`write` of the eventfd) are thread-safe;
    // - `nextWaitID` is an `Atomic`.

    /// The process-wide reactor, created (with its thread) on first use and never shut down.
    ///
    /// Creating it traps if the kernel refuses the epoll instance, the eventfd or the thread (which
    /// only happens when the process is out of descriptors or threads).
    public static let shared: IOReactor = {
        do {
            return try IOReactor(isShared: true)
        } catch {
            fatalError("IOReactor.shared could not be started: \(error)")
        }
    }()

    private let epollFD: Int32
    private let wakeFD: Int32
    private let isShared: Bool
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let state: UnsafeMutablePointer<ReactorState>
    /// The `struct epoll_event` array that `epoll_wait` fills.
    private let events: UnsafeMutableRawPointer
    private let nextWaitID = Atomic<UInt64>(1)
    private let thread: UnsafeMutablePointer<pthread_t>
    /// `pthread_self()` of the reactor thread, stored by that thread as it starts (0 before).
    private let reactorThreadID = Atomic<UInt>(0)

    private static let maxEvents: Int32 = 256
    /// While deadlines are in use, the reactor thread wakes at least this often (see runLoop).
    private static let idleTick: Duration = .seconds(1)
    /// How long after the last deadline the reactor keeps ticking before it sleeps without a limit.
    private static let idleTickSpan: Duration = .seconds(10)
    /// The epoll user data of the eventfd; descriptor registrations never use it (their upper half is
    /// a generation and their lower half a non-negative descriptor).
    private static let wakeToken: UInt64 = UInt64.max

    /// Creates a reactor and starts its epoll thread.
    ///
    /// A reactor made this way lives until ``shutdown()`` is called (its thread holds a reference to it).
    /// Most code should use ``shared`` instead.
    ///
    /// - Throws: ``IOReactorError/systemError(errno:operation:)`` if `epoll_create1`, `eventfd` or
    ///   `pthread_create` fails.
    public convenience init() throws {
        try self.init(isShared: false)
    }

    private init(isShared: Bool) throws {
        let epollFD = EpollSys.create(EpollSys.closeOnExec)
        guard epollFD >= 0 else {
            throw IOReactorError.systemError(errno: errno, operation: "epoll_create1")
        }
        let wakeFD = EpollSys.eventfd(0, EpollSys.closeOnExec | EpollSys.nonBlocking)
        guard wakeFD >= 0 else {
            let code = errno
            Glibc.close(epollFD)
            throw IOReactorError.systemError(errno: code, operation: "eventfd")
        }
        guard EpollSys.control(epollFD, EpollSys.add, wakeFD, events: EpollSys.readable, data: IOReactor.wakeToken) == 0 else {
            let code = errno
            Glibc.close(wakeFD)
            Glibc.close(epollFD)
            throw IOReactorError.systemError(errno: code, operation: "epoll_ctl(ADD, eventfd)")
        }
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        self.isShared = isShared
        self.mutex = .allocate(capacity: 1)
        pthread_mutex_init(self.mutex, nil)
        self.state = .allocate(capacity: 1)
        self.state.initialize(to: ReactorState())
        self.events = .allocate(byteCount: Int(IOReactor.maxEvents) * EpollSys.eventSize, alignment: 8)
        self.events.initializeMemory(as: UInt8.self, repeating: 0, count: Int(IOReactor.maxEvents) * EpollSys.eventSize)
        self.thread = .allocate(capacity: 1)

        // Set before the thread exists, so no lock is needed.
        self.state.pointee.threadStarted = true
        // The thread owns one reference until its loop ends (after shutdown()).
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(self.thread, nil, { context in
            let reactor = Unmanaged<IOReactor>.fromOpaque(context!).takeRetainedValue()
            reactor.runLoop()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<IOReactor>.fromOpaque(context).release()
            // deinit closes the descriptors and frees the buffers.
            self.state.pointee.isShutDown = true
            self.state.pointee.threadStarted = false
            throw IOReactorError.systemError(errno: rc, operation: "pthread_create")
        }
    }

    deinit {
        Glibc.close(wakeFD)
        Glibc.close(epollFD)
        state.deinitialize(count: 1)
        state.deallocate()
        events.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        thread.deallocate()
    }

    // MARK: - Public API

    /// Suspends until `fd` is readable (or has an error or hang-up pending), `deadline` passes, or the
    /// task is cancelled. Never blocks a cooperative thread.
    ///
    /// - Parameters:
    ///   - fd: an open, non-blocking descriptor that epoll can watch (a socket, pipe, eventfd, …; not a
    ///     regular file). It must stay open until this call returns.
    ///   - deadline: when to give up, or `nil` to wait without a time limit. A deadline that has already
    ///     passed throws ``IOReactorError/timedOut`` at once.
    /// - Throws: ``IOReactorError/timedOut`` when `deadline` passes first; `CancellationError` when the
    ///   task is cancelled (the registration is removed at once); ``IOReactorError/closed`` if the
    ///   reactor is shut down; ``IOReactorError/systemError(errno:operation:)`` if epoll rejects the
    ///   descriptor (`EBADF`, `EPERM`, …) or another task already waits for the same descriptor to be
    ///   readable (`EBUSY`).
    public func waitReadable(_ fd: Int32, deadline: ContinuousClock.Instant?) async throws {
        try await wait(fd, writable: false, deadline: deadline)
    }

    /// Suspends until `fd` is writable (or has an error or hang-up pending), `deadline` passes, or the
    /// task is cancelled. Never blocks a cooperative thread.
    ///
    /// Also the way to finish a non-blocking `connect`: wait writable, then read `SO_ERROR`.
    ///
    /// - Parameters:
    ///   - fd: an open, non-blocking descriptor that epoll can watch. It must stay open until this call
    ///     returns.
    ///   - deadline: when to give up, or `nil` to wait without a time limit. A deadline that has already
    ///     passed throws ``IOReactorError/timedOut`` at once.
    /// - Throws: the same errors as ``waitReadable(_:deadline:)`` (`EBUSY` when another task already
    ///   waits for the same descriptor to be writable).
    public func waitWritable(_ fd: Int32, deadline: ContinuousClock.Instant?) async throws {
        try await wait(fd, writable: true, deadline: deadline)
    }

    /// Stops the reactor thread and resumes every pending wait with ``IOReactorError/closed``; later
    /// waits throw ``IOReactorError/closed`` too. Returns once the thread has ended. Idempotent.
    ///
    /// - Precondition: not called on ``shared`` (which other code relies on), and not called from
    ///   inside the reactor thread.
    public func shutdown() {
        precondition(!isShared, "IOReactor.shared must not be shut down")
        lock()
        let alreadyShutDown = state.pointee.isShutDown
        let started = state.pointee.threadStarted
        state.pointee.isShutDown = true
        unlock()
        if alreadyShutDown || !started {
            return
        }
        signalWake()
        pthread_join(thread.pointee, nil)
    }

    /// Registers `fd` for good, edge-triggered, so that its waits cost no `epoll_ctl` (one-shot waits arm
    /// epoll once per wait). For a descriptor that is waited on once per request (a connection's
    /// socket). Waits on it then behave as before, with one rule more: the caller waits only after a
    /// read or write found the descriptor not ready (`EAGAIN`), or right after sending a request (a
    /// wait then returns at once if the reply came meanwhile, and may, rarely, return early: read until
    /// `EAGAIN` and wait again).
    ///
    /// - Precondition: no wait is pending on `fd`. Call ``deregister(_:)`` before closing it: epoll
    ///   forgets a closed descriptor, and a later descriptor with the same number would never be armed.
    /// - Throws: ``IOReactorError/systemError(errno:operation:)`` if epoll refuses the descriptor, or
    ///   ``IOReactorError/closed`` after ``shutdown()``.
    package func register(_ fd: Int32) throws(IOReactorError) {
        guard fd >= 0 else { throw .systemError(errno: EBADF, operation: "register(fd: \(fd))") }
        lock()
        defer { unlock() }
        let s = state
        if s.pointee.isShutDown { throw .closed }
        let index = Int(fd)
        if index >= s.pointee.entries.count {
            s.pointee.growEntries(toInclude: index)
        }
        let mask = EpollSys.readable | EpollSys.readHangUp | EpollSys.writable | EpollSys.edgeTriggered
        s.pointee.entries[index].generation &+= 1
        let data = UInt64(s.pointee.entries[index].generation) << 32 | UInt64(UInt32(bitPattern: fd))
        let first = s.pointee.entries[index].inEpoll ? EpollSys.modify : EpollSys.add
        var status = EpollSys.control(epollFD, first, fd, events: mask, data: data)
        if status != 0, (first == EpollSys.modify && errno == ENOENT) || (first == EpollSys.add && errno == EEXIST) {
            status = EpollSys.control(epollFD, first == EpollSys.modify ? EpollSys.add : EpollSys.modify, fd, events: mask, data: data)
        }
        guard status == 0 else {
            throw .systemError(errno: errno, operation: "epoll_ctl(register fd \(fd))")
        }
        s.pointee.entries[index].inEpoll = true
        s.pointee.entries[index].persistent = true
        // The registration reports the current state as its first edge: nothing is ready until then.
        s.pointee.entries[index].readReady = false
        s.pointee.entries[index].writeReady = false
    }

    /// Ends the registration of ``register(_:)`` (`EPOLL_CTL_DEL`), before the descriptor is closed. A
    /// wait still pending on it (one that holds no claim on the descriptor, such as a subscriber's idle
    /// wait) ends with ``IOReactorError/closed``. Idempotent; never throws.
    package func deregister(_ fd: Int32) {
        guard fd >= 0 else { return }
        lock()
        let s = state
        let index = Int(fd)
        guard index < s.pointee.entries.count, s.pointee.entries[index].persistent else {
            unlock()
            return
        }
        _ = EpollSys.control(epollFD, EpollSys.delete, fd, events: 0, data: 0)
        s.pointee.entries[index].persistent = false
        s.pointee.entries[index].inEpoll = false
        s.pointee.entries[index].readReady = false
        s.pointee.entries[index].writeReady = false
        s.pointee.entries[index].generation &+= 1  // events already returned by epoll_wait are stale
        var waiters: [Waiter] = []
        if let waiter = s.pointee.removeWaiter(fd: fd, writable: false) { waiters.append(waiter) }
        if let waiter = s.pointee.removeWaiter(fd: fd, writable: true) { waiters.append(waiter) }
        s.pointee.pendingCount -= waiters.count
        unlock()
        for waiter in waiters { waiter.continuation.resume(throwing: IOReactorError.closed) }
    }

    /// Suspends a task that runs on the reactor thread until the jobs of the current round (the tasks the
    /// last wake-up resumed) have run, then resumes it in the same round, before the reactor sleeps again.
    /// Tasks that each send a request this way send them back to back, after all of them have read their
    /// replies: the server finds a batch per wake-up instead of one request (redis-benchmark's event loop
    /// gets the same effect from its separate write phase). No allocation: the continuation lives in the
    /// task, the queue is reused.
    ///
    /// - Precondition: called on the reactor thread (``isCurrentThread``); elsewhere it returns at once.
    package func waitForEndOfRound() async {
        guard isCurrentThread else { return }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            lock()
            if state.pointee.isShutDown {
                unlock()
                continuation.resume()
                return
            }
            state.pointee.endOfRound.append(continuation)
            unlock()
        }
    }

    /// Whether the calling thread is the reactor's thread (where tasks that prefer the reactor as their
    /// executor run).
    public var isCurrentThread: Bool {
        reactorThreadID.load(ordering: .acquiring) == UInt(pthread_self())
    }

    /// The number of waits currently registered (readable and writable waits counted separately).
    /// For diagnostics and tests; the value may be stale as soon as it is returned.
    public var pendingWaitCount: Int {
        lock()
        defer { unlock() }
        return state.pointee.pendingCount
    }

    // MARK: - Waiting

    private func wait(_ fd: Int32, writable: Bool, deadline: ContinuousClock.Instant?) async throws {
        // The reactor thread often resumes a continuation before its task has suspended; the Swift 6.3
        // runtime then omits the ThreadSanitizer acquire that pairs with the resumer's release (see
        // ConnPool's ThreadSanitizerAnnotations). Record it here so TSan sees the ordering.
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        guard fd >= 0 else {
            throw IOReactorError.systemError(errno: EBADF, operation: operationName(fd, writable))
        }
        let id = nextWaitID.wrappingAdd(1, ordering: .relaxed).oldValue
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                switch register(fd, writable: writable, deadline: deadline, id: id, continuation) {
                case .waiting: break
                case .readyNow: continuation.resume()
                case .failed(let error): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            cancelWait(fd, writable: writable, id: id)
        }
    }

    /// Registers a waiter, or says to resume it at once (ready, or with an error).
    private func register(
        _ fd: Int32,
        writable: Bool,
        deadline: ContinuousClock.Instant?,
        id: UInt64,
        _ continuation: UnsafeContinuation<Void, any Error>
    ) -> Registration {
        lock()
        defer { unlock() }
        let s = state
        if s.pointee.isShutDown {
            return .failed(IOReactorError.closed)
        }
        // The cancellation handler may already have run (and found nothing to remove): the flag it was
        // triggered by is set before it runs, and the lock orders us after it.
        if Task.isCancelled {
            return .failed(CancellationError())
        }
        if let deadline, deadline <= ContinuousClock.now {
            return .failed(IOReactorError.timedOut)
        }
        let index = Int(fd)
        if index >= s.pointee.entries.count {
            s.pointee.growEntries(toInclude: index)
        }
        if s.pointee.entries[index].persistent {
            // An edge that came while nobody waited: ready now (a stale one costs the caller one read
            // that finds EAGAIN, and the next wait).
            if writable ? s.pointee.entries[index].writeReady : s.pointee.entries[index].readReady {
                if writable { s.pointee.entries[index].writeReady = false } else { s.pointee.entries[index].readReady = false }
                return .readyNow
            }
        }
        if writable ? s.pointee.entries[index].writer != nil : s.pointee.entries[index].reader != nil {
            return .failed(IOReactorError.systemError(
                errno: EBUSY,
                operation: operationName(fd, writable) + " (another task already waits for the same descriptor and direction)"
            ))
        }
        let waiter = Waiter(continuation: continuation, id: id, heapIndex: -1)
        if writable {
            s.pointee.entries[index].writer = waiter
        } else {
            s.pointee.entries[index].reader = waiter
        }
        if let deadline {
            // Sets the waiter's heapIndex (and those of the entries it moves).
            s.pointee.heapInsert(HeapEntry(deadline: deadline, fd: fd, writable: writable))
        }
        if !s.pointee.entries[index].persistent, let code = arm(fd) {
            // Undo: the wait never reached epoll.
            _ = s.pointee.removeWaiter(fd: fd, writable: writable)
            return .failed(IOReactorError.systemError(errno: code, operation: "epoll_ctl for " + operationName(fd, writable)))
        }
        s.pointee.pendingCount += 1
        // Wake the reactor thread only if it sleeps past the new deadline.
        if let deadline, s.pointee.isSleeping, !s.pointee.wakePending {
            if let until = s.pointee.sleepingUntil, until <= deadline {
                return .waiting
            }
            s.pointee.wakePending = true
            signalWake()
        }
        return .waiting
    }

    private func cancelWait(_ fd: Int32, writable: Bool, id: UInt64) {
        lock()
        let index = Int(fd)
        let s = state
        guard index < s.pointee.entries.count else {
            unlock()
            return
        }
        let current = writable ? s.pointee.entries[index].writer : s.pointee.entries[index].reader
        guard let current, current.id == id else {
            unlock()  // already resumed (ready, timed out, closed) or not registered yet
            return
        }
        let waiter = s.pointee.removeWaiter(fd: fd, writable: writable)
        s.pointee.pendingCount -= 1
        rearmRemaining(fd)
        unlock()
        waiter?.continuation.resume(throwing: CancellationError())
    }

    /// Arms `fd` in epoll for the directions that have waiters, with a new generation.
    /// Called with the lock held. Returns an errno on failure.
    private func arm(_ fd: Int32) -> Int32? {
        let index = Int(fd)
        let s = state
        var mask: UInt32 = EpollSys.oneShot
        if s.pointee.entries[index].reader != nil {
            mask |= EpollSys.readable | EpollSys.readHangUp
        }
        if s.pointee.entries[index].writer != nil {
            mask |= EpollSys.writable
        }
        s.pointee.entries[index].generation &+= 1
        let data = UInt64(s.pointee.entries[index].generation) << 32 | UInt64(UInt32(bitPattern: fd))
        let first = s.pointee.entries[index].inEpoll ? EpollSys.modify : EpollSys.add
        if EpollSys.control(epollFD, first, fd, events: mask, data: data) == 0 {
            s.pointee.entries[index].inEpoll = true
            return nil
        }
        let code = errno
        // MOD on a descriptor epoll forgot (it was closed and the number reused) or ADD on one it
        // still knows: retry with the other operation.
        if (first == EpollSys.modify && code == ENOENT) || (first == EpollSys.add && code == EEXIST) {
            let second = first == EpollSys.modify ? EpollSys.add : EpollSys.modify
            if EpollSys.control(epollFD, second, fd, events: mask, data: data) == 0 {
                s.pointee.entries[index].inEpoll = true
                return nil
            }
            return errno
        }
        return code
    }

    /// After a waiter left, re-arms the descriptor for the direction still waited on, if any.
    /// Called with the lock held. A one-shot arming with no waiter left is harmless: if it fires, the
    /// event finds no waiter (or a newer generation) and is ignored.
    private func rearmRemaining(_ fd: Int32) {
        let index = Int(fd)
        guard !state.pointee.entries[index].persistent,
            state.pointee.entries[index].reader != nil || state.pointee.entries[index].writer != nil
        else {
            return
        }
        if let code = arm(fd) {
            // The descriptor can no longer be watched (closed under us?): fail the remaining waiter
            // rather than leaving it hanging. Resumed by the reactor thread's next pass.
            state.pointee.failRemaining(fd: fd, error: IOReactorError.systemError(errno: code, operation: "epoll_ctl (re-arm) for fd \(fd)"))
            signalWake()
        }
    }

    private func operationName(_ fd: Int32, _ writable: Bool) -> String {
        (writable ? "waitWritable(fd: " : "waitReadable(fd: ") + String(fd) + ")"
    }

    // MARK: - Reactor thread

    private func runLoop() {
        reactorThreadID.store(UInt(pthread_self()), ordering: .releasing)
        let s = state
        var toResume: [(UnsafeContinuation<Void, any Error>, (any Error)?)] = []
        toResume.reserveCapacity(Int(IOReactor.maxEvents))
        var running: [UnownedJob] = []
        running.reserveCapacity(256)
        var roundEnders: [UnsafeContinuation<Void, Never>] = []
        roundEnders.reserveCapacity(256)
        while true {
            // 1. Under the lock: expire deadlines, plan the sleep.
            lock()
            if s.pointee.isShutDown {
                s.pointee.drainAll(into: &toResume, error: IOReactorError.closed)
                s.pointee.pendingCount = 0
                unlock()
                IOReactor.resumeAll(&toResume)
                // Jobs enqueued on a reactor that is shutting down still run (a task must not be lost),
                // here, on its thread, before it ends; later ones run on the global executor.
                runJobs(&running, rounds: Int.max)
                lock()
                let enders = s.pointee.endOfRound
                s.pointee.endOfRound.removeAll()
                unlock()
                for continuation in enders { continuation.resume(with: .success(())) }
                runJobs(&running, rounds: Int.max)
                return
            }
            s.pointee.takeFailed(into: &toResume)
            var timeoutMS: Int32 = -1
            s.pointee.sleepingUntil = nil
            if !s.pointee.heap.isEmpty || s.pointee.lastDeadlineSeen != nil {
                let now = ContinuousClock.now
                while let top = s.pointee.heap.first, top.deadline <= now {
                    if let waiter = s.pointee.removeWaiter(fd: top.fd, writable: top.writable) {
                        s.pointee.pendingCount -= 1
                        toResume.append((waiter.continuation, IOReactorError.timedOut))
                        rearmRemaining(top.fd)
                    } else {
                        s.pointee.heapRemove(at: 0)  // cannot happen; never loop forever on it
                    }
                }
                if let top = s.pointee.heap.first {
                    s.pointee.lastDeadlineSeen = now
                    timeoutMS = IOReactor.milliseconds(from: now, to: top.deadline)
                    s.pointee.sleepingUntil = top.deadline
                } else if let last = s.pointee.lastDeadlineSeen, last.duration(to: now) < IOReactor.idleTickSpan {
                    // Deadlines were in use a moment ago: wake on a tick rather than sleeping without a
                    // limit, so that the next wait with a deadline further away than the tick (the usual
                    // case: I/O timeouts are seconds long) need not wake this thread through the eventfd.
                    timeoutMS = IOReactor.milliseconds(from: now, to: now + IOReactor.idleTick)
                    s.pointee.sleepingUntil = now + IOReactor.idleTick
                } else {
                    s.pointee.lastDeadlineSeen = nil  // idle for a while: sleep until an event
                }
            }
            if !toResume.isEmpty || !s.pointee.jobs.isEmpty || !s.pointee.endOfRound.isEmpty {
                timeoutMS = 0  // resume and run first, then look again without sleeping
            }
            s.pointee.isSleeping = timeoutMS != 0
            unlock()
            IOReactor.resumeAll(&toResume)
            runJobs(&running)
            endRound(&running, &roundEnders)

            // 2. Wait for events.
            let count = EpollSys.wait(epollFD, events, IOReactor.maxEvents, timeoutMS)
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                fatalError("IOReactor: epoll_wait failed: \(String(cString: strerror(code))) (errno \(code))")
            }

            // 3. Under the lock: hand the events to their waiters.
            lock()
            s.pointee.isSleeping = false
            for i in 0..<Int(count) {
                let (flags, token) = EpollSys.loadEvent(at: i, in: events)
                if token == IOReactor.wakeToken {
                    var value: UInt64 = 0
                    _ = read(wakeFD, &value, 8)
                    s.pointee.wakePending = false
                    continue
                }
                let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: token))
                let generation = UInt32(truncatingIfNeeded: token >> 32)
                let index = Int(fd)
                guard index < s.pointee.entries.count, s.pointee.entries[index].generation == generation else {
                    continue  // from an older arming: the current one (if any) reports on its own
                }
                let failed = flags & (EpollSys.error | EpollSys.hangUp) != 0
                let readable = failed || flags & (EpollSys.readable | EpollSys.readHangUp | EpollSys.priority) != 0
                let writable = failed || flags & EpollSys.writable != 0
                if readable {
                    if let waiter = s.pointee.removeWaiter(fd: fd, writable: false) {
                        s.pointee.pendingCount -= 1
                        toResume.append((waiter.continuation, nil))
                    } else if s.pointee.entries[index].persistent {
                        s.pointee.entries[index].readReady = true  // for the next wait
                    }
                }
                if writable {
                    if let waiter = s.pointee.removeWaiter(fd: fd, writable: true) {
                        s.pointee.pendingCount -= 1
                        toResume.append((waiter.continuation, nil))
                    } else if s.pointee.entries[index].persistent {
                        s.pointee.entries[index].writeReady = true
                    }
                }
                // The one-shot arming is spent: re-arm for a direction still waited on.
                rearmRemaining(fd)
            }
            unlock()
            // Tasks that prefer this reactor as their executor are enqueued here by the resumptions
            // and run right away on this thread: no hand-off to another thread.
            IOReactor.resumeAll(&toResume)
            runJobs(&running)
            endRound(&running, &roundEnders)
        }
    }

    /// Resumes the tasks that waited for the end of the round (they run now, one after the other), and
    /// runs what they enqueue.
    private func endRound(_ running: inout [UnownedJob], _ enders: inout [UnsafeContinuation<Void, Never>]) {
        lock()
        if state.pointee.endOfRound.isEmpty {
            unlock()
            return
        }
        swap(&enders, &state.pointee.endOfRound)
        unlock()
        for continuation in enders { continuation.resume() }
        enders.removeAll(keepingCapacity: true)
        runJobs(&running)
    }

    /// Runs the jobs enqueued so far (and those they enqueue, for up to `rounds` rounds, so that events
    /// are not starved), on this thread, outside the lock.
    private func runJobs(_ running: inout [UnownedJob], rounds: Int = 4) {
        for _ in 0..<rounds {
            lock()
            if state.pointee.jobs.isEmpty {
                unlock()
                return
            }
            swap(&running, &state.pointee.jobs)
            unlock()
            let executor = asUnownedTaskExecutor()
            for job in running {
                job.runSynchronously(on: executor)
            }
            running.removeAll(keepingCapacity: true)
        }
    }

    private static func resumeAll(_ list: inout [(UnsafeContinuation<Void, any Error>, (any Error)?)]) {
        for (continuation, error) in list {
            if let error {
                continuation.resume(throwing: error)
            } else {
                continuation.resume()
            }
        }
        list.removeAll(keepingCapacity: true)
    }

    /// Milliseconds from `now` to `deadline`, rounded up so that a timeout never fires early.
    private static func milliseconds(from now: ContinuousClock.Instant, to deadline: ContinuousClock.Instant) -> Int32 {
        let remaining = now.duration(to: deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        let attosecondsPerMS: Int64 = 1_000_000_000_000_000
        var ms = seconds.multipliedReportingOverflow(by: 1000)
        if ms.overflow || ms.partialValue > Int64(Int32.max) { return Int32.max }
        ms.partialValue += (attoseconds + attosecondsPerMS - 1) / attosecondsPerMS
        return Int32(clamping: ms.partialValue)
    }

    private func signalWake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    @inline(__always)
    private func lock() {
        pthread_mutex_lock(mutex)
    }

    @inline(__always)
    private func unlock() {
        pthread_mutex_unlock(mutex)
    }
}

// MARK: - State (touched only with the reactor's mutex held)

/// What `register` did with a wait.
private enum Registration {
    /// Stored: the reactor resumes it.
    case waiting
    /// A persistent descriptor whose edge came before the wait: resume at once, no allocation.
    case readyNow
    /// Refused: resume with this error at once.
    case failed(any Error)
}

private struct Waiter {
    var continuation: UnsafeContinuation<Void, any Error>
    var id: UInt64
    /// Position in the deadline heap, or -1 without a deadline.
    var heapIndex: Int
}

private struct FDEntry {
    var reader: Waiter?
    var writer: Waiter?
    /// Bumped on every arming; carried in the epoll event to recognise stale events.
    var generation: UInt32 = 0
    /// Whether this descriptor number was added to the epoll set (it may since have been closed).
    var inEpoll = false
    /// Registered for good, edge-triggered (``IOReactor/register(_:)``): waits store themselves without
    /// an `epoll_ctl`, and an edge that finds no waiter is kept in `readReady`/`writeReady`.
    var persistent = false
    /// An edge arrived while no task waited to read (persistent registrations only).
    var readReady = false
    /// An edge arrived while no task waited to write (persistent registrations only).
    var writeReady = false
}

private struct HeapEntry {
    var deadline: ContinuousClock.Instant
    var fd: Int32
    var writable: Bool
}

private struct ReactorState {
    var entries: [FDEntry] = []
    var heap: [HeapEntry] = []
    /// Waiters failed outside the reactor thread (a re-arm that failed), resumed by its next pass.
    var failed: [(UnsafeContinuation<Void, any Error>, any Error)] = []
    var pendingCount = 0
    var isShutDown = false
    var threadStarted = false
    var isSleeping = false
    var sleepingUntil: ContinuousClock.Instant?
    /// When the reactor thread last saw a pending deadline; nil once it has been idle for a while.
    var lastDeadlineSeen: ContinuousClock.Instant?
    var wakePending = false
    /// Jobs enqueued on the reactor as a task executor, run by its thread in order.
    var jobs: [UnownedJob] = []
    /// Tasks on the reactor thread waiting for the end of the current round (``IOReactor/waitForEndOfRound()``).
    var endOfRound: [UnsafeContinuation<Void, Never>] = []

    init() {
        entries.reserveCapacity(1024)
        heap.reserveCapacity(256)
        jobs.reserveCapacity(256)
        endOfRound.reserveCapacity(256)
    }

    mutating func growEntries(toInclude index: Int) {
        var newCount = Swift.max(entries.count * 2, 64)
        while newCount <= index { newCount *= 2 }
        entries.append(contentsOf: repeatElement(FDEntry(), count: newCount - entries.count))
    }

    /// Removes and returns the waiter of `fd` in one direction, taking its deadline off the heap.
    mutating func removeWaiter(fd: Int32, writable: Bool) -> Waiter? {
        let index = Int(fd)
        guard let waiter = writable ? entries[index].writer : entries[index].reader else {
            return nil
        }
        if writable {
            entries[index].writer = nil
        } else {
            entries[index].reader = nil
        }
        if waiter.heapIndex >= 0 {
            heapRemove(at: waiter.heapIndex)
        }
        return waiter
    }

    mutating func failRemaining(fd: Int32, error: any Error) {
        if let waiter = removeWaiter(fd: fd, writable: false) {
            pendingCount -= 1
            failed.append((waiter.continuation, error))
        }
        if let waiter = removeWaiter(fd: fd, writable: true) {
            pendingCount -= 1
            failed.append((waiter.continuation, error))
        }
    }

    mutating func takeFailed(into list: inout [(UnsafeContinuation<Void, any Error>, (any Error)?)]) {
        for (continuation, error) in failed {
            list.append((continuation, error))
        }
        failed.removeAll(keepingCapacity: true)
    }

    mutating func drainAll(into list: inout [(UnsafeContinuation<Void, any Error>, (any Error)?)], error: any Error) {
        takeFailed(into: &list)
        for index in entries.indices {
            if let waiter = entries[index].reader {
                list.append((waiter.continuation, error))
                entries[index].reader = nil
            }
            if let waiter = entries[index].writer {
                list.append((waiter.continuation, error))
                entries[index].writer = nil
            }
        }
        heap.removeAll()
    }

    // Indexed binary min-heap on deadline; each move updates the owning waiter's heapIndex.

    mutating func heapInsert(_ entry: HeapEntry) {
        heap.append(entry)
        siftUp(heap.count - 1)
    }

    mutating func heapRemove(at position: Int) {
        let last = heap.count - 1
        if position != last {
            heap.swapAt(position, last)
            setHeapIndex(of: heap[position], to: position)
        }
        heap.removeLast()
        if position < heap.count {
            let moved = siftUp(position)
            if moved == position {
                siftDown(position)
            }
        }
    }

    private mutating func setHeapIndex(of entry: HeapEntry, to position: Int) {
        let index = Int(entry.fd)
        if entry.writable {
            entries[index].writer?.heapIndex = position
        } else {
            entries[index].reader?.heapIndex = position
        }
    }

    @discardableResult
    private mutating func siftUp(_ start: Int) -> Int {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[child].deadline < heap[parent].deadline {
                heap.swapAt(child, parent)
                setHeapIndex(of: heap[child], to: child)
                child = parent
            } else {
                break
            }
        }
        setHeapIndex(of: heap[child], to: child)
        return child
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        let count = heap.count
        while true {
            let left = 2 * parent + 1
            if left >= count { break }
            var smallest = left
            let right = left + 1
            if right < count, heap[right].deadline < heap[left].deadline {
                smallest = right
            }
            if heap[smallest].deadline < heap[parent].deadline {
                heap.swapAt(smallest, parent)
                setHeapIndex(of: heap[parent], to: parent)
                parent = smallest
            } else {
                break
            }
        }
        setHeapIndex(of: heap[parent], to: parent)
    }
}

// MARK: - The reactor as a task executor

extension IOReactor: TaskExecutor {
    /// Runs `job` on the reactor thread (SE-0417 task executors).
    ///
    /// A task that prefers the reactor as its executor (``withTaskExecutorPreference(_:isolation:operation:)``
    /// or `Task(executorPreference: IOReactor.shared)`) runs on the reactor thread, and when one of its
    /// waits ends the reactor resumes it in place: no hand-off to a cooperative thread and back per
    /// reply. That is the event-loop model (NIO's): the lowest client CPU per request, all such tasks on
    /// one thread. Such a task must never block (no blocking pool call, no `sleep`, no long computation):
    /// it would stall every wait in the process.
    ///
    /// A job enqueued from another thread wakes the reactor (an `eventfd` write) when it sleeps; one
    /// enqueued by the reactor thread itself (the usual case: a resumed continuation) just joins its
    /// queue. After ``shutdown()`` jobs run on the global concurrent executor instead.
    public func enqueue(_ job: consuming ExecutorJob) {
        let onReactorThread = reactorThreadID.load(ordering: .acquiring) == UInt(pthread_self())
        lock()
        if state.pointee.isShutDown && !onReactorThread {
            unlock()
            globalConcurrentExecutor.enqueue(job)
            return
        }
        state.pointee.jobs.append(UnownedJob(job))
        let wake = !onReactorThread && state.pointee.isSleeping && !state.pointee.wakePending
        if wake { state.pointee.wakePending = true }
        unlock()
        if wake { signalWake() }
    }
}
