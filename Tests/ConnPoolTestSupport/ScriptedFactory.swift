public import ConnPool
public import Synchronization

// A factory and connection whose every operation (connect, health check, close) either finishes at once
// with a chosen result or stays pending until the test resolves it: the pool's deterministic tests and the
// simulation choose when each I/O operation ends, and how.

/// What an operation of a ``ScriptedFactory`` or ``ScriptedConnection`` does when the pool starts it.
public enum ScriptedOutcome: Sendable, Equatable {
    /// Finishes at once, successfully (a connect returns a connection, a check says valid).
    case succeed
    /// Finishes at once, failing (a connect throws, a check says invalid).
    case fail
    /// Stays pending until the test calls ``ScriptedFactory/resolve(_:succeed:)``.
    case pend
}

/// An operation the pool started and that waits for the test to end it.
public struct PendingOperation: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case connect
        case check(connection: Int)
        case close(connection: Int)
    }

    /// Unique per factory, in the order the operations started.
    public let id: Int
    public let kind: Kind

    public var description: String { "#\(id) \(kind)" }
}

/// A connection that does no I/O; its checks and close behave as its factory's policy says.
public final class ScriptedConnection: Connection {
    public let id: Int
    unowned let factory: ScriptedFactory
    /// Set while a borrower holds it; a second borrower finding it set proves a double lease.
    public let borrowed = Atomic<Bool>(false)
    public let closeCount = Atomic<Int>(0)
    /// Closes that started (a pending close counts here before it ends).
    public let closesStarted = Atomic<Int>(0)
    /// What ``isBroken`` reports.
    public let broken = Atomic<Bool>(false)
    /// Health checks started, async or blocking.
    public let checks = Atomic<Int>(0)

    init(id: Int, factory: ScriptedFactory) {
        self.id = id
        self.factory = factory
    }

    public func isValid(timeout: Duration) async -> Bool {
        checks.add(1, ordering: .relaxed)
        return await factory.perform(.check(connection: id), outcome: factory.policy.check)
    }

    /// Blocking checks never pend (a pending blocking check would block the simulation's thread): a
    /// `.pend` policy answers valid.
    public func isValidBlocking(timeout: Duration) -> Bool {
        checks.add(1, ordering: .relaxed)
        return factory.policy.check != .fail
    }

    public func close() async {
        closesStarted.add(1, ordering: .relaxed)
        _ = await factory.perform(.close(connection: id), outcome: factory.policy.close)
        closeCount.add(1, ordering: .relaxed)
    }

    public var isBroken: Bool { broken.load(ordering: .relaxed) }
    public var isClosed: Bool { closeCount.load(ordering: .relaxed) > 0 }

    /// Marks the connection borrowed; returns false if someone else already had it.
    public func beginBorrow() -> Bool {
        borrowed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
    }

    public func endBorrow() { borrowed.store(false, ordering: .releasing) }
}

/// The error a scripted connect throws.
public struct ScriptedConnectError: Error, CustomStringConvertible, Equatable {
    public let attempt: Int
    public var description: String { "scripted connect #\(attempt) failed" }
}

/// A connection factory whose connects, and whose connections' checks and closes, finish at once or pend
/// until the test resolves them, as ``policy`` says at the moment each one starts.
public final class ScriptedFactory: ConnectionFactory, Sendable {
    /// How each kind of operation behaves when it starts.
    public struct Policy: Sendable, Equatable {
        public var connect: ScriptedOutcome
        public var check: ScriptedOutcome
        public var close: ScriptedOutcome

        public init(connect: ScriptedOutcome = .succeed, check: ScriptedOutcome = .succeed, close: ScriptedOutcome = .succeed) {
            self.connect = connect
            self.check = check
            self.close = close
        }
    }

    private struct State {
        var policy: Policy
        var nextOperation = 0
        var attempts = 0
        var pending: [Int: (PendingOperation, CheckedContinuation<Bool, Never>)] = [:]
        var made: [ScriptedConnection] = []
    }

    private let state: LockedValue<State>

    public init(policy: Policy = Policy()) {
        state = LockedValue(State(policy: policy))
    }

    /// The policy new operations follow; change it at any time (operations already pending keep pending).
    public var policy: Policy {
        get { state.withLock { $0.policy } }
        set { state.withLock { $0.policy = newValue } }
    }

    public func makeConnection() async throws -> ScriptedConnection {
        let attempt = state.withLock { state -> Int in
            state.attempts += 1
            return state.attempts
        }
        guard await perform(.connect, outcome: policy.connect) else { throw ScriptedConnectError(attempt: attempt) }
        return state.withLock { state in
            let connection = ScriptedConnection(id: state.made.count, factory: self)
            state.made.append(connection)
            return connection
        }
    }

    func perform(_ kind: PendingOperation.Kind, outcome: ScriptedOutcome) async -> Bool {
        switch outcome {
        case .succeed: return true
        case .fail: return false
        case .pend:
            defer { ThreadSanitizerAnnotations.acquireCurrentTask() }
            return await withCheckedContinuation { continuation in
                state.withLock { state in
                    let operation = PendingOperation(id: state.nextOperation, kind: kind)
                    state.nextOperation += 1
                    state.pending[operation.id] = (operation, continuation)
                }
            }
        }
    }

    /// Operations waiting for the test, oldest first.
    public var pending: [PendingOperation] {
        state.withLock { $0.pending.values.map(\.0).sorted { $0.id < $1.id } }
    }

    /// Ends a pending operation: a connect returns a connection or throws, a check answers valid or not,
    /// a close finishes (either way). Returns false if it was not pending.
    @discardableResult
    public func resolve(_ operation: PendingOperation, succeed: Bool) -> Bool {
        guard let continuation = state.withLock({ $0.pending.removeValue(forKey: operation.id)?.1 }) else { return false }
        continuation.resume(returning: succeed)
        return true
    }

    /// Ends every pending operation (the end of a test: no task stays suspended).
    public func resolveAll(succeed: Bool) {
        let all = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            defer { state.pending = [:] }
            return state.pending.values.sorted { $0.0.id < $1.0.id }.map(\.1)
        }
        for continuation in all { continuation.resume(returning: succeed) }
    }

    /// Every connection made so far, in order.
    public var connections: [ScriptedConnection] { state.withLock { $0.made } }
    /// Calls of ``makeConnection()`` so far.
    public var attempts: Int { state.withLock { $0.attempts } }
}
