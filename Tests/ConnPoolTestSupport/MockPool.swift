public import ConnPool
import Foundation
public import Synchronization

// Mock connections and factories shared by the test targets of the export modules (ConnPoolMetrics,
// ConnPoolPrometheus): a regular target under Tests/, since test targets cannot share files.

/// A connection that does no I/O.
public final class MockConnection: Connection {
    public let id: Int
    public let closeCount = Atomic<Int>(0)

    public init(id: Int) { self.id = id }

    public func isValid(timeout: Duration) async -> Bool { true }
    public func close() async { closeCount.add(1, ordering: .relaxed) }
    public var isClosed: Bool { closeCount.load(ordering: .relaxed) > 0 }
}

public struct MockConnectError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// A factory whose behaviour a test scripts step by step: succeed, fail, or suspend until released.
public final class MockFactory: ConnectionFactory, @unchecked Sendable {
    // @unchecked Sendable: every mutable property is only touched with `lock` held.
    public enum Step {
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

    public init(_ script: [Step] = []) { self.script = script }

    public func makeConnection() async throws -> MockConnection {
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

    public func append(_ steps: Step...) { lock.withLock { script.append(contentsOf: steps) } }
    public var attempts: Int { lock.withLock { attemptCount } }
    public var suspendedCount: Int { lock.withLock { suspended.count } }

    public func resumeSuspended() {
        let all = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            defer { suspended = [] }
            return suspended
        }
        for continuation in all { continuation.resume() }
    }
}

/// Waits (yielding, never sleeping) until `condition` holds or `timeout` of wall time passes.
public func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { return false }
        await Task.yield()
    }
    return true
}

/// Holds a lease in a reference so tests can keep several and drop them in a chosen order.
public final class LeaseHolder<Factory: ConnectionFactory>: @unchecked Sendable {
    // @unchecked Sendable: tests touch `lease` from one task at a time, in order.
    public var lease: ConnectionLease<Factory>?

    public init(_ lease: consuming ConnectionLease<Factory>) { self.lease = consume lease }

    public func drop() { lease = nil }

    public func dropAsBroken() {
        switch lease.take() {
        case .some(let lease): lease.releaseAsBroken()
        case .none: break
        }
    }
}
