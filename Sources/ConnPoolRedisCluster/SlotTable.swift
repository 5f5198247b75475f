import Synchronization

/// A fixed array of `Atomic<UInt16>`, allocated once and freed with the owner. (One class per value type:
/// `Atomic`'s operations are declared per storage size, so they cannot be called on a generic value.)
///
/// `@unchecked Sendable` is safe because the storage is only reached through the atomics' own load and
/// store operations, the pointer and count never change, and the storage is freed only in `deinit`, when no
/// other reference exists.
final class AtomicUInt16Array: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<Atomic<UInt16>>
    let count: Int

    init(count: Int, initialValue: UInt16) {
        self.count = count
        storage = .allocate(capacity: count)
        for index in 0..<count { (storage + index).initialize(to: Atomic(initialValue)) }
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    /// An acquiring load (see `RoutingTable` for why). - Precondition: `0 <= index < count`.
    @inline(__always)
    func load(_ index: Int) -> UInt16 {
        storage[index].load(ordering: .acquiring)
    }

    /// A releasing store (see `RoutingTable` for why). - Precondition: `0 <= index < count`.
    @inline(__always)
    func store(_ index: Int, _ value: UInt16) {
        storage[index].store(value, ordering: .releasing)
    }
}

/// A fixed array of `Atomic<UInt>`, allocated once and freed with the owner. (One class per value type:
/// `Atomic`'s operations are declared per storage size, so they cannot be called on a generic value.)
///
/// `@unchecked Sendable` is safe because the storage is only reached through the atomics' own load and
/// store operations, the pointer and count never change, and the storage is freed only in `deinit`, when no
/// other reference exists.
final class AtomicWordArray: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<Atomic<UInt>>
    let count: Int

    init(count: Int, initialValue: UInt) {
        self.count = count
        storage = .allocate(capacity: count)
        for index in 0..<count { (storage + index).initialize(to: Atomic(initialValue)) }
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    /// An acquiring load (see `RoutingTable` for why). - Precondition: `0 <= index < count`.
    @inline(__always)
    func load(_ index: Int) -> UInt {
        storage[index].load(ordering: .acquiring)
    }

    /// A releasing store (see `RoutingTable` for why). - Precondition: `0 <= index < count`.
    @inline(__always)
    func store(_ index: Int, _ value: UInt) {
        storage[index].store(value, ordering: .releasing)
    }
}

/// The routing tables the hot path reads without a lock: slot → node index (16,384 `UInt16` atomics)
/// and node index → ``ClusterNode`` (a fixed table of references that are written once and kept until the
/// client is gone).
///
/// ## Memory ordering
/// A writer (a topology refresh or a `MOVED`, serialized by the client's topology lock) first publishes a
/// node with a *releasing* store of its reference into the node table, then stores the slots that name it,
/// also *releasing*. A reader *acquires* the slot entry, then *acquires* the node entry: the acquire of
/// the slot synchronizes with the store that wrote it, so the node it names (published before) is visible
/// and fully initialized. Node entries are never cleared or replaced while the table lives (a node that
/// leaves keeps its entry, marked removed; one that comes back gets a new entry), and the table holds a
/// strong reference to each until `deinit`, so the unretained reference a reader takes stays valid with no
/// reference count touched. A reader that races a refresh may see the previous owner of a slot: the
/// cluster then answers `MOVED`, which the client follows, exactly as for any stale view.
final class RoutingTable: Sendable {
    /// Node indices are below this: a client that sees more node incarnations than this over its life
    /// stops adding nodes (and reports it in its log).
    static let nodeCapacity = 4096

    /// Per slot: the serving node's index plus one; 0 when no node serves it.
    private let slots = AtomicUInt16Array(count: ClusterSlot.count, initialValue: 0)
    /// Per node index: the node's `Unmanaged` reference bits (retained by this table); 0 when unused.
    private let nodes = AtomicWordArray(count: nodeCapacity, initialValue: 0)

    deinit {
        for index in 0..<Self.nodeCapacity {
            let bits = nodes.load(index)
            if bits != 0, let pointer = UnsafeRawPointer(bitPattern: bits) {
                Unmanaged<ClusterNode>.fromOpaque(pointer).release()
            }
        }
    }

    /// The node serving `slot`, or `nil`. Two acquiring loads; no lock, no reference count.
    @inline(__always)
    func node(forSlot slot: UInt16) -> ClusterNode? {
        let entry = slots.load(Int(slot))
        guard entry != 0 else { return nil }
        return node(at: Int(entry) - 1)
    }

    /// The node at `index`, or `nil` when that entry is unused.
    @inline(__always)
    func node(at index: Int) -> ClusterNode? {
        let bits = nodes.load(index)
        guard bits != 0, let pointer = UnsafeRawPointer(bitPattern: bits) else { return nil }
        return Unmanaged<ClusterNode>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// Publishes `node` at its index. Called once per node, under the client's topology lock.
    ///
    /// - Precondition: the entry is unused.
    func publish(_ node: ClusterNode) {
        let bits = UInt(bitPattern: Unmanaged.passRetained(node).toOpaque())
        precondition(nodes.load(Int(node.index)) == 0, "node index reused")
        nodes.store(Int(node.index), bits)
    }

    /// Routes `slot` to `node` (`nil`: no node). Called under the client's topology lock.
    func assign(_ slot: Int, to node: ClusterNode?) {
        slots.store(slot, node.map { $0.index + 1 } ?? 0)
    }
}
