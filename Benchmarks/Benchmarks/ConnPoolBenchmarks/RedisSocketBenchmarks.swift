import Benchmark
import ConnPoolRedis
import RedisServerLauncher
import Synchronization

// PING over ONE RedisConnection through a real socket to a throwaway redis-server (started in `setup` by
// RedisServerLauncher, with a TLS port and certificates made for the run): plain TCP and TLS side by side,
// with malloc counts, to show how many allocations TLS adds per command (issue 12, item 4). 1,000 PINGs
// per sample; `--scale` prints the raw count per 1,000 commands (the per-operation table rounds).
//
// Plain TCP, blocking and from a task on the reactor, allocates nothing per command (the RESP encoder
// writes in place, simple replies are read from hiredis' buffer, the reactor resumes in place): those two
// are held to zero mallocs in every sample (`Scripts/run-hot-benchmarks.sh`). Plain tasks on the global
// executor are not (the runtime's hops allocate in some samples), nor is TLS (OpenSSL's 4 per record pair).

/// A server with a plain and a TLS port, and one connection to the port asked for. Sendable: every
/// stored property is a `let` of a Sendable type.
final class RedisSocketFixture: Sendable {
    let server: RedisServerProcess
    let connection: RedisConnection

    /// Fixtures set up and not yet torn down (ordo-one's teardown hook takes no argument).
    static let live = Mutex<[RedisSocketFixture]>([])

    init(tls: Bool) async throws {
        // The files are read when the server starts and when the client's TLS context is made (at
        // connect): removed once connected.
        let certificates = try TestCertificates.create()
        defer { certificates.remove() }
        server = try await RedisServerProcess.start(tls: .init(certificates: certificates))
        var configuration = try RedisConnectionConfiguration(host: server.host, port: server.port)
        if tls, let tlsPort = server.tlsPort {
            configuration.endpoint = .tcp(host: server.host, port: tlsPort)
            configuration.tls = TLSConfiguration(trustRoots: .certificateFile(certificates.caCertificatePath))
        }
        connection = try await RedisConnection.connect(configuration: configuration)
        precondition(connection.isTLS == tls, "the connection's TLS state is not the one asked for")
        Self.live.withLock { $0.append(self) }
    }

    /// Closes the connections and stops the servers of every live fixture.
    static func stopAll() async {
        for fixture in live.withLock({ fixtures in defer { fixtures.removeAll() }; return fixtures }) {
            await fixture.connection.close()
            await fixture.server.stop()
        }
    }
}

/// 1,000 commands per sample through a socket (tens of µs each): a few seconds per benchmark.
/// `zeroMallocs`: held to zero mallocs in every sample.
func socketConfiguration(zeroMallocs: Bool = false) -> Benchmark.Configuration {
    .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 200,
        thresholds: zeroMallocs ? [.mallocCountTotal: zeroAllocations()] : nil)
}

@inline(never)
func expectPong(_ reply: RedisReply) {
    guard case .status(let text) = reply, text == "PONG" else { fatalError("PING answered \(reply)") }
}

/// Registers `redis socket/PING {plain, TLS} {sync, async}`.
func registerRedisSocketBenchmarks() {
    for tls in [false, true] {
        let name = tls ? "TLS" : "plain"
        Benchmark("redis socket/PING \(name) sync", configuration: socketConfiguration(zeroMallocs: !tls)) { benchmark, fixture in
            let connection = fixture.connection
            for _ in 0..<warmOperations { expectPong(try! connection.commandBlocking("PING")) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                expectPong(try! connection.commandBlocking("PING"))
            }
        } setup: {
            try await RedisSocketFixture(tls: tls)
        } teardown: {
            await RedisSocketFixture.stopAll()
        }

        Benchmark("redis socket/PING \(name) async", configuration: socketConfiguration()) { benchmark, fixture in
            let connection = fixture.connection
            for _ in 0..<warmOperations { expectPong(try! await connection.command("PING")) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                expectPong(try! await connection.command("PING"))
            }
        } setup: {
            try await RedisSocketFixture(tls: tls)
        } teardown: {
            await RedisSocketFixture.stopAll()
        }

        // The same from a task on the I/O reactor's thread (issue 14): each wait resumes in place, and
        // the command yields once before it sends (the reactor's own job queue, no allocation).
        Benchmark("redis socket/PING \(name) async on the reactor", configuration: socketConfiguration(zeroMallocs: !tls)) { benchmark, fixture in
            let connection = fixture.connection
            await withTaskExecutorPreference(IOReactor.shared) {
                for _ in 0..<warmOperations { expectPong(try! await connection.command("PING")) }
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations {
                    expectPong(try! await connection.command("PING"))
                }
                benchmark.stopMeasurement()
            }
        } setup: {
            try await RedisSocketFixture(tls: tls)
        } teardown: {
            await RedisSocketFixture.stopAll()
        }
    }
}
