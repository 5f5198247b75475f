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
/// shutdown) it *closes* the stack, which takes every parked lease in the same atomic step, and returns
/// each through the ordinary release path (to the idle ring, to a waiter, or to be closed).
///
/// ## The closed bit
/// The stack is closed while the fast lane must not be used: when callers wait (a released connection
/// must go to the oldest of them, not be parked), while shutting down, while the pool holds more
/// connections than its maximum after a shrinking resize, and for pools whose acquires need the locked
/// path. Closed is a bit of the same word as the top of the stack, so:
/// - a push onto a closed stack fails, and the releaser keeps its lease and takes the locked path: a
///   connection can never be parked while someone waits for one, and a releaser never touches the
///   pool again after a successful push (the pool may be finished and freed right after it);
/// - a pop from a closed stack finds nothing;
/// - closing and taking everything parked is one compare-and-swap (``closeAndTakeAll()``), so no push
///   can slip in between the close and the drain.
/// Only the locked side closes and opens it.
///
/// ## Memory ordering, and why each choice is safe
/// - **Parked data** (the slot's lease generation, release time, expiry and connection, the plain
///   fields of its ``ParkedSlot``) is plain memory written only by the slot's
///   one owner before ``push(_:)``, and read only by the one thread whose ``pop()`` or
///   ``closeAndTakeAll()`` took the slot. The push's successful compare-and-swap *releases* and the
///   pop's or the close's *acquires* the same `head`, so the writes happen before the reads (and
///   ThreadSanitizer sees that edge).
/// - **`next`** links are atomics read `relaxed`: a popper reads the link of the top slot it saw, and
///   that slot may meanwhile be popped and pushed again by others, rewriting the link. The value read
///   then may be stale, but the pop's compare-and-swap fails, because…
/// - **ABA**: `head` packs the top slot (index + 1, 0 when empty) and the closed bit with a 31-bit tag
///   that every successful push, pop, close and open increments, so a compare-and-swap against a head
///   that was popped and pushed back in between fails. Wrapping the tag needs 2³¹ operations inside
///   one pop's window.
/// - **Closing vs. lending**: a pop that succeeds before the close is an acquirer arriving first, which
///   is allowed; waiters themselves are still served in order, by the locked side.
@usableFromInline
final class IdleStack: @unchecked Sendable {
    // @unchecked Sendable: the shared word is an atomic; each `ParkedSlot`'s plain fields are touched
    // only by the one owner of the slot, handed over by `head`'s release/acquire (see "Memory
    // ordering" above); `drainOrder` only with the pool's mutex held. All buffers live from `init` to
    // `deinit`.

    /// Slots `0..<capacity` may be parked (the pool's size at creation; slots added by a resize use
    /// the locked path only).
    @usableFromInline let capacity: Int
    /// One cache line for `head`, written by every operation.
    private let words: UnsafeMutableRawPointer
    /// Top of the stack: the slot index + 1 (0: empty) in the low 32 bits, the closed bit (bit 32),
    /// the ABA tag in the high 31 bits.
    @usableFromInline let head: UnsafeMutablePointer<Atomic<UInt64>>
    /// Each slot's data, one cache line each.
    @usableFromInline let slots: UnsafeMutablePointer<ParkedSlot>
    /// Scratch space for a drain, used only with the pool's mutex held.
    private let drainOrder: UnsafeMutablePointer<Int>

    static let cacheLine = 64
    @usableFromInline static let closedBit: UInt64 = 1 << 32
    @usableFromInline static let tagUnit: UInt64 = 1 << 33

    /// Creates a closed, empty stack.
    init(capacity: Int) {
        precondition(capacity > 0 && capacity < Int(UInt32.max))
        precondition(MemoryLayout<ParkedSlot>.stride == Self.cacheLine, "ParkedSlot must fill one cache line")
        self.capacity = capacity
        words = .allocate(byteCount: Self.cacheLine, alignment: Self.cacheLine)
        head = words.bindMemory(to: Atomic<UInt64>.self, capacity: 1)
        head.initialize(to: Atomic(Self.closedBit))
        slots = UnsafeMutableRawPointer.allocate(byteCount: capacity * Self.cacheLine, alignment: Self.cacheLine)
            .bindMemory(to: ParkedSlot.self, capacity: capacity)
        for index in 0..<capacity { (slots + index).initialize(to: ParkedSlot()) }
        drainOrder = .allocate(capacity: capacity)
    }

    deinit {
        slots.deinitialize(count: capacity)
        UnsafeMutableRawPointer(slots).deallocate()
        head.deinitialize(count: 1)
        words.deallocate()
        drainOrder.deallocate()
    }

    /// The word after `old` with a new top and closed bit, and the tag moved on.
    @inlinable
    static func next(after old: UInt64, top: UInt64, closed: Bool) -> UInt64 {
        ((old & ~(tagUnit - 1)) &+ tagUnit) | (closed ? closedBit : 0) | top
    }

    /// Whether the fast lane is open: a hint (the answer may change at once), for a releaser deciding
    /// whether to try a push and for inspection.
    @inlinable
    var isOpen: Bool { head.pointee.load(ordering: .relaxed) & Self.closedBit == 0 }

    /// Parks slot `index`, whose owner has written its parked data. Returns false, and parks nothing,
    /// if the stack is closed: the caller still owns the slot and its parked data.
    ///
    /// - Precondition: the caller owns the slot (it holds the slot's lease) and `index < capacity`.
    @inlinable
    func push(_ index: Int) -> Bool {
        var old = head.pointee.load(ordering: .relaxed)
        while true {
            if old & Self.closedBit != 0 { return false }
            slots[index].next.store(UInt32(truncatingIfNeeded: old), ordering: .relaxed)
            let new = Self.next(after: old, top: UInt64(index + 1), closed: false)
            // Releasing: publishes the parked data to whoever takes the slot.
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: new, successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { return true }
            old = original
        }
    }

    /// Takes the most recently parked slot, or nil if none is parked or the stack is closed. The caller
    /// then owns the slot and its parked data.
    @inlinable
    func pop() -> Int? {
        var old = head.pointee.load(ordering: .acquiring)
        while true {
            let top = Int(UInt32(truncatingIfNeeded: old))
            if top == 0 { return nil }  // a closed stack is always empty
            let below = slots[top - 1].next.load(ordering: .relaxed)
            let new = Self.next(after: old, top: UInt64(below), closed: false)
            // Acquiring on success: the parked data written before the push is visible.
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: new,
                successOrdering: .acquiringAndReleasing, failureOrdering: .acquiring)
            if exchanged { return top - 1 }
            old = original
        }
    }

    /// Closes the stack and takes every parked slot in one step; returns them least recently parked
    /// first, so that returning them to the idle ring in this order keeps LIFO reuse (the most recently
    /// used ends up on top). The buffer is valid until the next call. Call with the pool's mutex held.
    func closeAndTakeAll() -> UnsafeBufferPointer<Int> {
        var old = head.pointee.load(ordering: .relaxed)
        while true {
            if old & Self.closedBit != 0 { return UnsafeBufferPointer(start: drainOrder, count: 0) }
            let new = Self.next(after: old, top: 0, closed: true)
            // Acquiring: the parked data of every slot taken is visible.
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: new, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if exchanged { break }
            old = original
        }
        // The whole list is ours now: nobody else can pop or push these slots.
        var count = 0
        var top = Int(UInt32(truncatingIfNeeded: old))
        while top != 0 {
            drainOrder[count] = top - 1
            count += 1
            top = Int(slots[top - 1].next.load(ordering: .relaxed))
        }
        var order = UnsafeMutableBufferPointer(start: drainOrder, count: count)
        order.reverse()
        return UnsafeBufferPointer(start: drainOrder, count: count)
    }

    /// Opens a closed stack (it is empty). Call with the pool's mutex held.
    func open() {
        var old = head.pointee.load(ordering: .relaxed)
        while old & Self.closedBit != 0 {
            let (exchanged, original) = head.pointee.weakCompareExchange(
                expected: old, desired: Self.next(after: old, top: 0, closed: false),
                successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { return }
            old = original
        }
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
