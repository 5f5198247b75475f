/// The life cycle of one slot of the pool's slot array.
///
/// ```
/// empty ──reserve──▶ connecting ──created──▶ idle ⇄ leased
///   ▲                    │ failed             ▲ │      │ broken / expired / shutdown
///   └────────────────────┘         check ok   │ ▼      ▼
///   │                               validating ──▶ closing (failed check, lifetime, idle timeout)
///   └──────────────────────────────────────────────── closing
/// ```
/// `validating` is an idle connection taken out of the idle set while the maintenance task runs its
/// health check, or a returned connection whose borrower changed its session state while the pool
/// resets it (``Connection/resetSession(timeout:)``), so it cannot be lent meanwhile.
/// A slot counts towards the pool's size in every state but `empty`, so a connection that is still
/// being opened or closed holds its place and the total never exceeds `maxSize`.
@usableFromInline
enum SlotState: UInt8 {
    case empty
    case connecting
    case idle
    case leased
    case closing
    case validating
}
