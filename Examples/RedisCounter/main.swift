// A page-hit counter and a small cache, served through a ConnectionPool of hiredis connections.
//
//   swift run RedisCounterExample                      # starts a throwaway redis-server, stops it after
//   swift run RedisCounterExample redis://127.0.0.1:6379/0   # or uses your server (keys "example:*")
//
// Exits 0 on success, 1 with a message on stderr otherwise.

import ConnPool
import ConnPoolRedis
import RedisServerLauncher

#if canImport(Glibc)
import Glibc
#endif

let pages = ["/", "/pricing", "/docs"]
let visitors = 32
let hitsPerVisitor = 25

/// Records a visit: INCR on the page's counter, through whichever pooled connection is free.
func recordHit(page: String, pool: ConnectionPool<RedisConnectionFactory>) async throws -> Int {
    try await pool.withConnection { connection in
        try await connection.command("INCR", "example:hits:\(page)").int
    }
}

/// Cache get-or-set: returns the cached value, or computes it, stores it for 60 s (SET NX EX, so the first
/// writer wins if two compute at once) and returns it.
func cachedProfile(
    user: String, pool: ConnectionPool<RedisConnectionFactory>
) async throws -> (value: String, fromCache: Bool) {
    let key = "example:cache:profile:\(user)"
    return try await pool.withConnection { connection in
        if let cached = try await connection.command("GET", key).optionalString {
            return (cached, true)
        }
        let computed = "{\"user\":\"\(user)\",\"plan\":\"pro\"}"  // stands for an expensive lookup
        _ = try await connection.command("SET", key, computed, "NX", "EX", 60)
        return (computed, false)
    }
}

func run(url: String) async throws {
    var configuration = try RedisConnectionConfiguration(url: url)
    configuration.commandTimeout = .seconds(2)
    configuration.connectTimeout = .seconds(2)
    configuration.clientName = "redis-counter-example"
    let factory = try RedisConnectionFactory(configuration: configuration)
    let pool = try ConnectionPool(
        factory: factory, configuration: PoolConfiguration().maxSize(8).acquireTimeout(.seconds(5)))

    do {
        let before = try await pool.withConnection { connection in
            try await connection.command(["MGET"] + pages.map { .string("example:hits:\($0)") }).array
        }.map { try $0.optionalInt ?? 0 }

        // 32 concurrent visitors, 25 page views each, spread over the pages.
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for visitor in 0..<visitors {
                group.addTask {
                    for view in 0..<hitsPerVisitor {
                        _ = try await recordHit(page: pages[(visitor + view) % pages.count], pool: pool)
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = ContinuousClock.now - start

        let after = try await pool.withConnection { connection in
            try await connection.command(["MGET"] + pages.map { .string("example:hits:\($0)") }).array
        }.map { try $0.optionalInt ?? 0 }
        var recorded = 0
        for (index, page) in pages.enumerated() {
            let delta = after[index] - before[index]
            recorded += delta
            print("page \(page): \(after[index]) hits (+\(delta) this run)")
        }
        let metrics = pool.metrics()
        print(
            "\(recorded) hits from \(visitors) concurrent visitors in \(elapsed), "
                + "through \(metrics.total) pooled connections (\(metrics.idle) idle now)")
        guard recorded == visitors * hitsPerVisitor else {
            throw ExampleError("expected \(visitors * hitsPerVisitor) hits this run, counted \(recorded)")
        }

        // Cache get-or-set: the first read computes and stores, the second comes from Redis.
        _ = try await pool.withConnection { try await $0.command("DEL", "example:cache:profile:ada") }
        let first = try await cachedProfile(user: "ada", pool: pool)
        let second = try await cachedProfile(user: "ada", pool: pool)
        print("profile of ada: \(first.value) (\(first.fromCache ? "cache hit" : "computed, cached for 60 s"))")
        print("profile of ada: \(second.value) (\(second.fromCache ? "cache hit" : "computed"))")
        guard !first.fromCache, second.fromCache, first.value == second.value else {
            throw ExampleError("the cache did not behave as get-or-set")
        }
    } catch {
        await pool.shutdown()
        throw error
    }
    await pool.shutdown()
}

struct ExampleError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

var server: RedisServerProcess?
var exitCode: Int32 = 0
do {
    let url: String
    if CommandLine.arguments.count > 1 {
        url = CommandLine.arguments[1]
    } else {
        // Ctrl-C, SIGTERM or SIGHUP stop the throwaway server (and exit 128 + signal); if this process is
        // killed outright, the server dies with it (the launcher's parent-death signal).
        try RedisServerProcess.stopAllAndExitOnSignals()
        let started = try RedisServerProcess.start()
        server = started
        print("started redis-server pid \(started.pid) on \(started.url)")
        url = started.url
    }
    try await run(url: url)
} catch {
    var standardError = StandardError()
    print("RedisCounterExample failed: \(error)", to: &standardError)
    exitCode = 1
}
if let server {
    server.stop()
    print("stopped redis-server")
}
exit(exitCode)

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var text = string
        text.withUTF8 { bytes in _ = Glibc.write(2, bytes.baseAddress, bytes.count) }
    }
}
