extension CloseReason: CustomStringConvertible {
    /// The reason's name (its `rawValue`, as in metric labels) and what happened, e.g.
    /// `lifetime (reached maxLifetime)`.
    public var description: String {
        switch self {
        case .lifetime: "lifetime (reached maxLifetime)"
        case .idle: "idle (idle past idleTimeout, above minSize)"
        case .health: "health (failed a health check)"
        case .broken: "broken (returned as broken, or reported itself broken)"
        case .shutdown: "shutdown (the pool shut down)"
        case .resize: "resize (maxSize lowered below the open connections)"
        case .dirty: "dirty (its session state could not be reset after a borrower changed it)"
        }
    }
}
