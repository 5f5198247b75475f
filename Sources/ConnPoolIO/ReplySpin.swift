import Glibc
import Synchronization

/// A short busy-wait for a reply, for a request that is the only socket operation under way in the
/// process: the backends' latency trick at concurrency 1.
///
/// A loopback or LAN reply comes back within tens of microseconds. Waiting for it the usual way costs
/// more than that on a small VM: a blocking `poll()` puts the thread to sleep and the kernel wakes it
/// (measured here: ~58 µs per PING round trip in the blocking API), and an async wait arms epoll, wakes
/// the ``IOReactor`` thread and then a cooperative thread (~1.9 context switches per request). Polling
/// the socket for up to ``budget`` first catches the reply on the running thread.
///
/// The spin only pays off when the CPU it burns is spare. With other operations under way (more
/// connections, more threads or tasks than cores), it would take a core from them and from the server,
/// so it is skipped: a connection counts every operation in with ``begin()`` and out with ``end()``,
/// over all connections and both backends, and spins only when ``begin()`` said it was alone. (When
/// the Redis backend's spin also ran at concurrency 8, it lost 10 % of its PINGs per second.)
public enum ReplySpin {
    /// The longest a spin polls before the caller waits the usual way.
    public static let budget: Duration = .microseconds(30)

    /// Socket operations under way in this process, from before the send to the last reply. Relaxed:
    /// a heuristic, read once per operation; nothing else is ordered by it.
    private static let operationsInFlight = Atomic<Int>(0)

    /// Counts an operation in. Call once per request, paired with ``end()``.
    ///
    /// - Returns: `true` when no other operation is under way in the process, i.e. when the caller may
    ///   spin with ``waitReadable(_:)``.
    @inline(__always)
    public static func begin() -> Bool {
        operationsInFlight.add(1, ordering: .relaxed).newValue == 1
    }

    /// Counts an operation out.
    @inline(__always)
    public static func end() {
        operationsInFlight.subtract(1, ordering: .relaxed)
    }

    /// Operations counted in and not yet out: 0 whenever no socket operation is under way. For tests
    /// and diagnostics (a count that never comes back to 0 would turn the spin off for good).
    public static var operationsUnderWay: Int {
        operationsInFlight.load(ordering: .relaxed)
    }

    /// Polls `fd` for readability (or an error or hang-up, which the next read reports) with
    /// zero-timeout `poll()` calls, for at most ``budget``.
    ///
    /// - Returns: `true` when the descriptor became readable; `false` after ``budget``, when the caller
    ///   waits the usual way (a blocking `poll()` or the ``IOReactor``).
    public static func waitReadable(_ fd: Int32) -> Bool {
        let until = ContinuousClock.now + budget
        repeat {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 0) > 0 { return true }
        } while ContinuousClock.now < until
        return false
    }
}
