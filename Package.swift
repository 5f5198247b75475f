// swift-tools-version: 6.1
// connpool: a generic, zero-allocation connection pool with sync and async interfaces.
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "connpool",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "ConnPool", targets: ["ConnPool"]),
        .library(name: "ConnPoolRedis", targets: ["ConnPoolRedis"]),
        .library(name: "ConnPoolTCP", targets: ["ConnPoolTCP"]),
        .library(name: "ConnPoolIO", targets: ["ConnPoolIO"]),
        .library(name: "ConnPoolBenchHarness", targets: ["ConnPoolBenchHarness"]),
        .executable(name: "redis-bench", targets: ["redis-bench"]),
        .library(name: "ConnPoolMetrics", targets: ["ConnPoolMetrics"]),
        .library(name: "ConnPoolPrometheus", targets: ["ConnPoolPrometheus"]),
        // Throwaway redis-server processes and test certificates, for the Benchmarks package (its socket
        // benchmarks start a server of their own); tests and examples use the target directly.
        .library(name: "RedisServerLauncher", targets: ["RedisServerLauncher"]),
        .library(name: "ConnPoolRedisCluster", targets: ["ConnPoolRedisCluster"]),
        .library(name: "ConnPoolRedisClusterMetrics", targets: ["ConnPoolRedisClusterMetrics"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
    ],
    targets: [
        // The generic pool core: state machine, slot storage, waiter queue, clock, lock.
        .target(
            name: "ConnPool",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strictSettings
        ),
        // The socket layer both backends speak through: resolve/connect/read/write with deadlines, TLS
        // (OpenSSL 3), the in-use guard with deferred close, the epoll reactor and the reply spin.
        .target(
            name: "ConnPoolIO",
            dependencies: ["CConnPoolIO", "COpenSSL", "ConnPool", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // OpenSSL 3 (libssl-dev), found by pkg-config; a header of wrappers for OpenSSL's macros.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // glibc declarations Swift's Glibc module lacks (sched_getcpu, for the reply spin's counters).
        .target(name: "CConnPoolIO"),
        // Backend 1: hiredis.
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "ConnPoolRedis",
            dependencies: ["ConnPool", "ConnPoolIO", "CHiredis", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // A Redis Cluster client: one pool per node and a slot router in front.
        .target(
            name: "ConnPoolRedisCluster",
            dependencies: ["ConnPool", "ConnPoolRedis", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // The cluster client's counters and node pools through swift-metrics, and as a Prometheus exposition.
        .target(
            name: "ConnPoolRedisClusterMetrics",
            dependencies: [
                "ConnPool", "ConnPoolRedisCluster", "ConnPoolMetrics", "ConnPoolPrometheus",
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // Backend 2: raw TCP sockets.
        .target(
            name: "ConnPoolTCP",
            dependencies: ["ConnPool", "ConnPoolIO", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // Starts and stops throwaway redis-server processes on free loopback ports (tests, bench, examples).
        .target(name: "RedisServerLauncher", dependencies: ["ConnPool"], swiftSettings: strictSettings),
        // The shared benchmark harness that drives a pool over any factory.
        .target(
            name: "ConnPoolBenchHarness",
            dependencies: ["ConnPool", .product(name: "Histogram", package: "hdrhistogram-swift")],
            swiftSettings: strictSettings
        ),
        // Opt-in observability: pool metrics through swift-metrics, or as a Prometheus exposition served
        // over a tiny loopback HTTP server (no dependency beyond ConnPool).
        .target(
            name: "ConnPoolMetrics",
            dependencies: ["ConnPool", .product(name: "Metrics", package: "swift-metrics")],
            swiftSettings: strictSettings
        ),
        .target(name: "ConnPoolPrometheus", dependencies: ["ConnPool"], swiftSettings: strictSettings),
        // The chaos engine: a load through a Redis pool with injected server faults (redis-bench chaos,
        // ChaosTests, Scripts/soak.sh).
        .target(
            name: "ConnPoolChaos",
            dependencies: ["ConnPool", "ConnPoolRedis", "RedisServerLauncher", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "redis-bench",
            dependencies: [
                "ConnPool", "ConnPoolIO", "ConnPoolRedis", "ConnPoolTCP", "ConnPoolBenchHarness", "RedisServerLauncher", "ConnPoolChaos", "ConnPoolPrometheus",
                "ConnPoolRedisCluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "RedisCounterExample",
            dependencies: ["ConnPool", "ConnPoolRedis", "RedisServerLauncher"],
            path: "Examples/RedisCounter",
            swiftSettings: strictSettings
        ),
        // A helper process for ServerLifetimeTests: starts a throwaway redis-server from a short-lived
        // thread, prints its pid and port, and waits to be killed.
        .executableTarget(
            name: "launcher-probe",
            dependencies: ["RedisServerLauncher"],
            path: "Tests/LauncherProbe",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "TCPLineClientExample",
            dependencies: ["ConnPool", "ConnPoolTCP"],
            path: "Examples/TCPLineClient",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ConnPoolTests",
            dependencies: [
                "ConnPool", "ConnPoolTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ConnPoolRedisTests",
            dependencies: ["ConnPool", "ConnPoolRedis", "ConnPoolIO", "RedisServerLauncher", "ConnPoolTestSupport", "CHiredis"],
            swiftSettings: strictSettings
        ),
        // Mock connections and polling helpers shared by the test targets (test targets cannot share files).
        .target(name: "ConnPoolTestSupport", dependencies: ["ConnPool"], path: "Tests/ConnPoolTestSupport", swiftSettings: strictSettings),
        .testTarget(
            name: "ConnPoolMetricsTests",
            dependencies: [
                "ConnPool", "ConnPoolMetrics", "ConnPoolTestSupport",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ConnPoolPrometheusTests",
            dependencies: [
                "ConnPool", "ConnPoolPrometheus", "ConnPoolTestSupport",
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ConnPoolRedisClusterTests",
            dependencies: [
                "ConnPool", "ConnPoolRedis", "ConnPoolRedisCluster", "ConnPoolRedisClusterMetrics", "RedisServerLauncher",
                "ConnPoolTestSupport", .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(name: "ConnPoolIOTests", dependencies: ["ConnPoolIO", "ConnPoolTestSupport"], swiftSettings: strictSettings),
        .testTarget(
            name: "ChaosTests",
            dependencies: [
                "ConnPool", "ConnPoolRedis", "ConnPoolChaos", "ConnPoolPrometheus", "RedisServerLauncher", "ConnPoolTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(name: "ConnPoolBenchHarnessTests", dependencies: ["ConnPool", "ConnPoolBenchHarness", "ConnPoolTestSupport"], swiftSettings: strictSettings),
        .testTarget(
            name: "ConnPoolTCPTests",
            dependencies: ["ConnPool", "ConnPoolTCP", "ConnPoolIO", "RedisServerLauncher", "ConnPoolTestSupport", "COpenSSL"],
            swiftSettings: strictSettings
        ),
        // The DocC catalog's code samples, compiled and run; checks that the articles quote them verbatim.
        .testTarget(
            name: "ConnPoolDocTests",
            dependencies: [
                "ConnPool", "ConnPoolRedis", "ConnPoolTCP", "ConnPoolMetrics", "ConnPoolPrometheus", "ConnPoolTestSupport",
                "RedisServerLauncher",
                "ConnPoolRedisCluster",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
