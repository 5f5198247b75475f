/// The pool's pre-allocated slot array: per-slot state and metadata in parallel buffers, plus the
/// O(1) sets that avoid any scan: the idle ring (``IndexRing``) and a stack of empty slots.
///
/// Non-generic on purpose: the connection objects themselves live in the generic pool's own buffer,
/// indexed the same way, so this type's code is shared by every pool and never needs type metadata.
///
/// Each slot has a generation. It changes whenever the slot is handed out, so a lease token
/// (index + generation) from an earlier lease can never act on the slot's current connection.
///
/// Not thread-safe: ``PoolStateMachine`` owns it, and the pool's mutex guards the state machine.
@usableFromInline
struct SlotTable {
    @usableFromInline let capacity: Int
    @usableFromInline let states: UnsafeMutablePointer<SlotState>
    @usableFromInline let generations: UnsafeMutablePointer<UInt32>
    /// Monotonic nanoseconds at which each slot's connection was created.
    @usableFromInline let createdAt: UnsafeMutablePointer<Int64>
    /// Monotonic (coarse) nanoseconds of each slot's last release.
    @usableFromInline let lastUsed: UnsafeMutablePointer<Int64>
    /// Monotonic nanoseconds at which each slot's connection was last leased.
    @usableFromInline let leasedAt: UnsafeMutablePointer<Int64>
    /// Monotonic nanoseconds at which each slot's connection reaches its (jittered) maximum lifetime.
    @usableFromInline let expiresAt: UnsafeMutablePointer<Int64>
    /// Monotonic nanoseconds of each slot's last successful health check (or creation).
    @usableFromInline let lastChecked: UnsafeMutablePointer<Int64>
    /// Idle slots, most recently released at the back.
    @usableFromInline var idle: IndexRing
    /// Empty slots: a stack of indices, `emptyCount` of them valid.
    @usableFromInline let emptyStack: UnsafeMutablePointer<Int32>
    @usableFromInline var emptyCount: Int

    @usableFromInline var leasedCount = 0
    @usableFromInline var connectingCount = 0
    @usableFromInline var closingCount = 0
    @usableFromInline var validatingCount = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity <= Int(Int32.max))
        self.capacity = capacity
        states = .allocate(capacity: capacity)
        states.initialize(repeating: .empty, count: capacity)
        generations = .allocate(capacity: capacity)
        generations.initialize(repeating: 0, count: capacity)
        createdAt = .allocate(capacity: capacity)
        createdAt.initialize(repeating: 0, count: capacity)
        lastUsed = .allocate(capacity: capacity)
        lastUsed.initialize(repeating: 0, count: capacity)
        leasedAt = .allocate(capacity: capacity)
        leasedAt.initialize(repeating: 0, count: capacity)
        expiresAt = .allocate(capacity: capacity)
        expiresAt.initialize(repeating: .max, count: capacity)
        lastChecked = .allocate(capacity: capacity)
        lastChecked.initialize(repeating: 0, count: capacity)
        idle = IndexRing(minimumCapacity: capacity)
        emptyStack = .allocate(capacity: capacity)
        // Lowest index on top, so a fresh pool fills slots 0, 1, 2, …
        for position in 0..<capacity { emptyStack[position] = Int32(capacity - 1 - position) }
        emptyCount = capacity
    }

    func deallocate() {
        states.deallocate()
        generations.deallocate()
        createdAt.deallocate()
        lastUsed.deallocate()
        leasedAt.deallocate()
        expiresAt.deallocate()
        lastChecked.deallocate()
        idle.deallocate()
        emptyStack.deallocate()
    }

    @inlinable var idleCount: Int { idle.count }

    /// Slots that hold or are about to hold a connection: idle + leased + connecting + closing + validating.
    @inlinable var occupiedCount: Int { capacity - emptyCount }

    /// Connections that are open and not on their way out: idle + leased + validating.
    @inlinable var liveCount: Int { idleCount + leasedCount + validatingCount }

    /// Takes an empty slot and marks it `connecting`. Returns nil when every slot is occupied.
    mutating func reserveEmpty() -> Int32? {
        guard emptyCount > 0 else { return nil }
        emptyCount -= 1
        let index = emptyStack[emptyCount]
        assert(states[Int(index)] == .empty)
        states[Int(index)] = .connecting
        connectingCount += 1
        return index
    }

    /// Returns a slot to the empty stack (after a failed creation or a finished close).
    mutating func markEmpty(_ index: Int32) {
        switch states[Int(index)] {
        case .connecting: connectingCount -= 1
        case .closing: closingCount -= 1
        default: preconditionFailure("slot \(index) cannot become empty from \(states[Int(index)])")
        }
        states[Int(index)] = .empty
        generations[Int(index)] &+= 1
        expiresAt[Int(index)] = .max
        emptyStack[emptyCount] = index
        emptyCount += 1
    }

    /// Moves a slot to `closing` from idle, leased or connecting.
    mutating func markClosing(_ index: Int32) {
        switch states[Int(index)] {
        case .idle: idle.remove(index)
        case .leased: leasedCount -= 1
        case .connecting: connectingCount -= 1
        case .validating: validatingCount -= 1
        default: preconditionFailure("slot \(index) cannot close from \(states[Int(index)])")
        }
        states[Int(index)] = .closing
        generations[Int(index)] &+= 1
        closingCount += 1
    }
}
