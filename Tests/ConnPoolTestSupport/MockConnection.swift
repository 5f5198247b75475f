public import ConnPool
import Foundation
public import Synchronization

// Mock connections and factories for every test target that drives a pool without I/O (the core's tests
// and those of the export modules): a regular target under Tests/, since test targets cannot share files.

/// A connection that does no I/O: it records how it was used so tests can assert on it.
public final class MockConnection: Connection {
    public let id: Int
    /// Set while a borrower holds it; a second borrower finding it set proves a double lease.
    public let borrowed = Atomic<Bool>(false)
    public let closeCount = Atomic<Int>(0)
    /// What ``isBroken`` reports; tests set it to make the pool discard the connection on release.
    public let broken = Atomic<Bool>(false)
    /// What ``isValid(timeout:)`` answers.
    public let valid = Atomic<Bool>(true)
    /// How many times the pool asked ``isValid(timeout:)`` or ``isValidBlocking(timeout:)``.
    public let validations = Atomic<Int>(0)

    public init(id: Int) { self.id = id }

    public func isValid(timeout: Duration) async -> Bool {
        validations.add(1, ordering: .relaxed)
        return valid.load(ordering: .relaxed)
    }

    public func isValidBlocking(timeout: Duration) -> Bool {
        validations.add(1, ordering: .relaxed)
        return valid.load(ordering: .relaxed)
    }

    public func close() async { closeCount.add(1, ordering: .relaxed) }
    public var isBroken: Bool { broken.load(ordering: .relaxed) }
    public var isClosed: Bool { closeCount.load(ordering: .relaxed) > 0 }

    /// Marks the connection borrowed; returns false if someone else already had it.
    public func beginBorrow() -> Bool {
        borrowed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    public func endBorrow() { borrowed.store(false, ordering: .releasing) }
}

public struct MockConnectError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }

    public init(message: String) { self.message = message }
}

/// A factory whose behaviour a test scripts step by step: succeed, fail, or suspend until released.
/// Steps past the end of the script succeed.
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
            defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
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
    /// Every connection made so far, in order.
    public var connections: [MockConnection] { lock.withLock { made } }
    /// Calls of ``makeConnection()`` so far, successful or not.
    public var attempts: Int { lock.withLock { attemptCount } }
    /// Attempts suspended by a ``Step/suspend`` step and not yet resumed.
    public var suspendedCount: Int { lock.withLock { suspended.count } }

    /// Lets every suspended attempt go on (each then succeeds).
    public func resumeSuspended() {
        let all = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            defer { suspended = [] }
            return suspended
        }
        for continuation in all { continuation.resume() }
    }
}

/// Holds a lease in a reference so tests can keep several and drop them in a chosen order.
public final class LeaseHolder<Factory: ConnectionFactory>: @unchecked Sendable {
    // @unchecked Sendable: tests touch `lease` from one task at a time, in order.
    public var lease: ConnectionLease<Factory>?
    /// The leased connection (kept for assertions after the lease is dropped).
    public let connection: Factory.PooledConnectionType

    public init(_ lease: consuming ConnectionLease<Factory>) {
        connection = lease.connection
        self.lease = consume lease
    }

    public func drop() { lease = nil }

    public func dropAsBroken() {
        switch lease.take() {
        case .some(let lease): lease.releaseAsBroken()
        case .none: break
        }
    }
}
