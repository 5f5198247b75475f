import ConnPoolTestSupport
import Testing
@testable import ConnPool

// Exact-effects tests of the pure `PoolStateMachine`, in the style of postgres-nio's
// ConnectionPoolModule state machine tests: build a machine from a configuration, feed it inputs at
// explicit instants (monotonic nanoseconds), and assert everything each input asked the runtime to do
// (wake-ups, cancellations, creations, closes, discards, health checks, log events, the metrics report
// and the timer request), plus the counters and slot states it left behind. Every step also checks
// `invariantViolation() == nil`.
//
// Slot tokens are written `t(index, generation)`. A slot's generation starts at 0 and moves on whenever
// a use of the slot ends or starts: lending it (`grant`), starting a health check, closing it and
// emptying it. A connection attempt runs under the empty slot's current generation.

// MARK: - Helpers

/// A lease token as a readable value: `index#generation`.
private struct Tok: Hashable, CustomStringConvertible {
    var index: Int32
    var generation: UInt32

    init(_ index: Int32, _ generation: UInt32) {
        self.index = index
        self.generation = generation
    }

    init(_ token: LeaseToken) {
        self.init(token.index, token.generation)
    }

    var lease: LeaseToken { LeaseToken(index: index, generation: generation) }
    var description: String { "\(index)#\(generation)" }
}

/// Shorthand for a token in expectations.
private func t(_ index: Int32, _ generation: UInt32) -> Tok { Tok(index, generation) }

/// `PoolStateMachine.Effects` reduced to comparable values, plus the timer request the step left
/// (`takeTimerRequest()`).
private struct Fx: Equatable, CustomStringConvertible {
    enum Wake: Equatable, CustomStringConvertible {
        case lease(waiter: UInt64, Tok)
        case failure(waiter: UInt64, ConnectionPoolError.Code)

        var description: String {
            switch self {
            case .lease(let waiter, let token): "w\(waiter)←\(token)"
            case .failure(let waiter, let code): "w\(waiter)←\(code)"
            }
        }
    }

    enum Event: Equatable {
        case connectFailed(String, consecutiveFailures: Int, failingFast: Bool)
        case abandoned(Int32, PoolStateMachine.AbandonedOperation.Kind)
        case leak(Int32, heldFor: Int64, file: String, line: UInt)
        case failedHealthCheck
    }

    var wakeups: [Wake] = []
    var cancelled: [UInt64] = []
    var creations: [Tok] = []
    var closes: [Tok] = []
    var discards: [Int32] = []
    var validations: [Tok] = []
    var resets: [Tok] = []
    var events: [Event] = []
    var metricsReportDue = false
    var timer: Int64?

    init(
        wakeups: [Wake] = [], cancelled: [UInt64] = [], creations: [Tok] = [], closes: [Tok] = [],
        discards: [Int32] = [], validations: [Tok] = [], resets: [Tok] = [], events: [Event] = [],
        metricsReportDue: Bool = false, timer: Int64? = nil
    ) {
        self.resets = resets
        self.wakeups = wakeups
        self.cancelled = cancelled
        self.creations = creations
        self.closes = closes
        self.discards = discards
        self.validations = validations
        self.events = events
        self.metricsReportDue = metricsReportDue
        self.timer = timer
    }

    init(_ effects: PoolStateMachine.Effects, timer: Int64?) {
        wakeups = effects.wakeups.elements.map { wakeup in
            switch wakeup.result {
            case .success(let raw): .lease(waiter: wakeup.waiter.id, Tok(LeaseToken(rawValue: raw)))
            case .failure(let error): .failure(waiter: wakeup.waiter.id, error.code)
            }
        }
        cancelled = effects.cancelled.elements.map(\.id)
        creations = effects.creations.map(Tok.init)
        closes = effects.closes.map(Tok.init)
        discards = effects.discards
        validations = effects.validations.map(Tok.init)
        resets = effects.resets.map(Tok.init)
        events = effects.events.map { event in
            switch event {
            case .connectFailed(let error, let failures, let failingFast):
                .connectFailed("\(error)", consecutiveFailures: failures, failingFast: failingFast)
            case .abandoned(let operation): .abandoned(operation.index, operation.kind)
            case .leak(let leak): .leak(leak.index, heldFor: leak.heldFor, file: "\(leak.file)", line: leak.line)
            case .failedHealthCheck: .failedHealthCheck
            }
        }
        metricsReportDue = effects.metricsReportDue
        self.timer = timer
    }

    static var nothing: Fx { Fx() }

    var description: String {
        var parts: [String] = []
        if !wakeups.isEmpty { parts.append("wakeups: \(wakeups)") }
        if !cancelled.isEmpty { parts.append("cancelled: \(cancelled)") }
        if !creations.isEmpty { parts.append("creations: \(creations)") }
        if !closes.isEmpty { parts.append("closes: \(closes)") }
        if !discards.isEmpty { parts.append("discards: \(discards)") }
        if !validations.isEmpty { parts.append("validations: \(validations)") }
        if !resets.isEmpty { parts.append("resets: \(resets)") }
        if !events.isEmpty { parts.append("events: \(events)") }
        if metricsReportDue { parts.append("metricsReportDue") }
        if let timer { parts.append("timer: \(timer)") }
        return "Fx(\(parts.joined(separator: ", ")))"
    }
}

/// What ``Harness/enqueue(_:now:sourceLocation:)`` returned, reduced.
private enum Outcome: Equatable {
    case leased(Tok)
    case waiting
    case failed(ConnectionPoolError.Code)
}

private struct Enqueued {
    var id: UInt64
    var outcome: Outcome
    var effects: Fx
    /// The error of a `.failed` outcome, for its payload.
    var error: ConnectionPoolError?
}

/// A state machine, the wait cell its blocking waiters point at (never touched by the machine), and
/// one wrapper per entry point that returns the reduced effects and checks the invariants.
private final class Harness {
    var machine: PoolStateMachine
    /// The unreduced effects of the last step (for error payloads).
    var raw = PoolStateMachine.Effects()
    private let cell: UnsafeMutablePointer<BlockingWaitCell>

    init(_ configuration: PoolConfiguration, capacity: Int? = nil) {
        machine = PoolStateMachine(configuration: configuration, capacity: capacity, randomSeed: 42)
        cell = .allocate(capacity: 1)
        cell.initialize(to: BlockingWaitCell())
    }

    deinit {
        machine.deallocate()
        cell.deinitialize(count: 1)
        cell.deallocate()
    }

    /// Runs one input and returns its result and effects.
    func step<R>(
        sourceLocation: SourceLocation = #_sourceLocation,
        _ body: (inout PoolStateMachine, inout PoolStateMachine.Effects) -> R
    ) -> (R, Fx) {
        var effects = PoolStateMachine.Effects()
        let result = body(&machine, &effects)
        raw = effects
        let fx = Fx(effects, timer: machine.takeTimerRequest())
        let violation = machine.invariantViolation()
        #expect(violation == nil, sourceLocation: sourceLocation)
        return (result, fx)
    }

    /// A blocking waiter with the next id.
    func waiter(deadline: Int64 = 1_000_000_000, timeout: Duration = .seconds(1)) -> Waiter {
        Waiter(id: machine.reserveWaiterID(), deadline: deadline, handle: .blocking(cell), timeout: timeout)
    }

    func enqueue(_ waiter: Waiter, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Enqueued {
        let (result, fx) = step(sourceLocation: sourceLocation) { $0.enqueue(waiter, now: now, into: &$1) }
        switch result {
        case .leased(let token): return Enqueued(id: waiter.id, outcome: .leased(Tok(token)), effects: fx)
        case .waiting: return Enqueued(id: waiter.id, outcome: .waiting, effects: fx)
        case .failed(let error): return Enqueued(id: waiter.id, outcome: .failed(error.code), effects: fx, error: error)
        }
    }

    func enqueue(
        deadline: Int64 = 1_000_000_000, timeout: Duration = .seconds(1), now: Int64,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Enqueued {
        enqueue(waiter(deadline: deadline, timeout: timeout), now: now, sourceLocation: sourceLocation)
    }

    func cancel(_ id: UInt64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.cancelWaiter(id: id, into: &$1) }.1
    }

    func releaseToIdle(_ token: Tok, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let (parked, fx) = step(sourceLocation: sourceLocation) { state, _ in state.releaseToIdle(token.lease, now: now) }
        #expect(fx == .nothing, sourceLocation: sourceLocation)
        return parked
    }

    func leaseIdle(sourceLocation: SourceLocation = #_sourceLocation) -> Tok? {
        step(sourceLocation: sourceLocation) { state, _ in state.leaseIdle() }.0.map(Tok.init)
    }

    func release(
        _ token: Tok, broken: Bool = false, dirty: Bool = false, reason: CloseReason = .broken, now: Int64,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Fx {
        step(sourceLocation: sourceLocation) {
            $0.release(token.lease, broken: broken, dirty: dirty, now: now, brokenReason: reason, into: &$1)
        }.1
    }

    func resetFinished(_ token: Tok, succeeded: Bool, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.resetFinished(token.lease, succeeded: succeeded, now: now, into: &$1) }.1
    }

    func creationSucceeded(_ token: Tok, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> (Bool, Fx) {
        step(sourceLocation: sourceLocation) { $0.creationSucceeded(token.lease, now: now, into: &$1) }
    }

    func creationFailed(
        _ token: Tok, now: Int64, message: String = "refused", sourceLocation: SourceLocation = #_sourceLocation
    ) -> Fx {
        step(sourceLocation: sourceLocation) {
            $0.creationFailed(token.lease, error: MockConnectError(message: message), now: now, into: &$1)
        }.1
    }

    func closeFinished(_ token: Tok, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> (Int64?, Fx) {
        step(sourceLocation: sourceLocation) { $0.closeFinished(token.lease, now: now, into: &$1) }
    }

    func planMaintenance(now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.planMaintenance(now: now, into: &$1) }.1
    }

    func validationFinished(_ token: Tok, valid: Bool, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.validationFinished(token.lease, valid: valid, now: now, into: &$1) }.1
    }

    func abandonStuckOperations(now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.abandonStuckOperations(now: now, into: &$1) }.1
    }

    func timerFired(now: Int64, leakClock: Int64? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.timerFired(now: now, leakClock: leakClock ?? now, into: &$1) }.1
    }

    func beginShutdown(now: Int64, gracePeriod: Int64?, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.beginShutdown(now: now, gracePeriod: gracePeriod, into: &$1) }.1
    }

    func resize(to maxSize: Int, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> Fx {
        step(sourceLocation: sourceLocation) { $0.resize(maxSize: maxSize, now: now, into: &$1) }.1
    }

    // Pass-throughs, so a failed expectation prints the harness rather than the whole state machine.
    var fastLaneAllowed: Bool { machine.fastLaneAllowed }
    var shutdownComplete: Bool { machine.shutdownComplete }
    var isFinished: Bool { machine.isFinished }
    var isDrained: Bool { machine.isDrained }
    var breakerOpen: Bool { machine.breakerOpen }
    var tracksLeases: Bool { machine.tracksLeases }

    /// Opens `count` connections on a fresh pool, each for a waiter (deadline 1 s) that is handed it at
    /// once: returns their leases, `t(i, 1)` for slot `i`. Leaves the timer armed at 1 s.
    func openLeased(_ count: Int, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) -> [Tok] {
        var leases: [Tok] = []
        for _ in 0..<count {
            let enqueued = enqueue(now: now, sourceLocation: sourceLocation)
            guard enqueued.outcome == .waiting, let creation = enqueued.effects.creations.first else {
                Issue.record("expected a creation, got \(enqueued.outcome) \(enqueued.effects)", sourceLocation: sourceLocation)
                return leases
            }
            let (accepted, fx) = creationSucceeded(creation, now: now, sourceLocation: sourceLocation)
            guard accepted, case .lease(waiter: enqueued.id, let lease)? = fx.wakeups.first else {
                Issue.record("expected a hand-off, got \(fx)", sourceLocation: sourceLocation)
                return leases
            }
            leases.append(lease)
        }
        return leases
    }
}

// MARK: - Tests

@Suite("PoolStateMachine: exact effects of every rule")
struct PoolStateMachineTests {
    /// A configuration whose numbers are easy to follow: no lifetime, idle timeout, health checks or
    /// circuit breaker unless a test turns them on; backoff 100, 200, 400, 400… ns without jitter;
    /// connect timeout 1 µs, close timeout 2 µs, maintenance every 10 µs.
    static func configuration(maxSize: Int) -> PoolConfiguration {
        PoolConfiguration()
            .maxSize(maxSize)
            .minSize(0)
            .maxConcurrentConnects(100)
            .idleTimeout(nil)
            .healthCheck(interval: nil, timeout: .nanoseconds(50))
            .maxLifetime(nil, jitter: 0)
            .circuitBreakerThreshold(nil)
            .connectRetryBackoff(initial: .nanoseconds(100), multiplier: 2, max: .nanoseconds(400), jitter: 0)
            .operationTimeouts(connect: .nanoseconds(1_000), close: .nanoseconds(2_000))
            .maintenanceInterval(.nanoseconds(10_000))
    }

    // MARK: Enqueue

    @Test("enqueue on an empty pool: one attempt per uncovered waiter up to maxSize; timer at the earliest deadline")
    func enqueueQueuesAndReserves() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.leaseIdle() == nil)

        let first = h.enqueue(deadline: 500, now: 0)
        #expect(first.id == 1)
        #expect(first.outcome == .waiting)
        #expect(first.effects == Fx(creations: [t(0, 0)], timer: 500))
        #expect(h.machine.slots.operationDeadlines[0] == 1_000)  // now + connectTimeout

        let second = h.enqueue(deadline: 600, now: 1)
        #expect(second.outcome == .waiting)
        #expect(second.effects == Fx(creations: [t(1, 0)]))  // 600 is after the armed 500

        let third = h.enqueue(deadline: 400, now: 2)
        #expect(third.outcome == .waiting)
        #expect(third.effects == Fx(timer: 400))  // the pool is full: no attempt, but an earlier deadline

        #expect(h.machine.waiters.count == 3)
        #expect(h.machine.slots.connectingCount == 2)
        #expect(h.machine.slots.occupiedCount == 2)
    }

    @Test("enqueue lends an idle connection at once")
    func enqueueLeasesIdle() {
        let h = Harness(Self.configuration(maxSize: 1))
        let leases = h.openLeased(1, now: 10)
        #expect(leases == [t(0, 1)])
        #expect(h.releaseToIdle(t(0, 1), now: 20))

        let enqueued = h.enqueue(now: 30)
        #expect(enqueued.outcome == .leased(t(0, 2)))
        #expect(enqueued.effects == .nothing)
        #expect(h.machine.waiters.isEmpty)
        #expect(h.machine.counters.immediateAcquires == 1)
        #expect(h.machine.counters.waitedAcquires == 1)
        #expect(h.machine.slots.leasedCount == 1)
    }

    @Test("enqueue sheds the waiter beyond maxWaiters")
    func enqueueShedsOverMaxWaiters() {
        let h = Harness(Self.configuration(maxSize: 1).maxWaiters(2))
        #expect(h.enqueue(deadline: 1_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000))
        #expect(h.enqueue(deadline: 1_000, now: 0).effects == .nothing)

        let shed = h.enqueue(deadline: 1_000, now: 0)
        #expect(shed.outcome == .failed(.tooManyWaiters))
        #expect(shed.error?.limit == 2)
        #expect(shed.effects == .nothing)
        #expect(h.machine.waiters.count == 2)
        #expect(h.machine.counters.shedWaiters == 1)
    }

    @Test("enqueue fails with shutDown once the pool shuts down")
    func enqueueAfterShutdown() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.beginShutdown(now: 0, gracePeriod: nil) == .nothing)
        let enqueued = h.enqueue(now: 1)
        #expect(enqueued.outcome == .failed(.shutDown))
        #expect(enqueued.effects == .nothing)
        #expect(h.machine.waiters.isEmpty)
        #expect(h.machine.counters.failedFast == 0)
    }

    @Test("cancelWaiter removes a queued waiter once; the next hand-off skips it")
    func cancelWaiter() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.enqueue(deadline: 1_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000))
        #expect(h.enqueue(now: 0).effects == .nothing)
        #expect(h.enqueue(now: 0).effects == .nothing)

        #expect(h.cancel(2) == Fx(cancelled: [2]))
        #expect(h.cancel(2) == .nothing)
        #expect(h.cancel(99) == .nothing)
        #expect(h.machine.counters.cancelledWaiters == 1)

        #expect(h.creationSucceeded(t(0, 0), now: 10) == (true, Fx(wakeups: [.lease(waiter: 1, t(0, 1))])))
        #expect(h.release(t(0, 1), now: 20) == Fx(wakeups: [.lease(waiter: 3, t(0, 2))]))
        #expect(h.machine.waiters.isEmpty)
    }

    // MARK: Release

    @Test("release hands off to the oldest waiter by arrival (id), else parks the connection idle")
    func releaseHandsOffFIFO() {
        let h = Harness(Self.configuration(maxSize: 1))
        let early = h.waiter()
        let late = h.waiter()
        // The later caller enqueues first; the queue still serves by id.
        #expect(h.enqueue(late, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000_000))
        #expect(h.enqueue(early, now: 0).effects == .nothing)

        #expect(h.creationSucceeded(t(0, 0), now: 10) == (true, Fx(wakeups: [.lease(waiter: early.id, t(0, 1))])))
        #expect(h.release(t(0, 1), now: 20) == Fx(wakeups: [.lease(waiter: late.id, t(0, 2))]))
        #expect(h.machine.slots.lastUsed[0] == 20)
        #expect(h.machine.slots.states[0] == .leased)

        #expect(h.release(t(0, 2), now: 30) == .nothing)
        #expect(h.machine.slots.states[0] == .idle)
        #expect(h.machine.slots.idleCount == 1)
        #expect(h.machine.slots.leasedCount == 0)
        #expect(h.machine.slots.lastUsed[0] == 30)
        #expect(h.machine.counters.waitedAcquires == 2)

        // The first lease's token is stale: it cannot touch the slot again.
        #expect(h.release(t(0, 1), now: 40) == .nothing)
        #expect(h.machine.slots.idleCount == 1)
        #expect(h.machine.forcedLeasesOutstanding == 0)
    }

    @Test("releaseToIdle refuses (slow path) while someone waits or for a stale token")
    func releaseToIdleRefuses() {
        let h = Harness(Self.configuration(maxSize: 1))
        let leases = h.openLeased(1, now: 0)
        #expect(h.fastLaneAllowed)
        #expect(h.enqueue(deadline: 5_000, now: 1).effects == Fx(timer: 5_000))
        #expect(!h.fastLaneAllowed)
        #expect(!h.releaseToIdle(leases[0], now: 2))
        #expect(h.machine.slots.states[0] == .leased)
        #expect(h.release(leases[0], now: 2) == Fx(wakeups: [.lease(waiter: 2, t(0, 2))]))
        #expect(!h.releaseToIdle(leases[0], now: 3))  // stale
        #expect(h.releaseToIdle(t(0, 2), now: 4))
    }

    @Test("a broken release closes with .broken; closeFinished frees the slot and starts an attempt for a waiter")
    func releaseBrokenCloses() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.openLeased(1, now: 10) == [t(0, 1)])
        #expect(h.enqueue(deadline: 5_000, now: 20).effects == Fx(timer: 5_000))  // pool full: no attempt

        #expect(h.release(t(0, 1), broken: true, now: 50) == Fx(closes: [t(0, 2)]))
        #expect(h.machine.slots.states[0] == .closing)
        #expect(h.machine.slots.closeReasons[0] == .broken)
        #expect(h.machine.slots.operationDeadlines[0] == 2_050)
        #expect(h.machine.slots.heldCount == 0)
        #expect(h.machine.slots.occupiedCount == 1)

        // Lifetime is measured from the creation at 10.
        #expect(h.closeFinished(t(0, 2), now: 60) == (50, Fx(creations: [t(0, 3)])))
        #expect(h.machine.counters.closedBroken == 1)
        #expect(h.creationSucceeded(t(0, 3), now: 70) == (true, Fx(wakeups: [.lease(waiter: 2, t(0, 4))])))

        // A second report of the same close is ignored.
        #expect(h.closeFinished(t(0, 2), now: 80) == (nil, .nothing))
        #expect(h.machine.counters.closedBroken == 1)
    }

    @Test("a release after a failed check on acquire closes with .health and counts the failure")
    func releaseFailedCheckCloses() {
        let h = Harness(Self.configuration(maxSize: 1))
        _ = h.openLeased(1, now: 0)
        #expect(h.release(t(0, 1), broken: true, reason: .health, now: 5) == Fx(closes: [t(0, 2)]))
        #expect(h.machine.slots.closeReasons[0] == .health)
        #expect(h.machine.counters.healthCheckFailures == 1)
        #expect(h.closeFinished(t(0, 2), now: 6) == (6, .nothing))
        #expect(h.machine.counters.closedHealth == 1)
    }

    @Test("a release at or after maxLifetime closes with .lifetime, fast path included")
    func releaseExpiredCloses() {
        let h = Harness(Self.configuration(maxSize: 1).maxLifetime(.nanoseconds(1_000), jitter: 0))
        #expect(h.openLeased(1, now: 10) == [t(0, 1)])
        #expect(h.machine.slots.expiresAt[0] == 1_010)

        #expect(h.releaseToIdle(t(0, 1), now: 1_009))
        #expect(h.leaseIdle() == t(0, 2))
        #expect(!h.releaseToIdle(t(0, 2), now: 1_010))
        #expect(h.release(t(0, 2), now: 1_010) == Fx(closes: [t(0, 3)]))
        #expect(h.machine.slots.closeReasons[0] == .lifetime)
        #expect(h.closeFinished(t(0, 3), now: 1_100) == (1_090, .nothing))
        #expect(h.machine.counters.closedLifetime == 1)
    }

    @Test("releaseToIdle and leaseIdle reuse LIFO (most recent first) or FIFO", arguments: [
        PoolConfiguration.ReuseOrder.lifo, .fifo,
    ])
    func reuseOrder(_ order: PoolConfiguration.ReuseOrder) {
        let h = Harness(Self.configuration(maxSize: 3).reuseOrder(order))
        let leases = h.openLeased(3, now: 0)
        #expect(leases == [t(0, 1), t(1, 1), t(2, 1)])
        for (offset, lease) in leases.enumerated() { #expect(h.releaseToIdle(lease, now: Int64(10 + offset))) }
        #expect(h.machine.slots.lastUsed[2] == 12)
        let expected: [Tok] = order == .lifo ? [t(2, 2), t(1, 2), t(0, 2)] : [t(0, 2), t(1, 2), t(2, 2)]
        let lent = [h.leaseIdle(), h.leaseIdle(), h.leaseIdle()]
        #expect(lent == expected.map(Optional.some))
        #expect(h.leaseIdle() == nil)
        #expect(h.machine.counters.immediateAcquires == 3)
    }

    // MARK: Creation

    @Test("creation respects maxConcurrentConnects and starts the next attempt when one ends")
    func creationConcurrencyBound() {
        let h = Harness(Self.configuration(maxSize: 5).maxConcurrentConnects(2))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(1, 0)]))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == .nothing)
        #expect(h.machine.creationDecision(now: 0) == .none)

        // One succeeds: the oldest waiter gets it, and a third attempt starts for the remaining two.
        #expect(h.creationSucceeded(t(0, 0), now: 10)
            == (true, Fx(wakeups: [.lease(waiter: 1, t(0, 1))], creations: [t(2, 0)])))

        // One fails: its slot is free, and the retry waits for the backoff (100 ns).
        #expect(h.creationFailed(t(1, 0), now: 20) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: false)], timer: 120))
        #expect(h.machine.slots.states[1] == .empty)
        #expect(h.machine.creationDecision(now: 119) == .retryAt(120))
        #expect(h.machine.counters.creationFailures == 1)
        #expect(h.machine.attemptsEnded == 2)

        // The timer retries; then it waits for the waiters' deadline.
        #expect(h.timerFired(now: 120) == Fx(creations: [t(1, 1)], timer: 1_000_000))
    }

    @Test("the timer tops the pool up to minSize; warm-up reserves up to minSize ignoring the backoff")
    func creationForMinSize() {
        let h = Harness(Self.configuration(maxSize: 4).minSize(2))
        #expect(h.timerFired(now: 0) == Fx(creations: [t(0, 0), t(1, 0)]))
        #expect(h.creationSucceeded(t(0, 0), now: 10) == (true, .nothing))
        #expect(h.machine.slots.idleCount == 1)

        #expect(h.creationFailed(t(1, 0), now: 20) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: false)], timer: 120))
        // warm() asks now: the backoff does not apply, minSize still does.
        let (warm, fx) = h.step { $0.reserveForWarmUp(now: 30, into: &$1) }
        #expect(warm.map(Tok.init) == t(1, 1))
        #expect(fx == Fx(creations: [t(1, 1)]))
        #expect(h.step { $0.reserveForWarmUp(now: 31, into: &$1) }.0 == nil)

        #expect(h.creationSucceeded(t(1, 1), now: 40) == (true, .nothing))
        #expect(h.machine.slots.idleCount == 2)
        #expect(h.machine.backoff.consecutiveFailures == 0)
        #expect(h.machine.retryNotBefore == .min)
        // At minSize with nothing waiting: no more attempts, and nothing to wake the timer for.
        #expect(h.timerFired(now: 200) == .nothing)
    }

    @Test("failed attempts back off exponentially up to the maximum; each retry arms the timer")
    func creationBackoff() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000))
        var now: Int64 = 0
        for (failure, delay) in [Int64(100), 200, 400, 400].enumerated() {
            let generation = UInt32(failure)
            #expect(h.creationFailed(t(0, generation), now: now) == Fx(
                events: [.connectFailed("refused", consecutiveFailures: failure + 1, failingFast: false)],
                timer: now + delay))
            #expect(h.machine.creationDecision(now: now + delay - 1) == .retryAt(now + delay))
            now += delay
            #expect(h.timerFired(now: now) == Fx(creations: [t(0, generation + 1)], timer: 1_000_000))
        }
        #expect((h.machine.lastConnectError as? MockConnectError)?.message == "refused")

        #expect(h.creationSucceeded(t(0, 4), now: now + 5) == (true, Fx(wakeups: [.lease(waiter: 1, t(0, 5))])))
        #expect(h.machine.backoff.consecutiveFailures == 0)
        #expect(h.machine.retryNotBefore == .min)
        #expect(h.machine.lastConnectError == nil)
        #expect(h.machine.counters.created == 1)
        #expect(h.machine.counters.creationFailures == 4)
    }

    @Test("the breaker opens after the threshold and fails waiters fast; a successful probe closes it")
    func circuitBreaker() {
        let h = Harness(Self.configuration(maxSize: 1).circuitBreakerThreshold(2))
        #expect(h.enqueue(deadline: 10_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 10_000))
        #expect(h.creationFailed(t(0, 0), now: 10) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: false)], timer: 110))
        #expect(h.timerFired(now: 110) == Fx(creations: [t(0, 1)], timer: 10_000))

        // The second failure opens the breaker: the queued waiter fails at once.
        #expect(h.creationFailed(t(0, 1), now: 120) == Fx(
            wakeups: [.failure(waiter: 1, .connectFailing)],
            events: [.connectFailed("refused", consecutiveFailures: 2, failingFast: true)],
            timer: 320))
        guard case .failure(let error)? = h.raw.wakeups.first?.result else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.consecutiveFailures == 2)
        #expect((error.lastConnectError as? MockConnectError)?.message == "refused")
        #expect(h.breakerOpen)
        #expect(h.machine.counters.failedFast == 1)

        // New acquires fail fast too, without queueing.
        let fast = h.enqueue(now: 130)
        #expect(fast.outcome == .failed(.connectFailing))
        #expect(fast.error?.consecutiveFailures == 2)
        #expect(fast.effects == .nothing)
        #expect(h.machine.counters.failedFast == 2)

        // One probe after the backoff; acquires still fail fast while it runs.
        #expect(h.timerFired(now: 320) == Fx(creations: [t(0, 2)]))
        #expect(h.machine.creationDecision(now: 321) == .none)
        #expect(h.enqueue(now: 330).outcome == .failed(.connectFailing))

        // The probe succeeds: breaker and backoff reset, the connection parks idle.
        #expect(h.creationSucceeded(t(0, 2), now: 340) == (true, .nothing))
        #expect(!h.breakerOpen)
        #expect(h.machine.backoff.consecutiveFailures == 0)
        #expect(h.machine.lastConnectError == nil)
        #expect(h.machine.retryNotBefore == .min)
        #expect(h.enqueue(now: 350).outcome == .leased(t(0, 3)))
    }

    @Test("with the breaker open, waiters queued behind a live connection fail once its close frees the last slot")
    func breakerFailsWaitersWhenLastConnectionCloses() {
        let h = Harness(Self.configuration(maxSize: 2).circuitBreakerThreshold(1))
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])
        #expect(h.enqueue(deadline: 5_000, now: 10).effects == Fx(creations: [t(1, 0)], timer: 5_000))
        // The breaker opens, but a live connection could still serve the waiter: it stays queued.
        #expect(h.creationFailed(t(1, 0), now: 20) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: true)], timer: 120))
        #expect(h.machine.waiters.count == 1)

        #expect(h.release(t(0, 1), broken: true, now: 30) == Fx(closes: [t(0, 2)]))
        #expect(h.closeFinished(t(0, 2), now: 40) == (40, Fx(wakeups: [.failure(waiter: 2, .connectFailing)])))
        #expect(h.machine.waiters.isEmpty)
        #expect(h.machine.counters.failedFast == 1)
    }

    @Test("a connection that opens while the pool holds more than maxSize closes with .resize")
    func creationOverMaxSizeCloses() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(1, 0)]))
        #expect(h.cancel(1) == Fx(cancelled: [1]))
        #expect(h.cancel(2) == Fx(cancelled: [2]))
        #expect(h.resize(to: 1, now: 5) == .nothing)  // nothing idle to close yet

        #expect(h.creationSucceeded(t(0, 0), now: 10) == (true, Fx(closes: [t(0, 1)])))
        #expect(h.machine.slots.closeReasons[0] == .resize)
        #expect(h.creationSucceeded(t(1, 0), now: 11) == (true, .nothing))  // closing slots do not count
        #expect(h.machine.slots.states[1] == .idle)
        #expect(h.closeFinished(t(0, 1), now: 12) == (2, .nothing))
        #expect(h.machine.counters.closedResize == 1)
    }

    // MARK: Stuck operations and timeouts

    @Test("operations past their deadline are given up on; late results change nothing")
    func abandonStuckOperations() {
        let h = Harness(Self.configuration(maxSize: 3).healthCheck(interval: .nanoseconds(500), timeout: .nanoseconds(50)))
        #expect(h.enqueue(deadline: 100_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 100_000))
        #expect(h.enqueue(deadline: 100_000, now: 0).effects == Fx(creations: [t(1, 0)]))
        #expect(h.enqueue(deadline: 100_000, now: 0).effects == Fx(creations: [t(2, 0)]))
        // Slot 0's attempt hangs; slots 1 and 2 open and serve waiters 1 and 2; waiter 3 gives up.
        #expect(h.creationSucceeded(t(1, 0), now: 10) == (true, Fx(wakeups: [.lease(waiter: 1, t(1, 1))])))
        #expect(h.creationSucceeded(t(2, 0), now: 10) == (true, Fx(wakeups: [.lease(waiter: 2, t(2, 1))])))
        #expect(h.cancel(3) == Fx(cancelled: [3]))
        // Slot 1 parks and its health check hangs; slot 2 comes back broken and its close hangs.
        #expect(h.releaseToIdle(t(1, 1), now: 20))
        #expect(h.release(t(2, 1), broken: true, now: 20) == Fx(closes: [t(2, 2)]))
        #expect(h.planMaintenance(now: 600) == Fx(validations: [t(1, 2)]))

        #expect(h.abandonStuckOperations(now: 649) == .nothing)
        #expect(h.abandonStuckOperations(now: 2_020) == Fx(
            discards: [1],
            events: [.abandoned(0, .connecting), .abandoned(1, .validating), .abandoned(2, .closing)]))
        #expect(h.machine.slots.occupiedCount == 0)
        #expect(h.machine.counters.creationFailures == 1)
        #expect(h.machine.counters.healthCheckFailures == 1)
        #expect(h.machine.counters.closedHealth == 1)
        #expect(h.machine.counters.closedBroken == 1)
        #expect(h.machine.attemptsEnded == 3)
        let lastError = h.machine.lastConnectError as? ConnectionPoolError
        #expect(lastError?.code == .connectTimedOut)
        #expect(lastError?.timeout == .nanoseconds(1_000))

        // The late results: the attempt's connection is not the pool's, the check and close are void.
        #expect(h.creationSucceeded(t(0, 0), now: 3_000) == (false, .nothing))
        #expect(h.validationFinished(t(1, 2), valid: true, now: 3_000) == .nothing)
        #expect(h.closeFinished(t(2, 2), now: 3_000) == (nil, .nothing))
        #expect(h.creationFailed(t(0, 0), now: 3_000, message: "late") == .nothing)
        #expect(h.machine.slots.occupiedCount == 0)
        #expect(h.machine.counters.creationFailures == 1)
        #expect(h.machine.counters.closedBroken == 1)
        #expect(h.machine.counters.created == 2)
        #expect(h.machine.attemptsEnded == 3)
    }

    @Test("expired waiters fail with acquireTimeout carrying the last connect error (a given-up attempt)")
    func waiterTimeouts() {
        let h = Harness(Self.configuration(maxSize: 1))
        let first = h.enqueue(deadline: 3_000, timeout: .nanoseconds(3_000), now: 0)
        #expect(first.effects == Fx(creations: [t(0, 0)], timer: 3_000))
        let second = h.enqueue(deadline: 2_000, timeout: .nanoseconds(2_000), now: 0)
        #expect(second.effects == Fx(timer: 2_000))
        #expect(h.enqueue(deadline: 9_000, now: 0).effects == .nothing)

        // The attempt outlives connectTimeout (1 µs): it is given up on and retried after the backoff.
        #expect(h.abandonStuckOperations(now: 1_000) == Fx(events: [.abandoned(0, .connecting)], timer: 1_100))
        #expect(h.timerFired(now: 1_100) == Fx(creations: [t(0, 1)], timer: 2_000))

        #expect(h.timerFired(now: 2_000) == Fx(wakeups: [.failure(waiter: second.id, .acquireTimeout)], timer: 3_000))
        guard case .failure(let error)? = h.raw.wakeups.first?.result else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.timeout == .nanoseconds(2_000))
        #expect((error.lastConnectError as? ConnectionPoolError)?.code == .connectTimedOut)

        #expect(h.timerFired(now: 3_000) == Fx(wakeups: [.failure(waiter: first.id, .acquireTimeout)], timer: 9_000))
        #expect(h.machine.counters.acquireTimeouts == 2)
        #expect(h.machine.waiters.count == 1)
    }

    @Test("the metrics report is due every interval, and not once switched off")
    func metricsDue() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.step { state, _ in state.setMetricsInterval(1_000, now: 0) }.1 == Fx(timer: 1_000))
        #expect(h.timerFired(now: 999) == Fx(timer: 1_000))
        #expect(h.timerFired(now: 1_000) == Fx(metricsReportDue: true, timer: 2_000))
        #expect(h.step { state, _ in state.setMetricsInterval(nil, now: 1_500) }.1 == .nothing)
        #expect(h.timerFired(now: 2_000) == .nothing)
    }

    // MARK: Maintenance

    @Test("maintenance closes expired and idle-timed-out connections (LRU first, down to minSize) and checks stale ones")
    func maintenanceRound() {
        let configuration = Self.configuration(maxSize: 4).minSize(2)
            .maxLifetime(.nanoseconds(10_000), jitter: 0).idleTimeout(.nanoseconds(1_000))
            .healthCheck(interval: .nanoseconds(500), timeout: .nanoseconds(50))
            .operationTimeouts(connect: .nanoseconds(100_000), close: .nanoseconds(2_000))
        let h = Harness(configuration)
        #expect(h.step { state, _ in state.startMaintenance(now: 0) }.1 == Fx(timer: 10_000))
        for slot in Int32(0)..<4 {
            #expect(h.enqueue(now: 0).effects == Fx(creations: [t(slot, 0)]))
        }
        // Slot 0 opens at 0 (expires at 10 µs), the others at 5 µs (expire at 15 µs).
        #expect(h.creationSucceeded(t(0, 0), now: 0).1 == Fx(wakeups: [.lease(waiter: 1, t(0, 1))]))
        for slot in Int32(1)..<4 {
            #expect(h.creationSucceeded(t(slot, 0), now: 5_000).1 == Fx(wakeups: [.lease(waiter: UInt64(slot + 1), t(slot, 1))]))
        }
        // Released in the order 1, 0, 2, 3 (the idle ring's order, least recently used first).
        #expect(h.releaseToIdle(t(1, 1), now: 8_000))
        #expect(h.releaseToIdle(t(0, 1), now: 8_500))
        #expect(h.releaseToIdle(t(2, 1), now: 9_000))
        #expect(h.releaseToIdle(t(3, 1), now: 9_800))

        // Slot 1: idle 2 µs ≥ 1 µs and 4 live > minSize → .idle. Slot 0: expired → .lifetime.
        // Slot 2: idle exactly 1 µs but only 2 live = minSize → kept; unchecked for 1 µs ≥ 500 ns → check.
        // Slot 3: used 200 ns ago → untouched.
        #expect(h.timerFired(now: 10_000) == Fx(closes: [t(1, 2), t(0, 2)], validations: [t(2, 2)], timer: 20_000))
        #expect(h.machine.slots.closeReasons[1] == .idle)
        #expect(h.machine.slots.closeReasons[0] == .lifetime)
        #expect(h.machine.slots.states[2] == .validating)
        #expect(h.machine.slots.operationDeadlines[2] == 10_050)
        #expect(h.machine.slots.states[3] == .idle)

        #expect(h.validationFinished(t(2, 2), valid: true, now: 10_010) == .nothing)
        #expect(h.machine.slots.states[2] == .idle)
        #expect(h.machine.slots.lastChecked[2] == 10_010)
        #expect(h.closeFinished(t(1, 2), now: 10_020) == (5_020, .nothing))
        #expect(h.closeFinished(t(0, 2), now: 10_030) == (10_030, .nothing))
        #expect(h.machine.counters.closedIdle == 1)
        #expect(h.machine.counters.closedLifetime == 1)

        // Next round: both remaining connections expired; the pool refills to minSize.
        #expect(h.timerFired(now: 20_000) == Fx(
            creations: [t(0, 3), t(1, 3)], closes: [t(3, 2), t(2, 3)], timer: 30_000))
    }

    @Test("a health check that passes hands the connection to a waiter; one that fails closes with .health")
    func validationOutcomes() {
        let h = Harness(Self.configuration(maxSize: 2).healthCheck(interval: .nanoseconds(500), timeout: .nanoseconds(50)))
        #expect(h.openLeased(2, now: 0) == [t(0, 1), t(1, 1)])
        #expect(h.releaseToIdle(t(0, 1), now: 0))
        #expect(h.releaseToIdle(t(1, 1), now: 0))
        #expect(h.planMaintenance(now: 1_000) == Fx(validations: [t(0, 2), t(1, 2)]))
        #expect(h.machine.slots.validatingCount == 2)
        // Nothing idle while both are checked: a caller waits (the pool is full, no attempt).
        #expect(h.enqueue(deadline: 50_000, now: 1_001).effects == Fx(timer: 50_000))

        #expect(h.validationFinished(t(0, 2), valid: true, now: 1_010) == Fx(wakeups: [.lease(waiter: 3, t(0, 3))]))
        #expect(h.machine.slots.lastChecked[0] == 1_010)
        #expect(h.validationFinished(t(1, 2), valid: false, now: 1_020) == Fx(closes: [t(1, 3)], events: [.failedHealthCheck]))
        #expect(h.machine.slots.closeReasons[1] == .health)
        #expect(h.machine.counters.healthCheckFailures == 1)
        // A late or repeated result is ignored.
        #expect(h.validationFinished(t(1, 2), valid: true, now: 1_030) == .nothing)
        #expect(h.closeFinished(t(1, 3), now: 1_040) == (1_040, .nothing))
        #expect(h.machine.counters.closedHealth == 1)
    }

    @Test("a health check that ends during shutdown closes the connection with .shutdown")
    func validationDuringShutdown() {
        let h = Harness(Self.configuration(maxSize: 1).healthCheck(interval: .nanoseconds(500), timeout: .nanoseconds(50)))
        _ = h.openLeased(1, now: 0)
        #expect(h.releaseToIdle(t(0, 1), now: 0))
        #expect(h.planMaintenance(now: 1_000) == Fx(validations: [t(0, 2)]))
        #expect(h.beginShutdown(now: 1_001, gracePeriod: nil) == .nothing)  // not idle: nothing to close yet
        #expect(!h.shutdownComplete)

        #expect(h.validationFinished(t(0, 2), valid: true, now: 1_010) == Fx(closes: [t(0, 3)]))
        #expect(h.machine.slots.closeReasons[0] == .shutdown)
        #expect(h.machine.counters.healthCheckFailures == 0)
        #expect(h.closeFinished(t(0, 3), now: 1_020) == (1_020, .nothing))
        h.machine.completeShutdownIfDrained()
        #expect(h.shutdownComplete)
        #expect(h.isFinished)
        #expect(h.machine.counters.closedShutdown == 1)
    }

    @Test("leak detection reports a lease held past the threshold once per lease")
    func leakDetection() {
        let h = Harness(Self.configuration(maxSize: 1).leakDetectionThreshold(.nanoseconds(1_000)))
        #expect(h.tracksLeases)
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])
        h.machine.slots.stampLease(0, now: 0, file: "Leaky.swift", line: 7)
        #expect(h.step { state, _ in state.startMaintenance(now: 0) }.1 == Fx(timer: 10_000))

        // The leak clock (coarse) is what the hold time is measured on.
        #expect(h.timerFired(now: 10_000, leakClock: 10_500) == Fx(
            events: [.leak(0, heldFor: 10_500, file: "Leaky.swift", line: 7)], timer: 20_000))
        #expect(h.timerFired(now: 20_000) == Fx(timer: 30_000))
        #expect(h.machine.counters.leaksDetected == 1)

        // A new lease of the same slot is a new lease.
        #expect(h.release(t(0, 1), now: 25_000) == .nothing)
        #expect(h.leaseIdle() == t(0, 2))
        h.machine.slots.stampLease(0, now: 25_000, file: "Leaky.swift", line: 9)
        #expect(h.timerFired(now: 30_000) == Fx(events: [.leak(0, heldFor: 5_000, file: "Leaky.swift", line: 9)], timer: 40_000))
        #expect(h.machine.counters.leaksDetected == 2)
    }

    // MARK: Resize

    @Test("shrinking 10 → 9 closes exactly one idle connection; the other leases then return to idle")
    func shrinkClosesOnlyTheExtra() {
        let h = Harness(Self.configuration(maxSize: 10))
        let leases = h.openLeased(10, now: 0)
        #expect(leases == (0..<10).map { t($0, 1) })
        #expect(h.releaseToIdle(leases[0], now: 5))

        #expect(h.resize(to: 9, now: 10) == Fx(closes: [t(0, 2)]))
        #expect(h.machine.slots.closeReasons[0] == .resize)
        #expect(h.machine.slots.heldCount == 9)
        #expect(h.fastLaneAllowed)

        // A closing connection is on its way out: it does not make the returns look excess.
        for lease in leases[1...4] { #expect(h.releaseToIdle(lease, now: 20)) }
        for lease in leases[5...9] { #expect(h.release(lease, now: 20) == .nothing) }
        #expect(h.machine.slots.idleCount == 9)
        #expect(h.machine.slots.closingCount == 1)
        #expect(h.closeFinished(t(0, 2), now: 30) == (30, .nothing))
        #expect(h.machine.counters.closedResize == 1)
        #expect(h.machine.slots.occupiedCount == 9)
    }

    @Test("shrinking with every connection leased closes the first return with .resize, not the others")
    func shrinkWhileAllLeased() {
        let h = Harness(Self.configuration(maxSize: 3))
        let leases = h.openLeased(3, now: 0)
        #expect(h.resize(to: 2, now: 10) == .nothing)
        #expect(!h.fastLaneAllowed)
        #expect(!h.releaseToIdle(leases[0], now: 20))
        #expect(h.release(leases[0], now: 20) == Fx(closes: [t(0, 2)]))
        #expect(h.machine.slots.closeReasons[0] == .resize)
        #expect(h.releaseToIdle(leases[1], now: 21))
        #expect(h.release(leases[2], now: 22) == .nothing)
        #expect(h.machine.slots.idleCount == 2)
    }

    @Test("shrinking closes the least recently used idle connections first")
    func shrinkClosesLeastRecentlyUsed() {
        let h = Harness(Self.configuration(maxSize: 5))
        let leases = h.openLeased(5, now: 0)
        for (offset, slot) in [3, 1, 4, 0, 2].enumerated() { #expect(h.releaseToIdle(leases[slot], now: Int64(10 + offset))) }
        #expect(h.resize(to: 2, now: 20) == Fx(closes: [t(3, 2), t(1, 2), t(4, 2)]))
        #expect(h.machine.slots.idleCount == 2)
        #expect(h.leaseIdle() == t(2, 2))  // LIFO: the most recently used of the two left
        #expect(h.leaseIdle() == t(0, 2))
    }

    @Test("growing past the capacity reallocates the slots and starts attempts for the waiters")
    func growServesWaiters() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == .nothing)
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == .nothing)

        #expect(h.resize(to: 3, now: 10) == Fx(creations: [t(1, 0), t(2, 0)]))
        #expect(h.machine.slots.capacity == 3)
        #expect(h.machine.maxSize == 3)
        #expect(h.creationSucceeded(t(2, 0), now: 20) == (true, Fx(wakeups: [.lease(waiter: 1, t(2, 1))])))
    }

    // MARK: Shutdown

    @Test("beginShutdown fails every waiter, counts them, and arms the end of the grace period; once only")
    func shutdownFailsWaiters() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])
        #expect(h.enqueue(deadline: 5_000, now: 10).effects == Fx(timer: 5_000))
        #expect(h.enqueue(deadline: 6_000, now: 10).effects == .nothing)

        #expect(h.beginShutdown(now: 100, gracePeriod: 1_000) == Fx(
            wakeups: [.failure(waiter: 2, .shutDown), .failure(waiter: 3, .shutDown)], timer: 1_100))
        #expect(h.machine.shutdownReport.failedWaiters == 2)
        #expect(h.machine.shutdownDeadline == 1_100)
        #expect(h.machine.nextMaintenanceAt == .max)
        #expect(!h.shutdownComplete)
        #expect(h.beginShutdown(now: 200, gracePeriod: 10) == .nothing)
        #expect(h.machine.shutdownDeadline == 1_100)
    }

    @Test("beginShutdown closes idle connections now; leases close as they return (.shutdown even if broken)")
    func shutdownClosesIdleThenReturns() {
        let h = Harness(Self.configuration(maxSize: 3))
        let leases = h.openLeased(3, now: 0)
        #expect(h.releaseToIdle(leases[0], now: 10))
        #expect(h.releaseToIdle(leases[1], now: 20))

        #expect(h.beginShutdown(now: 100, gracePeriod: nil) == Fx(closes: [t(1, 2), t(0, 2)]))
        #expect(h.machine.shutdownReport.closedIdle == 2)
        #expect(h.leaseIdle() == nil)
        #expect(!h.fastLaneAllowed)
        #expect(!h.releaseToIdle(leases[2], now: 110))

        #expect(h.release(leases[2], broken: true, now: 110) == Fx(closes: [t(2, 2)]))
        #expect(h.machine.slots.closeReasons[2] == .shutdown)
        #expect(h.machine.shutdownReport.closedOnReturn == 1)

        #expect(h.closeFinished(t(1, 2), now: 120) == (120, .nothing))
        #expect(h.closeFinished(t(0, 2), now: 130) == (130, .nothing))
        h.machine.completeShutdownIfDrained()
        #expect(!h.shutdownComplete)  // slot 2 still closing
        #expect(h.closeFinished(t(2, 2), now: 140) == (140, .nothing))
        h.machine.completeShutdownIfDrained()
        #expect(h.shutdownComplete)
        #expect(h.isFinished)
        var report = ShutdownReport()
        report.closedIdle = 2
        report.closedOnReturn = 1
        #expect(h.machine.shutdownReport == report)
        #expect(h.machine.counters.closedShutdown == 3)
        #expect(h.machine.counters.closedBroken == 0)
    }

    @Test("beginShutdown on an empty pool completes at once")
    func shutdownEmptyPool() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.beginShutdown(now: 0, gracePeriod: 1_000) == Fx(timer: 1_000))
        #expect(h.shutdownComplete)
        #expect(h.isFinished)
        #expect(h.machine.shutdownReport == ShutdownReport())
    }

    @Test("the grace period's end force-closes leased slots and completes the shutdown with what is still in flight")
    func gracePeriodEnds() {
        let h = Harness(Self.configuration(maxSize: 2).operationTimeouts(connect: .nanoseconds(5_000), close: .nanoseconds(2_000)))
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])
        #expect(h.enqueue(deadline: 100_000, now: 10).effects == Fx(creations: [t(1, 0)], timer: 100_000))

        #expect(h.beginShutdown(now: 100, gracePeriod: 1_000) == Fx(wakeups: [.failure(waiter: 2, .shutDown)], timer: 1_100))
        #expect(h.timerFired(now: 1_099) == Fx(timer: 1_100))

        // Slot 0 (leased) closes by force; slot 1 is still connecting.
        #expect(h.timerFired(now: 1_100) == Fx(closes: [t(0, 2)], timer: 3_100))
        #expect(h.machine.slots.closeReasons[0] == .shutdown)
        #expect(h.machine.forcedLeasesOutstanding == 1)
        #expect(h.shutdownComplete)
        var report = ShutdownReport()
        report.forceClosed = 1
        report.stillInFlight = 2  // slot 1 connecting, and slot 0's forced close
        report.failedWaiters = 1
        #expect(h.machine.shutdownReport == report)

        // The attempt succeeds during shutdown: the connection closes at once.
        #expect(h.creationSucceeded(t(1, 0), now: 1_200) == (true, Fx(closes: [t(1, 1)])))
        #expect(h.machine.slots.closeReasons[1] == .shutdown)
        #expect(h.machine.counters.created == 2)

        #expect(h.closeFinished(t(0, 2), now: 1_400) == (1_400, .nothing))
        #expect(h.closeFinished(t(1, 1), now: 1_500) == (300, .nothing))
        #expect(h.isDrained)
        #expect(!h.isFinished)  // the forced lease has not come back
        // The forced lease comes back: its token is stale, it only counts as returned.
        #expect(h.release(t(0, 1), now: 1_600) == .nothing)
        #expect(h.machine.forcedLeasesOutstanding == 0)
        #expect(h.isFinished)
        #expect(h.machine.shutdownReport == report)
        #expect(h.machine.counters.closedShutdown == 2)
    }

    @Test("a waiter handed a connection whose slot is then closed by force holds a stale token")
    func forcedCloseAfterHandOff() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])
        #expect(h.enqueue(deadline: 10_000, now: 10).effects == Fx(timer: 10_000))
        #expect(h.release(t(0, 1), now: 20) == Fx(wakeups: [.lease(waiter: 2, t(0, 2))]))

        // Before the waiter runs, the shutdown's grace period (0) ends.
        #expect(h.beginShutdown(now: 30, gracePeriod: 0) == Fx(timer: 30))
        #expect(h.timerFired(now: 30) == Fx(closes: [t(0, 3)], timer: 2_030))
        #expect(h.machine.slots.states[0] == .closing)
        #expect(!h.machine.slots.isCurrent(t(0, 2).lease))
        #expect(h.machine.forcedLeasesOutstanding == 1)
        #expect(h.machine.shutdownReport.forceClosed == 1)

        // The waiter finds its slot gone and returns the stale lease (as `returnStaleLease` does).
        #expect(h.release(t(0, 2), broken: true, now: 40) == .nothing)
        #expect(h.machine.forcedLeasesOutstanding == 0)
        #expect(h.machine.shutdownReport.closedOnReturn == 0)
        // Returning it twice does not go below zero.
        #expect(h.release(t(0, 2), broken: true, now: 41) == .nothing)
        #expect(h.machine.forcedLeasesOutstanding == 0)
        #expect(h.closeFinished(t(0, 3), now: 50) == (50, .nothing))
        #expect(h.isFinished)
    }

    // MARK: Timer re-arming (both re-fired without end before 0762514)

    @Test("while shutting down, the timer is not asked to wake for a leased slot's old connect deadline")
    func shutdownTimerIgnoresLeasedSlots() {
        let h = Harness(Self.configuration(maxSize: 1))
        #expect(h.openLeased(1, now: 0) == [t(0, 1)])  // its attempt's deadline was 1 µs
        #expect(h.beginShutdown(now: 5_000, gracePeriod: nil) == .nothing)
        let fx = h.timerFired(now: 5_000)
        // Leased (and idle) slots' stale connect deadlines are not operations: no re-arm in the past.
        #expect(h.machine.earliestOperationDeadline == .max)
        #expect(fx == .nothing)
    }

    @Test("after a backoff, attempts capped by maxConcurrentConnects do not re-arm the timer at the past retry instant")
    func retryTimerNotRearmedInThePast() {
        let h = Harness(Self.configuration(maxSize: 5).maxConcurrentConnects(2))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(0, 0)], timer: 1_000_000))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == Fx(creations: [t(1, 0)]))
        #expect(h.enqueue(deadline: 1_000_000, now: 0).effects == .nothing)
        #expect(h.creationFailed(t(0, 0), now: 10) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: false)], timer: 110))
        let fx = h.timerFired(now: 110)
        #expect(fx.creations == [t(0, 1)])
        // The past retry instant is not re-requested while only the concurrency bound holds the attempt back.
        #expect(fx == Fx(creations: [t(0, 1)], timer: 1_000_000))
    }
}

// MARK: - Session resets

extension PoolStateMachineTests {
    @Test("a dirty release is reset before anyone gets it: a waiter waits for the reset; a failed reset closes with .dirty")
    func dirtyReleaseIsResetFirst() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.openLeased(2, now: 0) == [t(0, 1), t(1, 1)])
        let waiter = h.enqueue(deadline: 50_000, now: 5)
        #expect(waiter.outcome == .waiting)
        #expect(waiter.effects == Fx(timer: 50_000))  // the pool is full: no attempt

        // Not handed to the waiter: taken aside (validating) for its reset, bounded by the check timeout.
        #expect(h.release(t(0, 1), dirty: true, now: 10) == Fx(resets: [t(0, 2)]))
        #expect(h.machine.slots.states[0] == .validating)
        #expect(h.machine.slots.validatingCount == 1)
        #expect(h.machine.slots.operationDeadlines[0] == 60)
        #expect(h.machine.waiters.count == 1)
        #expect(!h.fastLaneAllowed)

        // Reset: the waiter gets it now, and the reset is counted.
        #expect(h.resetFinished(t(0, 2), succeeded: true, now: 20) == Fx(wakeups: [.lease(waiter: waiter.id, t(0, 3))]))
        #expect(h.machine.counters.sessionResets == 1)
        // A late or repeated result is ignored.
        #expect(h.resetFinished(t(0, 2), succeeded: false, now: 21) == .nothing)

        // A reset that fails closes the connection with .dirty.
        #expect(h.release(t(1, 1), dirty: true, now: 30) == Fx(resets: [t(1, 2)]))
        #expect(h.resetFinished(t(1, 2), succeeded: false, now: 40) == Fx(closes: [t(1, 3)]))
        #expect(h.machine.slots.closeReasons[1] == .dirty)
        #expect(h.closeFinished(t(1, 3), now: 50) == (50, .nothing))
        #expect(h.machine.counters.closedDirty == 1)
        #expect(h.machine.counters.closedByReason[.dirty] == 1)
        #expect(h.machine.counters.sessionResets == 1)
        #expect(h.machine.counters.healthCheckFailures == 0)

        // With nobody waiting, a reset connection goes idle.
        #expect(h.release(t(0, 3), dirty: true, now: 60) == Fx(resets: [t(0, 4)]))
        #expect(h.resetFinished(t(0, 4), succeeded: true, now: 70) == .nothing)
        #expect(h.machine.slots.states[0] == .idle)
        #expect(h.leaseIdle() == t(0, 5))
    }

    @Test("a dirty release that must close anyway (broken, expired, shutting down) is closed, not reset")
    func dirtyReleaseThatClosesAnyway() {
        let h = Harness(Self.configuration(maxSize: 3).maxLifetime(.nanoseconds(100), jitter: 0))
        #expect(h.openLeased(3, now: 0) == [t(0, 1), t(1, 1), t(2, 1)])
        #expect(h.release(t(0, 1), broken: true, dirty: true, now: 10) == Fx(closes: [t(0, 2)]))
        #expect(h.machine.slots.closeReasons[0] == .broken)
        #expect(h.release(t(1, 1), dirty: true, now: 100) == Fx(closes: [t(1, 2)]))
        #expect(h.machine.slots.closeReasons[1] == .lifetime)
        #expect(h.beginShutdown(now: 50, gracePeriod: nil) == .nothing)
        #expect(h.release(t(2, 1), dirty: true, now: 60) == Fx(closes: [t(2, 2)]))
        #expect(h.machine.slots.closeReasons[2] == .shutdown)
        #expect(h.machine.counters.sessionResets == 0)
    }

    @Test("a reset under way when shutdown begins closes with .shutdown; a stuck reset is given up on as .dirty")
    func resetDuringShutdownAndStuck() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.openLeased(2, now: 0) == [t(0, 1), t(1, 1)])
        #expect(h.release(t(0, 1), dirty: true, now: 10) == Fx(resets: [t(0, 2)]))
        #expect(h.release(t(1, 1), dirty: true, now: 10) == Fx(resets: [t(1, 2)]))
        // Slot 1's reset hangs past its deadline (10 + 50): given up on, its connection closed outside
        // the accounting, counted as a .dirty close and not as a failed health check.
        #expect(h.abandonStuckOperations(now: 61) == Fx(discards: [0, 1], events: [.abandoned(0, .validating), .abandoned(1, .validating)]))
        #expect(h.machine.counters.closedDirty == 2)
        #expect(h.machine.counters.healthCheckFailures == 0)
        #expect(h.resetFinished(t(1, 2), succeeded: true, now: 70) == .nothing)
        #expect(h.machine.slots.occupiedCount == 0)

        let g = Harness(Self.configuration(maxSize: 1))
        _ = g.openLeased(1, now: 0)
        #expect(g.release(t(0, 1), dirty: true, now: 10) == Fx(resets: [t(0, 2)]))
        #expect(g.beginShutdown(now: 11, gracePeriod: nil) == .nothing)
        #expect(!g.shutdownComplete)
        #expect(g.resetFinished(t(0, 2), succeeded: true, now: 20) == Fx(closes: [t(0, 3)]))
        #expect(g.machine.slots.closeReasons[0] == .shutdown)
        #expect(g.closeFinished(t(0, 3), now: 30) == (30, .nothing))
        g.machine.completeShutdownIfDrained()
        #expect(g.shutdownComplete)
        #expect(g.machine.counters.sessionResets == 0)
    }
}

// MARK: - Permanent connect failures

/// A connect error that retrying cannot fix (a wrong password).
private struct PermanentConnectError: ConnectErrorClassifying, CustomStringConvertible {
    var isPermanent: Bool { true }
    var description: String { "WRONGPASS" }
}

extension PoolStateMachineTests {
    @Test("a permanent connect failure opens the breaker at once (no threshold set) and retries after the longest backoff")
    func permanentConnectFailure() {
        let h = Harness(Self.configuration(maxSize: 2))
        #expect(h.machine.breakerThreshold == nil)
        let waiter = h.enqueue(deadline: 10_000, now: 0)
        #expect(waiter.effects == Fx(creations: [t(0, 0)], timer: 10_000))
        let (_, fx) = h.step { $0.creationFailed(t(0, 0).lease, error: PermanentConnectError(), now: 10, into: &$1) }
        // The waiter fails now, not at its 10 µs deadline; the probe waits the maximum backoff (400 ns),
        // not the first step (100 ns).
        #expect(fx == Fx(
            wakeups: [.failure(waiter: waiter.id, .connectFailing)],
            events: [.connectFailed("WRONGPASS", consecutiveFailures: 1, failingFast: true)],
            timer: 410))
        guard case .failure(let error)? = h.raw.wakeups.first?.result else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.description.contains("permanent error, which retrying will not fix: WRONGPASS"))
        #expect(h.enqueue(now: 20).outcome == .failed(.connectFailing))
        #expect(h.timerFired(now: 410) == Fx(creations: [t(0, 1)]))

        // An ordinary failure with the same configuration waits: no breaker without a threshold.
        let g = Harness(Self.configuration(maxSize: 2))
        let other = g.enqueue(deadline: 10_000, now: 0)
        #expect(g.creationFailed(t(0, 0), now: 10) == Fx(
            events: [.connectFailed("refused", consecutiveFailures: 1, failingFast: false)], timer: 110))
        #expect(!g.breakerOpen)
        #expect(g.machine.waiters.count == 1)
        _ = other
    }
}
