import ConnPoolTestSupport
import Glibc
import RedisServerLauncher
import Testing

/// `redis-bench --tls` end to end, through the built `redis-bench` product (as ``ServerLifetimeTests``):
/// a short run against its throwaway TLS server writes JSON with TLS and plain entries and removes the
/// run's certificates; a signal removes them too; a `redis://` URL with `--tls` is refused.
@Suite("redis-bench --tls", .serialized, .processExclusive)
struct RedisBenchTLSTests {
    @Test(arguments: ["redis", "tcp"])
    func aShortTLSRunWritesTLSAndPlainResults(backend: String) async throws {
        let json = "/tmp/connpool-bench-tls-\(getpid())-\(backend).json"
        defer { unlink(json) }
        let (status, output) = try await onThread {
            try ChildProcess.run(
                ServerLifetimeTests.product("redis-bench"),
                ["run", "--tls", "--backend", backend, "--workload", "ping", "--concurrency", "8", "--requests", "2000",
                 "--warmup", "100", "--per-request-cap", "200", "--json", json],
                timeout: .seconds(120))
        }
        #expect(status == .exited(0), "redis-bench --tls: \(output)")
        #expect(output.contains("pooled async TLS c=8"), "\(output)")
        #expect(output.contains("pooled async c=8"), "\(output)")
        #expect(output.contains("x pooled plain ops/s (target >= 0.8x)"), "\(output)")
        #expect(output.contains("x per-request TLS (target >= 10x)"), "\(output)")
        let text = try Self.contents(of: json)
        #expect(text.contains("\"tls\" : true"), "\(text)")
        #expect(text.contains("\"tls\" : false"), "\(text)")
        // The run's certificates are gone.
        let directory = try #require(Self.certificateDirectory(output), "\(output)")
        #expect(access(directory, F_OK) != 0, "\(directory) outlived the run")
    }

    @Test func aSignalRemovesTheRunsCertificates() async throws {
        let bench = try await onThread {
            try ChildProcess.start(
                ServerLifetimeTests.product("redis-bench"),
                ["run", "--tls", "--no-compare", "--workload", "ping", "--concurrency", "1", "--warmup", "0",
                 "--requests", "1000000000"])
        }
        defer { bench.killAndReap() }
        let line = try await onThread { try bench.readLine(containing: "tls: TLS port", timeout: .seconds(30)) }
        let directory = try #require(Self.certificateDirectory(line), "redis-bench printed: \(line)")
        #expect(access(directory, F_OK) == 0)
        kill(bench.pid, SIGTERM)
        let status = try await onThread { bench.waitForExit(timeout: .seconds(20)) }
        #expect(status == .exited(128 + SIGTERM))
        #expect(access(directory, F_OK) != 0, "\(directory) outlived redis-bench after SIGTERM")
    }

    /// `--url rediss://…?ca=…`: TLS only (no plain port to compare with), redis-benchmark with `--cacert`.
    @Test func aRedissURLIsMeasuredOverTLS() async throws {
        let certificates = try TestCertificates.shared()
        try await RedisServerProcess.withServer(tls: .init(certificates: certificates)) { server in
            let url = try #require(server.tlsURL) + "?ca=" + certificates.caCertificatePath
            let (status, output) = try await onThread {
                try ChildProcess.run(
                    ServerLifetimeTests.product("redis-bench"),
                    ["run", "--tls", "--url", url, "--workload", "ping", "--concurrency", "2", "--requests", "300",
                     "--warmup", "10", "--per-request-cap", "20"],
                    timeout: .seconds(120))
            }
            #expect(status == .exited(0), "\(output)")
            #expect(output.contains("tls: yes (--url)"), "\(output)")
            #expect(output.contains("pooled async TLS c=2"), "\(output)")
            #expect(!output.contains("pooled async c=2"), "\(output)")
        }
    }

    @Test func tlsWithAPlainURLIsRefused() async throws {
        let (status, output) = try await onThread {
            try ChildProcess.run(
                ServerLifetimeTests.product("redis-bench"), ["run", "--tls", "--url", "redis://127.0.0.1:1"])
        }
        #expect(status != .exited(0))
        #expect(output.contains("--tls with --url needs a rediss:// URL"), "\(output)")
    }

    /// The directory of "(CA /tmp/connpool-tls-XXXXXX/ca.crt, …" in redis-bench's header.
    static func certificateDirectory(_ text: String) -> String? {
        guard let start = text.range(of: "(CA ")?.upperBound else { return nil }
        let path = text[start...].prefix { $0 != "," && $0 != " " }
        guard path.hasSuffix("/ca.crt"), path.contains("/connpool-tls-") else { return nil }
        return String(path.dropLast("/ca.crt".count))
    }

    static func contents(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ChildProcess.Failure("cannot open \(path): errno \(errno)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
