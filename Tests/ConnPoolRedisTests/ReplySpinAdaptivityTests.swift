import ConnPoolIO
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Testing

/// A `RedisConnection`'s reply spin adapts to its server (a real redis-server): it stops when every
/// reply takes 300 µs (`DEBUG SLEEP`), keeps spinning on loopback, and `.disabled` turns it off.
///
/// A connection spins only while no other socket operation is under way in the process, and the tests
/// of this process run in parallel, so these tests repeat requests (with `eventually`) until enough of
/// them ran alone, instead of expecting every request to spin.
@Suite("RedisConnection: ReplySpin adaptivity", .serialized, .processExclusive)
struct RedisReplySpinAdaptivityTests {
    @Test("a server whose replies take 300 µs: the connection stops spinning, then spins once per probeInterval requests")
    func slowRepliesStopTheSpin() async throws {
        // A server of its own: DEBUG SLEEP holds its one thread, and the command is off by default.
        try await RedisServerProcess.withServer(extraArguments: ["--enable-debug-command", "yes"]) { server in
        var configuration = try RedisConnectionConfiguration(port: server.port)
        configuration.commandTimeout = .seconds(10)
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        // The server sleeps 300 µs before it answers: a server farther away than the spin's budget.
        func slowCommand() async throws {
            #expect(try await connection.command("DEBUG", "SLEEP", "0.0003") == .status("OK"))
        }

        let stopped = try await eventually(timeout: .seconds(60)) {
            try await slowCommand()
            return !connection.isReplySpinning
        }
        #expect(stopped, "\(connection.replySpinStatistics)")

        let before = connection.replySpinStatistics
        let requests = 2 * ReplySpin.probeInterval
        for _ in 0..<requests { try await slowCommand() }
        let after = connection.replySpinStatistics
        // One probe per probeInterval requests, plus at most one false restart: in a parallel test run a
        // thread descheduled between sending and its probe finds the slow reply already there, which
        // looks like a close server and costs up to restartScore spins before the spin stops again.
        // Spinning on every request would be `requests` spins.
        let allowed = requests / ReplySpin.probeInterval + 1 + Int(ReplySpin.restartScore)
        #expect(after.spins - before.spins <= allowed, "\(before) → \(after)")
        // Stopped, or stopping again after a false restart near the end (seen in a parallel swift test).
        let stoppedAgain = try await eventually(timeout: .seconds(30)) {
            try await slowCommand()
            return !connection.isReplySpinning
        }
        #expect(stoppedAgain, "\(connection.replySpinStatistics)")

        // The same connection, now with fast replies (PING): a probe catches one and the spin is back.
        let restarted = try await eventually(timeout: .seconds(60)) {
            let reply = try await connection.command("PING")
            #expect(reply == .status("PONG"))
            return connection.isReplySpinning
        }
        #expect(restarted, "\(connection.replySpinStatistics)")
        }
    }

    @Test("on loopback the connection keeps spinning (blocking API)")
    func loopbackKeepsSpinning() async throws {
        let configuration = try await SharedServer.configuration()
        let connection = try await onThread { try RedisConnection.connectBlocking(configuration: configuration) }
        defer { connection.closeBlocking() }
        let spinning = try await eventually(timeout: .seconds(60)) {
            try await onThread { try connection.commandBlocking("PING") } == .status("PONG")
                && connection.replySpinStatistics.caught >= 32 && connection.isReplySpinning
        }
        #expect(spinning, "\(connection.replySpinStatistics)")
    }

    @Test(".disabled never spins, where an adaptive connection to the same server does")
    func disabledNeverSpins() async throws {
        var configuration = try await SharedServer.configuration()
        let adaptive = try await RedisConnection.connect(configuration: configuration)
        defer { adaptive.closeBlocking() }
        configuration.replySpin = .disabled
        #expect(configuration.description.contains("replySpin: disabled"))
        let disabled = try await RedisConnection.connect(configuration: configuration)
        defer { disabled.closeBlocking() }
        #expect(!disabled.isReplySpinning)

        let spun = try await eventually(timeout: .seconds(60)) {
            _ = try await disabled.command("PING")
            _ = try await onThread { try disabled.commandBlocking("PING") }
            _ = try await adaptive.command("PING")
            return adaptive.replySpinStatistics.spins >= 20
        }
        #expect(spun, "\(adaptive.replySpinStatistics)")
        #expect(disabled.replySpinStatistics.waits > 0)
        #expect(disabled.replySpinStatistics.spins == 0, "\(disabled.replySpinStatistics)")
        #expect(try RedisConnectionConfiguration().replySpin == .adaptive)
    }
}
