#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A heap-pinned pthread mutex (not `Synchronization.Mutex`, which draws false ThreadSanitizer
/// reports when contended on this platform).
///
/// `@unchecked Sendable` is safe because the only state is the `pthread_mutex_t`, which is made for
/// use from many threads, lives at a fixed address from `init` to `deinit`, and is only touched
/// through `pthread_mutex_*` calls.
final class ChaosMutex: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A value behind a ``ChaosMutex``.
///
/// `@unchecked Sendable` is safe because `value` is only read or written inside `mutex.withLock`, and
/// `Value` is `Sendable`, so what leaves the lock may cross threads.
final class ChaosLocked<Value: Sendable>: @unchecked Sendable {
    private let mutex = ChaosMutex()
    private var value: Value

    init(_ value: Value) {
        self.value = value
    }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        try mutex.withLock { try body(&value) }
    }
}

/// A small, fast, seedable random generator (SplitMix64) for the load's choices: reproducible and
/// cheap enough for every request.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Duration {
    /// The duration in milliseconds, as a `Double`.
    var milliseconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }

    /// The duration in seconds, as a `Double`.
    var seconds: Double { milliseconds / 1000 }
}

/// Writes `text` to `path` (created or truncated), without Foundation.
///
/// - Throws: ``ChaosError/io(_:)`` naming the failed call.
public func writeTextFile(_ path: String, _ text: String) throws {
    guard let file = fopen(path, "w") else {
        throw ChaosError.io("cannot open \(path) for writing: \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes = Array(text.utf8)
    if bytes.last != UInt8(ascii: "\n") { bytes.append(UInt8(ascii: "\n")) }
    let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    if written != bytes.count {
        throw ChaosError.io("cannot write \(path): \(String(cString: strerror(errno)))")
    }
}

/// Why a chaos run could not run at all (a failed invariant is not an error: it is in the report).
public enum ChaosError: Error, Sendable, CustomStringConvertible {
    /// The options are inconsistent.
    case invalidOptions(String)
    /// The throwaway server or the admin connection could not be set up.
    case setup(String)
    /// A file could not be written.
    case io(String)

    /// The reason, for people.
    public var description: String {
        switch self {
        case .invalidOptions(let text): return "invalid chaos options: \(text)"
        case .setup(let text): return "chaos setup failed: \(text)"
        case .io(let text): return text
        }
    }
}
