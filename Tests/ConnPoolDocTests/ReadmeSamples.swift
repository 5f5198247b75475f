// The README's snippets, verbatim (ReadmeTests checks that every ```swift block of README.md is in
// this target), run against a real redis-server. The README's two imports come last, as in its block.
import ConnPoolTestSupport
import Foundation
import RedisServerLauncher
import Testing
import ConnPool
import ConnPoolRedis

func countHits(url: String = "redis://127.0.0.1:6379/0") async throws {
    let pool = try ConnectionPool(
        factory: RedisConnectionFactory(url: url),
        configuration: PoolConfiguration().maxSize(16).minSize(2).acquireTimeout(.seconds(2))
    )

    // Async: suspends, never blocks a cooperative thread.
    let hits = try await pool.withConnection { redis in
        try await redis.command("INCR", "hits").int
    }
    print("hits:", hits)

    // A lease is ~Copyable: the connection goes back when `lease` goes out of scope (here, at the end
    // of the `do` block) or at `lease.release()`.
    do {
        let lease = try await pool.acquire()
        let reply = try await lease.connection.command("GET", "hits")
        print("GET hits:", reply)
    }

    await pool.shutdown(gracePeriod: .seconds(10))
}

// Blocking, from a plain thread (a `Thread`, a C callback), never from a Swift concurrency task.
func pingFromThread(_ pool: ConnectionPool<RedisConnectionFactory>) throws -> String {
    try pool.withConnectionBlocking { redis in
        try redis.commandBlocking("PING").string
    }
}

/// The README's snippet for tasks on the I/O reactor's thread.
func countHitsOnTheReactor(_ pool: ConnectionPool<RedisConnectionFactory>) async throws -> Int {
    // Request handlers on the I/O thread: each Redis wait resumes in place, without a thread hand-off.
    let handler = Task(executorPreference: IOReactor.shared) {
        try await pool.withConnection { redis in try await redis.command("INCR", "hits").int }
    }
    return try await handler.value
}

/// The README's TLS snippet: a managed Redis over `rediss://`, and an own CA with mutual TLS.
func tlsSetup(password: String) throws -> (RedisConnectionFactory, ConnectionPool<RedisConnectionFactory>) {
    // Managed Redis (ElastiCache, Azure Cache, Upstash, …): rediss:// and the system roots.
    let factory = try RedisConnectionFactory(url: "rediss://:\(password)@my-cache.example.com:6380")

    // Your own CA, a client certificate (mutual TLS), and the name on the server's certificate.
    var configuration = try RedisConnectionConfiguration(host: "10.0.0.12", port: 6380)
    configuration.tls = TLSConfiguration(
        trustRoots: .certificateFile("/etc/redis/ca.crt"),
        serverName: "redis.internal",
        clientCertificate: .files(certificatePath: "/etc/redis/client.crt", privateKeyPath: "/etc/redis/client.key"))
    let pool = try ConnectionPool(factory: RedisConnectionFactory(configuration: configuration))
    return (factory, pool)
}

final class EchoConnection: Connection {
    func isValid(timeout: Duration) async -> Bool { true }  // a real client does a round trip (PING)
    func close() async {}
    // Optional: isValidBlocking/closeBlocking for the blocking interface, isBroken, and
    // reuseCondition/resetSession for a connection whose borrowers change its session state.
}

struct EchoFactory: ConnectionFactory {
    func makeConnection() async throws -> EchoConnection { EchoConnection() }
}

@Suite("README.md", .serialized, .processExclusive)
struct ReadmeTests {
    @Test("every ```swift block of README.md is compiled code of this target, verbatim")
    func swiftBlocksAreCompiled() throws {
        let url = DocPaths.packageRoot.appendingPathComponent("README.md")
        let text = try String(contentsOf: url, encoding: .utf8)
        let sources = try Catalog.sampleSources()
        var checked = 0
        for block in Catalog.codeBlocks(page: "README.md", text: text) where block.language == "swift" {
            let needle = block.lines.map(Catalog.trim)
            if !sources.contains(where: { Catalog.contains($0.lines, needle) }) {
                let (matched, file) = Catalog.longestMatchedPrefix(needle, in: sources)
                Issue.record("\(block) is not in Tests/ConnPoolDocTests verbatim: the first \(matched) lines match \(file)")
            }
            checked += 1
        }
        #expect(checked >= 2)
    }

    @Test("the reactor snippet runs its handler on the I/O thread")
    func reactorSnippet() async throws {
        try await RedisServerProcess.withServer { server in
            let pool = try ConnectionPool(factory: RedisConnectionFactory(url: "redis://127.0.0.1:\(server.port)/0"))
            #expect(try await countHitsOnTheReactor(pool) == 1)
            #expect(try await countHitsOnTheReactor(pool) == 2)
            _ = await pool.shutdown()
        }
    }

    @Test("the TLS snippet configures TLS as the README says, without touching the network")
    func tlsSnippet() async throws {
        let (factory, pool) = try tlsSetup(password: "pw")
        #expect(factory.configuration.tls == TLSConfiguration())
        #expect(factory.configuration.endpoint == .tcp(host: "my-cache.example.com", port: 6380))
        let tls = try #require(pool.factory.configuration.tls)
        #expect(tls.trustRoots == .certificateFile("/etc/redis/ca.crt"))
        #expect(tls.serverName == "redis.internal")
        #expect(tls.clientCertificate?.privateKey == .file("/etc/redis/client.key"))
        #expect(pool.metrics().total == 0)
        _ = await pool.shutdown()
    }

    @Test("the Use snippet returns its lease: shutdown does not wait out its 10 s grace period")
    func useSnippetRuns() async throws {
        try await RedisServerProcess.withServer { server in
            let started = ContinuousClock.now
            try await countHits(url: "redis://127.0.0.1:\(server.port)/0")
            #expect(ContinuousClock.now - started < .seconds(8))
            let pool = try ConnectionPool(
                factory: RedisConnectionFactory(url: "redis://127.0.0.1:\(server.port)/0"),
                configuration: PoolConfiguration().maxSize(1).minSize(0))
            let pong = try await onThread { try pingFromThread(pool) }
            #expect(pong == "PONG")
            await pool.shutdown()
        }
    }

    @Test("the connection type sketch is a working pool")
    func echoPool() async throws {
        let pool = try ConnectionPool(factory: EchoFactory(), configuration: PoolConfiguration().maxSize(2).minSize(0))
        let valid = try await pool.withConnection { await $0.isValid(timeout: .seconds(1)) }
        #expect(valid)
        #expect(pool.metrics().created == 1)
        await pool.shutdown()
    }
}
