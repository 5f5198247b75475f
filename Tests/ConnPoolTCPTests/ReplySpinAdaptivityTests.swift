import ConnPoolIO
import ConnPoolTCP
import ConnPoolTestSupport
import Glibc
import Synchronization
import Testing

/// A `TCPConnection`'s reply spin adapts to its server: it stops for one whose replies come later than
/// the spin's budget, comes back when the server is close again, keeps spinning for a fast one, and
/// `.disabled` turns it off.
///
/// A connection spins only while no other socket operation is under way in the process, and the tests
/// of this process run in parallel, so these tests repeat requests (with `eventually`) until enough of
/// them ran alone, instead of expecting every request to spin.
@Suite("TCPConnection: ReplySpin adaptivity", .serialized, .processExclusive)
struct TCPReplySpinAdaptivityTests {
    /// Answers `PING` with `+PONG\r\n`, first waiting `delay` microseconds (read per request). The wait
    /// stands for a server farther away than the spin's 100 µs budget; it orders nothing.
    final class SlowPong: Sendable {
        let delayMicroseconds = Atomic<Int>(300)

        var handler: @Sendable (ServerPeer) -> Void {
            { [self] peer in
                while peer.readLine() != nil {
                    let delay = delayMicroseconds.load(ordering: .relaxed)
                    if delay > 0 { usleep(UInt32(delay)) }
                    guard peer.write("+PONG\r\n") else { return }
                }
            }
        }
    }

    private func ping(_ connection: TCPConnection) async throws {
        try await connection.send("PING\r\n")
        #expect(try await connection.readLine() == "+PONG")
    }

    @Test("a server 300 µs away: after a warm-up the connection stops spinning and costs one spin per probeInterval requests")
    func distantServerStopsTheSpin() async throws {
        let slow = SlowPong()
        let server = try TestServer(handler: slow.handler)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }

        // Warm-up: spins that give up (when the request runs alone) stop the spin.
        let stopped = try await eventually(timeout: .seconds(60)) {
            try await ping(connection)
            return !connection.isReplySpinning
        }
        #expect(stopped, "\(connection.replySpinStatistics)")
        #expect(connection.replySpinStatistics.gaveUp >= Int(ReplySpin.maximumScore))

        // Steady state: at most one spin (a probe, which gives up again) per probeInterval requests.
        let before = connection.replySpinStatistics
        let requests = 2 * ReplySpin.probeInterval
        for _ in 0..<requests { try await ping(connection) }
        let after = connection.replySpinStatistics
        #expect(after.waits - before.waits > requests / 2)  // a reply may be in before its read waits
        // One probe per probeInterval requests, plus at most one false restart: in a parallel test run a
        // thread descheduled between sending and its probe finds the slow reply already there, which
        // looks like a close server and costs up to restartScore spins before the spin stops again.
        // Spinning on every request would be `requests` spins.
        let allowed = requests / ReplySpin.probeInterval + 1 + Int(ReplySpin.restartScore)
        #expect(after.spins - before.spins <= allowed, "\(before) → \(after)")
        #expect(after.caught == before.caught)
        #expect(!connection.isReplySpinning)
    }

    @Test("a stopped connection whose server comes close again spins again (a probe catches the reply)")
    func closeAgainRestartsTheSpin() async throws {
        let slow = SlowPong()
        let server = try TestServer(handler: slow.handler)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        #expect(try await eventually(timeout: .seconds(60)) {
            try await ping(connection)
            return !connection.isReplySpinning
        })

        slow.delayMicroseconds.store(0, ordering: .relaxed)
        let restarted = try await eventually(timeout: .seconds(60)) {
            try await ping(connection)
            return connection.isReplySpinning
        }
        #expect(restarted, "\(connection.replySpinStatistics)")
        #expect(connection.replySpinStatistics.caught >= 1)
    }

    @Test("a fast loopback server keeps the connection spinning (blocking API)")
    func fastServerKeepsSpinning() async throws {
        let server = try TestServer(handler: Handlers.redisLike)
        defer { server.stop() }
        let connection = try TCPConnection.connectBlocking(testConfiguration(server))
        defer { connection.closeBlocking() }
        let spinning = try await eventually(timeout: .seconds(60)) {
            try await onThread {
                try connection.sendBlocking("PING\r\n")
                return try connection.readLineBlocking()
            } == "+PONG" && connection.replySpinStatistics.caught >= 32 && connection.isReplySpinning
        }
        #expect(spinning, "\(connection.replySpinStatistics)")
    }

    @Test(".disabled never spins, where an adaptive connection to the same server does")
    func disabledNeverSpins() async throws {
        let server = try TestServer(handler: Handlers.redisLike)
        defer { server.stop() }
        var configuration = testConfiguration(server)
        let adaptive = try await TCPConnection.connect(configuration)
        defer { adaptive.closeBlocking() }
        configuration.replySpin = .disabled
        let disabled = try await TCPConnection.connect(configuration)
        defer { disabled.closeBlocking() }
        #expect(!disabled.isReplySpinning)

        // Taking turns, until the adaptive one has spun often: the disabled one had as many chances.
        let spun = try await eventually(timeout: .seconds(60)) {
            try await ping(disabled)
            try await ping(adaptive)
            return adaptive.replySpinStatistics.spins >= 20
        }
        #expect(spun, "\(adaptive.replySpinStatistics)")
        #expect(disabled.replySpinStatistics.waits > 0)
        #expect(disabled.replySpinStatistics.spins == 0, "\(disabled.replySpinStatistics)")
        // The same through the blocking API.
        try await onThread {
            for _ in 0..<20 {
                try disabled.sendBlocking("PING\r\n")
                _ = try disabled.readLineBlocking()
            }
        }
        #expect(disabled.replySpinStatistics.spins == 0)
        #expect(TCPConnectionConfiguration(host: "h", port: 1).replySpin == .adaptive)
    }
}
