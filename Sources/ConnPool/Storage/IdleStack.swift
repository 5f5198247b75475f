public import Synchronization

/// One slot's fast-lane data, alone on a 64-byte cache line: cores that park and take different slots
/// never write to the same line (only `IdleStack`'s head is shared).
@usableFromInline
struct ParkedSlot: ~Copyable {
    /// The slot below this one on the stack (index + 1, 0: none).
    @usableFromInline let next: Atomic<UInt32>
    /// The generation of the parked lease.
    @usableFromInline var generation: UInt32
    /// When the lease was parked (coarse monotonic nanoseconds): the connection's `lastUsed`.
    @usableFromInline var parkedAt: Int64
    /// When the slot's connection reaches its maximum lifetime: a copy of the state machine's value,
    /// written under the mutex when the connection is installed (before any lease of it exists), so a
    /// fast release can close an expired connection instead of parking it.
    @usableFromInline var expiresAt: Int64
    /// The parked connection, retained (`Unmanaged`), while the slot is parked; nil otherwise.
    @usableFromInline var connection: UnsafeMutableRawPointer?
    /// How many times the fast lane lent this slot. Written only by the slot's owner (a load and a
    /// store, no read-modify-write), read by ``IdleStack/lendCount()``.
    @usableFromInline let lends: Atomic<Int>
    private var padding: (UInt64, UInt64, UInt64) = (0, 0, 0)

    init() {
        next = Atomic(0)
        generation = 0
        parkedAt = 0
        expiresAt = .max
        connection = nil
        lends = Atomic(0)
    }
}

/// The pool's lock-free fast lane: a stack of idle slots that acquire and release reach with one
/// compare-and-swap each, without the pool's mutex. Hand-written because it is the hot path: it must
/// not allocate and must cost less than the two mutex round trips it replaces.
///
/// ## How it fits the state machine
/// A slot on this stack is, for the state machine, still *leased*: the stack holds the lease the last
/// borrower gave back ("parked"), with that lease's generation. Popping it lends the same lease to the
/// next borrower; pushing it parks it again. The state machine therefore never sees the fast lane's
/// traffic, and its invariants and lease tokens stay exact. Whenever the locked side needs to see the
/// idle connections (a caller is about to wait, a maintenance round, a metrics snapshot, a resize,
/// shutdown) it first *drains* the stack under the mutex, returning each parked lease through the
/// ordinary release path (to the idle ring, to a waiter, or to be closed).
///
/// ## The gate
/// `gate` is 0 while the fast lane may be used and 1 while it must not: when callers wait (a released
/// connection must go to the oldest of them, not be parked), while shutting down, and while the pool
/// holds more connections than its maximum after a shrinking resize. The locked side writes it.
///
/// ## Memory ordering, and why each choice is safe
/// - **Parked data** (the slot's lease generation, release time, expiry and connection, the plain
///   fields of its ``ParkedSlot``) is plain memory written only by the slot's
///   one owner before ``push(_:)``, and read only by the one thread whose ``pop()`` took the slot. The
///   push's successful compare-and-swap *releases* and the pop's *acquires* the same `head`, so the
///   writes happen before the reads (and ThreadSanitizer sees that edge).
/// - **`next`** links are atomics read `relaxed`: a popper reads the link of the top slot it saw, and
///   that slot may meanwhile be popped and pushed again by others, rewriting the link. The value read
///   then may be stale, but the pop's compare-and-swap fails, because…
/// - **ABA**: `head` packs the top slot (index + 1, 0 when empty) with a 32-bit tag that every
///   successful push and pop increments, so a compare-and-swap against a head that was popped and
///   pushed back in between fails. Wrapping the tag needs 2³² operations inside one pop's window.
/// - **Gate vs. parking (no lost wake-up)**: a releaser *pushes, then reads the gate*; the locked side
///   *closes the gate, then drains*. Both are sequentially consistent, so at least one of them sees the
///   other: either the drain finds the parked slot, or the releaser sees the gate closed and drains it
///   itself. A connection can therefore never be parked while someone waits for one.
/// - **Gate vs. lending**: an acquirer reads the gate `relaxed` before popping. Reading it open just as
///   it closes lets the acquirer take a parked connection a waiter's drain would have found: that is
///   the acquirer arriving first, which is allowed; waiters themselves are still served in order.
@usableFromInline
final class IdleStack: @unchecked Sendable {
    // @unchecked Sendable: the shared words are atomics; each `ParkedSlot`'s plain fields are touched
    // only by the one owner of the slot, handed over by `head`'s release/acquire (see "Memory
    // ordering" above); `drainOrder` only with the pool's mutex held. All buffers live from `init` to
    // `deinit`.

    /// Slots `0..<capacity` may be parked (the pool's size at creation; slots added by a resize use
    /// the locked path only).
    @usableFromInline let capacity: Int
    /// One cache line each for `head` and `gate` (`head` is written by every operation, `gate` read by
    /// every operation and rarely written: apart, a write to one does not evict the other).
    private let words: UnsafeMutableRawPointer
    /// Top of the stack: the slot index + 1 (0: empty) in the low 32 bits, the ABA tag in the high 32.
    @usableFromInline let head: UnsafeMutablePointer<Atomic<UInt64>>
    /// 0 while the fast lane is open, 1 while it is closed (see "The gate").
    @usableFromInline let gate: UnsafeMutablePointer<Atomic<Int>>
    /// Each slot's data, one cache line each.
    @usableFromInline let slots: UnsafeMutablePointer<ParkedSlot>
    /// Scratch space for a drain, used only with the pool's mutex held.
    private let drainOrder: UnsafeMutablePointer<Int>

    static let cacheLine = 64

    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(UInt32.max))
        precondition(MemoryLayout<ParkedSlot>.stride == Self.cacheLine, "ParkedSlot must fill one cache line")
        self.capacity = capacity
        words = .allocate(byteCount: 2 * Self.cacheLine, alignment: Self.cacheLine)
        head = words.bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        head.initialize(to: Atomic(0))
        gate = (words + Self.cacheLine).bindMemory(to: Atomic<Int>.self, capacity: 1)
        gate.initialize(to: Atomic(1))
        slots = UnsafeMutableRawPointer.allocate(byteCount: capacity * Self.cacheLine, alignment: Self.cacheLine)
            .bindMemory(to: ParkedSlot.self, capacity: capacity)
        for index in 0..<capacity { (slots + index).initialize(to: ParkedSlot()) }
        drainOrder = .allocate(capacity: capacity)
    }

    deinit {
        slots.deinitialize(count: capacity)
        UnsafeMutableRawPointer(slots).deallocate()
        head.deinitialize(count: 1)
        gate.deinitialize(count: 1)
        words.deallocate()
        drainOrder.deallocate()
    }

    /// Whether the fast lane is open. A hint, read before trying it (see "Gate vs. lending").
    @inlinable
    var isOpen: Bool { gate.pointee.load(ordering: .relaxed) == 0 }

    /// Opens or closes the gate. Called by the locked side; closing is followed by a drain.
    func setOpen(_ open: Bool) {
        let value = open ? 0 : 1
        if gate.pointee.load(ordering: .relaxed) != value { gate.pointee.store(value, ordering: .sequentiallyConsistent) }
    }

    /// Re-reads the gate after a push (see "Gate vs. parking"): true if the pusher must drain.
    @inlinable
    var closedAfterPush: Bool { gate.pointee.load(ordering: .sequentiallyConsistent) != 0 }

    /// Whether anything is parked; sequentially consistent, for the drain after closing the gate.
    var isEmpty: Bool { UInt32(truncatingIfNeeded: head.pointee.load(ordering: .sequentiallyConsistent)) == 0 }

    /// Parks slot `index`, whose owner has written its parked data.
    ///
    /// - Precondition: the caller owns the slot (it holds the slot's lease) and `index < capacity`.
    @inlinable
    func push(_ index: Int) {
        var old = head.pointee.load(ordering: .relaxed)
        while true {
            slots[index].next.store(UInt32(truncatingIfNeeded: old), ordering: .relaxed)
            let new = ((old >> 32) &+ 1) << 32 | UInt64(index + 1)
            // Releasing (publishes the parked data) and sequentially consistent (orders the push before
            // the caller's re-read of the gate).
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: new,
                successOrdering: .sequentiallyConsistent, failureOrdering: .relaxed)
            if exchanged { return }
            old = original
        }
    }

    /// Takes the most recently parked slot, or nil if none is parked. The caller then owns the slot
    /// and its parked data.
    @inlinable
    func pop() -> Int? {
        var old = head.pointee.load(ordering: .acquiring)
        while true {
            let top = Int(UInt32(truncatingIfNeeded: old))
            if top == 0 { return nil }
            let below = slots[top - 1].next.load(ordering: .relaxed)
            let new = ((old >> 32) &+ 1) << 32 | UInt64(below)
            // Acquiring on success: the parked data written before the push is visible.
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: new,
                successOrdering: .acquiringAndReleasing, failureOrdering: .acquiring)
            if exchanged { return top - 1 }
            old = original
        }
    }

    /// Pops every parked slot and returns them least recently parked first, so that returning them to
    /// the idle ring in this order keeps LIFO reuse (the most recently used ends up on top). The
    /// buffer is valid until the next drain. Call with the pool's mutex held.
    func popAllOldestFirst() -> UnsafeBufferPointer<Int> {
        var count = 0
        while let index = pop() {
            drainOrder[count] = index
            count += 1
        }
        var order = UnsafeMutableBufferPointer(start: drainOrder, count: count)
        order.reverse()
        return UnsafeBufferPointer(start: drainOrder, count: count)
    }

    /// Counts one fast lend of `index`, by the slot's owner.
    @inlinable
    func countLend(_ index: Int) {
        let lends = slots[index].lends.load(ordering: .relaxed)
        slots[index].lends.store(lends &+ 1, ordering: .relaxed)
    }

    /// The number of fast lends so far (for metrics; each counter read atomically).
    func lendCount() -> Int {
        var total = 0
        for index in 0..<capacity { total &+= slots[index].lends.load(ordering: .relaxed) }
        return total
    }
}
