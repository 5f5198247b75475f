internal import CConnPoolIO
import Glibc
import Synchronization

/// Whether a connection may poll briefly for a reply before it waits the usual way (see ``ReplySpin``).
public enum ReplySpinPolicy: Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Spin while this connection's recent replies came within ``ReplySpin/budget`` and no other socket
    /// operation is under way in the process; after a run of late replies, stop and try again only
    /// every ``ReplySpin/probeInterval``-th wait. The default.
    case adaptive
    /// Never spin: every wait for a reply sleeps in `poll()` or suspends on the ``IOReactor`` at once.
    /// For a process whose spare CPU matters more than the latency of a lone request.
    case disabled

    /// `adaptive` or `disabled`.
    public var description: String {
        switch self {
        case .adaptive: return "adaptive"
        case .disabled: return "disabled"
        }
    }
}

/// A short busy-wait for a reply, for a request that is the only socket operation under way in the
/// process and whose connection's replies have recently come quickly: the backends' latency trick at
/// concurrency 1.
///
/// A loopback or LAN reply comes back within tens of microseconds. Waiting for it the usual way costs
/// more than that on a small VM: a blocking `poll()` puts the thread to sleep and the kernel wakes it
/// (measured here: ~58 µs per PING round trip in the blocking API), and an async wait arms epoll, wakes
/// the ``IOReactor`` thread and then a cooperative thread (~1.9 context switches per request). Polling
/// the socket for up to ``budget`` first catches the reply on the running thread.
///
/// The spin only pays off when the reply comes within the budget and the CPU it burns is spare, so a
/// connection's ``Gate`` spins only when both hold:
/// - **Its recent replies came in time.** The gate keeps a small saturating score: a spin that caught
///   the reply raises it, one that gave up lowers it. At zero the connection stops spinning (a server
///   300 µs away would otherwise burn 100 µs per request for nothing) and spins again only once every
///   ``probeInterval`` waits; a caught probe brings it back, for a server that has come close again.
/// - **No other operation is under way.** With more connections, threads or tasks at work, a spin
///   would take a core from them and from the server (when the Redis backend's spin also ran at
///   concurrency 8, it lost 10 % of its PINGs per second). Every operation counts itself in and out
///   (``Gate/begin()``, ``Gate/end()``) on striped per-CPU counters, summed only when a connection is
///   about to spin (see "The operation count" below).
///
/// ## The operation count
/// Hand-written because it is the hot path: every request of both backends counts itself in and out,
/// and one shared atomic counter (the first version) is a cache line that every core writes twice per
/// request. Here the count is split into ``stripeCount`` counters, one 128-byte block each (two cache
/// lines: Intel's adjacent-line prefetcher pulls lines in pairs, so 64 bytes would still share), and an
/// operation counts itself in on the stripe of the CPU it starts on and out on the same stripe. A
/// thread mostly writes its own CPU's line; a core reads the others only when its connection is about
/// to spin, and stops reading as soon as it has seen one other operation.
///
/// Memory ordering, and why each choice is safe:
/// - **All accesses are relaxed.** The count publishes no data: it only steers a heuristic, and every
///   outcome of a stale read is harmless. Reading "alone" when another operation has just started costs
///   that operation at most ``budget`` of CPU; reading "not alone" when the others have just finished
///   costs one reply its usual wake-up. Neither affects what a request returns.
/// - **The caller sees its own count.** Its increment and its later loads run on one thread, or on
///   threads ordered by the task's resumption (happens-before), so by coherence its load of its own
///   stripe returns its increment or a later value: the sum is at least 1 for the caller itself.
/// - **A stripe never goes below zero.** An operation's decrement happens after its increment on the
///   same atomic, so both sit in that order in the stripe's modification order, and every value of a
///   stripe is a count of operations counted in on it. A partial sum is therefore a lower bound of what
///   those stripes held when read, which is what lets the sum stop early at 2 ("someone else is
///   here"). (Decrementing on the CPU an operation ends on would keep lines more local, but stripes
///   could then go negative and only a full sum would mean anything.)
/// - **The sum is not a snapshot.** Stripes are read one after the other, so an operation that starts
///   or ends during the reads may be counted or missed: the sum's error is bounded by the operations
///   that begin or end within those few nanoseconds, which is harmless as above.
/// - **The stripe an operation counted in on** is a plain stored property of the connection's gate,
///   written by ``Gate/begin()`` and read by ``Gate/end()``, both by the holder of the connection:
///   the connection's own in-use flag orders them.
public enum ReplySpin {
    /// The longest a spin polls before the caller waits the usual way.
    ///
    /// 100 µs: on a quiet 2-core VM a loopback reply came within the first budget, 30 µs, but on the
    /// same VM slowed by a busy host it came later, and a budget shorter than the reply stops the spin
    /// exactly when a wake-up costs most. Measured on such a slowed host (Benchmarks/README.md, "the spin budget"), PING
    /// at concurrency 1: 30 µs gave 1.25–1.31× redis-benchmark, 100 µs 3.3–3.8×, 200 µs no more than
    /// 100 µs. The budget only bounds a spin that fails; one that catches its reply ends at once.
    public static let budget: Duration = .microseconds(100)

    /// The highest score a ``Gate`` keeps: this many late replies in a row, from a record of replies
    /// in time, stop a connection's spin.
    package static let maximumScore: Int8 = 8

    /// The score a caught probe restarts a stopped connection at: half the maximum, so that one lucky
    /// probe to a distant server costs at most this many spins before it stops again.
    package static let restartScore: Int8 = 4

    /// A stopped connection spins again once every this many waits for a reply, to notice a server
    /// that has come close again. At 64, a server 300 µs away costs one 100 µs spin every 64 requests:
    /// about 1.6 µs of CPU per request, 0.5 % of its round trip.
    public static let probeInterval = 64

    /// Operations counted in and not yet out, over all stripes: 0 whenever no socket operation is under
    /// way. For tests and diagnostics (a count that never came back to 0 would turn the spin off for
    /// good). Not a snapshot: see "The operation count".
    public static var operationsUnderWay: Int {
        var total = 0
        for stripe in 0..<counters.count { total &+= counters.load(stripe) }
        return total
    }

    /// How many striped counters hold the operation count: the number of CPUs rounded up to a power of
    /// two, at most 64.
    public static var stripeCount: Int { counters.count }

    /// Polls `fd` for readability (or an error or hang-up, which the next read reports) with
    /// zero-timeout `poll()` calls, for at most ``budget``. Unconditional: connections go through their
    /// ``Gate`` instead, which decides whether to call this.
    ///
    /// - Returns: `true` when the descriptor became readable; `false` after ``budget``, when the caller
    ///   waits the usual way (a blocking `poll()` or the ``IOReactor``).
    public static func waitReadable(_ fd: Int32) -> Bool {
        spin(fd) != .gaveUp
    }

    /// How a spin ended.
    enum Outcome {
        /// The descriptor became readable within ``ReplySpin/budget``.
        case caught
        /// It was readable, but only when the spin looked again after the budget had run out: the
        /// thread lost its CPU mid-spin (a loaded machine), so the reply's timing says nothing about
        /// the server's distance.
        case late
        /// Not readable within the budget.
        case gaveUp
    }

    /// ``waitReadable(_:)``, telling a reply caught in time from one found after the budget ran out.
    static func spin(_ fd: Int32) -> Outcome {
        let until = ContinuousClock.now + budget
        repeat {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 0) > 0 { return ContinuousClock.now <= until ? .caught : .late }
        } while ContinuousClock.now < until
        return .gaveUp
    }

    /// The stripe for an operation starting now: its CPU's.
    static func currentStripe() -> Int {
        let cpu = sched_getcpu()
        return cpu < 0 ? 0 : Int(cpu) & counters.mask
    }

    /// `true` when no operation other than the caller's, counted in on `stripe`, is under way. Reads
    /// the caller's stripe first, then the others, and stops at the first sign of another operation.
    static func isAlone(countedInOn stripe: Int) -> Bool {
        var seen = counters.load(stripe)
        if seen > 1 { return false }
        for other in 0..<counters.count where other != stripe {
            seen &+= counters.load(other)
            if seen > 1 { return false }
        }
        return true
    }

    private static let counters = StripedCounter()
}

/// The striped operation count (see "The operation count" at ``ReplySpin``): ``count`` atomics, each
/// alone in a 128-byte block, allocated once and never freed (the one instance is a static).
///
/// `@unchecked Sendable` is safe because the only stored properties are immutable (`base`, `count`,
/// `mask`), and the memory behind `base` is touched only through the `Atomic<Int>` values initialized
/// in it before `init` returns, which a `static let`'s one-time initialization publishes to every
/// thread that reads the static.
final class StripedCounter: @unchecked Sendable {
    /// Bytes per stripe: two cache lines, so that no two stripes share a line or an adjacent-line pair.
    static let stride = 128

    /// The number of stripes, a power of two.
    let count: Int
    /// `count - 1`, to map a CPU number to a stripe.
    let mask: Int
    private let base: UnsafeMutableRawPointer

    init() {
        let processors = max(1, sysconf(Int32(_SC_NPROCESSORS_CONF)))
        var count = 1
        while count < processors && count < 64 { count <<= 1 }
        self.count = count
        mask = count - 1
        base = .allocate(byteCount: count * Self.stride, alignment: Self.stride)
        for stripe in 0..<count {
            (base + stripe * Self.stride).bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic(0))
        }
    }

    private func counter(_ stripe: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        (base + stripe &* Self.stride).assumingMemoryBound(to: Atomic<Int>.self)
    }

    func increment(_ stripe: Int) { counter(stripe).pointee.add(1, ordering: .relaxed) }
    func decrement(_ stripe: Int) { counter(stripe).pointee.subtract(1, ordering: .relaxed) }
    func load(_ stripe: Int) -> Int { counter(stripe).pointee.load(ordering: .relaxed) }
}

extension ReplySpin {
    /// What one connection's ``Gate`` did with its waits for a reply. Counts only; for tests and
    /// diagnostics.
    package struct Statistics: Sendable, Hashable, CustomStringConvertible {
        /// Waits for readability that reached the gate, whatever it decided.
        package var waits = 0
        /// Spins started, probes included.
        package var spins = 0
        /// Spins that found the reply within ``ReplySpin/budget``.
        package var caught = 0
        /// Waits that did not spin because the connection's recent replies came too late.
        package var skippedLate = 0
        /// Waits that did not spin because other operations were under way.
        package var skippedBusy = 0

        /// Spins that gave up after ``ReplySpin/budget``.
        package var gaveUp: Int { spins - caught }

        package init() {}

        package var description: String {
            "waits: \(waits), spins: \(spins) (caught \(caught), gave up \(gaveUp)), "
                + "skipped: \(skippedLate) late, \(skippedBusy) busy"
        }
    }

    /// One connection's reply spin: its count in and out of the process-wide operation count, and its
    /// record of whether recent replies came within ``ReplySpin/budget`` (see ``ReplySpin``).
    ///
    /// A plain value, stored in the connection and touched only by the operation that holds the
    /// connection (the connections claim themselves with an atomic flag per operation, which orders
    /// one holder's accesses before the next's). No allocation, no atomics of its own.
    package struct Gate: Sendable {
        private let adaptive: Bool
        /// 0: stopped (late replies); up to ``ReplySpin/maximumScore``.
        private var score: Int8
        /// While stopped: waits left before the next probe.
        private var waitsUntilProbe: Int32 = 0
        /// The stripe the current operation counted itself in on; -1 between operations.
        private var stripe = -1
        /// What the gate did so far.
        package private(set) var statistics = Statistics()

        /// A gate for a new connection: with `.adaptive`, it starts out spinning, as if its recent replies
        /// had all come in time.
        package init(policy: ReplySpinPolicy) {
            adaptive = policy == .adaptive
            score = ReplySpin.maximumScore
        }

        /// Whether the connection's record lets it spin (``ReplySpinPolicy/adaptive`` and not stopped
        /// by late replies). For tests and diagnostics.
        package var isSpinning: Bool { adaptive && score > 0 }

        /// Counts the connection's operation in. Call once per operation, after claiming the
        /// connection, paired with ``end()``.
        package mutating func begin() {
            assert(stripe < 0, "ReplySpin.Gate.begin() twice without end()")
            stripe = ReplySpin.currentStripe()
            ReplySpin.counters.increment(stripe)
        }

        /// Counts the operation out again, on the stripe it counted in on.
        ///
        /// - Precondition: ``begin()`` was called and this operation has not ended yet.
        package mutating func end() {
            precondition(stripe >= 0, "ReplySpin.Gate.end() without begin()")
            ReplySpin.counters.decrement(stripe)
            stripe = -1
        }

        /// Waits up to ``ReplySpin/budget`` for `fd` to become readable, if this connection's record
        /// says so and no other operation is under way; else returns at once. Records the outcome.
        ///
        /// - Precondition: between ``begin()`` and ``end()``.
        /// - Returns: `true` when `fd` became readable; `false` when the caller must wait the usual
        ///   way.
        package mutating func waitReadable(_ fd: Int32) -> Bool {
            guard mayTry() else { return false }
            guard ReplySpin.isAlone(countedInOn: stripe) else {
                statistics.skippedBusy &+= 1
                return false
            }
            // A reply found only after the budget ran out (the thread was descheduled mid-spin) counts
            // as late: it must not restart a stopped connection's spin.
            let outcome = ReplySpin.spin(fd)
            record(caught: outcome == .caught)
            return outcome != .gaveUp
        }

        /// The record's half of the decision, with its bookkeeping: `true` when the connection may
        /// spin now (spinning, or stopped with a probe due). Call ``record(caught:)`` after a spin.
        package mutating func mayTry() -> Bool {
            statistics.waits &+= 1
            guard adaptive else { return false }
            if score == 0 {
                if waitsUntilProbe > 0 {
                    waitsUntilProbe -= 1
                    statistics.skippedLate &+= 1
                    return false
                }
                // A probe is due. Should it not run (others under way), the next wait probes instead.
            }
            return true
        }

        /// Records a spin's outcome: `caught` (the reply came within the budget) raises the score, a
        /// spin that gave up lowers it; reaching zero stops the spin until a probe catches a reply.
        package mutating func record(caught: Bool) {
            statistics.spins &+= 1
            if caught {
                statistics.caught &+= 1
                score = score == 0 ? ReplySpin.restartScore : min(score + 1, ReplySpin.maximumScore)
            } else if score > 0 {
                score -= 1
                if score == 0 { waitsUntilProbe = Int32(ReplySpin.probeInterval - 1) }
            } else {
                waitsUntilProbe = Int32(ReplySpin.probeInterval - 1)
            }
        }
    }
}
