// swift-tools-version: 6.1
// Benchmarks for connpool, kept in a package of their own so that the main package's `swift build` and
// `swift test` never build ordo-one/benchmark and its dependencies (3–4 minutes on 2 cores).
//
//   cd Benchmarks && swift package --allow-writing-to-package-directory benchmark
//
// See README.md for the commands, the zero-allocation check and the recorded figures.
import PackageDescription

let package = Package(
    name: "connpool-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "connpool", path: ".."),
        // Only the malloc interposer: the RuntimeInterposer trait's package is not available here, and the
        // retain/release metrics it backs crash on Linux without it, so no benchmark uses them.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Every benchmark, in one executable so that one run prints them side by side.
        .executableTarget(
            name: "ConnPoolBenchmarks",
            dependencies: [
                .product(name: "ConnPool", package: "connpool"),
                // The socket benchmarks (plain vs TLS PING through a throwaway redis-server).
                .product(name: "ConnPoolRedis", package: "connpool"),
                .product(name: "RedisServerLauncher", package: "connpool"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/ConnPoolBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // A plain-thread driver of the same hot paths for valgrind --tool=callgrind (valgrind crashes on
        // Swift's async thread pool, and perf counters are not available on this machine). Not a benchmark.
        .executableTarget(
            name: "PoolProfileDriver",
            dependencies: [.product(name: "ConnPool", package: "connpool")],
            path: "Sources/PoolProfileDriver"
        ),
    ],
    swiftLanguageModes: [.v6]
)
