/// Exponential backoff with jitter between failed connection attempts.
///
/// Delay n (1-based) = min(initial × multiplierⁿ⁻¹, max), then spread by ±jitter. A small SplitMix64
/// generator draws the jitter: seeded, so tests can pin the sequence; no allocation.
struct RetryBackoff {
    let initial: Int64
    let multiplier: Double
    let maximum: Int64
    let jitter: Double
    private(set) var consecutiveFailures = 0
    private var random: SplitMix64

    init(configuration: PoolConfiguration, seed: UInt64) {
        initial = configuration.connectRetryInitialBackoff.nanosecondsClamped
        multiplier = configuration.connectRetryMultiplier
        maximum = configuration.connectRetryMaxBackoff.nanosecondsClamped
        jitter = configuration.connectRetryJitter
        random = SplitMix64(seed: seed)
    }

    /// The delay before the next attempt, in nanoseconds, counting one more failure.
    mutating func nextDelay() -> Int64 {
        consecutiveFailures += 1
        let base = min(Double(initial) * Self.power(multiplier, consecutiveFailures - 1), Double(maximum))
        let spread = jitter == 0 ? 0 : (random.nextUnit() * 2 - 1) * jitter
        return max(0, Int64(base * (1 + spread)))
    }

    mutating func reset() {
        consecutiveFailures = 0
    }

    private static func power(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        for _ in 0..<min(exponent, 64) { result *= base }
        return result
    }
}

/// SplitMix64: a tiny, fast, seedable generator (not for cryptography).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }
}
