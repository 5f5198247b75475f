import ConnPoolTestSupport
import Foundation
import Testing
@testable import ConnPool

/// The process-wide timer: the deadline heap (``TimerQueue``, driven directly, deterministic), its
/// thread (``TimerScheduler``: private instances, isolated from the pools other tests run meanwhile, so
/// each test knows every timer its scheduler holds), and the pools sharing one thread.
@Suite("Shared timer: one thread and one deadline heap for every pool", .serialized, .processExclusive)
struct SharedTimerTests {
    // MARK: The heap

    @Test("the queue hands out timers in deadline order, ties in registration order")
    func queueOrder() {
        var queue = TimerQueue()
        let count = 100
        let ids = (0..<count).map { _ in queue.register { _ in nil } }
        // A fixed permutation of the deadlines, with ties (each deadline twice).
        var deadlines: [TimerQueue.ID: Int64] = [:]
        for (index, id) in ids.enumerated() {
            let deadline = Int64((index * 37) % count / 2) * 1_000
            deadlines[id] = deadline
            _ = queue.schedule(id, at: deadline + 500)
            _ = queue.schedule(id, at: deadline)  // moved earlier: the one that counts
            #expect(queue.checkInvariants())
        }
        #expect(queue.scheduledCount == count)  // one entry per timer, however often it was scheduled
        let early = queue.popDue(now: -1)
        #expect(early == nil)  // nothing due before the earliest deadline
        var popped: [TimerQueue.ID] = []
        while let due = queue.popDue(now: .max - 1) {
            popped.append(due.id)
            #expect(queue.checkInvariants())
        }
        #expect(popped == ids.sorted { (deadlines[$0]!, $0) < (deadlines[$1]!, $1) })
        #expect(queue.scheduledCount == 0)
        #expect(queue.registeredCount == count)  // popping leaves the timers registered
    }

    @Test("schedule only moves a deadline earlier; a removed timer leaves nothing behind")
    func queueScheduleAndRemove() {
        var queue = TimerQueue()
        let other = queue.register { _ in nil }
        let id = queue.register { _ in nil }
        // (Mutating calls cannot run inside #expect: each result is taken first.)
        let first = queue.schedule(other, at: 50)
        #expect(first)  // the queue's earliest: the thread must wake
        let notEarliest = queue.schedule(id, at: 100)
        let later = queue.schedule(id, at: 200)
        let never = queue.schedule(id, at: .max)
        #expect(!notEarliest && !later && !never)  // pending but not the earliest; later and "never": ignored
        let earlier = queue.schedule(id, at: 40)
        #expect(earlier)  // earlier, and now the earliest
        #expect(queue.earliestDeadline == 40)
        #expect(queue.scheduledCount == 2)  // still one entry per timer
        let removed = queue.remove(id) != nil
        let removedTwice = queue.remove(id) != nil
        let revived = queue.schedule(id, at: 1)
        #expect(removed && !removedTwice && !revived)  // a removed timer cannot come back
        #expect(queue.earliestDeadline == 50)
        let early = queue.popDue(now: 49)?.id
        let due = queue.popDue(now: 50)?.id
        #expect(early == nil && due == other)
        let again = queue.schedule(other, at: 300)
        #expect(again)  // after firing, any deadline is earlier than none
        _ = queue.remove(other)
        #expect(queue.isEmpty && queue.scheduledCount == 0 && queue.checkInvariants())
    }

    @Test("random schedules, pops and removals match a simple model and keep at most one entry per timer")
    func queueMatchesModel() {
        var queue = TimerQueue()
        var model: [TimerQueue.ID: Int64] = [:]  // registered timer -> pending deadline (.max: none)
        var random = SplitMix(seed: 42)
        var now: Int64 = 0
        for _ in 0..<20_000 {
            switch random.next() % 8 {
            case 0, 1:
                if model.count < 40 { model[queue.register { _ in nil }] = .max }
            case 2:
                if let id = model.keys.sorted().randomElement(using: &random) {
                    let removed = queue.remove(id) != nil
                    #expect(removed)
                    model[id] = nil
                }
            case 3:
                now += Int64(random.next() % 50)
                if let due = queue.popDue(now: now) {
                    let earliest = model.filter { $0.value != .max }.min { ($0.value, $0.key) < ($1.value, $1.key) }
                    #expect(due.id == earliest?.key && earliest!.value <= now)
                    model[due.id] = .max
                } else {
                    #expect(!model.values.contains { $0 <= now })
                }
            default:
                if let id = model.keys.sorted().randomElement(using: &random) {
                    let deadline = now + Int64(random.next() % 1_000)
                    _ = queue.schedule(id, at: deadline)
                    model[id] = min(model[id]!, deadline)
                }
            }
            #expect(queue.registeredCount == model.count)
            #expect(queue.scheduledCount == model.values.count { $0 != .max })
        }
        #expect(queue.checkInvariants())
        for id in model.keys { _ = queue.remove(id) }
        #expect(queue.isEmpty && queue.scheduledCount == 0)
    }

    // MARK: The thread

    @Test("many timers fire in deadline order on the one thread")
    func threadFiresInDeadlineOrder() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let fired = Recorder()
        // Holds the thread inside a handler while the others are scheduled, all already due: they
        // then fire in heap order, whatever the order they were scheduled in.
        let blocked = Recorder()
        let release = DispatchSemaphore(value: 0)
        let blocker = scheduler.register { _ in
            blocked.append(0)
            release.wait()
            return nil
        }
        blocker.schedule(at: PoolClock.system.now())
        #expect(await eventually(pollingEvery: .milliseconds(1)) { blocked.values == [0] })

        let count = 64
        let base = PoolClock.system.now() - 1_000_000_000
        var timers: [SharedTimer] = []
        for index in 0..<count {
            let rank = (index * 29) % count  // a fixed permutation of 0..<count
            let timer = scheduler.register { _ in
                fired.append(rank)
                return nil
            }
            timer.schedule(at: base + Int64(rank) * 1_000)
            timers.append(timer)
        }
        release.signal()
        #expect(await eventually(pollingEvery: .milliseconds(1)) { fired.values.count == count })
        #expect(fired.values == Array(0..<count))
        for timer in timers { timer.stop() }
        blocker.stop()
    }

    @Test("an earlier deadline wakes the thread sleeping until a later one")
    func earlierScheduleWakesTheThread() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let fired = Recorder()
        let timer = scheduler.register { _ in
            fired.append(1)
            return nil
        }
        let far = PoolClock.system.now() + 600_000_000_000  // ten minutes
        timer.schedule(at: far)
        #expect(await eventually(pollingEvery: .milliseconds(1)) { scheduler.snapshot.sleepingUntil == far })
        // Without a wake-up the thread would sleep ten minutes; the bound below is ten seconds.
        timer.schedule(at: PoolClock.system.now() + 20_000_000)
        #expect(await eventually(pollingEvery: .milliseconds(1)) { fired.values == [1] })
        #expect(scheduler.snapshot.scheduled == 0)  // the far deadline was replaced, not queued as well
        timer.stop()
    }

    @Test("a handler schedules and stops its own timer without deadlock, then is never called again")
    func scheduleAndStopFromInsideTheHandler() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let calls = Recorder()
        let box = LockedValue<SharedTimer?>(nil)
        weak let captured: Tracked?
        do {
            let tracked = Tracked()
            captured = tracked
            let timer = scheduler.register { now in
                _ = tracked
                calls.append(1)
                let me = box.withLock { $0 }!
                if calls.values.count < 5 {
                    me.schedule(at: now)  // from inside the handler: again at once
                    return now + 600_000_000_000  // merged: the earlier one wins
                }
                me.stop()  // from inside the handler
                me.schedule(at: now)  // ignored once stopped
                return now  // also ignored
            }
            box.withLock { $0 = timer }
            timer.schedule(at: PoolClock.system.now())
        }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { calls.values.count == 5 })
        await fence(scheduler)
        #expect(calls.values.count == 5)
        box.withLock { $0 = nil }
        // The stored handler went in stop(); the running call's copy when the call returned.
        #expect(await eventually(pollingEvery: .milliseconds(1)) { captured == nil })
    }

    @Test("a timer stopped while idle is never called again and its handler is released at once")
    func stopWhileIdle() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let calls = Recorder()
        weak let captured: Tracked?
        let timer: SharedTimer
        do {
            let tracked = Tracked()
            captured = tracked
            timer = scheduler.register { _ in
                _ = tracked
                calls.append(1)
                return nil
            }
        }
        timer.schedule(at: PoolClock.system.now() + 600_000_000_000)
        let keepAlive = scheduler.register { _ in nil }  // keeps the thread up for the fence
        timer.stop()
        #expect(captured == nil)  // released by stop() itself
        timer.schedule(at: PoolClock.system.now())  // ignored
        await fence(scheduler)
        #expect(calls.values.isEmpty)
        #expect(scheduler.snapshot.registered == 1 && scheduler.snapshot.scheduled == 0)
        keepAlive.stop()
    }

    @Test("a timer stopped while its handler runs: the call finishes, the handler is released after it, no call follows")
    func stopWhileRunning() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let calls = Recorder()
        let release = DispatchSemaphore(value: 0)
        weak let captured: Tracked?
        let timer: SharedTimer
        do {
            let tracked = Tracked()
            captured = tracked
            timer = scheduler.register { now in
                _ = tracked
                calls.append(1)
                release.wait()
                return now  // asks to run again at once: the timer is stopped by then
            }
        }
        timer.schedule(at: PoolClock.system.now())
        #expect(await eventually(pollingEvery: .milliseconds(1)) { calls.values.count == 1 })
        let keepAlive = scheduler.register { _ in nil }
        timer.stop()
        #expect(captured != nil)  // the running call holds its own copy
        release.signal()
        #expect(await eventually(pollingEvery: .milliseconds(1)) { captured == nil })
        await fence(scheduler)
        #expect(calls.values.count == 1)
        keepAlive.stop()
    }

    @Test("a handle dropped without stop() unregisters its timer and releases the handler")
    func droppedHandle() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        weak let captured: Tracked?
        do {
            let tracked = Tracked()
            captured = tracked
            let timer = scheduler.register { _ in
                _ = tracked
                return nil
            }
            timer.schedule(at: PoolClock.system.now() + 600_000_000_000)
            #expect(scheduler.snapshot.registered == 1)
        }
        #expect(captured == nil)
        #expect(scheduler.snapshot.registered == 0 && scheduler.snapshot.scheduled == 0)
    }

    @Test("the thread starts on the first registration, exits after the last timer goes, and starts again")
    func threadLifetime() async {
        let name = "timer-lifetime"
        let scheduler = TimerScheduler(threadName: name)
        #expect(threadsNamed(name) == 0 && !scheduler.snapshot.threadRunning)
        for _ in 0..<2 {
            let fired = Recorder()
            let timer = scheduler.register { _ in
                fired.append(1)
                return nil
            }
            #expect(scheduler.snapshot.threadRunning)
            #expect(await eventually(pollingEvery: .milliseconds(1)) { threadsNamed(name) == 1 })
            timer.schedule(at: PoolClock.system.now())
            #expect(await eventually(pollingEvery: .milliseconds(1)) { fired.values == [1] })
            timer.stop()
            #expect(await eventually(pollingEvery: .milliseconds(1)) { !scheduler.snapshot.threadRunning })
            #expect(await eventually(pollingEvery: .milliseconds(1)) { threadsNamed(name) == 0 })
        }
    }

    @Test("threads scheduling, firing and stopping timers at once: every timer ends unregistered")
    func concurrentScheduleAndStop() async {
        let scheduler = TimerScheduler(threadName: "timer-test")
        let calls = Recorder()
        let threads = (0..<4).map { worker in
            TestThread {
                for round in 0..<200 {
                    let timer = scheduler.register { now in
                        calls.append(worker)
                        return round % 2 == 0 ? now + 1_000 : nil
                    }
                    timer.schedule(at: PoolClock.system.now() + Int64(round % 3) * 10_000)
                    timer.schedule(at: PoolClock.system.now())
                    if round % 5 == 0 { usleep(50) }
                    timer.stop()
                }
            }
        }
        for thread in threads { await thread.join() }
        #expect(scheduler.snapshot.registered == 0 && scheduler.snapshot.scheduled == 0)
        #expect(await eventually(pollingEvery: .milliseconds(1)) { !scheduler.snapshot.threadRunning })
    }

    // MARK: Pools

    @Test("50 pools on the system clock share one connpool-timer thread")
    func fiftyPoolsOneThread() async throws {
        let before = threadsNamed("connpool-timer")
        let configuration = PoolConfiguration().maxSize(2).maintenanceInterval(.seconds(1))
        var pools: [ConnectionPool<MockFactory>] = []
        for _ in 0..<50 {
            pools.append(try ConnectionPool(factory: MockFactory(), configuration: configuration, clock: .system))
        }
        #expect(TimerScheduler.shared.snapshot.registered >= 50)
        // One thread, whatever other tests do meanwhile (a thread that just exited because the last
        // timer of another test went may still be listed for a moment, hence the wait).
        #expect(await eventually(pollingEvery: .milliseconds(1)) { threadsNamed("connpool-timer") == 1 })
        #expect(threadsNamed("connpool-timer") - before <= 1)
        // The pools work: an acquire that must wait times out through the shared thread.
        do {
            let first = try await pools[1].acquire()
            let second = try await pools[1].acquire()
            let start = ContinuousClock.now
            await #expect(throws: ConnectionPoolError.self) { _ = try await pools[1].acquire(timeout: .milliseconds(50)) }
            #expect(ContinuousClock.now - start < .seconds(10))
            _ = (first.connection, second.connection)
        }
        for pool in pools { _ = await pool.shutdown() }
    }
}

/// An object whose lifetime a test follows through a weak reference.
private final class Tracked: Sendable {}

/// Values appended from any thread, read by the test.
private final class Recorder: Sendable {
    private let storage = LockedValue<[Int]>([])

    func append(_ value: Int) { storage.withLock { $0.append(value) } }
    var values: [Int] { storage.withLock { $0 } }
}

/// Returns once the scheduler's thread has run every handler due now: a timer scheduled now fires after
/// every earlier deadline, handlers running one at a time in deadline order.
private func fence(_ scheduler: TimerScheduler) async {
    let done = Recorder()
    let timer = scheduler.register { _ in
        done.append(1)
        return nil
    }
    timer.schedule(at: PoolClock.system.now())
    #expect(await eventually(pollingEvery: .milliseconds(1)) { done.values == [1] })
    timer.stop()
}

/// The threads of this process named `name` (from /proc/self/task/*/comm).
private func threadsNamed(_ name: String) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.count { task in
        let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)
        return comm?.trimmingCharacters(in: .whitespacesAndNewlines) == name
    }
}

/// A small seeded generator (SplitMix64), so the model test replays the same operations every run.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
