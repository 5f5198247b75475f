import ConnPoolTestSupport
import Foundation
@testable import ConnPool

// Helpers of the core's tests only; the mock connection and factory, `LeaseHolder` and `eventually` live in
// the ConnPoolTestSupport target, shared with the other test targets.

/// Runs `body` on a new plain thread; `join()` suspends until it has returned.
final class TestThread: Sendable {
    private enum State {
        case running
        case joined(CheckedContinuation<Void, Never>)
        case finished
    }

    private let state = LockedValue<State>(.running)

    init(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [state] in
            body()
            let joiner = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state = .finished }
                if case .joined(let continuation) = state { return continuation }
                return nil
            }
            joiner?.resume()
        }
        thread.start()
    }

    /// Suspends until the thread has returned; the thread itself resumes the task. Nothing blocks
    /// meanwhile: a wait on a dispatch thread (`DispatchQueue.global().async { semaphore.wait() }`) would
    /// take one of the few threads that dispatch shares with the cooperative pool on Linux, and with a
    /// few such waits at once every task of the test process waits for dispatch to add a thread, about
    /// one a second.
    func join() async {
        defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = state.withLock { state -> Bool in
                if case .finished = state { return true }
                state = .joined(continuation)
                return false
            }
            if finished { continuation.resume() }
        }
    }
}

/// A snapshot's connection counts: [idle, inUse, connecting, closing, validating, waiting].
func gauges(_ metrics: PoolMetrics) -> [Int] {
    [metrics.idle, metrics.inUse, metrics.connecting, metrics.closing, metrics.validating, metrics.waiting]
}
