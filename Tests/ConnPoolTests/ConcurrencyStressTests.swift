import Foundation
import Synchronization
import Testing
@testable import ConnPool

@Suite("ConnectionPool under concurrency")
struct ConcurrencyStressTests {
    @Test("64 tasks and 8 threads mixing both interfaces never exceed maxSize nor share a connection")
    func maxSizeHeldUnderContention() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(6).acquireTimeout(.seconds(30)))
        let violations = Locked<[String]>([])
        let maxSeen = Locked<Int>(0)
        let iterations = 300

        @Sendable func use(_ connection: MockConnection) {
            if !connection.beginBorrow() {
                violations.withLock { $0.append("connection \(connection.id) held by two borrowers") }
            }
            let metrics = pool.metrics()
            maxSeen.withLock { $0 = max($0, metrics.total) }
            if let violation = pool.invariantViolation() {
                violations.withLock { $0.append(violation) }
            }
            connection.endBorrow()
        }

        let threads = (0..<8).map { _ in
            TestThread {
                for index in 0..<iterations {
                    do {
                        if index % 2 == 0 {
                            try pool.withConnectionBlocking { use($0) }
                        } else {
                            let lease = try pool.acquireBlocking()
                            use(lease.connection)
                        }
                    } catch {
                        violations.withLock { $0.append("thread: \(error)") }
                    }
                }
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<64 {
                group.addTask {
                    for index in 0..<iterations {
                        if (index + task) % 3 == 0 {
                            try await pool.withConnection { use($0); await Task.yield() }
                        } else {
                            let lease = try await pool.acquire()
                            use(lease.connection)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        for thread in threads { await thread.join() }
        #expect(violations.withLock { $0 } == [])
        #expect(maxSeen.current <= 6)
        #expect(factory.connections.count <= 6)
        #expect(pool.metrics().inUse == 0)
        #expect(pool.metrics().waiting == 0)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }

    @Test("random cancellation and short timeouts leak nothing and the pool still serves")
    func cancellationStorm() async throws {
        let factory = MockFactory()
        let pool = try ConnectionPool(
            factory: factory, configuration: PoolConfiguration().maxSize(3).acquireTimeout(.milliseconds(5)))
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<200 {
                group.addTask {
                    let inner = Task {
                        try await pool.withConnection { connection in
                            #expect(connection.beginBorrow())
                            await Task.yield()
                            connection.endBorrow()
                        }
                    }
                    if task % 3 == 0 { inner.cancel() }
                    _ = try? await inner.value
                }
            }
        }
        #expect(await eventually { pool.metrics().inUse == 0 && pool.metrics().waiting == 0 && pool.metrics().connecting == 0 })
        #expect(pool.invariantViolation() == nil)
        #expect(pool.metrics().total == factory.connections.filter { !$0.isClosed }.count)
        #expect(pool.metrics().total <= 3)
        let id = try await pool.withConnection(timeout: .seconds(5)) { $0.id }
        #expect(id >= 0)
        await pool.shutdown()
        #expect(factory.connections.allSatisfy { $0.isClosed })
    }
}
