// redis-bench: benchmarks ConnPool over Redis (hiredis backend, or raw TCP with inline commands) against
// a throwaway redis-server or an existing one, and compares the pool with a connection per request, one
// shared connection, and redis-benchmark.
//
//   swift run -c release redis-bench                 # default suite on a throwaway redis-server
//   swift run -c release redis-bench run --help      # every option

import ArgumentParser

/// The `redis-bench` command. `run` is the default subcommand, so `redis-bench --requests 1000` runs the
/// benchmark; further subcommands (a planned `chaos`) join `subcommands`.
@main
struct RedisBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redis-bench",
        abstract: "Benchmark the ConnPool connection pool over Redis.",
        discussion: """
            Without --url, starts a throwaway redis-server on a free loopback port (needs the \
            redis-server package: apt-get install redis-server redis-tools, or Scripts/install-deps.sh).
            """,
        subcommands: [RunCommand.self, ChaosCommand.self],
        defaultSubcommand: RunCommand.self
    )
}
