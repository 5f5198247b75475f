import ArgumentParser
import ConnPoolChaos
import RedisServerLauncher

#if canImport(Glibc)
import Glibc
#endif

/// `redis-bench chaos`: a load through the pool against a throwaway redis-server while faults are
/// injected (SIGKILL + restart, SIGSTOP/SIGCONT, CLIENT KILL, DEBUG SLEEP); checks that no acquire
/// waits past its timeout, every lease comes back, nothing stays open after shutdown, and requests
/// succeed again after each fault. Exits 1 when an invariant fails. The engine is ``ChaosEngine``
/// (library `ConnPoolChaos`, shared with the ChaosTests).
struct ChaosCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "Run a load with injected server faults and check the pool's invariants.",
        discussion: """
            Starts its own redis-server (with --enable-debug-command local) on a free loopback port. \
            Faults start at --first-fault and follow every --fault-interval seconds, one kind after \
            another. Exit status 1 when an invariant fails: an acquire waited past --acquire-timeout-ms \
            + --slack-ms, a lease was still held after the load, a connection was open after \
            shutdown(), or no request succeeded after a fault.
            """
    )

    @Option(help: "Seconds of load (faults are injected during it).")
    var duration: Double = 30

    @Option(help: "Pool maxSize.")
    var poolSize: Int = 8

    @Option(help: "Pool minSize.")
    var minSize: Int = 2

    @Option(help: "Concurrent load tasks.")
    var concurrency: Int = 16

    @Option(help: "Pool acquire timeout in milliseconds.")
    var acquireTimeoutMs: Int = 1000

    @Option(help: "Per-command timeout in milliseconds.")
    var commandTimeoutMs: Int = 500

    @Option(help: "Connect (and handshake) timeout in milliseconds.")
    var connectTimeoutMs: Int = 500

    @Option(help: "Faults to inject in turn: comma list of kill, stop, client-kill, debug-sleep, or all.")
    var faults: String = "all"

    @Option(help: "Seconds from one fault's start to the next one's.")
    var faultInterval: Double = 3

    @Option(help: "Seconds before the first fault.")
    var firstFault: Double = 1

    @Option(help: "Milliseconds a SIGSTOP lasts before SIGCONT.")
    var stopPauseMs: Int = 1500

    @Option(help: "Milliseconds of each DEBUG SLEEP.")
    var debugSleepMs: Int = 1000

    @Option(help: "Milliseconds an acquire may exceed its timeout before it counts as a violation.")
    var slackMs: Int = 250

    @Option(help: "Seconds the load may go on past --duration while a fault still waits for a success.")
    var recoveryGrace: Double = 10

    @Option(help: "Pool circuitBreakerThreshold (0: never fail fast).")
    var breakerThreshold: Int = 5

    @Flag(help: "Turn on the pool's validateOnAcquire (zero bypass window).")
    var validateOnAcquire = false

    @Option(help: "Seed of the load's command and value-size choices.")
    var seed: UInt64 = 1

    @Option(help: "Write the report as JSON to this file.")
    var json: String?

    @Flag(help: "Print only the summary: no line per fault, and only the pool's error logs.")
    var quiet = false

    @Flag(help: "Run against a throwaway Redis Cluster (3 primaries with a replica each) through RedisClusterClient: primaries killed and restarted, frozen, slots migrated; the JSON adds failovers and redirects.")
    var cluster = false

    func validate() throws {
        if !(duration > 0) { throw ValidationError("--duration must be positive") }
        if !(faultInterval > 0) { throw ValidationError("--fault-interval must be positive") }
        if !(firstFault >= 0) || !(recoveryGrace >= 0) { throw ValidationError("--first-fault and --recovery-grace must not be negative") }
        if FaultKind.parseList(faults) == nil {
            throw ValidationError("--faults: use a comma list of kill, stop, client-kill, debug-sleep, or all")
        }
        if let problem = options().problem() { throw ValidationError(problem) }
    }

    func options() -> ChaosOptions {
        var options = ChaosOptions()
        options.duration = .milliseconds(Int64(duration * 1000))
        options.poolSize = poolSize
        options.minSize = minSize
        options.concurrency = concurrency
        options.acquireTimeout = .milliseconds(acquireTimeoutMs)
        options.commandTimeout = .milliseconds(commandTimeoutMs)
        options.connectTimeout = .milliseconds(connectTimeoutMs)
        options.faults = FaultKind.parseList(faults) ?? FaultKind.allCases
        options.faultInterval = .milliseconds(Int64(faultInterval * 1000))
        options.firstFaultAt = .milliseconds(Int64(firstFault * 1000))
        options.stopPause = .milliseconds(stopPauseMs)
        options.debugSleep = .milliseconds(debugSleepMs)
        options.acquireSlack = .milliseconds(slackMs)
        options.recoveryGrace = .milliseconds(Int64(recoveryGrace * 1000))
        options.circuitBreakerThreshold = breakerThreshold > 0 ? breakerThreshold : nil
        options.validateOnAcquire = validateOnAcquire
        options.seed = seed
        options.verbose = !quiet
        return options
    }

    func run() async throws {
        // Ctrl-C, SIGTERM and SIGHUP stop the engine's redis-servers and exit with 128 + signal.
        try RedisServerProcess.stopAllAndExitOnSignals([SIGINT, SIGTERM, SIGHUP])
        if cluster { return try await ClusterChaos(command: self).run() }
        let engine = ChaosEngine(options: options()) { line in
            var text = line + "\n"
            text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        let report = try await engine.run()
        print(report.summary())
        if let json {
            try writeTextFile(json, report.json())
            print("chaos: report written to \(json)")
        }
        if !report.passed { throw ExitCode(1) }
    }
}
