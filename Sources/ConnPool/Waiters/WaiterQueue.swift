/// The FIFO queue of callers waiting for a connection.
///
/// A ring buffer ordered by waiter id (arrival order). The oldest waiter is always served first, so a
/// released connection goes straight to it and a newcomer cannot barge ahead. Removing a cancelled or
/// timed-out waiter finds it by binary search on its id and closes the gap from the nearer end.
///
/// Storage grows by doubling when it is full and never shrinks, so a pool that has once seen N
/// concurrent waiters serves N waiters again without allocating. Hand-written rather than `Deque`:
/// the ordered insert, binary search and removal by id are what this queue is for.
@usableFromInline
struct WaiterQueue {
    @usableFromInline var storage: UnsafeMutablePointer<Waiter>
    @usableFromInline var capacity: Int
    @usableFromInline var head = 0
    @usableFromInline private(set) var count = 0

    init(initialCapacity: Int = 16) {
        capacity = max(initialCapacity, 1)
        storage = .allocate(capacity: capacity)
    }

    func deallocate() {
        storage.deallocate()
    }

    @inlinable var isEmpty: Bool { count == 0 }

    @inlinable
    func physical(_ position: Int) -> Int {
        let index = head + position
        return index >= capacity ? index - capacity : index
    }

    func waiter(at position: Int) -> Waiter {
        storage[physical(position)]
    }

    /// Inserts `waiter` keeping the queue ordered by id. Usually an append: ids are handed out in
    /// arrival order and inserted soon after.
    mutating func insert(_ waiter: Waiter) {
        if count == capacity { grow() }
        var position = count
        // Walk back past waiters with a larger id (a caller that arrived later but enqueued first).
        while position > 0, storage[physical(position - 1)].id > waiter.id {
            storage[physical(position)] = storage[physical(position - 1)]
            position -= 1
        }
        storage[physical(position)] = waiter
        count += 1
    }

    /// Removes and returns the oldest waiter.
    @inlinable
    mutating func popFirst() -> Waiter? {
        guard count > 0 else { return nil }
        let waiter = storage[head]
        head = head + 1 == capacity ? 0 : head + 1
        count -= 1
        return waiter
    }

    /// Removes and returns the waiter with `id`, if it is still queued. O(log n) to find it.
    mutating func remove(id: UInt64) -> Waiter? {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if storage[physical(middle)].id < id { low = middle + 1 } else { high = middle }
        }
        guard low < count, storage[physical(low)].id == id else { return nil }
        return remove(at: low)
    }

    /// Removes and returns the first waiter whose deadline is at or before `now`.
    mutating func removeFirstExpired(now: Int64) -> Waiter? {
        for position in 0..<count where storage[physical(position)].deadline <= now {
            return remove(at: position)
        }
        return nil
    }

    /// The earliest deadline of any waiter, or `Int64.max`.
    var earliestDeadline: Int64 {
        var earliest = Int64.max
        for position in 0..<count { earliest = min(earliest, storage[physical(position)].deadline) }
        return earliest
    }

    private mutating func remove(at position: Int) -> Waiter {
        let removed = storage[physical(position)]
        if position < count / 2 {
            // Shift the front part one step towards the back.
            var current = position
            while current > 0 {
                storage[physical(current)] = storage[physical(current - 1)]
                current -= 1
            }
            head = head + 1 == capacity ? 0 : head + 1
        } else {
            var current = position
            while current + 1 < count {
                storage[physical(current)] = storage[physical(current + 1)]
                current += 1
            }
        }
        count -= 1
        return removed
    }

    private mutating func grow() {
        let newCapacity = capacity * 2
        let newStorage = UnsafeMutablePointer<Waiter>.allocate(capacity: newCapacity)
        for position in 0..<count { (newStorage + position).initialize(to: storage[physical(position)]) }
        storage.deallocate()
        storage = newStorage
        capacity = newCapacity
        head = 0
    }
}
