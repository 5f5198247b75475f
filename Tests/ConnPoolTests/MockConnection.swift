import Foundation
import Synchronization
@testable import ConnPool

/// A connection that does no I/O: it records how it was used so tests can assert on it.
final class MockConnection: Connection {
    let id: Int
    /// Set while a borrower holds it; a second borrower finding it set proves a double lease.
    let borrowed = Atomic<Bool>(false)
    let closeCount = Atomic<Int>(0)
    let broken = Atomic<Bool>(false)
    let valid = Atomic<Bool>(true)

    init(id: Int) { self.id = id }

    let validations = Atomic<Int>(0)

    func isValid(timeout: Duration) async -> Bool {
        validations.add(1, ordering: .relaxed)
        return valid.load(ordering: .relaxed)
    }

    func isValidBlocking(timeout: Duration) -> Bool {
        validations.add(1, ordering: .relaxed)
        return valid.load(ordering: .relaxed)
    }
    func close() async { closeCount.add(1, ordering: .relaxed) }
    var isBroken: Bool { broken.load(ordering: .relaxed) }
    var isClosed: Bool { closeCount.load(ordering: .relaxed) > 0 }

    /// Marks the connection borrowed; returns false if someone else already had it.
    func beginBorrow() -> Bool { borrowed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged }
    func endBorrow() { borrowed.store(false, ordering: .releasing) }
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

    func append(_ steps: Step...) { lock.withLock { script.append(contentsOf: steps) } }
    var connections: [MockConnection] { lock.withLock { made } }
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

/// Blocking form of ``eventually(timeout:_:)`` for plain threads.
func eventuallyBlocking(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { return false }
        sched_yield()
    }
    return true
}

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

/// Holds a lease in a reference so tests can keep several and drop them in a chosen order.
final class LeaseHolder<Factory: ConnectionFactory>: @unchecked Sendable {
    // @unchecked Sendable: tests touch `lease` from one task at a time, in order.
    var lease: ConnectionLease<Factory>?
    /// The leased connection (kept for assertions after the lease is dropped).
    let connection: Factory.PooledConnectionType

    init(_ lease: consuming ConnectionLease<Factory>) {
        connection = lease.connection
        self.lease = consume lease
    }

    func drop() { lease = nil }

    func dropAsBroken() {
        switch lease.take() {
        case .some(let lease): lease.releaseAsBroken()
        case .none: break
        }
    }
}

/// A value shared between test tasks and threads, behind an `NSLock` (a pthread mutex, which
/// ThreadSanitizer understands; a contended `Synchronization.Mutex` draws false reports here).
final class Locked<Value>: @unchecked Sendable {
    // @unchecked Sendable: `value` is only reached through `withLock`, which holds `lock`.
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    var current: Value { withLock { $0 } }
}

/// A snapshot's connection counts: [idle, inUse, connecting, closing, validating, waiting].
func gauges(_ metrics: PoolMetrics) -> [Int] {
    [metrics.idle, metrics.inUse, metrics.connecting, metrics.closing, metrics.validating, metrics.waiting]
}
