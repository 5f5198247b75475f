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

/// Health management against real redis-server processes: crashes, freezes, killed clients, server-side
/// idle timeouts, a server down at start, and shutdown with leases held. Each test owns its server.
@Suite("HealthIntegrationTests", .serialized, .processExclusive)
struct HealthIntegrationTests {
    typealias Pool = ConnectionPool<RedisConnectionFactory>

    static func makePool(_ server: RedisServerProcess, _ configuration: PoolConfiguration, commandTimeout: Duration = .seconds(2)) throws -> Pool {
        var redis = try RedisConnectionConfiguration(port: server.port)
        redis.commandTimeout = commandTimeout
        redis.connectTimeout = .seconds(1)
        return try ConnectionPool(factory: RedisConnectionFactory(configuration: redis), configuration: configuration)
    }

    /// Recovery settings: quick retries, no fail-fast, so a restart is waited for, not reported.
    static let recovering = PoolConfiguration().acquireTimeout(.seconds(15)).circuitBreakerThreshold(nil)
        .connectRetryBackoff(initial: .milliseconds(10), multiplier: 2, max: .milliseconds(200), jitter: 0.1)

    /// Runs `workers` tasks doing INCR through the pool until `stop` is set; counts successes and errors.
    final class Load: Sendable {
        let successes = Atomic<Int>(0)
        let errors = Atomic<Int>(0)
        let stopFlag = Atomic<Bool>(false)
        let inFlight = Atomic<Int>(0)
        let errorLog = LockedValue<[String]>([])
        /// The connection each failed request used, kept alive so identities stay distinct.
        let failedConnections = LockedValue<[RedisConnection]>([])

        func run(pool: Pool, workers: Int, key: String) -> Task<Void, Never> {
            Task {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<workers {
                        group.addTask {
                            while !self.stopFlag.load(ordering: .relaxed) {
                                do {
                                    try await pool.withConnection { redis in
                                        self.inFlight.add(1, ordering: .relaxed)
                                        defer { self.inFlight.subtract(1, ordering: .relaxed) }
                                        do {
                                            _ = try await redis.command("INCR", key)
                                        } catch {
                                            self.failedConnections.withLock { $0.append(redis) }
                                            throw error
                                        }
                                    }
                                    self.successes.add(1, ordering: .relaxed)
                                } catch {
                                    self.errors.add(1, ordering: .relaxed)
                                    self.errorLog.withLock { $0.append("\(error)") }
                                }
                            }
                        }
                    }
                }
            }
        }

        func successesReach(_ target: Int) async -> Bool {
            await eventually(timeout: .seconds(20), pollingEvery: .milliseconds(5)) { self.successes.load(ordering: .relaxed) >= target }
        }
    }

    @Test("SIGKILL and restart under load: the pool recovers; only connections to the dead server fail, each once")
    func killAndRestartUnderLoad() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try Self.makePool(server, Self.recovering.maxSize(8).minSize(8))
            try await pool.warm()
            let load = Load()
            let running = load.run(pool: pool, workers: 4, key: uniqueKey())
            #expect(await load.successesReach(200))
            try await server.kill(signal: SIGKILL)
            // Connections opened while the dying server tore down its sockets (its listener can accept a
            // handshake for a moment after the first client sockets reset) are also connections to the
            // dead server: count every connection opened before the new one is up.
            let openedBeforeRestart = pool.metrics().created
            try await server.restart()
            let afterRestart = load.successes.load(ordering: .relaxed)
            #expect(await load.successesReach(afterRestart + 500))
            let errorsAtRecovery = load.errors.load(ordering: .relaxed)
            // Recovered: a long stretch of requests with no further error.
            let mark = load.successes.load(ordering: .relaxed)
            #expect(await load.successesReach(mark + 500))
            load.stopFlag.store(true, ordering: .relaxed)
            await running.value
            let failed = load.failedConnections.withLock { $0.map(ObjectIdentifier.init) }
            #expect(Set(failed).count == failed.count, "a connection failed twice: it was lent again after an I/O error")
            #expect(errorsAtRecovery == failed.count, "\(load.errorLog.withLock { $0 })")
            #expect(errorsAtRecovery <= openedBeforeRestart, "only connections opened before the restart may fail")
            #expect(load.errors.load(ordering: .relaxed) == errorsAtRecovery)
            let metrics = pool.metrics()
            #expect(metrics.total <= 8)
            #expect(metrics.closedByReason[.broken, default: 0] >= 1)
            await pool.shutdown()
        }
    }

    @Test("SIGKILL and restart with validateOnAcquire: only the requests in flight at the kill fail")
    func killWithValidation() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try Self.makePool(
                server, Self.recovering.maxSize(16).minSize(16).validateOnAcquire(true, bypassWindow: .zero))
            try await pool.warm()
            let load = Load()
            let workers = 4
            let running = load.run(pool: pool, workers: workers, key: uniqueKey())
            #expect(await load.successesReach(100))
            try await server.kill(signal: SIGKILL)
            try await server.restart()
            let mark = load.successes.load(ordering: .relaxed)
            #expect(await load.successesReach(mark + 300))
            load.stopFlag.store(true, ordering: .relaxed)
            await running.value
            #expect(load.errors.load(ordering: .relaxed) <= workers)
            #expect(pool.metrics().healthCheckFailures >= 1)  // dead idle connections were caught, not used
            await pool.shutdown()
        }
    }

    @Test("SIGSTOP: commands and acquires time out on time, then everything recovers after SIGCONT")
    func freezeAndThaw() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try Self.makePool(
                server, Self.recovering.maxSize(2).acquireTimeout(.milliseconds(500)), commandTimeout: .seconds(1))
            let key = uniqueKey()
            _ = try await pool.withConnection { try await $0.command("SET", key, "1") }
            try await server.kill(signal: SIGSTOP)
            // Two commands stuck on the frozen server fill the pool...
            let stuck = (0..<2).map { _ in
                Task { () -> Duration in
                    let start = ContinuousClock.now
                    do { _ = try await pool.withConnection { try await $0.command("GET", key) } } catch {}
                    return ContinuousClock.now - start
                }
            }
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.metrics().inUse == 2 })
            // ...so a third acquire times out at its deadline: an acquire timeout, after at least the
            // 500 ms timeout, and well before the server is resumed (below, only after every wait here has
            // ended: a wait that needed the server would never end). The upper bounds only tell "timed
            // out" from "hung" and leave room for a loaded machine; they are not a latency measurement.
            let start = ContinuousClock.now
            let error = await #expect(throws: ConnectionPoolError.self) { _ = try await pool.acquire() }
            let waited = ContinuousClock.now - start
            #expect(error?.code == .acquireTimeout, "expected acquireTimeout, got \(String(describing: error))")
            #expect(error?.timeout == .milliseconds(500))
            #expect(waited >= .milliseconds(450) && waited < .seconds(5), "acquire waited \(waited)")
            for task in stuck {
                let took = await task.value
                #expect(took >= .milliseconds(950) && took < .seconds(5), "a command on a frozen server took \(took)")
            }
            try await server.kill(signal: SIGCONT)
            #expect(await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(5)) {
                (try? await pool.withConnection { try await $0.command("GET", key).string }) == "1"
            })
            await pool.shutdown()
        }
    }

    @Test("CLIENT KILL of pooled connections: caught by the background health check and by validateOnAcquire")
    func clientKill() async throws {
        try await RedisServerProcess.withServer { server in
            let background = try Self.makePool(
                server, Self.recovering.maxSize(3).minSize(3).maintenanceInterval(.milliseconds(100))
                    .healthCheck(interval: .milliseconds(200), timeout: .milliseconds(500)).name("background"))
            let onAcquire = try Self.makePool(
                server, Self.recovering.maxSize(3).minSize(3).validateOnAcquire(true, bypassWindow: .zero).name("on-acquire"))
            try await background.warm()
            try await onAcquire.warm()
            let admin = try await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: server.port))
            let killed = try await admin.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").int
            #expect(killed == 6)
            // validateOnAcquire: the very next acquire gets a working connection.
            let key = uniqueKey()
            let value = try await onAcquire.withConnection { try await $0.command("INCR", key).int }
            #expect(value == 1)
            #expect(onAcquire.metrics().healthCheckFailures >= 1)
            // The background check finds the three dead idle connections and the pool refills minSize.
            #expect(await eventually(pollingEvery: .milliseconds(5)) { background.metrics().healthCheckFailures >= 3 })
            #expect(await eventually(pollingEvery: .milliseconds(5)) { background.metrics().idle == 3 })
            let again = try await background.withConnection { try await $0.command("INCR", key).int }
            #expect(again == 2)
            await admin.close()
            await background.shutdown()
            await onAcquire.shutdown()
        }
    }

    @Test("a server with `timeout 1` closing idle clients: validation replaces them without an error")
    func serverIdleTimeout() async throws {
        try await RedisServerProcess.withServer(extraArguments: ["--timeout", "1"]) { server in
            let pool = try Self.makePool(server, Self.recovering.maxSize(2).validateOnAcquire(true, bypassWindow: .milliseconds(200)))
            let key = uniqueKey()
            #expect(try await pool.withConnection { try await $0.command("INCR", key).int } == 1)
            // Wait until the server has dropped our idle connection (a fresh client sees only itself).
            #expect(await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(5)) {
                guard let probe = try? await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: server.port)) else { return false }
                defer { Task { await probe.close() } }
                let list = (try? await probe.command("CLIENT", "LIST").string) ?? ""
                return list.split(separator: "\n").count == 1
            })
            #expect(try await pool.withConnection { try await $0.command("INCR", key).int } == 2)
            #expect(pool.metrics().healthCheckFailures == 1)
            await pool.shutdown()
        }
    }

    @Test("server down at pool start: a fast, clear error, then recovery when it comes up")
    func serverDownAtStart() async throws {
        try await RedisServerProcess.withServer { server in
            await server.stop()  // the port is known and nothing listens on it
            let pool = try Self.makePool(
                server, PoolConfiguration().maxSize(2).acquireTimeout(.seconds(10)).circuitBreakerThreshold(3)
                    .connectRetryBackoff(initial: .milliseconds(20), multiplier: 2, max: .milliseconds(200), jitter: 0))
            let start = ContinuousClock.now
            let error = await #expect(throws: ConnectionPoolError.self) { _ = try await pool.acquire() }
            #expect(ContinuousClock.now - start < .seconds(2), "failing fast, not after the 10 s timeout")
            #expect(error.map { "\($0)" }?.contains("connection refused") == true, "\(String(describing: error))")
            #expect(pool.status().health == .failing)
            try await server.restart()
            #expect(await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(5)) {
                (try? await pool.withConnection { try await $0.command("PING").string }) == "PONG"
            })
            #expect(pool.status().health == .healthy)
            await pool.shutdown()
        }
    }

    @Test("shutdown while leases are held: returned ones close gracefully, the rest by force at the deadline")
    func shutdownWithLeasesHeld() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try Self.makePool(server, Self.recovering.maxSize(3))
            let returned = try await pool.acquire()
            let kept = try await pool.acquire()
            let keptConnection = kept.connection
            let shutdown = Task { await pool.shutdown(gracePeriod: .milliseconds(500)) }
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.status().health == .shuttingDown })
            _ = try await returned.connection.command("PING")
            returned.release()
            let start = ContinuousClock.now
            let report = await shutdown.value
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(report.closedOnReturn == 1)
            #expect(report.forceClosed == 1)
            #expect(await eventually(pollingEvery: .milliseconds(5)) { keptConnection.isClosed })  // closed by force, on a task of the pool's
            await #expect(throws: (any Error).self) { _ = try await keptConnection.command("PING") }
            _ = consume kept  // a stale lease: returning it does nothing
            #expect(await eventually(pollingEvery: .milliseconds(5)) { pool.metrics().total == 0 })  // the forced close finishes on a task
            let admin = try await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: server.port))
            // The server sees each close when its event loop gets to it: poll, with a deadline.
            let onlyAdminLeft = await eventually(pollingEvery: .milliseconds(5)) {
                ((try? await admin.command("CLIENT", "LIST").string) ?? "").split(separator: "\n").count == 1
            }
            #expect(onlyAdminLeft, "every pooled connection is closed on the server side too")
            await admin.close()
        }
    }
}
