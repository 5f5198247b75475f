/// A fault the chaos engine injects into its throwaway `redis-server`.
public enum FaultKind: String, Sendable, Hashable, CaseIterable, Codable {
    /// `SIGKILL` the server (a crash), then start it again on the same port. The fault ends when the
    /// new process answers PING.
    case kill
    /// `SIGSTOP` the server (a hang: the kernel still accepts connections, nothing answers), wait
    /// ``ChaosOptions/stopPause``, then `SIGCONT`. The fault ends at `SIGCONT`.
    case stop
    /// `CLIENT KILL TYPE normal` from the admin connection: the server drops every pooled client at
    /// once (the admin connection is spared: `SKIPME yes` is the default). The fault ends with the reply.
    case clientKill = "client-kill"
    /// `DEBUG SLEEP` from the admin connection: the server's event loop stalls for
    /// ``ChaosOptions/debugSleep``. The fault ends when the reply comes back (the server woke up).
    case debugSleep = "debug-sleep"

    /// Parses a comma-separated list such as `kill,stop,client-kill,debug-sleep` (also `all`).
    ///
    /// - Returns: the kinds in the order given, or `nil` when a name is unknown or the list is empty.
    public static func parseList(_ text: String) -> [FaultKind]? {
        var kinds: [FaultKind] = []
        for part in text.split(separator: ",") {
            let name = part.trimmingASCIISpaces()
            if name == "all" {
                kinds.append(contentsOf: allCases)
            } else if let kind = FaultKind(rawValue: name) {
                kinds.append(kind)
            } else {
                return nil
            }
        }
        return kinds.isEmpty ? nil : kinds
    }
}

extension Substring {
    fileprivate func trimmingASCIISpaces() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

/// What a chaos run does: the load, the pool, the fault schedule and the invariant limits.
///
/// The defaults make a 30 s run with a fault every 3 s (each kind in turn) against a pool of 8
/// connections driven by 16 tasks.
public struct ChaosOptions: Sendable, Hashable {
    /// How long the load runs (faults are injected during it). Default 30 s.
    public var duration: Duration = .seconds(30)
    /// The pool's `maxSize`. Default 8.
    public var poolSize: Int = 8
    /// The pool's `minSize`. Default 2.
    public var minSize: Int = 2
    /// How many tasks send requests at once. Default 16 (twice the pool, so acquires wait).
    public var concurrency: Int = 16
    /// The pool's `acquireTimeout`. Default 1 s.
    public var acquireTimeout: Duration = .seconds(1)
    /// Each pooled command's timeout (``ConnPoolRedis/RedisConnectionConfiguration/commandTimeout``).
    /// Default 500 ms.
    public var commandTimeout: Duration = .milliseconds(500)
    /// The pooled connections' connect timeout (connect plus handshake). Default 500 ms.
    public var connectTimeout: Duration = .milliseconds(500)
    /// The faults to inject, in turn (cycled). Default: every kind.
    public var faults: [FaultKind] = FaultKind.allCases
    /// Time from one fault's start to the next one's (a fault never starts before the previous one
    /// ended). Default 3 s.
    public var faultInterval: Duration = .seconds(3)
    /// When the first fault starts. Default 1 s (the pool has warmed up and the load is running).
    public var firstFaultAt: Duration = .seconds(1)
    /// No fault starts later than this before the end of ``duration`` (time left to see recovery).
    /// Default 1.5 s.
    public var quietTail: Duration = .milliseconds(1500)
    /// How long a `SIGSTOP` lasts. Default 1.5 s (longer than the command and acquire timeouts).
    public var stopPause: Duration = .milliseconds(1500)
    /// How long a `DEBUG SLEEP` stalls the server. Default 1 s.
    public var debugSleep: Duration = .seconds(1)
    /// An acquire may take at most ``acquireTimeout`` plus this before it counts as a violation
    /// (scheduling latency on a loaded machine). Default 250 ms.
    public var acquireSlack: Duration = .milliseconds(250)
    /// After ``duration``, the load goes on for at most this long while a fault still waits for its
    /// first success. Default 10 s.
    public var recoveryGrace: Duration = .seconds(10)
    /// The pool's `circuitBreakerThreshold` (`nil`: never fail fast). Default 5.
    public var circuitBreakerThreshold: Int? = 5
    /// The pool's `validateOnAcquire` (with a zero bypass window when on). Default `false`.
    public var validateOnAcquire: Bool = false
    /// The pool's maintenance interval (health checks every two rounds). Default 1 s.
    public var maintenanceInterval: Duration = .seconds(1)
    /// How long shutdown lets leases come back. Default 5 s.
    public var shutdownGracePeriod: Duration = .seconds(5)
    /// A worker whose request failed waits this long before the next one, so that fail-fast errors
    /// do not spin the CPU. Default 5 ms.
    public var errorBackoff: Duration = .milliseconds(5)
    /// How many keys the load spreads over. Default 1,000.
    public var keySpace: Int = 1000
    /// Seeds the load's choice of commands and value sizes (the fault schedule is fixed). Default 1.
    public var seed: UInt64 = 1
    /// Print a line per fault (through the progress callback). Default `true`.
    public var verbose: Bool = true

    /// The defaults.
    public init() {}

    /// Checks the options; returns a description of the first problem.
    public func problem() -> String? {
        if duration <= .zero { return "duration must be positive" }
        if poolSize < 1 { return "pool size must be at least 1" }
        if minSize < 0 || minSize > poolSize { return "min size must be between 0 and the pool size" }
        if concurrency < 1 { return "concurrency must be at least 1" }
        if acquireTimeout <= .zero { return "acquire timeout must be positive" }
        if commandTimeout <= .zero { return "command timeout must be positive" }
        if connectTimeout <= .zero { return "connect timeout must be positive" }
        if faultInterval <= .zero { return "fault interval must be positive" }
        if stopPause <= .zero || debugSleep <= .zero { return "stop pause and debug sleep must be positive" }
        if acquireSlack < .zero || recoveryGrace < .zero { return "slack and recovery grace must not be negative" }
        if let circuitBreakerThreshold, circuitBreakerThreshold < 1 { return "breaker threshold must be at least 1" }
        if keySpace < 1 { return "key space must be at least 1" }
        return nil
    }
}
