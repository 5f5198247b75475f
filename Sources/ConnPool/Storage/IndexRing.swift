/// A fixed-capacity double-ended queue of slot indices, allocated once.
///
/// Holds the idle slots: release pushes at the back; LIFO reuse pops the back (the most recently used
/// connection, still warm), FIFO reuse pops the front. Every operation on the hot path is O(1) and
/// allocation-free; ``remove(_:)`` (maintenance only) is O(n).
///
/// Hand-written rather than `Deque` from swift-collections: it must never allocate after init, and a
/// power-of-two mask keeps push and pop to a few instructions.
@usableFromInline
struct IndexRing {
    @usableFromInline var storage: UnsafeMutablePointer<Int32>
    @usableFromInline var mask: Int
    @usableFromInline var head = 0
    @usableFromInline private(set) var count = 0

    /// Creates a ring that can hold at least `minimumCapacity` indices.
    init(minimumCapacity: Int) {
        var capacity = 1
        while capacity < max(minimumCapacity, 1) { capacity <<= 1 }
        storage = .allocate(capacity: capacity)
        mask = capacity - 1
    }

    func deallocate() {
        storage.deallocate()
    }

    @usableFromInline var capacity: Int { mask + 1 }

    @inlinable var isEmpty: Bool { count == 0 }

    @inlinable
    mutating func pushBack(_ index: Int32) {
        assert(count < capacity, "IndexRing overflow")
        storage[(head &+ count) & mask] = index
        count &+= 1
    }

    @inlinable
    mutating func popBack() -> Int32? {
        guard count > 0 else { return nil }
        count &-= 1
        return storage[(head &+ count) & mask]
    }

    @inlinable
    mutating func popFront() -> Int32? {
        guard count > 0 else { return nil }
        let value = storage[head]
        head = (head &+ 1) & mask
        count &-= 1
        return value
    }

    /// The element at logical position `position` (0 is the front).
    func element(at position: Int) -> Int32 {
        storage[(head &+ position) & mask]
    }

    /// Removes `index` wherever it is, keeping the order of the others. O(n).
    @discardableResult
    mutating func remove(_ index: Int32) -> Bool {
        var position = 0
        while position < count, element(at: position) != index { position += 1 }
        guard position < count else { return false }
        while position + 1 < count {
            storage[(head &+ position) & mask] = storage[(head &+ position &+ 1) & mask]
            position += 1
        }
        count -= 1
        return true
    }

    /// Moves the contents into a new ring of at least `minimumCapacity` (resize only).
    mutating func grow(toAtLeast minimumCapacity: Int) {
        guard minimumCapacity > capacity else { return }
        var bigger = IndexRing(minimumCapacity: minimumCapacity)
        for position in 0..<count { bigger.pushBack(element(at: position)) }
        deallocate()
        self = bigger
    }
}
