import ConnPoolTestSupport
import Foundation
import Synchronization
import Testing
@testable import ConnPool

/// Model tests of the pool's lock-free fast lane, ``IdleStack``: a sequential comparison with a plain
/// Swift model, a concurrent run on plain threads checked against the lane's invariants (ownership,
/// publication of the parked data, the closed gate, conservation of slots), and focused checks of the
/// closed bit and of the ABA tag.
@Suite("IdleStack model", .serialized, .processExclusive)
struct IdleStackModelTests {
    // MARK: Shared helpers

    static let lowMask: UInt64 = 0xFFFF_FFFF
    static let tagMask: UInt64 = (1 << 31) - 1

    /// The parked data a holder writes for `slot` with `generation`: every field is derived from both, so
    /// whoever takes the slot can tell whether it reads exactly what its last owner wrote.
    struct Payload: Equatable, CustomStringConvertible {
        var generation: UInt32
        var parkedAt: Int64
        var expiresAt: Int64
        var connection: UnsafeMutableRawPointer?

        init(slot: Int, generation: UInt32) {
            self.generation = generation
            parkedAt = Int64(slot) << 32 | Int64(generation)
            expiresAt = ~(Int64(generation) << 20 ^ Int64(slot))
            connection = UnsafeMutableRawPointer(bitPattern: UInt(slot + 1) << 40 | UInt(generation) << 4)
        }

        init(reading stack: IdleStack, _ slot: Int) {
            generation = stack.slots[slot].generation
            parkedAt = stack.slots[slot].parkedAt
            expiresAt = stack.slots[slot].expiresAt
            connection = stack.slots[slot].connection
        }

        func write(to stack: IdleStack, _ slot: Int) {
            stack.slots[slot].generation = generation
            stack.slots[slot].parkedAt = parkedAt
            stack.slots[slot].expiresAt = expiresAt
            stack.slots[slot].connection = connection
        }

        var description: String {
            "(generation \(generation), parkedAt \(parkedAt), expiresAt \(expiresAt), connection \(String(describing: connection)))"
        }
    }

    // MARK: 1. Sequential model

    /// What `IdleStack` should be: an array stack (oldest parked first), a closed flag, the slots the
    /// test owns, and the head word (top index + 1, closed bit, a tag moved by every successful
    /// push, pop, close and open).
    struct StackModel {
        var parked: [Int] = []
        var closed = true
        var owned: Set<Int>
        var payloads: [Int: Payload] = [:]
        var tag: UInt64 = 0

        init(capacity: Int) { owned = Set(0..<capacity) }

        var head: UInt64 {
            (tag & IdleStackModelTests.tagMask) << 33 | (closed ? IdleStack.closedBit : 0) | UInt64(parked.last.map { $0 + 1 } ?? 0)
        }

        mutating func push(_ slot: Int) -> Bool {
            if closed { return false }
            owned.remove(slot)
            parked.append(slot)
            tag += 1
            return true
        }

        mutating func pop() -> Int? {
            if closed { return nil }
            guard let slot = parked.popLast() else { return nil }
            owned.insert(slot)
            tag += 1
            return slot
        }

        mutating func closeAndTakeAll() -> [Int] {
            if closed { return [] }
            let taken = parked
            parked = []
            owned.formUnion(taken)
            closed = true
            tag += 1
            return taken
        }

        mutating func open() {
            if !closed { return }
            closed = false
            tag += 1
        }
    }

    @Test(
        "a seeded random sequence of push, pop, closeAndTakeAll and open matches a plain model after every step",
        arguments: [(1, 1), (2, 2), (3, 7), (4, 32), (5, 64), (0xC0FFEE, 16), (0xBADC0DE, 3)] as [(UInt64, Int)])
    func sequentialModel(seed: UInt64, capacity: Int) {
        let stack = IdleStack(capacity: capacity)
        var model = StackModel(capacity: capacity)
        var random = SeededRandom(seed: seed)
        var mismatches = 0
        func expectSame(_ condition: Bool, _ message: @autoclosure () -> String, step: Int) {
            if condition { return }
            mismatches += 1
            if mismatches <= 10 { Issue.record("seed \(seed), capacity \(capacity), step \(step): \(message())") }
        }

        let steps = 5_000
        for step in 0..<steps {
            let roll = random.below(100)
            if roll < 45, !model.owned.isEmpty {
                // The owner writes the slot's parked data, then parks it.
                let slot = model.owned.sorted()[random.below(model.owned.count)]
                let payload = Payload(slot: slot, generation: UInt32(step))
                payload.write(to: stack, slot)
                let pushed = stack.push(slot)
                let expected = model.push(slot)
                expectSame(pushed == expected, "push(\(slot)) returned \(pushed), model \(expected)", step: step)
                if expected {
                    model.payloads[slot] = payload
                } else {
                    // Refused: still the caller's, its parked data untouched.
                    expectSame(Payload(reading: stack, slot) == payload, "refused push(\(slot)) changed its data", step: step)
                }
            } else if roll < 82 {
                let popped = stack.pop()
                let expected = model.pop()
                expectSame(popped == expected, "pop() returned \(String(describing: popped)), model \(String(describing: expected))", step: step)
                if let popped, popped == expected, let payload = model.payloads.removeValue(forKey: popped) {
                    let read = Payload(reading: stack, popped)
                    expectSame(read == payload, "pop() of \(popped) read \(read), parked \(payload)", step: step)
                }
            } else if roll < 91 {
                let drained = Array(stack.closeAndTakeAll())
                let expected = model.closeAndTakeAll()
                expectSame(drained == expected, "closeAndTakeAll() returned \(drained), model (oldest first) \(expected)", step: step)
                if drained == expected {
                    for slot in drained {
                        let payload = model.payloads.removeValue(forKey: slot)
                        let read = Payload(reading: stack, slot)
                        expectSame(read == payload, "drained \(slot) read \(read), parked \(String(describing: payload))", step: step)
                    }
                }
            } else {
                stack.open()
                model.open()
            }
            expectSame(stack.isOpen == !model.closed, "isOpen \(stack.isOpen), model closed \(model.closed)", step: step)
            let head = stack.head.pointee.load(ordering: .relaxed)
            expectSame(
                head == model.head,
                "head 0x\(String(head, radix: 16)), model 0x\(String(model.head, radix: 16)) (stack \(model.parked), closed \(model.closed))",
                step: step)
            if mismatches > 0 { break }  // the model has diverged: later steps would only repeat the news
        }
        #expect(mismatches == 0)
        // Every slot is accounted for: owned by the test, or parked, never both.
        #expect(model.owned.isDisjoint(with: model.parked))
        #expect(model.owned.count + model.parked.count == capacity)
        #expect(Set(model.parked).count == model.parked.count)
    }

    // MARK: 2. Concurrent invariants

    /// Per-slot bookkeeping shared by the threads. Touched with relaxed atomics only, so the one
    /// happens-before edge from a slot's owner to its next owner is the lane's own release/acquire on
    /// `head` (which ThreadSanitizer checks when it sees the parked data read).
    final class SlotBoard: @unchecked Sendable {
        // @unchecked Sendable: the buffers hold atomics only, live from init to deinit.
        static let parked = -1
        static let lockedSide = -2

        let count: Int
        /// Who owns each slot: a worker's number, `lockedSide`, or `parked` (on the lane, or about to be).
        let owners: UnsafeMutablePointer<Atomic<Int>>
        /// The generation the slot's last owner wrote before parking it.
        let shadows: UnsafeMutablePointer<Atomic<UInt32>>

        init(count: Int, initialOwner: (Int) -> Int) {
            self.count = count
            owners = .allocate(capacity: count)
            shadows = .allocate(capacity: count)
            for slot in 0..<count {
                (owners + slot).initialize(to: Atomic(initialOwner(slot)))
                (shadows + slot).initialize(to: Atomic(0))
            }
        }

        deinit {
            owners.deinitialize(count: count)
            owners.deallocate()
            shadows.deinitialize(count: count)
            shadows.deallocate()
        }
    }

    final class Counters: Sendable {
        let pushes = Atomic<Int>(0)
        let refusedPushes = Atomic<Int>(0)
        let pops = Atomic<Int>(0)
        let emptyPops = Atomic<Int>(0)
        let drained = Atomic<Int>(0)
        let closedRounds = Atomic<Int>(0)
        let refusedWhileHeldClosed = Atomic<Int>(0)
        let workersDone = Atomic<Int>(0)
        let started = Atomic<Int>(0)
    }

    /// The locked side's own state, guarded by its mutex, like the pool's state machine.
    struct LockedSide {
        var owned: [Int] = []
        var round = 0
    }

    /// A start line: returns once `threads` threads have reached it.
    static func startTogether(_ counters: Counters, threads: Int) {
        counters.started.add(1, ordering: .relaxed)
        while counters.started.load(ordering: .relaxed) < threads { sched_yield() }
    }

    /// Parks `slot` (owned by `owner`) with fresh data; returns whether the lane took it. On refusal the
    /// slot, and its data, are still the owner's.
    static func park(_ slot: Int, generation: UInt32, owner: Int, stack: IdleStack, board: SlotBoard, violations: LockedValue<[String]>) -> Bool {
        let mine = board.owners[slot].load(ordering: .relaxed)
        if mine != owner { violations.withLock { $0.append("\(owner) parks \(slot), owned by \(mine)") } }
        let payload = Payload(slot: slot, generation: generation)
        payload.write(to: stack, slot)
        board.shadows[slot].store(generation, ordering: .relaxed)
        board.owners[slot].store(SlotBoard.parked, ordering: .relaxed)
        if stack.push(slot) { return true }
        let previous = board.owners[slot].exchange(owner, ordering: .relaxed)
        if previous != SlotBoard.parked {
            violations.withLock { $0.append("\(owner): refused push of \(slot), meanwhile owned by \(previous)") }
        }
        let read = Payload(reading: stack, slot)
        if read != payload { violations.withLock { $0.append("\(owner): refused push of \(slot) changed its data to \(read)") } }
        return false
    }

    /// Takes over `slot`, just popped or drained by `taker`: it must have been parked, and its data
    /// must be exactly what its last owner wrote.
    static func takeOver(_ slot: Int, taker: Int, how: String, stack: IdleStack, board: SlotBoard, violations: LockedValue<[String]>) {
        guard slot >= 0, slot < board.count else {
            violations.withLock { $0.append("\(taker): \(how) returned \(slot), out of range") }
            return
        }
        let previous = board.owners[slot].exchange(taker, ordering: .relaxed)
        if previous != SlotBoard.parked {
            violations.withLock { $0.append("\(taker): \(how) returned \(slot), owned by \(previous) at the time") }
        }
        let generation = board.shadows[slot].load(ordering: .relaxed)
        let read = Payload(reading: stack, slot)
        let expected = Payload(slot: slot, generation: generation)
        if read != expected {
            violations.withLock { $0.append("\(taker): \(how) of \(slot) read \(read), its owner wrote \(expected)") }
        }
    }

    @Test("threads parking and taking slots while a locked side closes, drains and reopens the lane lose and duplicate nothing")
    func concurrentInvariants() async throws {
        let workers = 3
        let slotsPerWorker = 6
        let capacity = workers * slotsPerWorker
        // Each worker runs at least `iterations` steps and until the locked side has closed the lane
        // `minimumRounds` times (so the two overlap however the threads are scheduled), at most
        // `maximumIterations` steps.
        let iterations = 50_000
        let maximumIterations = 1_000_000
        let minimumRounds = 100
        // ...and until it has parked this many leases itself: how many slots reach a worker depends on how
        // the threads are scheduled (the locked side keeps some of what it drains), so a step count alone
        // does not guarantee traffic.
        let minimumPushesPerWorker = 1_000

        let stack = IdleStack(capacity: capacity)
        let board = SlotBoard(count: capacity) { $0 % workers }
        let counters = Counters()
        let violations = LockedValue<[String]>([])
        let lockedSide = LockedValue(LockedSide())
        let finalHoldings = LockedValue<[Int: [Int]]>([:])
        lockedSide.withLock { _ in stack.open() }

        let workerThreads = (0..<workers).map { worker in
            TestThread {
                var random = SeededRandom(seed: 0x5EED_0000 &+ UInt64(worker))
                var mine = (0..<capacity).filter { $0 % workers == worker }
                var pushes = 0, pops = 0, empty = 0
                Self.startTogether(counters, threads: workers + 1)
                var iteration = 0
                while iteration < maximumIterations,
                      iteration < iterations || counters.closedRounds.load(ordering: .relaxed) < minimumRounds
                          || pushes < minimumPushesPerWorker {
                    defer { iteration += 1 }
                    if !mine.isEmpty, random.chance(50) {
                        let pick = random.below(mine.count)
                        let generation = UInt32(worker + 1) << 24 | UInt32(iteration & 0xFF_FFFF)
                        if Self.park(mine[pick], generation: generation, owner: worker, stack: stack, board: board, violations: violations) {
                            mine.swapAt(pick, mine.count - 1)
                            mine.removeLast()
                            pushes += 1
                        } else {
                            counters.refusedPushes.add(1, ordering: .relaxed)
                        }
                    } else if let slot = stack.pop() {
                        Self.takeOver(slot, taker: worker, how: "pop()", stack: stack, board: board, violations: violations)
                        mine.append(slot)
                        pops += 1
                    } else {
                        empty += 1
                    }
                }
                counters.pushes.add(pushes, ordering: .relaxed)
                counters.pops.add(pops, ordering: .relaxed)
                counters.emptyPops.add(empty, ordering: .relaxed)
                finalHoldings.withLock { $0[worker] = mine }
                counters.workersDone.add(1, ordering: .relaxed)
            }
        }

        let lockedThread = TestThread {
            var random = SeededRandom(seed: 0x10C4ED)
            Self.startTogether(counters, threads: workers + 1)
            while true {
                let round = lockedSide.withLock { $0.round }
                if round >= minimumRounds, counters.workersDone.load(ordering: .relaxed) == workers { break }
                // Let the lane run open for a moment.
                for _ in 0..<random.below(20) { sched_yield() }
                lockedSide.withLock { state in
                    // Close and take everything, in one step.
                    let drained = Array(stack.closeAndTakeAll())
                    let closedHead = stack.head.pointee.load(ordering: .relaxed)
                    if closedHead & IdleStack.closedBit == 0 || closedHead & Self.lowMask != 0 {
                        violations.withLock { $0.append("after closeAndTakeAll the head is 0x\(String(closedHead, radix: 16))") }
                    }
                    if Set(drained).count != drained.count {
                        violations.withLock { $0.append("closeAndTakeAll returned a slot twice: \(drained)") }
                    }
                    for slot in drained {
                        Self.takeOver(slot, taker: SlotBoard.lockedSide, how: "closeAndTakeAll()", stack: stack, board: board, violations: violations)
                    }
                    state.owned += drained
                    counters.drained.add(drained.count, ordering: .relaxed)

                    // Hold it closed: the lane must refuse every push and find nothing to pop, including
                    // the locked side's own probes; wait (bounded) until some worker has been refused too.
                    let refusedBefore = counters.refusedPushes.load(ordering: .relaxed)
                    var probes = 0
                    while probes < 2_000 {
                        probes += 1
                        if let slot = stack.pop() {
                            violations.withLock { $0.append("pop() returned \(slot) from a closed lane") }
                            Self.takeOver(slot, taker: SlotBoard.lockedSide, how: "pop()", stack: stack, board: board, violations: violations)
                            state.owned.append(slot)
                        }
                        if let probe = state.owned.last {
                            let generation = UInt32(0xFF) << 24 | UInt32(truncatingIfNeeded: state.round)
                            if Self.park(probe, generation: generation, owner: SlotBoard.lockedSide, stack: stack, board: board, violations: violations) {
                                violations.withLock { $0.append("push(\(probe)) onto a closed lane succeeded") }
                                state.owned.removeLast()
                            }
                        }
                        if probes >= 10,
                           counters.refusedPushes.load(ordering: .relaxed) > refusedBefore
                            || counters.workersDone.load(ordering: .relaxed) == workers {
                            break
                        }
                        sched_yield()
                    }
                    if counters.refusedPushes.load(ordering: .relaxed) > refusedBefore {
                        counters.refusedWhileHeldClosed.add(1, ordering: .relaxed)
                    }
                    // Nothing succeeded while closed: no push, pop, close or open moved the tag.
                    let heldHead = stack.head.pointee.load(ordering: .relaxed)
                    if heldHead != closedHead {
                        violations.withLock {
                            $0.append("the head moved while closed: 0x\(String(closedHead, radix: 16)) -> 0x\(String(heldHead, radix: 16))")
                        }
                    }
                    counters.closedRounds.add(1, ordering: .relaxed)

                    stack.open()
                    // Park some of the leases taken, as the pool's idle ring lends them and their
                    // borrowers park them again; keep the rest for a later round.
                    state.owned.shuffle(using: &random)
                    let keep = random.below(state.owned.count + 1) / 2
                    while state.owned.count > keep {
                        let slot = state.owned.removeLast()
                        let generation = UInt32(0xFE) << 24 | UInt32(truncatingIfNeeded: state.round)
                        if Self.park(slot, generation: generation, owner: SlotBoard.lockedSide, stack: stack, board: board, violations: violations) {
                            counters.pushes.add(1, ordering: .relaxed)
                        } else {
                            // Only the locked side closes, and it holds the mutex: the lane is open.
                            violations.withLock { $0.append("push(\(slot)) onto the lane just opened failed") }
                            state.owned.append(slot)
                            break
                        }
                    }
                    state.round += 1
                }
            }
        }

        for thread in workerThreads { await thread.join() }
        await lockedThread.join()

        // Final accounting: every slot is owned by a worker, by the locked side, or parked, exactly once.
        let (lockedOwned, finalDrain, rounds) = lockedSide.withLock { state in
            let drained = Array(stack.closeAndTakeAll())
            for slot in drained {
                Self.takeOver(slot, taker: SlotBoard.lockedSide, how: "the final closeAndTakeAll()", stack: stack, board: board, violations: violations)
            }
            return (state.owned, drained, state.round)
        }
        let holdings = finalHoldings.withLock { $0 }
        var everySlot = lockedOwned + finalDrain
        for worker in 0..<workers {
            let mine = holdings[worker] ?? []
            everySlot += mine
            for slot in mine where board.owners[slot].load(ordering: .relaxed) != worker {
                Issue.record("worker \(worker) ends with \(slot), which the board says \(board.owners[slot].load(ordering: .relaxed)) owns")
            }
        }
        for slot in lockedOwned where board.owners[slot].load(ordering: .relaxed) != SlotBoard.lockedSide {
            Issue.record("the locked side ends with \(slot), which the board says \(board.owners[slot].load(ordering: .relaxed)) owns")
        }
        #expect(everySlot.sorted() == Array(0..<capacity), "lost or duplicated slots")

        let recorded = violations.withLock { $0 }
        #expect(recorded.isEmpty, "\(recorded.count) violations, first: \(recorded.prefix(10))")

        // Conservation: every successful push was taken exactly once, by a pop or a drain.
        let pushes = counters.pushes.load(ordering: .relaxed)
        let taken = counters.pops.load(ordering: .relaxed) + counters.drained.load(ordering: .relaxed) + finalDrain.count
        #expect(pushes == taken, "\(pushes) pushes, \(taken) taken")

        // The run exercised what it claims to: traffic, refusals while closed, drains, empty pops.
        #expect(rounds >= minimumRounds)
        #expect(counters.closedRounds.load(ordering: .relaxed) == rounds)
        #expect(pushes >= workers * minimumPushesPerWorker, "\(pushes) pushes")
        #expect(counters.refusedPushes.load(ordering: .relaxed) > 0)
        #expect(counters.refusedWhileHeldClosed.load(ordering: .relaxed) > 0)
        #expect(counters.drained.load(ordering: .relaxed) > 0)
    }

    // MARK: 3. Focused checks

    @Test("a closed lane refuses pushes, stays empty, and closing it again takes nothing")
    func closedLane() {
        let stack = IdleStack(capacity: 4)
        // A new stack is closed and empty.
        #expect(!stack.isOpen)
        let initial = stack.head.pointee.load(ordering: .relaxed)
        #expect(initial == IdleStack.closedBit)
        #expect(!stack.push(0))
        #expect(stack.pop() == nil)
        #expect(stack.closeAndTakeAll().isEmpty)
        // Refusals change nothing, not even the tag.
        #expect(stack.head.pointee.load(ordering: .relaxed) == initial)

        stack.open()
        #expect(stack.isOpen)
        #expect(stack.push(0))
        #expect(stack.push(1))
        #expect(stack.push(2))
        #expect(Array(stack.closeAndTakeAll()) == [0, 1, 2], "oldest parked first")
        #expect(!stack.isOpen)
        let closed = stack.head.pointee.load(ordering: .relaxed)
        #expect(closed & Self.lowMask == 0 && closed & IdleStack.closedBit != 0)

        // Closed again: pushes fail and leave it empty, a second close takes nothing.
        #expect(!stack.push(3))
        #expect(!stack.push(1))
        #expect(stack.pop() == nil)
        #expect(stack.closeAndTakeAll().isEmpty)
        #expect(stack.head.pointee.load(ordering: .relaxed) == closed)
        // Reopened, it is still empty: the refused pushes left nothing behind.
        stack.open()
        #expect(stack.pop() == nil)
        #expect(stack.closeAndTakeAll().isEmpty)
        // open() on an open stack changes nothing.
        stack.open()
        let reopened = stack.head.pointee.load(ordering: .relaxed)
        stack.open()
        #expect(stack.head.pointee.load(ordering: .relaxed) == reopened)
    }

    @Test("ABA: a compare-and-swap from before pop A, pop B, push A fails because the tag moved")
    func abaTag() {
        let a = 0, b = 1
        let stack = IdleStack(capacity: 2)
        stack.open()
        #expect(stack.push(b))
        #expect(stack.push(a))  // the stack: A on top of B

        // A popper reads the head and the link below the top, then stalls.
        let stale = stack.head.pointee.load(ordering: .acquiring)
        #expect(Int(stale & Self.lowMask) == a + 1)
        let below = stack.slots[a].next.load(ordering: .relaxed)
        #expect(Int(below) == b + 1)
        let staleNew = IdleStack.next(after: stale, top: UInt64(below), closed: false)

        // Meanwhile: pop A, pop B (B is now someone's), push A back.
        #expect(stack.pop() == a)
        #expect(stack.pop() == b)
        #expect(stack.push(a))
        let current = stack.head.pointee.load(ordering: .relaxed)
        // Same top, same closed bit: without the tag the stalled CAS would hand out B, which is owned.
        #expect(current & (IdleStack.tagUnit - 1) == stale & (IdleStack.tagUnit - 1))
        #expect(current >> 33 == (stale >> 33) + 3, "each successful operation moves the tag once")

        // Strong compare-exchange: a weak one could fail spuriously and pass vacuously.
        let (exchanged, seen) = stack.head.pointee.compareExchange(
            expected: stale, desired: staleNew, successOrdering: .acquiringAndReleasing, failureOrdering: .acquiring)
        #expect(!exchanged, "the stale compare-and-swap succeeded: B would be handed out twice")
        #expect(seen == current)

        // The stack is intact: A, then nothing.
        #expect(stack.pop() == a)
        #expect(stack.pop() == nil)
    }

    @Test("the tag wraps within its 31 bits without touching the top or the closed bit")
    func tagWraps() {
        let maxTag = IdleStackModelTests.tagMask << 33
        let old = maxTag | IdleStack.closedBit | 5
        #expect(IdleStack.next(after: old, top: 7, closed: false) == 7)
        #expect(IdleStack.next(after: old, top: 0, closed: true) == IdleStack.closedBit)
        #expect(IdleStack.next(after: IdleStack.closedBit | 3, top: 9, closed: false) == IdleStack.tagUnit | 9)
    }
}
