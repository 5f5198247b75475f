/// A lease's claim on a slot: the slot index and the slot's generation when it was lent, packed in
/// one integer so it passes through a continuation without allocating.
@usableFromInline
struct LeaseToken: Hashable, Sendable {
    @usableFromInline let rawValue: UInt64

    @inlinable
    init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable
    init(index: Int32, generation: UInt32) {
        rawValue = UInt64(generation) << 32 | UInt64(UInt32(bitPattern: index))
    }

    @inlinable var index: Int32 { Int32(bitPattern: UInt32(truncatingIfNeeded: rawValue)) }
    @inlinable var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
}
