import ConnPoolTestSupport
import Foundation
import Testing
@testable import ConnPool

/// Resident set size of this process, in bytes (from /proc/self/statm).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

@Suite("Overload", .serialized, .processExclusive)
struct OverloadTests {
    @Test("10,000 concurrent waiters: memory stays bounded, every one is served, nothing leaks")
    func tenThousandWaiters() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(1).acquireTimeout(.seconds(120)))
        let holder = LeaseHolder(try await pool.acquire())
        let before = residentBytes()
        let served = LockedValue<Int>(0)
        let group = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<10_000 {
                    group.addTask {
                        if (try? await pool.withConnection { _ in }) != nil { served.withLock { $0 += 1 } }
                    }
                }
            }
        }
        #expect(await eventually(timeout: .seconds(60)) { pool.metrics().waiting == 10_000 })
        let during = residentBytes()
        // Each waiter costs its task (a few KiB, in the task allocator) and 40 bytes of queue: far below
        // a thread per waiter (8 MiB of stack each, reserved) or an unbounded buffer.
        #expect(during - before < 200 * 1_048_576, "RSS grew by \((during - before) / 1_048_576) MiB")
        holder.drop()
        await group.value
        #expect(served.withLock { $0 } == 10_000)
        #expect(pool.metrics().waiting == 0)
        #expect(pool.metrics().acquiresAfterWaiting == 10_001)  // + the first acquire, which waited for its connection
        #expect(factory.connections.count == 1)
        await pool.shutdown()
    }

    @Test("maxWaiters sheds the excess at once with a typed error; the queue stays at the limit")
    func loadShedding() async throws {
        let pool = try ConnectionPool(
            factory: MockFactory(), configuration: PoolConfiguration().maxSize(1).maxWaiters(1_000).acquireTimeout(.seconds(120)))
        let holder = LeaseHolder(try await pool.acquire())
        let shed = LockedValue<Int>(0)
        let served = LockedValue<Int>(0)
        let group = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<5_000 {
                    group.addTask {
                        do {
                            try await pool.withConnection { _ in }
                            served.withLock { $0 += 1 }
                        } catch let error as ConnectionPoolError where error.code == .tooManyWaiters {
                            if error.limit == 1_000 { shed.withLock { $0 += 1 } }
                        } catch {}
                    }
                }
            }
        }
        #expect(await eventually(timeout: .seconds(60)) { shed.withLock { $0 } + pool.metrics().waiting == 5_000 })
        #expect(pool.metrics().waiting == 1_000)
        #expect(shed.withLock { $0 } == 4_000)
        holder.drop()
        await group.value
        #expect(served.withLock { $0 } == 1_000)
        #expect(pool.metrics().shedWaiters == 4_000)
        await pool.shutdown()
    }
}
