#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

/// One long-lived thread that runs the fault injector's blocking steps (signals, the restart's wait
/// for PING) one after another, so that no cooperative thread blocks and the harness does not make the
/// dispatch pool start and retire threads at every fault (which would show in a soak's memory figures).
///
/// `@unchecked Sendable` is safe because `jobs` and `stopped` are only read or written with `mutex`
/// held, `condition` is only waited on with it, and both pthread objects live at fixed addresses from
/// `init` until `deinit`, which runs only after the thread has exited (the thread holds a strong
/// reference until its loop ends).
final class BlockingWorker: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var jobs: [@Sendable () -> Void] = []
    private var stopped = false

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let worker = Unmanaged<BlockingWorker>.fromOpaque(context!).takeRetainedValue()
            worker.loop()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deinitialize(count: 1)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` on the worker thread and returns its result; the caller suspends meanwhile.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            enqueue { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Lets the thread finish the queued jobs and exit.
    func stop() {
        pthread_mutex_lock(mutex)
        stopped = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func enqueue(_ job: @escaping @Sendable () -> Void) {
        pthread_mutex_lock(mutex)
        jobs.append(job)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func loop() {
        pthread_mutex_lock(mutex)
        while true {
            while jobs.isEmpty && !stopped { pthread_cond_wait(condition, mutex) }
            if jobs.isEmpty { break }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(mutex)
            job()
            pthread_mutex_lock(mutex)
        }
        pthread_mutex_unlock(mutex)
    }
}
