/// The timers of a ``TimerScheduler``: each registered timer's handler and pending deadline, and a binary
/// min-heap of the pending deadlines, so the scheduler's thread finds the earliest one in O(1) and every
/// registration, schedule, pop and removal costs O(log n).
///
/// An indexed heap: each timer knows its position in the heap, so moving a deadline earlier sifts the
/// timer's one entry up in place, and removing a timer takes its entry out at once. The heap therefore
/// holds at most one entry per registered timer, and a stopped timer leaves nothing behind (memory is
/// bounded by the number of live timers, however often they are scheduled or stopped).
///
/// A plain value with no lock and no clock: the scheduler guards it with its mutex, and tests drive it
/// directly.
struct TimerQueue {
    /// What a timer calls when due: it gets the current monotonic nanoseconds and returns the next
    /// deadline it wants, or nil for none.
    typealias Handler = @Sendable (Int64) -> Int64?

    /// Identifies a registered timer. Never reused, so a stale identifier finds nothing.
    typealias ID = UInt64

    /// A registered timer.
    private struct Record {
        var handler: Handler
        /// The pending deadline, `.max` while none is pending.
        var deadline: Int64 = .max
        /// Where the timer's entry sits in `heap`, nil while no deadline is pending.
        var position: Int?
    }

    /// One pending deadline. Ordered by deadline, then by identifier (registration order), so timers
    /// due at the same instant fire in a deterministic order.
    private struct Entry {
        var deadline: Int64
        var id: ID

        static func < (lhs: Entry, rhs: Entry) -> Bool {
            (lhs.deadline, lhs.id) < (rhs.deadline, rhs.id)
        }
    }

    private var records: [ID: Record] = [:]
    private var heap: [Entry] = []
    private var nextID: ID = 0

    /// Whether no timer is registered.
    var isEmpty: Bool { records.isEmpty }

    /// The number of registered timers.
    var registeredCount: Int { records.count }

    /// The number of pending deadlines (at most one per registered timer).
    var scheduledCount: Int { heap.count }

    /// The earliest pending deadline, nil when none is pending.
    var earliestDeadline: Int64? { heap.first?.deadline }

    /// Registers `handler`, with no deadline pending, and returns its identifier.
    mutating func register(_ handler: @escaping Handler) -> ID {
        let id = nextID
        nextID += 1
        records[id] = Record(handler: handler)
        return id
    }

    /// Moves the pending deadline of timer `id` to `deadline` if that is earlier; a later deadline, a
    /// deadline of `.max` or an unknown (removed) timer is ignored.
    ///
    /// - Returns: whether `deadline` became the earliest pending deadline of the queue, in which case a
    ///   thread sleeping until the previous earliest one must be woken.
    mutating func schedule(_ id: ID, at deadline: Int64) -> Bool {
        guard deadline != .max, let record = records[id], deadline < record.deadline else { return false }
        records[id]!.deadline = deadline
        let position: Int
        if let existing = record.position {
            heap[existing].deadline = deadline
            position = existing
        } else {
            heap.append(Entry(deadline: deadline, id: id))
            position = heap.count - 1
            records[id]!.position = position
        }
        return siftUp(from: position) == 0
    }

    /// Takes the earliest pending deadline if it is at or before `now`: the timer has no deadline
    /// pending afterwards and stays registered.
    ///
    /// - Returns: the timer and a copy of its handler (the stored one stays until ``remove(_:)``).
    mutating func popDue(now: Int64) -> (id: ID, handler: Handler)? {
        guard let first = heap.first, first.deadline <= now else { return nil }
        removeEntry(at: 0)
        records[first.id]!.deadline = .max
        return (first.id, records[first.id]!.handler)
    }

    /// Unregisters timer `id` and takes its pending deadline out of the heap.
    ///
    /// - Returns: the stored handler, for the caller to release **outside** its lock (releasing it may
    ///   free what it captured); nil if the timer was already removed.
    mutating func remove(_ id: ID) -> Handler? {
        guard let record = records.removeValue(forKey: id) else { return nil }
        if let position = record.position { removeEntry(at: position) }
        return record.handler
    }

    // MARK: Heap

    /// Removes the entry at `position`, keeping the heap ordered and every record's position right.
    /// The removed entry's record, if still registered, is left with a stale position: callers reset it.
    private mutating func removeEntry(at position: Int) {
        let removed = heap[position].id
        let last = heap.count - 1
        if position != last {
            heap.swapAt(position, last)
            records[heap[position].id]?.position = position
        }
        heap.removeLast()
        records[removed]?.position = nil
        if position < heap.count {
            siftDown(from: siftUp(from: position))
        }
    }

    /// Moves the entry at `position` up while it is earlier than its parent; returns where it ends.
    @discardableResult
    private mutating func siftUp(from position: Int) -> Int {
        var child = position
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child] < heap[parent] else { break }
            swapEntries(child, parent)
            child = parent
        }
        return child
    }

    /// Moves the entry at `position` down while a child is earlier.
    private mutating func siftDown(from position: Int) {
        var parent = position
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { return }
            let right = left + 1
            let child = right < heap.count && heap[right] < heap[left] ? right : left
            guard heap[child] < heap[parent] else { return }
            swapEntries(child, parent)
            parent = child
        }
    }

    private mutating func swapEntries(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        records[heap[a].id]!.position = a
        records[heap[b].id]!.position = b
    }

    /// Checks the heap order and every position; for tests.
    func checkInvariants() -> Bool {
        for (index, entry) in heap.enumerated() {
            if index > 0, entry < heap[(index - 1) / 2] { return false }
            guard let record = records[entry.id], record.position == index, record.deadline == entry.deadline else {
                return false
            }
        }
        return records.values.filter { $0.position != nil }.count == heap.count
            && records.values.allSatisfy { ($0.position == nil) == ($0.deadline == .max) }
    }
}
