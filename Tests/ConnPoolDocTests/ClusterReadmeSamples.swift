// The README's "Redis Cluster" snippet, verbatim (ReadmeTests checks every ```swift block of README.md),
// run against a real local cluster. The snippet's imports come last, as in its block.
import ConnPoolTestSupport
import RedisServerLauncher
import Testing
import ConnPoolRedis
import ConnPoolRedisCluster

func clusterExample(seeds: [String]) async throws {
    let cluster = try await RedisClusterClient.connect(seeds: seeds)  // e.g. ["redis://10.0.0.1:7000"]
    try await cluster.send(.set("user:{42}:name", "Ada"))  // to the primary serving slot("42")
    let name = try await cluster.send(.get("user:{42}:name"))  // String?
    let values = try await cluster.mget(["a", "b", "c"])  // split by slot, merged in order
    let keys = try await cluster.command("DBSIZE").int  // summed over the primaries
    let visits = try await cluster.transaction([["INCR", "{42}:visits"], ["EXPIRE", "{42}:visits", "60"]])
    print(name ?? "-", values.count, keys, visits ?? [])
    await cluster.shutdown()
}

@Suite("README.md: Redis Cluster", .serialized, .processExclusive)
struct ClusterReadmeTests {
    @Test("the Redis Cluster snippet runs against a local cluster")
    func clusterSnippetRuns() async throws {
        let cluster = try await RedisClusterProcess.start(primaries: 3, replicasPerPrimary: 0)
        do {
            try await clusterExample(seeds: [cluster.seedURLs[0]])
            let check = try await RedisClusterClient.connect(seeds: cluster.seedURLs)
            let name = try await check.send(.get("user:{42}:name"))
            #expect(name == "Ada")
            let visits = try await check.send(.get("{42}:visits"))
            #expect(visits == "1")
            await check.shutdown()
            await cluster.stop()
        } catch {
            await cluster.stop()
            throw error
        }
    }
}
