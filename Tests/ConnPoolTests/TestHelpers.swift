import ConnPoolTestSupport
import Foundation
@testable import ConnPool

// Helpers of the core's tests only; the mock connection and factory, `LeaseHolder` and `eventually` live in
// the ConnPoolTestSupport target, shared with the other test targets.

/// Runs `body` on a new plain thread; `join()` waits for it.
final class TestThread: @unchecked Sendable {
    // @unchecked Sendable: `done` is a semaphore, `thread` is only touched at init.
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [done] in
            body()
            done.signal()
        }
        thread.start()
    }

    /// Waits for the thread from a plain thread.
    func joinBlocking() { done.wait() }

    /// Waits for the thread from a task without blocking a cooperative thread (the wait happens on a
    /// dispatch thread): blocking the cooperative pool would starve the pool's own tasks.
    func join() async {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                self.done.wait()
                continuation.resume()
            }
        }
    }
}

/// A snapshot's connection counts: [idle, inUse, connecting, closing, validating, waiting].
func gauges(_ metrics: PoolMetrics) -> [Int] {
    [metrics.idle, metrics.inUse, metrics.connecting, metrics.closing, metrics.validating, metrics.waiting]
}
