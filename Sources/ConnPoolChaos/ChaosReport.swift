public import ConnPool

/// One injected fault and how the pool came back from it.
public struct FaultRecord: Sendable, Hashable, Codable {
    /// What was done.
    public var kind: FaultKind
    /// When the fault started, in seconds since the run started.
    public var time: Double
    /// How long the fault itself lasted, in milliseconds (kill to restarted, SIGSTOP to SIGCONT, the
    /// round trip of CLIENT KILL or DEBUG SLEEP).
    public var durationMs: Double
    /// Time from the fault's end until the next successful request completed, in milliseconds;
    /// `nil` when no request succeeded after it (an invariant violation).
    public var recoveryMs: Double?
    /// A detail: clients killed by CLIENT KILL, the new pid after a restart.
    public var detail: String
    /// Why the fault could not be injected, if it could not (the run then fails).
    public var error: String?

    /// A record with every field given.
    public init(kind: FaultKind, time: Double, durationMs: Double, recoveryMs: Double?, detail: String, error: String?) {
        self.kind = kind
        self.time = time
        self.durationMs = durationMs
        self.recoveryMs = recoveryMs
        self.detail = detail
        self.error = error
    }
}

/// An acquire that took longer than the acquire timeout plus the slack.
public struct SlowAcquire: Sendable, Hashable, Codable {
    /// When it started, in seconds since the run started.
    public var startedAt: Double
    /// How long it took, in milliseconds.
    public var waitMs: Double
    /// `ok` when it got a connection, else the error's category.
    public var outcome: String

    /// A record with every field given.
    public init(startedAt: Double, waitMs: Double, outcome: String) {
        self.startedAt = startedAt
        self.waitMs = waitMs
        self.outcome = outcome
    }
}

/// What a chaos run measured, and which invariants it broke.
public struct ChaosReport: Sendable, Codable {
    /// Requests attempted (acquire plus command).
    public var requests = 0
    /// Requests that got their reply.
    public var succeeded = 0
    /// Failed requests by error type (`ConnectionPoolError.acquireTimeout`, `RedisError.timeout`, …).
    public var failed: [String: Int] = [:]
    /// The longest any acquire took (successful or not), in milliseconds.
    public var maxAcquireWaitMs = 0.0
    /// The pool's acquire timeout, in milliseconds.
    public var acquireTimeoutMs = 0.0
    /// The slack allowed on top of it, in milliseconds.
    public var acquireSlackMs = 0.0
    /// Acquires that took longer than the timeout plus the slack.
    public var acquiresPastLimit = 0
    /// The first 100 of them: when they started, how long they took, how they ended.
    public var slowAcquires: [SlowAcquire] = []
    /// Every fault, in order.
    public var faults: [FaultRecord] = []
    /// Leases still held (`inUse`) once every load task had finished, before shutdown.
    public var leasesHeldAfter = 0
    /// Callers still waiting once every load task had finished.
    public var waitersAfter = 0
    /// Connections still open after `shutdown()`: the larger of the pool's own count (`total` in its
    /// metrics) and the server's count (CLIENT LIST minus the admin connection).
    public var connectionsOpenAfterShutdown = 0
    /// The pool's `total` after `shutdown()`.
    public var poolConnectionsAfterShutdown = 0
    /// The server's clients after `shutdown()`, the admin connection excluded.
    public var serverClientsAfterShutdown = 0
    /// What `shutdown()` reported.
    public var shutdown = ShutdownReport()
    /// The pool's metrics after shutdown (counters since the start).
    public var poolCreated = 0
    /// Connections closed by the pool, by reason.
    public var poolClosedByReason: [String: Int] = [:]
    /// Failed connection attempts.
    public var poolCreationFailures = 0
    /// Acquires the pool timed out.
    public var poolAcquireTimeouts = 0
    /// Acquires failed fast by the circuit breaker.
    public var poolFailedFast = 0
    /// Seconds the load ran (the duration plus any recovery grace used).
    public var elapsedSeconds = 0.0
    /// The options' main figures, for the record.
    public var poolSize = 0
    /// Load tasks.
    public var concurrency = 0
    /// Invariants broken; empty when the run passed.
    public var violations: [String] = []

    /// `true` when no invariant was broken.
    public var passed: Bool { violations.isEmpty }

    /// Creates an empty report.
    public init() {}

    /// Checks the invariants and fills ``violations``.
    mutating func checkInvariants() {
        violations = []
        if acquiresPastLimit > 0 || maxAcquireWaitMs > acquireTimeoutMs + acquireSlackMs {
            violations.append(
                "\(acquiresPastLimit) acquire(s) waited past the timeout + slack "
                    + "(max \(Self.fixed(maxAcquireWaitMs)) ms > \(Self.fixed(acquireTimeoutMs)) + \(Self.fixed(acquireSlackMs)) ms)")
        }
        if leasesHeldAfter != 0 { violations.append("\(leasesHeldAfter) lease(s) still held after the load stopped") }
        if waitersAfter != 0 { violations.append("\(waitersAfter) caller(s) still waiting after the load stopped") }
        if connectionsOpenAfterShutdown != 0 {
            violations.append(
                "\(connectionsOpenAfterShutdown) connection(s) open after shutdown "
                    + "(pool: \(poolConnectionsAfterShutdown), server: \(serverClientsAfterShutdown))")
        }
        for fault in faults {
            if let error = fault.error {
                violations.append("fault \(fault.kind.rawValue) at \(Self.fixed(fault.time)) s could not be injected: \(error)")
            } else if fault.recoveryMs == nil {
                violations.append("no request succeeded after the \(fault.kind.rawValue) fault at \(Self.fixed(fault.time)) s")
            }
        }
        if succeeded == 0 { violations.append("no request succeeded at all") }
    }

    // MARK: Output

    /// The report as a JSON object (keys in snake case: `requests`, `succeeded`, `failed`,
    /// `max_acquire_wait_ms`, `acquire_timeout_ms`, `faults` with `kind`/`time`/`recovery_ms`,
    /// `leases_held_after`, `connections_open_after_shutdown`, …).
    public func json() -> String {
        var out = JSONWriter()
        out.object {
            $0.field("passed", passed)
            $0.field("requests", requests)
            $0.field("succeeded", succeeded)
            $0.field("failed", failed)
            $0.field("max_acquire_wait_ms", maxAcquireWaitMs)
            $0.field("acquire_timeout_ms", acquireTimeoutMs)
            $0.field("acquire_slack_ms", acquireSlackMs)
            $0.field("acquires_past_limit", acquiresPastLimit)
            $0.array("slow_acquires", slowAcquires) { writer, slow in
                writer.object {
                    $0.field("started_at", slow.startedAt)
                    $0.field("wait_ms", slow.waitMs)
                    $0.field("outcome", slow.outcome)
                }
            }
            $0.array("faults", faults) { writer, fault in
                writer.object {
                    $0.field("kind", fault.kind.rawValue)
                    $0.field("time", fault.time)
                    $0.field("duration_ms", fault.durationMs)
                    $0.field("recovery_ms", fault.recoveryMs)
                    $0.field("detail", fault.detail)
                    if let error = fault.error { $0.field("error", error) }
                }
            }
            $0.field("leases_held_after", leasesHeldAfter)
            $0.field("waiters_after", waitersAfter)
            $0.field("connections_open_after_shutdown", connectionsOpenAfterShutdown)
            $0.field("pool_connections_after_shutdown", poolConnectionsAfterShutdown)
            $0.field("server_clients_after_shutdown", serverClientsAfterShutdown)
            $0.key("shutdown")
            $0.writer.object {
                $0.field("closed_idle", shutdown.closedIdle)
                $0.field("closed_on_return", shutdown.closedOnReturn)
                $0.field("force_closed", shutdown.forceClosed)
                $0.field("still_in_flight", shutdown.stillInFlight)
                $0.field("failed_waiters", shutdown.failedWaiters)
            }
            $0.key("pool")
            $0.writer.object {
                $0.field("created", poolCreated)
                $0.field("creation_failures", poolCreationFailures)
                $0.field("acquire_timeouts", poolAcquireTimeouts)
                $0.field("failed_fast", poolFailedFast)
                $0.field("closed_by_reason", poolClosedByReason)
            }
            $0.field("elapsed_s", elapsedSeconds)
            $0.field("pool_size", poolSize)
            $0.field("concurrency", concurrency)
            $0.field("violations", violations)
        }
        return out.text
    }

    /// A few lines for people.
    public func summary() -> String {
        var lines: [String] = []
        let rate = elapsedSeconds > 0 ? Double(succeeded) / elapsedSeconds : 0
        lines.append(
            "chaos: \(requests) requests in \(Self.fixed(elapsedSeconds)) s (pool \(poolSize), \(concurrency) tasks): "
                + "\(succeeded) succeeded (\(Self.fixed(rate, 0))/s), \(requests - succeeded) failed")
        for (name, count) in failed.sorted(by: { $0.value > $1.value }) {
            lines.append("  failed \(count) × \(name)")
        }
        lines.append(
            "acquire: max wait \(Self.fixed(maxAcquireWaitMs)) ms (timeout \(Self.fixed(acquireTimeoutMs)) ms + slack "
                + "\(Self.fixed(acquireSlackMs)) ms), \(acquiresPastLimit) past the limit")
        for slow in slowAcquires.prefix(10) {
            lines.append("  slow acquire at t=\(Self.fixed(slow.startedAt, 2)) s: \(Self.fixed(slow.waitMs)) ms, \(slow.outcome)")
        }
        lines.append("faults:")
        for fault in faults {
            let recovery = fault.recoveryMs.map { "\(Self.fixed($0)) ms" } ?? "NONE"
            var line = "  t=\(Self.fixed(fault.time, 2)) s \(fault.kind.rawValue): lasted \(Self.fixed(fault.durationMs)) ms, "
                + "recovered in \(recovery)"
            if !fault.detail.isEmpty { line += " (\(fault.detail))" }
            if let error = fault.error { line += " ERROR: \(error)" }
            lines.append(line)
        }
        lines.append(
            "after: \(leasesHeldAfter) leases held, \(waitersAfter) waiters; after shutdown: "
                + "\(poolConnectionsAfterShutdown) pool connections, \(serverClientsAfterShutdown) server clients; \(shutdown)")
        lines.append(passed ? "PASS: every invariant held" : "FAIL:\n  " + violations.joined(separator: "\n  "))
        return lines.joined(separator: "\n")
    }

    static func fixed(_ value: Double, _ places: Int = 1) -> String {
        guard value.isFinite else { return "\(value)" }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let integer = UInt64(scaled)
        let divisor = UInt64(scale)
        var text = (value < 0 && scaled > 0 ? "-" : "") + String(integer / divisor)
        if places > 0 {
            let fraction = String(integer % divisor)
            text += "." + String(repeating: "0", count: places - fraction.count) + fraction
        }
        return text
    }
}

/// A minimal JSON writer (no Foundation): objects, arrays, strings, numbers, booleans and null.
struct JSONWriter {
    private(set) var text = ""
    private var needsComma = [false]

    mutating func object(_ body: (inout ObjectWriter) -> Void) {
        separate()
        text += "{"
        needsComma.append(false)
        var writer = ObjectWriter(writer: self)
        body(&writer)
        self = writer.writer
        needsComma.removeLast()
        text += "}"
    }

    mutating func value(_ raw: String) {
        separate()
        text += raw
    }

    mutating func beginArray() {
        separate()
        text += "["
        needsComma.append(false)
    }

    mutating func endArray() {
        needsComma.removeLast()
        text += "]"
    }

    /// Marks that the next value is a key's value (no comma before it).
    mutating func afterKey() {
        needsComma[needsComma.count - 1] = false
    }

    private mutating func separate() {
        if needsComma[needsComma.count - 1] { text += "," }
        needsComma[needsComma.count - 1] = true
    }

    static func quote(_ string: String) -> String {
        var out = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func number(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        return ChaosReport.fixed(value, 3)
    }

    /// Writes the fields of one object.
    struct ObjectWriter {
        var writer: JSONWriter

        mutating func key(_ name: String) {
            writer.value(JSONWriter.quote(name) + ":")
            writer.afterKey()
        }

        mutating func field(_ name: String, _ value: Int) {
            key(name)
            writer.value(String(value))
        }

        mutating func field(_ name: String, _ value: Double) {
            key(name)
            writer.value(JSONWriter.number(value))
        }

        mutating func field(_ name: String, _ value: Double?) {
            key(name)
            writer.value(value.map(JSONWriter.number) ?? "null")
        }

        mutating func field(_ name: String, _ value: Bool) {
            key(name)
            writer.value(value ? "true" : "false")
        }

        mutating func field(_ name: String, _ value: String) {
            key(name)
            writer.value(JSONWriter.quote(value))
        }

        mutating func field(_ name: String, _ value: [String]) {
            key(name)
            writer.beginArray()
            for item in value { writer.value(JSONWriter.quote(item)) }
            writer.endArray()
        }

        mutating func field(_ name: String, _ value: [String: Int]) {
            key(name)
            writer.object { object in
                for (itemKey, count) in value.sorted(by: { $0.key < $1.key }) { object.field(itemKey, count) }
            }
        }

        mutating func array<Element>(_ name: String, _ items: [Element], _ body: (inout JSONWriter, Element) -> Void) {
            key(name)
            writer.beginArray()
            for item in items { body(&writer, item) }
            writer.endArray()
        }
    }
}
