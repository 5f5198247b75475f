/// The pool's pre-allocated slot array: per-slot state and metadata in parallel buffers, plus the
/// O(1) sets that avoid any scan: the idle ring (``IndexRing``) and a stack of empty slots.
///
/// Non-generic on purpose: the connection objects themselves live in the generic pool's own buffer,
/// indexed the same way, so this type's code is shared by every pool and never needs type metadata.
///
/// Each slot has a generation. It changes whenever the slot is handed out, so a lease token
/// (index + generation) from an earlier lease can never act on the slot's current connection.
///
/// Buffers are allocated at init for the pool's capacity and again only by ``grow(to:)`` (a runtime
/// resize above the initial `maxSize`). Not thread-safe: ``PoolStateMachine`` owns it, and the pool's
/// mutex guards the state machine.
@usableFromInline
struct SlotTable {
    @usableFromInline private(set) var capacity: Int
    @usableFromInline private(set) var states: UnsafeMutablePointer<SlotState>
    @usableFromInline private(set) var generations: UnsafeMutablePointer<UInt32>
    /// Monotonic nanoseconds at which each slot's connection was created (`Int64.min`: none yet).
    @usableFromInline private(set) var createdAt: UnsafeMutablePointer<Int64>
    /// Monotonic (coarse) nanoseconds of each slot's last release.
    @usableFromInline private(set) var lastUsed: UnsafeMutablePointer<Int64>
    /// Monotonic (coarse) nanoseconds at which each slot was last lent (only with lease tracking).
    @usableFromInline private(set) var leasedAt: UnsafeMutablePointer<Int64>
    /// Where each slot was last acquired (file, line; only with lease tracking).
    @usableFromInline private(set) var leaseFiles: UnsafeMutablePointer<StaticString>
    @usableFromInline private(set) var leaseLines: UnsafeMutablePointer<UInt>
    /// The generation whose lease was already reported as a possible leak.
    @usableFromInline private(set) var leakReported: UnsafeMutablePointer<UInt32>
    /// Monotonic nanoseconds at which each slot's connection reaches its (jittered) maximum lifetime.
    @usableFromInline private(set) var expiresAt: UnsafeMutablePointer<Int64>
    /// Monotonic nanoseconds of each slot's last successful health check (or creation).
    @usableFromInline private(set) var lastChecked: UnsafeMutablePointer<Int64>
    /// Why each closing slot is being closed.
    @usableFromInline private(set) var closeReasons: UnsafeMutablePointer<CloseReason>
    /// When the slot's pending operation (connecting, validating, closing) is given up on.
    @usableFromInline private(set) var operationDeadlines: UnsafeMutablePointer<Int64>
    /// Idle slots, most recently released at the back.
    @usableFromInline var idle: IndexRing
    /// Empty slots: a stack of indices, `emptyCount` of them valid.
    @usableFromInline private(set) var emptyStack: UnsafeMutablePointer<Int32>
    @usableFromInline private(set) var emptyCount: Int

    @usableFromInline var leasedCount = 0
    @usableFromInline var connectingCount = 0
    @usableFromInline var closingCount = 0
    @usableFromInline var validatingCount = 0

    init(capacity: Int) {
        precondition(capacity > 0 && capacity <= Int(Int32.max))
        self.capacity = capacity
        states = Self.buffer(capacity, .empty)
        generations = Self.buffer(capacity, 0)
        createdAt = Self.buffer(capacity, .min)
        lastUsed = Self.buffer(capacity, 0)
        leasedAt = Self.buffer(capacity, 0)
        leaseFiles = Self.buffer(capacity, "")
        leaseLines = Self.buffer(capacity, 0)
        leakReported = Self.buffer(capacity, .max)
        expiresAt = Self.buffer(capacity, .max)
        lastChecked = Self.buffer(capacity, 0)
        closeReasons = Self.buffer(capacity, .broken)
        operationDeadlines = Self.buffer(capacity, .max)
        idle = IndexRing(minimumCapacity: capacity)
        emptyStack = .allocate(capacity: capacity)
        // Lowest index on top, so a fresh pool fills slots 0, 1, 2, …
        for position in 0..<capacity { emptyStack[position] = Int32(capacity - 1 - position) }
        emptyCount = capacity
    }

    private static func buffer<T>(_ capacity: Int, _ value: T) -> UnsafeMutablePointer<T> {
        let pointer = UnsafeMutablePointer<T>.allocate(capacity: capacity)
        pointer.initialize(repeating: value, count: capacity)
        return pointer
    }

    private static func grown<T>(_ old: UnsafeMutablePointer<T>, from: Int, to: Int, fill: T) -> UnsafeMutablePointer<T> {
        let pointer = UnsafeMutablePointer<T>.allocate(capacity: to)
        pointer.moveInitialize(from: old, count: from)
        (pointer + from).initialize(repeating: fill, count: to - from)
        old.deallocate()
        return pointer
    }

    func deallocate() {
        states.deallocate()
        generations.deallocate()
        createdAt.deallocate()
        lastUsed.deallocate()
        leasedAt.deallocate()
        leaseFiles.deallocate()
        leaseLines.deallocate()
        leakReported.deallocate()
        expiresAt.deallocate()
        lastChecked.deallocate()
        closeReasons.deallocate()
        operationDeadlines.deallocate()
        idle.deallocate()
        emptyStack.deallocate()
    }

    /// Reallocates every buffer for `newCapacity` slots; the new slots are empty. Resize only.
    mutating func grow(to newCapacity: Int) {
        guard newCapacity > capacity else { return }
        let old = capacity
        states = Self.grown(states, from: old, to: newCapacity, fill: .empty)
        generations = Self.grown(generations, from: old, to: newCapacity, fill: 0)
        createdAt = Self.grown(createdAt, from: old, to: newCapacity, fill: .min)
        lastUsed = Self.grown(lastUsed, from: old, to: newCapacity, fill: 0)
        leasedAt = Self.grown(leasedAt, from: old, to: newCapacity, fill: 0)
        leaseFiles = Self.grown(leaseFiles, from: old, to: newCapacity, fill: "")
        leaseLines = Self.grown(leaseLines, from: old, to: newCapacity, fill: 0)
        leakReported = Self.grown(leakReported, from: old, to: newCapacity, fill: .max)
        expiresAt = Self.grown(expiresAt, from: old, to: newCapacity, fill: .max)
        lastChecked = Self.grown(lastChecked, from: old, to: newCapacity, fill: 0)
        closeReasons = Self.grown(closeReasons, from: old, to: newCapacity, fill: .broken)
        operationDeadlines = Self.grown(operationDeadlines, from: old, to: newCapacity, fill: .max)
        idle.grow(toAtLeast: newCapacity)
        let stack = UnsafeMutablePointer<Int32>.allocate(capacity: newCapacity)
        // New slots go below the existing empty ones, highest index deepest.
        var position = 0
        for index in stride(from: newCapacity - 1, through: old, by: -1) {
            stack[position] = Int32(index)
            position += 1
        }
        (stack + position).moveInitialize(from: emptyStack, count: emptyCount)
        emptyStack.deallocate()
        emptyStack = stack
        emptyCount += newCapacity - old
        capacity = newCapacity
    }

    @inlinable var idleCount: Int { idle.count }

    /// Slots that hold or are about to hold a connection: idle + leased + connecting + closing + validating.
    @inlinable var occupiedCount: Int { capacity - emptyCount }

    /// Slots counted against `maxSize`: every occupied slot but those closing (a closing connection is
    /// on its way out; counting it would make every return during a shrink's close look excess too).
    @inlinable var heldCount: Int { occupiedCount - closingCount }

    /// Connections that are open and not on their way out: idle + leased + validating.
    @inlinable var liveCount: Int { idleCount + leasedCount + validatingCount }

    /// The token naming the current use of a slot: index and generation. Every state change that
    /// ends a use (closing, emptying, lending) bumps the generation, so an operation that finishes late
    /// can tell that its slot was given up on.
    @inlinable
    func token(_ index: Int32) -> LeaseToken {
        LeaseToken(index: index, generation: generations[Int(index)])
    }

    /// Whether `token` still names the slot's current use.
    @inlinable
    func isCurrent(_ token: LeaseToken) -> Bool {
        generations[Int(token.index)] == token.generation
    }

    /// Takes an empty slot and marks it `connecting` until `deadline`. Returns its token, or nil when
    /// every slot is occupied.
    mutating func reserveEmpty(deadline: Int64) -> LeaseToken? {
        guard emptyCount > 0 else { return nil }
        emptyCount -= 1
        let index = emptyStack[emptyCount]
        assert(states[Int(index)] == .empty)
        states[Int(index)] = .connecting
        operationDeadlines[Int(index)] = deadline
        connectingCount += 1
        return token(index)
    }

    /// Moves an idle slot aside for a health check that must finish by `deadline`.
    mutating func beginValidating(_ index: Int32, deadline: Int64) -> LeaseToken {
        idle.remove(index)
        states[Int(index)] = .validating
        generations[Int(index)] &+= 1
        closeReasons[Int(index)] = .health
        operationDeadlines[Int(index)] = deadline
        validatingCount += 1
        return token(index)
    }

    /// Moves a leased slot aside while its connection's session is reset, which must finish by
    /// `deadline`. Its close reason is preset to `dirty`, for a reset given up on.
    mutating func beginResetting(_ index: Int32, deadline: Int64) -> LeaseToken {
        precondition(states[Int(index)] == .leased, "only a leased slot is reset")
        leasedCount -= 1
        states[Int(index)] = .validating
        generations[Int(index)] &+= 1
        closeReasons[Int(index)] = .dirty
        operationDeadlines[Int(index)] = deadline
        validatingCount += 1
        return token(index)
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
        operationDeadlines[Int(index)] = .max
        emptyStack[emptyCount] = index
        emptyCount += 1
    }

    /// Moves a slot to `closing` from idle, leased, connecting or validating, recording why; the close
    /// is given up on after `deadline`. Returns the closing's token.
    @discardableResult
    mutating func markClosing(_ index: Int32, reason: CloseReason, deadline: Int64) -> LeaseToken {
        switch states[Int(index)] {
        case .idle: idle.remove(index)
        case .leased: leasedCount -= 1
        case .connecting: connectingCount -= 1
        case .validating: validatingCount -= 1
        default: preconditionFailure("slot \(index) cannot close from \(states[Int(index)])")
        }
        states[Int(index)] = .closing
        generations[Int(index)] &+= 1
        closeReasons[Int(index)] = reason
        operationDeadlines[Int(index)] = deadline
        closingCount += 1
        return token(index)
    }

    /// Records where and when a lease was taken (lease tracking only).
    @inlinable
    mutating func stampLease(_ index: Int32, now: Int64, file: StaticString, line: UInt) {
        leasedAt[Int(index)] = now
        leaseFiles[Int(index)] = file
        leaseLines[Int(index)] = line
    }

    mutating func markLeakReported(_ index: Int32) {
        leakReported[Int(index)] = generations[Int(index)]
    }
}
