import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import RedisServerLauncher
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The number of threads of this process (from /proc), to show that connections do not take one each.
func processThreadCount() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
        return Int(line.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) ?? -1
    }
    return -1
}

/// User plus system CPU time of this process, in microseconds.
func processCPUMicroseconds() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + usage.ru_utime.tv_usec + usage.ru_stime.tv_usec
}

/// Samples the process's thread count every few milliseconds on a thread of its own; `stop()` returns
/// the peak seen so far and lets the thread end on its own (it is not waited for: `stop()` is called
/// from tasks).
final class ThreadCountSampler: Sendable {
    private let running = Atomic<Bool>(true)
    private let peak = Atomic<Int>(0)

    init() {
        let thread = Thread { [self] in
            while running.load(ordering: .relaxed) {
                let count = processThreadCount()
                if count > peak.load(ordering: .relaxed) { peak.store(count, ordering: .relaxed) }
                usleep(2_000)
            }
        }
        thread.start()
    }

    @discardableResult
    func stop() -> Int {
        running.store(false, ordering: .relaxed)
        return peak.load(ordering: .relaxed)
    }
}

@Suite("RedisConnection: many concurrent async connections", .serialized, .processExclusive)
struct RedisConcurrencyTests {
    @Test func twoHundredConcurrentAsyncConnections() async throws {
        let configuration = try await SharedServer.configuration(commandTimeout: .seconds(30))
        let connectionCount = 200
        let connections = try await withThrowingTaskGroup(of: RedisConnection.self) { group in
            for _ in 0..<connectionCount {
                group.addTask { try await RedisConnection.connect(configuration: configuration) }
            }
            var connections = [RedisConnection]()
            for try await connection in group { connections.append(connection) }
            return connections
        }
        defer { for connection in connections { connection.closeBlocking() } }
        #expect(Set(connections.map(ObjectIdentifier.init)).count == connectionCount)

        let key = uniqueKey()
        let perConnection = 25
        let peakThreads = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask {
                    for _ in 0..<perConnection {
                        _ = try await connection.command("INCR", key)
                        #expect(try await connection.command("PING") == .status("PONG"))
                    }
                }
            }
            // all 200 are in flight now; sample the thread count once
            let threads = processThreadCount()
            for _ in 0..<max(threads, 0) { peakThreads.increment() }
            try await group.waitForAll()
        }
        #expect(try await connections[0].command("GET", key).int == connectionCount * perConnection)
        let clients = try await connections[0].command("CLIENT", "LIST").string.split(separator: "\n").count
        #expect(clients >= connectionCount)
        print("200 concurrent async connections: \(peakThreads.count) threads in the test process while they ran")
        _ = try await connections[0].command("DEL", key)
    }

    /// Throughput of 200 connections doing PINGs from async tasks, through the reactor (the async API)
    /// and, for comparison, through `BlockingOffload` over the blocking API. Prints ops/s; the assertion
    /// only checks that everything completed. Scale with REDIS_THROUGHPUT_PINGS (PINGs per connection).
    ///
    /// A measurement, not a check, and one that starves every other test of the process while it runs:
    /// its offloaded half holds dispatch's worker threads (32 of them for 300 ms in BLPOP), which on Linux
    /// are the threads the cooperative pool runs on too; with all of them blocked, other tests' tasks wait
    /// for dispatch to add a thread, about one a second. It runs only when REDIS_OFFLOAD_COMPARISON=1,
    /// alone: `REDIS_OFFLOAD_COMPARISON=1 swift test --filter throughputOf200ConnectionsDoingPings`.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["REDIS_OFFLOAD_COMPARISON"] == "1"))
    func throughputOf200ConnectionsDoingPings() async throws {
        let pingsPerConnection = ProcessInfo.processInfo.environment["REDIS_THROUGHPUT_PINGS"].flatMap(Int.init) ?? 100
        let configuration = try await SharedServer.configuration(commandTimeout: .seconds(30))
        let connections = try await withThrowingTaskGroup(of: RedisConnection.self) { group in
            for _ in 0..<200 { group.addTask { try await RedisConnection.connect(configuration: configuration) } }
            var connections = [RedisConnection]()
            for try await connection in group { connections.append(connection) }
            return connections
        }
        defer { for connection in connections { connection.closeBlocking() } }

        func run(
            _ ping: @escaping @Sendable (RedisConnection) async throws -> Void
        ) async throws -> (opsPerSecond: Double, peakThreads: Int, cpuMicrosecondsPerOp: Double) {
            let sampler = ThreadCountSampler()
            defer { sampler.stop() }
            let cpuBefore = processCPUMicroseconds()
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for connection in connections {
                    group.addTask { for _ in 0..<pingsPerConnection { try await ping(connection) } }
                }
                try await group.waitForAll()
            }
            let seconds = Double((ContinuousClock.now - start) / .microseconds(1)) / 1_000_000
            let operations = Double(connections.count * pingsPerConnection)
            let cpu = Double(processCPUMicroseconds() - cpuBefore) / operations
            return (operations / seconds, sampler.stop(), cpu)
        }

        let reactor = try await run { _ = try await $0.command("PING") }
        let offload = try await run { connection in
            _ = try await BlockingOffload.run { try connection.commandBlocking("PING") }
        }
        func format(_ result: (opsPerSecond: Double, peakThreads: Int, cpuMicrosecondsPerOp: Double)) -> String {
            let cpu = (result.cpuMicrosecondsPerOp * 10).rounded() / 10
            return "\(Int(result.opsPerSecond)) ops/s, \(cpu) µs client CPU/op, peak \(result.peakThreads) threads"
        }
        print(
            "200 connections x \(pingsPerConnection) PINGs: async API (IOReactor) \(format(reactor)); "
                + "BlockingOffload over the blocking API \(format(offload))")
        #expect(reactor.opsPerSecond > 0 && offload.opsPerSecond > 0)

        // Blocking commands: 32 connections wait in BLPOP for 300 ms while 167 others send 10 PINGs each.
        // Through the reactor a waiting command holds no thread; through BlockingOffload each one holds one
        // of dispatch's few worker threads while it waits, and the PINGs queue behind them.
        let observer = connections[199]
        func pingsWhileBlocked(offloaded: Bool) async throws -> (Duration, Int) {
            let key = uniqueKey("hol")
            let sampler = ThreadCountSampler()
            defer { sampler.stop() }
            return try await withThrowingTaskGroup(of: Void.self) { group in
                for connection in connections[0..<32] {
                    group.addTask {
                        if offloaded {
                            _ = try await BlockingOffload.run { try connection.commandBlocking("BLPOP", key, "0.3") }
                        } else {
                            _ = try await connection.command("BLPOP", key, "0.3")
                        }
                    }
                }
                #expect(try await waitUntilClientRuns("blpop", observer: observer))
                let start = ContinuousClock.now
                try await withThrowingTaskGroup(of: Void.self) { pings in
                    for connection in connections[32..<199] {
                        pings.addTask {
                            for _ in 0..<10 {
                                if offloaded {
                                    _ = try await BlockingOffload.run { try connection.commandBlocking("PING") }
                                } else {
                                    _ = try await connection.command("PING")
                                }
                            }
                        }
                    }
                    try await pings.waitForAll()
                }
                let elapsed = ContinuousClock.now - start
                try await group.waitForAll()
                return (elapsed, sampler.stop())
            }
        }
        let reactorBlocked = try await pingsWhileBlocked(offloaded: false)
        let offloadBlocked = try await pingsWhileBlocked(offloaded: true)
        print(
            "1670 PINGs on 167 connections while 32 others wait 300 ms in BLPOP: async API (IOReactor) "
                + "\(reactorBlocked.0), peak \(reactorBlocked.1) threads; BlockingOffload \(offloadBlocked.0), "
                + "peak \(offloadBlocked.1) threads")
    }
}

@Suite("ConnectionPool over RedisConnection", .serialized, .processExclusive)
struct RedisPoolTests {
    @Test func sixtyFourConcurrentTasksIncrementExactly() async throws {
        let factory = try await RedisConnectionFactory(configuration: SharedServer.configuration())
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(16))
        let key = uniqueKey()
        let tasks = 64
        let perTask = 100
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    for _ in 0..<perTask {
                        try await pool.withConnection { connection in
                            _ = try await connection.command("INCR", key)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let total = try await pool.withConnection { try await $0.command("GET", key).int }
        #expect(total == tasks * perTask)
        #expect(pool.metrics().total <= 16)

        // the lease API
        let lease = try await pool.acquire()
        #expect(try await lease.connection.command("DEL", key).int == 1)
        lease.release()
        await pool.shutdown()
    }

    @Test func blockingThreadsThroughThePool() async throws {
        let factory = try await RedisConnectionFactory(configuration: SharedServer.configuration())
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().maxSize(4))
        let key = uniqueKey()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    try await onThread {
                        for _ in 0..<100 {
                            try pool.withConnectionBlocking { connection in
                                _ = try connection.commandBlocking("INCR", key)
                            }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let total = try await onThread {
            try pool.withConnectionBlocking { try $0.commandBlocking("GETDEL", key).int }
        }
        #expect(total == 800)
        #expect(pool.metrics().total <= 4)
        await pool.shutdown()
    }

    @Test func poolReplacesConnectionsBrokenByAServerKill() async throws {
        try await RedisServerProcess.withServer { server in
            var configuration = try RedisConnectionConfiguration(port: server.port)
            configuration.commandTimeout = .seconds(5)
            let factory = try RedisConnectionFactory(configuration: configuration)
            let pool = try ConnectionPool(
                factory: factory, configuration: PoolConfiguration().maxSize(4).acquireTimeout(.seconds(5)))

            // open all four connections
            let l1 = try await pool.acquire()
            let l2 = try await pool.acquire()
            let l3 = try await pool.acquire()
            let l4 = try await pool.acquire()
            let originals = [l1.connection, l2.connection, l3.connection, l4.connection]
            for connection in originals { #expect(try await connection.command("PING") == .status("PONG")) }
            l1.release()
            l2.release()
            l3.release()
            l4.release()
            #expect(pool.metrics().idle == 4)

            try await server.kill(signal: SIGKILL)
            try await server.restart()

            // each dead connection fails once (a connection error, never a hang), is discarded, and is
            // replaced; then commands succeed again
            var failures = 0
            var successesInARow = 0
            let deadline = ContinuousClock.now.advanced(by: .seconds(20))
            while successesInARow < 20 && ContinuousClock.now < deadline {
                do {
                    try await pool.withConnection { connection in
                        _ = try await connection.command("INCR", "after-restart")
                    }
                    successesInARow += 1
                } catch let error as RedisError {
                    #expect(error.isConnectionError, "unexpected \(error)")
                    failures += 1
                    successesInARow = 0
                }
            }
            #expect(successesInARow == 20)
            #expect(failures >= 1 && failures <= 4)
            let broken = originals.filter(\.isBroken)
            #expect(broken.count == failures)
            // the pool closed every broken connection and never lends one again
            #expect(await eventually(pollingEvery: .milliseconds(5)) { broken.allSatisfy(\.isClosed) })
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        let reply: RedisReply = try await pool.withConnection { connection in
                            #expect(!broken.contains { $0 === connection })
                            #expect(!connection.isBroken)
                            return try await connection.command("PING")
                        }
                        #expect(reply == .status("PONG"))
                    }
                }
                try await group.waitForAll()
            }
            #expect(pool.metrics().total <= 4)
            await pool.shutdown()
        }
    }
}
