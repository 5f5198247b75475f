import ConnPoolTestSupport
import Testing
@testable import ConnPool

/// Drives the pure state machine directly and asserts the exact actions it returns.
@Suite("PoolStateMachine")
struct PoolStateMachineTests {
    /// A blocking waiter whose cell is never touched: the state machine only stores the pointer.
    static func waiter(_ id: UInt64, deadline: Int64 = 1_000) -> Waiter {
        Waiter(id: id, deadline: deadline, handle: .blocking(UnsafeMutablePointer(bitPattern: 0x1000)!), timeout: .nanoseconds(1_000))
    }

    static func machine(_ configuration: PoolConfiguration = PoolConfiguration().maxSize(2)) -> PoolStateMachine {
        PoolStateMachine(configuration: configuration)
    }

    @Test("a waiter on an empty pool reserves a slot and arms the timer at its deadline")
    func enqueueReservesSlot() {
        var machine = Self.machine()
        defer { machine.deallocate() }
        do { let value = machine.leaseIdle(); #expect(value == nil) }
        let id = machine.reserveWaiterID()
        guard case .waiting(let slot, let timer) = machine.enqueue(Self.waiter(id, deadline: 500), now: 0) else {
            Issue.record("expected waiting"); return
        }
        #expect(slot?.index == 0)
        #expect(timer == 500)
        #expect(machine.slots.connectingCount == 1)
        #expect(machine.invariantViolation() == nil)

        // A second waiter gets the second slot; the timer is already armed earlier.
        guard case .waiting(let slot2, let timer2) = machine.enqueue(Self.waiter(machine.reserveWaiterID(), deadline: 600), now: 0) else {
            Issue.record("expected waiting"); return
        }
        #expect(slot2?.index == 1)
        #expect(timer2 == nil)
        // A third waiter: pool full, no slot.
        guard case .waiting(let slot3, _) = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0) else {
            Issue.record("expected waiting"); return
        }
        #expect(slot3 == nil)
        #expect(machine.slots.occupiedCount == 2)
    }

    @Test("a created connection goes to the oldest waiter, then release hands off FIFO")
    func creationHandsOffToOldestWaiter() {
        var machine = Self.machine(PoolConfiguration().maxSize(1))
        defer { machine.deallocate() }
        let first = machine.reserveWaiterID()
        let second = machine.reserveWaiterID()
        // The second caller enqueues first; order still follows arrival (ids).
        _ = machine.enqueue(Self.waiter(second), now: 0)
        _ = machine.enqueue(Self.waiter(first), now: 0)
        guard case .handOff(let waiter, let token) = machine.creationSucceeded(machine.slots.token(0), now: 10) else {
            Issue.record("expected hand-off"); return
        }
        #expect(waiter.id == first)
        #expect(token.index == 0)
        guard case .handOff(let next, let token2) = machine.release(token, broken: false, now: 20) else {
            Issue.record("expected hand-off"); return
        }
        #expect(next.id == second)
        #expect(token2.generation != token.generation)
        // The old token is stale now: it can never touch the slot again.
        guard case .stale = machine.release(token, broken: false, now: 30) else {
            Issue.record("expected stale"); return
        }
        do { let value = machine.releaseToIdle(token2, now: 40); #expect(value) }
        #expect(machine.slots.idleCount == 1)
        #expect(machine.slots.lastUsed[0] == 40)
        #expect(machine.invariantViolation() == nil)
    }

    @Test("a broken release closes the slot; the freed slot serves the next waiter")
    func brokenReleaseCloses() {
        var machine = Self.machine(PoolConfiguration().maxSize(1))
        defer { machine.deallocate() }
        _ = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0)
        guard case .handOff(_, let token) = machine.creationSucceeded(machine.slots.token(0), now: 0) else { Issue.record("hand-off"); return }
        _ = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0)
        guard case .close(let closing, .broken) = machine.release(token, broken: true, now: 5) else { Issue.record("close"); return }
        #expect(closing.index == 0)
        #expect(machine.slots.closingCount == 1)
        #expect(machine.slots.occupiedCount == 1)  // a closing connection still counts
        do {
            let value = machine.closeFinished(closing, now: 6)
            #expect(value.next == .create(machine.slots.token(0)))
            #expect(value.lifetime == 6)
            #expect(machine.counters.closedBroken == 1)
        }
        #expect(machine.invariantViolation() == nil)
    }

    @Test("failed creation frees the slot and retries after exponential backoff with a cap")
    func backoffSequence() {
        let configuration = PoolConfiguration().maxSize(1)
            .connectRetryBackoff(initial: .milliseconds(10), multiplier: 2, max: .milliseconds(50), jitter: 0)
        var machine = Self.machine(configuration)
        defer { machine.deallocate() }
        _ = machine.enqueue(Self.waiter(machine.reserveWaiterID(), deadline: .max - 1), now: 0)
        var now: Int64 = 0
        var delays: [Int64] = []
        for _ in 0..<5 {
            guard case .retryAt(let at) = machine.creationFailed(machine.slots.token(0), error: MockConnectError(message: "refused"), now: now) else {
                Issue.record("expected retry"); return
            }
            delays.append(at - now)
            machine.timerFired()
            now = at
            do { let value = machine.creationDecision(now: now - 1); #expect(value == .retryAt(at)) }
            do { let value = machine.creationDecision(now: now); #expect(value == .create(machine.slots.token(0))) }
        }
        #expect(delays == [10_000_000, 20_000_000, 40_000_000, 50_000_000, 50_000_000])
        #expect((machine.lastConnectError as? MockConnectError)?.message == "refused")
        guard case .handOff = machine.creationSucceeded(machine.slots.token(0), now: now) else { Issue.record("hand-off"); return }
        #expect(machine.lastConnectError == nil)
        #expect(machine.backoff.consecutiveFailures == 0)
    }

    @Test("backoff jitter stays within its bounds")
    func jitterBounds() {
        let configuration = PoolConfiguration()
            .connectRetryBackoff(initial: .milliseconds(100), multiplier: 1, max: .milliseconds(100), jitter: 0.2)
        var backoff = RetryBackoff(configuration: configuration, seed: 42)
        var seen = Set<Int64>()
        for _ in 0..<1_000 {
            let delay = backoff.nextDelay()
            #expect(delay >= 80_000_000 && delay <= 120_000_000)
            seen.insert(delay / 1_000_000)
        }
        #expect(seen.count > 20)  // actually spread, not constant
    }

    @Test("expired waiters are removed in order; cancelled ones by id")
    func expiryAndCancellation() {
        var machine = Self.machine(PoolConfiguration().maxSize(1))
        defer { machine.deallocate() }
        let ids = (0..<4).map { _ in machine.reserveWaiterID() }
        for (offset, id) in ids.enumerated() {
            _ = machine.enqueue(Self.waiter(id, deadline: Int64(100 * (offset + 1))), now: 0)
        }
        do { let value = machine.cancelWaiter(id: ids[2]); #expect(value?.id == ids[2]) }
        do { let value = machine.cancelWaiter(id: ids[2]); #expect(value == nil) }
        machine.timerFired()
        do { let value = machine.popExpiredWaiter(now: 250); #expect(value?.id == ids[0]) }
        do { let value = machine.popExpiredWaiter(now: 250); #expect(value?.id == ids[1]) }
        do { let value = machine.popExpiredWaiter(now: 250); #expect(value == nil) }
        do { let value = machine.nextTimerDeadline(); #expect(value == 400) }
        #expect(machine.waiters.count == 1)
    }

    @Test("maxWaiters sheds load at once")
    func maxWaiters() {
        var machine = Self.machine(PoolConfiguration().maxSize(1).maxWaiters(2))
        defer { machine.deallocate() }
        for _ in 0..<2 { _ = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0) }
        guard case .failed(let error) = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0), error.code == .tooManyWaiters else {
            Issue.record("expected shed"); return
        }
        #expect(error.limit == 2)
    }

    @Test("LIFO and FIFO reuse orders")
    func reuseOrders() {
        for order in [PoolConfiguration.ReuseOrder.lifo, .fifo] {
            var machine = Self.machine(PoolConfiguration().maxSize(3).reuseOrder(order))
            defer { machine.deallocate() }
            var tokens: [LeaseToken] = []
            for slot in 0..<3 {
                _ = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0)
                guard case .handOff(_, let token) = machine.creationSucceeded(machine.slots.token(Int32(slot)), now: 0) else { Issue.record("hand-off"); return }
                tokens.append(token)
            }
            for token in tokens { do { let value = machine.releaseToIdle(token, now: 1); #expect(value) } }
            let next = machine.leaseIdle()
            #expect(next?.index == (order == .lifo ? 2 : 0))
        }
    }

    @Test("shutdown fails new acquires and closes idle connections")
    func shutdown() {
        var machine = Self.machine(PoolConfiguration().maxSize(2))
        defer { machine.deallocate() }
        _ = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0)
        guard case .handOff(_, let token) = machine.creationSucceeded(machine.slots.token(0), now: 0) else { Issue.record("hand-off"); return }
        do { let value = machine.releaseToIdle(token, now: 0); #expect(value) }
        _ = machine.beginShutdown(now: 0, gracePeriod: nil)
        do { let value = machine.leaseIdle(); #expect(value == nil) }
        guard case .failed(let error) = machine.enqueue(Self.waiter(machine.reserveWaiterID()), now: 0), error.code == .shutDown else {
            Issue.record("shut down"); return
        }
        let closing = machine.takeIdleForClosing(now: 0)
        #expect(closing?.index == 0)
        do { let value = machine.takeIdleForClosing(now: 0); #expect(value == nil) }
        #expect(!machine.isDrained)
        _ = machine.closeFinished(closing!, now: 0)
        #expect(machine.isDrained)
        #expect(machine.counters.closedShutdown == 1)
    }

    @Test("operations that outlive their deadline are given up on; their late results are discarded")
    func stuckOperationsAreAbandoned() {
        let configuration = PoolConfiguration().maxSize(3)
            .operationTimeouts(connect: .nanoseconds(100), close: .nanoseconds(100))
            .healthCheck(interval: .nanoseconds(10), timeout: .nanoseconds(100)).idleTimeout(nil).maxLifetime(nil)
            .connectRetryBackoff(initial: .nanoseconds(1), max: .nanoseconds(1), jitter: 0)
        var machine = Self.machine(configuration)
        defer { machine.deallocate() }
        // Three waiters reserve slots 0, 1 and 2.
        var creates: [LeaseToken] = []
        for _ in 0..<3 {
            guard case .waiting(let create?, _) = machine.enqueue(Self.waiter(machine.reserveWaiterID(), deadline: 10), now: 0) else {
                Issue.record("create"); return
            }
            creates.append(create)
        }
        // Slot 0: a connection attempt that hangs. Slot 1: an idle connection whose check will hang.
        // Slot 2: a connection whose close hangs.
        let hungCreate = creates[0]
        guard case .handOff(_, let lease1) = machine.creationSucceeded(creates[1], now: 0) else { Issue.record("hand-off"); return }
        guard case .handOff(_, let lease2) = machine.creationSucceeded(creates[2], now: 0) else { Issue.record("hand-off"); return }
        #expect(machine.popExpiredWaiter(now: 10) != nil)
        let parked = machine.releaseToIdle(lease1, now: 0)
        #expect(parked)
        guard case .close(let hungClose, _) = machine.release(lease2, broken: true, now: 0) else { Issue.record("close"); return }
        let actions = machine.planMaintenance(now: 20)
        guard case .validate(let hungCheck)? = actions.first else { Issue.record("validate \(actions)"); return }
        let early = machine.abandonStuckOperations(now: 99)
        #expect(early.isEmpty)
        let abandoned = machine.abandonStuckOperations(now: 200)
        #expect(Set(abandoned.map(\.kind)) == [.connecting, .validating, .closing])
        #expect(machine.slots.occupiedCount == 0)
        #expect(machine.invariantViolation() == nil)
        // The late results change nothing.
        guard case .discard = machine.creationSucceeded(hungCreate, now: 300) else { Issue.record("discard"); return }
        guard case .discard = machine.validationFinished(hungCheck, valid: true, now: 300) else { Issue.record("discard"); return }
        let late = machine.closeFinished(hungClose, now: 300)
        #expect(late.lifetime == nil)
        #expect(machine.slots.occupiedCount == 0)
        #expect(machine.counters.creationFailures == 1)
        #expect(machine.counters.healthCheckFailures == 1)
        #expect((machine.lastConnectError as? ConnectionPoolError).map { "\($0)" }?.contains("connectTimeout") == true)
        #expect((machine.lastConnectError as? ConnectionPoolError)?.code == .connectTimedOut)
    }
}
