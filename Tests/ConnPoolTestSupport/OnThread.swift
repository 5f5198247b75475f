import Foundation

/// Runs blocking `body` on a new plain thread and suspends until it returns its result.
///
/// For every blocking call a test makes from a task (a blocking socket call, a `…Blocking` API, a child
/// process's output): never on a cooperative thread. With two cores the cooperative pool has two threads,
/// so a test that blocks one halves every other test's capacity and two stall the whole process (on
/// Linux a dispatch thread is no better: the cooperative pool and dispatch's global queues share their
/// threads, and dispatch adds one only about once a second when all are blocked).
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}
