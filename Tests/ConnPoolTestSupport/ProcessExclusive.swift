package import ConnPool
public import Testing

/// A suite trait: the suite runs while no other suite marked ``Testing/Trait/processExclusive`` runs,
/// in this test process, whatever `swift test`'s parallelism.
///
/// For suites that measure time, count the process's socket operations, start servers, or keep both
/// cores busy: run side by side with one another on this 2-core machine, their deadlines (a read
/// timeout asserted within 10 s, a failover within node timeout + 2 s) measure the other suites'
/// load instead of our code, and the reply spin's process-wide count of socket operations (which
/// tells a connection whether it is alone) sees the other suites' sockets. Suites that only compute
/// (parsers, the state machine on a mock clock, descriptions) carry no trait and run in parallel
/// with everything. Combine with `.serialized` so that the suite's own tests also run one at a time.
///
/// Waiting for the turn suspends the suite's task; it blocks no thread. A suite nested in one that
/// holds the turn runs at once (the turn is a task-local value, inherited by the nested suite's
/// task), so nesting cannot deadlock.
public struct ProcessExclusiveTrait: SuiteTrait, TestScoping {
    /// Only the suite itself takes the turn: its nested suites and tests run inside it.
    public var isRecursive: Bool { false }

    @TaskLocal static var holdsTurn = false

    /// Runs `function` (the whole suite) once this suite holds the process's turn, then passes the
    /// turn on, whether the suite passed or threw; at once if an enclosing suite holds the turn.
    ///
    /// - Throws: what `function` throws.
    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        if Self.holdsTurn {
            try await function()
            return
        }
        await ProcessTurn.shared.acquire()
        defer { ProcessTurn.shared.release() }
        try await Self.$holdsTurn.withValue(true) { try await function() }
    }
}

extension Trait where Self == ProcessExclusiveTrait {
    /// Runs the suite while no other suite with this trait runs in the process (see
    /// ``ProcessExclusiveTrait``).
    public static var processExclusive: Self { ProcessExclusiveTrait() }
}

/// A first-come, first-served async lock: one holder, waiters suspended in arrival order.
package final class ProcessTurn: Sendable {
    static let shared = ProcessTurn()

    package init() {}

    private struct State {
        var held = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = LockedValue(State())

    /// Callers suspended in ``acquire()``. For tests.
    package var waiting: Int { state.withLock { $0.waiters.count } }

    /// Suspends until the caller holds the turn.
    package func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state -> Bool in
                if state.held {
                    state.waiters.append(continuation)
                    return false
                }
                state.held = true
                return true
            }
            if granted { continuation.resume() }
        }
    }

    /// Hands the turn to the longest waiter, or frees it.
    package func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            precondition(state.held, "ProcessTurn.release() without acquire()")
            if state.waiters.isEmpty {
                state.held = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
