import Dispatch

/// Runs async work to completion from a plain (non-cooperative) thread.
///
/// Used by the default blocking forms of ``Connection`` requirements. It allocates (a task and a
/// semaphore) and blocks the calling thread: it is for slow paths on plain threads only.
@usableFromInline
enum BlockingBridge {
    @usableFromInline
    static func wait<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
        let result = LockedValue<T?>(nil)
        let semaphore = DispatchSemaphore(value: 0)
        Task.detached {
            let value = await body()
            result.withLock { $0 = value }
            semaphore.signal()
        }
        semaphore.wait()
        return result.withLock { $0! }
    }
}

/// Runs a blocking call on a dispatch thread instead of a cooperative thread, and suspends the
/// caller until it returns.
///
/// For blocking clients whose async ``Connection`` requirements have no non-blocking path. Each call
/// allocates; keep it off hot paths.
public enum BlockingOffload {
    /// Runs `body` on a global dispatch queue and returns its result.
    ///
    /// - Throws: whatever `body` throws.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try body() })
            }
        }
    }
}
