import ConnPool
import ConnPoolTestSupport
import Testing

/// The lock behind `.processExclusive`: if it let two suites in at once, the suites that measure time or
/// count the process's socket operations would fail in a parallel `swift test` only, and rarely.
@Suite("ProcessTurn: the turn of process-exclusive suites")
struct ProcessTurnTests {
    @Test("one holder at a time; the turn passes to waiters in arrival order")
    func oneHolderInArrivalOrder() async {
        let turn = ProcessTurn()
        let order = LockedValue<[Int]>([])
        let holders = LockedValue(0)
        let overlaps = LockedValue(0)
        await turn.acquire()
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<5 {
                group.addTask {
                    await turn.acquire()
                    if holders.withLock({ $0 += 1; return $0 }) != 1 { overlaps.withLock { $0 += 1 } }
                    order.withLock { $0.append(index) }
                    await Task.yield()
                    holders.withLock { $0 -= 1 }
                    turn.release()
                }
                // Queue the waiters one by one, so that their arrival order is known.
                #expect(await eventually { turn.waiting == index + 1 })
            }
            #expect(order.withLock { $0 }.isEmpty)  // nobody got in while the turn was held
            turn.release()
        }
        #expect(order.withLock { $0 } == [0, 1, 2, 3, 4])
        #expect(overlaps.withLock { $0 } == 0)
        #expect(turn.waiting == 0)
    }
}
