public import ConnPool
public import ConnPoolRedis
public import Logging
import RedisServerLauncher
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The pool the chaos engine drives.
public typealias ChaosPool = ConnectionPool<RedisConnectionFactory>

/// Runs a load through a ``ConnPool/ConnectionPool`` of ``ConnPoolRedis/RedisConnection``s against a
/// throwaway `redis-server` while it injects faults on a schedule, and checks the pool's invariants:
///
/// - no acquire waits past the acquire timeout plus a small slack, whatever the server does;
/// - every lease comes back (none is held once the load tasks have finished);
/// - no connection is left open after `shutdown()`, by the pool's count and by the server's
///   (`CLIENT LIST`, the engine's own admin connection excepted);
/// - requests succeed again after every fault (the time to the first success is each fault's
///   recovery time).
///
/// ```swift
/// var options = ChaosOptions()
/// options.duration = .seconds(10)
/// let report = try await ChaosEngine(options: options).run()
/// print(report.summary())
/// ```
///
/// The faults are `SIGKILL` + restart, `SIGSTOP` + `SIGCONT`, `CLIENT KILL TYPE normal` and
/// `DEBUG SLEEP` (the server is started with `--enable-debug-command local`). Blocking steps (signals,
/// the restart's wait for PING) run on one thread of the engine's own, never on the cooperative pool.
public final class ChaosEngine: Sendable {
    /// What the run does.
    public let options: ChaosOptions
    /// Passed to the pool and the connection factory.
    public let logger: Logger
    private let progress: (@Sendable (String) -> Void)?

    /// The CLIENT SETNAME name of the pooled connections.
    public static let poolClientName = "chaos-pool"
    /// The CLIENT SETNAME name of the engine's admin connection (excluded from the client count).
    public static let adminClientName = "chaos-admin"

    /// An engine for `options`.
    ///
    /// - Parameters:
    ///   - options: the load, the pool, the faults and the invariant limits.
    ///   - logger: given to the pool and the connection factory. Without ``ChaosOptions/verbose`` its
    ///     level is raised to `error` (the pool logs a warning for each failed connection attempt).
    ///   - progress: called with a line per fault and per phase (when ``ChaosOptions/verbose``).
    public init(
        options: ChaosOptions, logger: Logger = Logger(label: "connpool.chaos"),
        progress: (@Sendable (String) -> Void)? = nil
    ) {
        self.options = options
        var logger = logger
        if !options.verbose && logger.logLevel < .error { logger.logLevel = .error }
        self.logger = logger
        self.progress = progress
    }

    /// Starts a server, runs the load with its faults, shuts the pool down, counts what is left open,
    /// stops the server and returns the report (``ChaosReport/violations`` lists what broke).
    ///
    /// - Throws: ``ChaosError`` when the options are invalid or the server, the pool or the admin
    ///   connection could not be set up. A broken invariant is not thrown: it is in the report.
    public func run() async throws -> ChaosReport {
        if let problem = options.problem() { throw ChaosError.invalidOptions(problem) }
        let server: RedisServerProcess
        do {
            // The launcher's async form: the start waits on a thread of its own, not on the dispatch
            // threads that Swift's cooperative pool shares on Linux.
            server = try await RedisServerProcess.start(extraArguments: ["--enable-debug-command", "local"])
        } catch {
            throw ChaosError.setup("cannot start redis-server: \(error)")
        }
        do {
            let report = try await run(against: server)
            await server.stop()
            return report
        } catch {
            await server.stop()
            throw error
        }
    }

    private func say(_ line: @autoclosure () -> String) {
        if options.verbose, let progress { progress(line()) }
    }

    private func makePool(port: Int) throws -> ChaosPool {
        var redis = try RedisConnectionConfiguration(port: port)
        redis.commandTimeout = options.commandTimeout
        redis.connectTimeout = options.connectTimeout
        redis.clientName = Self.poolClientName
        let factory = try RedisConnectionFactory(configuration: redis, logger: logger)
        var configuration = PoolConfiguration()
            .name("chaos")
            .maxSize(options.poolSize)
            .minSize(options.minSize)
            .acquireTimeout(options.acquireTimeout)
            .maintenanceInterval(options.maintenanceInterval)
            .healthCheck(interval: options.maintenanceInterval * 2, timeout: options.commandTimeout)
            .connectRetryBackoff(initial: .milliseconds(10), multiplier: 2, max: .milliseconds(500), jitter: 0.2)
            .circuitBreakerThreshold(options.circuitBreakerThreshold)
            .shutdownGracePeriod(options.shutdownGracePeriod)
        if options.validateOnAcquire {
            configuration = configuration.validateOnAcquire(true, bypassWindow: .zero)
        }
        return try ChaosPool(factory: factory, configuration: configuration, logger: logger)
    }

    private func run(against server: RedisServerProcess) async throws -> ChaosReport {
        let pool: ChaosPool
        do {
            pool = try makePool(port: server.port)
        } catch {
            throw ChaosError.setup("cannot make the pool: \(error)")
        }
        let admin = AdminLink(port: server.port, commandTimeout: options.debugSleep + .seconds(5))
        do {
            try await admin.reconnect()
            try await pool.warm()
        } catch {
            await pool.shutdown(gracePeriod: .seconds(1))
            await admin.close()
            throw ChaosError.setup("cannot reach the server: \(error)")
        }
        say("chaos: redis-server pid \(server.pid) on port \(server.port); pool \(options.poolSize), \(options.concurrency) tasks, \(options.duration)")

        let runStart = ContinuousClock.now
        let limit = options.acquireTimeout + options.acquireSlack
        let recorder = LoadRecorder(start: runStart, limit: limit)
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<self.options.concurrency {
                    group.addTask { await self.work(worker: worker, pool: pool, recorder: recorder) }
                }
            }
        }
        let worker = BlockingWorker()
        let faults = Task {
            await self.injectFaults(server: server, admin: admin, worker: worker, recorder: recorder, runStart: runStart)
        }

        try? await Task.sleep(until: runStart + options.duration, clock: .continuous)
        var records = await faults.value
        worker.stop()
        // Every fault needs a success after it: keep the load on a little longer if one has none yet.
        let graceEnd = ContinuousClock.now + options.recoveryGrace
        while recorder.hasPendingRecoveries, ContinuousClock.now < graceEnd {
            try? await Task.sleep(for: .milliseconds(10))
        }
        recorder.stopFlag.store(true, ordering: .relaxed)
        await load.value
        let elapsed = ContinuousClock.now - runStart
        let afterLoad = pool.metrics()
        say("chaos: load stopped after \(ChaosReport.fixed(elapsed.seconds)) s; shutting the pool down")

        let shutdownReport = await pool.shutdown(gracePeriod: options.shutdownGracePeriod)
        let afterShutdown = pool.metrics()
        let serverClients = await countServerClients(admin: admin, until: .seconds(3))
        await admin.close()

        var report = ChaosReport()
        report.requests = recorder.requests.load(ordering: .relaxed)
        report.succeeded = recorder.successes.load(ordering: .relaxed)
        report.failed = recorder.failures.withLock { $0 }
        report.maxAcquireWaitMs = Double(recorder.maxWaitNanos.load(ordering: .relaxed)) / 1e6
        report.acquireTimeoutMs = options.acquireTimeout.milliseconds
        report.acquireSlackMs = options.acquireSlack.milliseconds
        report.acquiresPastLimit = recorder.pastLimit.load(ordering: .relaxed)
        report.slowAcquires = recorder.slowAcquires.withLock { $0 }
        let recoveries = recorder.recoveries.withLock { $0 }
        for index in records.indices {
            records[index].recoveryMs = recoveries[index].map { Double($0) / 1e6 }
        }
        report.faults = records
        report.leasesHeldAfter = afterLoad.inUse
        report.waitersAfter = afterLoad.waiting
        report.poolConnectionsAfterShutdown = afterShutdown.total
        report.serverClientsAfterShutdown = serverClients ?? -1
        report.connectionsOpenAfterShutdown = max(afterShutdown.total, serverClients ?? 0)
        report.shutdown = shutdownReport
        report.poolCreated = afterShutdown.created
        report.poolCreationFailures = afterShutdown.creationFailures
        report.poolAcquireTimeouts = afterShutdown.acquireTimeouts
        report.poolFailedFast = afterShutdown.failedFast
        report.poolClosedByReason = Dictionary(
            uniqueKeysWithValues: afterShutdown.closedByReason.map { ($0.key.rawValue, $0.value) })
        report.elapsedSeconds = elapsed.seconds
        report.poolSize = options.poolSize
        report.concurrency = options.concurrency
        report.checkInvariants()
        if serverClients == nil {
            report.violations.append("could not count the server's clients after shutdown (CLIENT LIST failed)")
        }
        return report
    }

    // MARK: Load

    /// One load task: acquire, one command (60 % GET, 30 % SET of 16 B to 1 KiB, 10 % INCR), release,
    /// until told to stop. Every acquire's duration is recorded, successful or not.
    private func work(worker: Int, pool: ChaosPool, recorder: LoadRecorder) async {
        var random = SplitMix64(seed: options.seed &+ UInt64(worker) &* 0x9E37_79B9)
        let values: [[UInt8]] = [16, 128, 1024].map { [UInt8](repeating: UInt8(ascii: "v"), count: $0) }
        let counter = "chaos:counter:\(worker)"
        while !recorder.stopFlag.load(ordering: .relaxed) {
            recorder.requests.add(1, ordering: .relaxed)
            let roll = random.next() % 100
            let key = "chaos:key:\(random.next() % UInt64(options.keySpace))"
            let began = ContinuousClock.now
            var acquired = false
            do {
                let lease = try await pool.acquire()
                acquired = true
                recorder.acquireFinished(began: began, at: ContinuousClock.now, outcome: "ok")
                if roll < 60 {
                    _ = try await lease.connection.command("GET", key)
                } else if roll < 90 {
                    _ = try await lease.connection.command("SET", key, values[Int(random.next() % 3)])
                } else {
                    _ = try await lease.connection.command("INCR", counter)
                }
            } catch {
                let category = Self.category(of: error)
                if !acquired { recorder.acquireFinished(began: began, at: ContinuousClock.now, outcome: category) }
                recorder.failed(category)
                try? await Task.sleep(for: options.errorBackoff)
                continue
            }
            recorder.succeeded(at: ContinuousClock.now)
        }
    }

    /// A short name for an error: its type and enum case (`RedisError.timeout`), or code
    /// (`ConnectionPoolError.acquireTimeout`).
    public static func category(of error: any Error) -> String {
        if let redis = error as? RedisError {
            switch redis {
            case .connectionClosed: return "RedisError.connectionClosed"
            case .cancelled: return "RedisError.cancelled"
            case .connectionClosedLocally: return "RedisError.connectionClosedLocally"
            case .concurrentUse: return "RedisError.concurrentUse"
            default: break
            }
        }
        if let poolError = error as? ConnectionPoolError { return "ConnectionPoolError.\(poolError.code)" }
        let typeName = String(describing: type(of: error))
        let mirror = Mirror(reflecting: error)
        if mirror.displayStyle == .enum, let label = mirror.children.first?.label {
            return "\(typeName).\(label)"
        }
        return typeName
    }

    // MARK: Faults

    private func injectFaults(
        server: RedisServerProcess, admin: AdminLink, worker: BlockingWorker, recorder: LoadRecorder,
        runStart: ContinuousClock.Instant
    ) async -> [FaultRecord] {
        var records: [FaultRecord] = []
        guard !options.faults.isEmpty else { return records }
        let lastStart = runStart + options.duration - options.quietTail
        var next = runStart + options.firstFaultAt
        while next <= lastStart {
            try? await Task.sleep(until: next, clock: .continuous)
            let kind = options.faults[records.count % options.faults.count]
            let began = ContinuousClock.now
            var detail = ""
            var failure: String?
            do {
                detail = try await inject(kind, server: server, admin: admin, worker: worker)
            } catch {
                failure = "\(error)"
            }
            let ended = ContinuousClock.now
            if failure == nil { recorder.faultEnded(index: records.count, at: ended) }
            let record = FaultRecord(
                kind: kind, time: (began - runStart).seconds, durationMs: (ended - began).milliseconds,
                recoveryMs: nil, detail: detail, error: failure)
            say(
                "chaos: t=\(ChaosReport.fixed(record.time, 2)) s \(kind.rawValue) (\(ChaosReport.fixed(record.durationMs)) ms)"
                    + (detail.isEmpty ? "" : " \(detail)") + (failure.map { " FAILED: \($0)" } ?? ""))
            records.append(record)
            next = max(next + options.faultInterval, ended + .milliseconds(100))
        }
        return records
    }

    /// Injects one fault and returns once it is over (the server is up and running again).
    private func inject(
        _ kind: FaultKind, server: RedisServerProcess, admin: AdminLink, worker: BlockingWorker
    ) async throws -> String {
        switch kind {
        case .kill:
            let before = server.pid
            try await worker.run {
                try server.kill(signal: SIGKILL)
                try server.restart(timeout: .seconds(10))
            }
            return "pid \(before) -> \(server.pid)"
        case .stop:
            try await worker.run { try server.kill(signal: SIGSTOP) }
            try? await Task.sleep(for: options.stopPause)
            try await worker.run { try server.kill(signal: SIGCONT) }
            return "stopped \(ChaosReport.fixed(options.stopPause.milliseconds, 0)) ms"
        case .clientKill:
            let killed = try await admin.command(["CLIENT", "KILL", "TYPE", "normal"]).int
            return "killed \(killed) clients"
        case .debugSleep:
            let seconds = ChaosReport.fixed(options.debugSleep.seconds, 3)
            _ = try await admin.command(["DEBUG", "SLEEP", .string(seconds)])
            return "slept \(seconds) s"
        }
    }

    /// The server's clients other than the admin connection, polled until none is left or `until`
    /// passes (the server notices closed sockets on its next event loop turn). `nil` when CLIENT LIST
    /// fails.
    private func countServerClients(admin: AdminLink, until timeout: Duration) async -> Int? {
        let deadline = ContinuousClock.now + timeout
        var last: Int?
        while true {
            if let list = try? await admin.command(["CLIENT", "LIST"]).string {
                let clients = list.split(separator: "\n").filter { line in
                    !line.isEmpty && !line.contains(" name=\(Self.adminClientName) ")
                }
                last = clients.count
                if clients.isEmpty { return 0 }
            }
            if ContinuousClock.now >= deadline { return last }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// What the load tasks record, read by the engine at the end. Atomics and pthread-locked values
/// only, so the class is `Sendable` as it stands.
final class LoadRecorder: Sendable {
    let start: ContinuousClock.Instant
    let limitNanos: Int64
    let stopFlag = Atomic<Bool>(false)
    let requests = Atomic<Int>(0)
    let successes = Atomic<Int>(0)
    let maxWaitNanos = Atomic<Int64>(0)
    let pastLimit = Atomic<Int>(0)
    let failures = LockedValue<[String: Int]>([:])
    /// Acquires that took longer than the limit (the first 100).
    let slowAcquires = LockedValue<[SlowAcquire]>([])
    /// Faults that ended and wait for their first success: (index, end in ns since start).
    private let pending = LockedValue<[(index: Int, end: Int64)]>([])
    private let pendingCount = Atomic<Int>(0)
    /// Recovery time in ns, by fault index.
    let recoveries = LockedValue<[Int: Int64]>([:])

    init(start: ContinuousClock.Instant, limit: Duration) {
        self.start = start
        limitNanos = limit.nanoseconds
    }

    var hasPendingRecoveries: Bool { pendingCount.load(ordering: .acquiring) > 0 }

    /// Records one acquire's duration; one past the limit is also kept as an event (the first 100).
    func acquireFinished(began: ContinuousClock.Instant, at ended: ContinuousClock.Instant, outcome: String) {
        let nanos = (ended - began).nanoseconds
        var current = maxWaitNanos.load(ordering: .relaxed)
        while nanos > current {
            let (exchanged, original) = maxWaitNanos.compareExchange(
                expected: current, desired: nanos, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        if nanos > limitNanos {
            pastLimit.add(1, ordering: .relaxed)
            let event = SlowAcquire(
                startedAt: (began - start).seconds, waitMs: Double(nanos) / 1e6, outcome: outcome)
            slowAcquires.withLock { if $0.count < 100 { $0.append(event) } }
        }
    }

    func failed(_ category: String) {
        failures.withLock { $0[category, default: 0] += 1 }
    }

    func succeeded(at instant: ContinuousClock.Instant) {
        successes.add(1, ordering: .relaxed)
        guard pendingCount.load(ordering: .acquiring) > 0 else { return }
        let now = (instant - start).nanoseconds
        let recovered = pending.withLock { pending -> [(Int, Int64)] in
            var recovered: [(Int, Int64)] = []
            pending.removeAll { entry in
                guard entry.end <= now else { return false }
                recovered.append((entry.index, now - entry.end))
                return true
            }
            pendingCount.store(pending.count, ordering: .releasing)
            return recovered
        }
        if !recovered.isEmpty {
            recoveries.withLock { for (index, nanos) in recovered { $0[index] = nanos } }
        }
    }

    func faultEnded(index: Int, at instant: ContinuousClock.Instant) {
        let end = (instant - start).nanoseconds
        pending.withLock {
            $0.append((index, end))
            pendingCount.store($0.count, ordering: .releasing)
        }
    }
}

/// The engine's own connection to the server, for CLIENT KILL, DEBUG SLEEP and CLIENT LIST. It is
/// opened again when a fault (a restart) broke it.
final class AdminLink: Sendable {
    private let configuration: RedisConnectionConfiguration
    private let connection = LockedValue<RedisConnection?>(nil)

    init(port: Int, commandTimeout: Duration) {
        // Port and timeouts come from a started server and positive options: always valid.
        var configuration = try! RedisConnectionConfiguration(port: port)
        configuration.commandTimeout = commandTimeout
        configuration.connectTimeout = .seconds(2)
        configuration.clientName = ChaosEngine.adminClientName
        self.configuration = configuration
    }

    /// Closes the current connection, if any, and opens a new one.
    func reconnect() async throws {
        let old = connection.withLock { value -> RedisConnection? in
            defer { value = nil }
            return value
        }
        await old?.close()
        let new = try await RedisConnection.connect(configuration: configuration)
        connection.withLock { $0 = new }
    }

    /// Sends `arguments`; on a connection error (the server was restarted since), reconnects and
    /// sends them once more.
    func command(_ arguments: [RedisArgument]) async throws -> RedisReply {
        if let current = connection.withLock({ $0 }), !current.isBroken {
            do {
                return try await current.command(arguments)
            } catch let error as RedisError where error.isConnectionError && !error.isTimeout {
                // Fall through: reconnect and retry once.
            }
        }
        try await reconnect()
        guard let current = connection.withLock({ $0 }) else { throw RedisError.connectionClosedLocally }
        return try await current.command(arguments)
    }

    func close() async {
        let old = connection.withLock { value -> RedisConnection? in
            defer { value = nil }
            return value
        }
        await old?.close()
    }
}

extension Duration {
    /// The duration in whole nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return whole &+ attoseconds / 1_000_000_000
    }
}
