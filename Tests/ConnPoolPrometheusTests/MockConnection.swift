import ConnPool
import Foundation
import Synchronization

// A trimmed copy of Tests/ConnPoolTests/MockConnection.swift (test targets cannot share files).

/// A connection that does no I/O.
final class MockConnection: Connection {
    let id: Int
    let closeCount = Atomic<Int>(0)

    init(id: Int) { self.id = id }

    func isValid(timeout: Duration) async -> Bool { true }
    func close() async { closeCount.add(1, ordering: .relaxed) }
    var isClosed: Bool { closeCount.load(ordering: .relaxed) > 0 }
}

struct MockConnectError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A factory whose behaviour a test scripts step by step: succeed, fail, or suspend until released.
final class MockFactory: ConnectionFactory, @unchecked Sendable {
    // @unchecked Sendable: every mutable property is only touched with `lock` held.
    enum Step {
        case succeed
        case fail(String)
        /// Suspends until ``resumeSuspended()``, then succeeds.
        case suspend
    }

    private let lock = NSLock()
    private var script: [Step]
    private var suspended: [CheckedContinuation<Void, Never>] = []
    private var made: [MockConnection] = []
    private var attemptCount = 0

    init(_ script: [Step] = []) { self.script = script }

    func makeConnection() async throws -> MockConnection {
        let step: Step = lock.withLock {
            attemptCount += 1
            return script.isEmpty ? .succeed : script.removeFirst()
        }
        switch step {
        case .succeed: break
        case .fail(let message): throw MockConnectError(message: message)
        case .suspend:
            await withCheckedContinuation { continuation in
                lock.withLock { suspended.append(continuation) }
            }
        }
        return lock.withLock {
            let connection = MockConnection(id: made.count)
            made.append(connection)
            return connection
        }
    }

    func append(_ steps: Step...) { lock.withLock { script.append(contentsOf: steps) } }
    var attempts: Int { lock.withLock { attemptCount } }
    var suspendedCount: Int { lock.withLock { suspended.count } }

    func resumeSuspended() {
        let all = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            defer { suspended = [] }
            return suspended
        }
        for continuation in all { continuation.resume() }
    }
}

/// Waits (yielding, never sleeping) until `condition` holds or `timeout` of wall time passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { return false }
        await Task.yield()
    }
    return true
}

/// Holds a lease in a reference so tests can keep several and drop them in a chosen order.
final class LeaseHolder<Factory: ConnectionFactory>: @unchecked Sendable {
    // @unchecked Sendable: tests touch `lease` from one task at a time, in order.
    var lease: ConnectionLease<Factory>?

    init(_ lease: consuming ConnectionLease<Factory>) { self.lease = consume lease }

    func drop() { lease = nil }

    func dropAsBroken() {
        switch lease.take() {
        case .some(let lease): lease.releaseAsBroken()
        case .none: break
        }
    }
}
