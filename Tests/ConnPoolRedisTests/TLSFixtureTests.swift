import ConnPoolTestSupport
import Glibc
import RedisServerLauncher
import Testing

/// The TLS test fixtures (``TestCertificates``) and the launcher's TLS listener: checked with the
/// `openssl` and `redis-cli` command-line tools (the package's own TLS client is tested elsewhere).
/// One certificate set is shared by the whole process (``TestCertificates/shared()``).
@Suite("TLS fixtures", .serialized, .processExclusive)
struct TLSFixtureTests {
    static let openssl = "/usr/bin/openssl"

    static func certificates() async throws -> TestCertificates {
        try await onThread { try TestCertificates.shared() }
    }

    static func openssl(_ arguments: [String]) async throws -> (status: ChildProcess.Status, output: String) {
        try await onThread { try ChildProcess.run(openssl, arguments) }
    }

    static func redisCLI(_ arguments: [String]) async throws -> (status: ChildProcess.Status, output: String) {
        try await onThread { try ChildProcess.run("/usr/bin/redis-cli", arguments) }
    }

    @Test func theCertificatesVerifyAgainstTheirCA() async throws {
        let set = try await Self.certificates()
        for path in [set.serverCertificatePath, set.wrongHostServerCertificatePath, set.clientCertificatePath] {
            let result = try await Self.openssl(["verify", "-CAfile", set.caCertificatePath, path])
            #expect(result.status == .exited(0), "\(path): \(result.output)")
        }
        // Signed by the unrelated CA only.
        let foreign = try await Self.openssl(["verify", "-CAfile", set.caCertificatePath, set.wrongCAServerCertificatePath])
        #expect(foreign.status != .exited(0))
        let own = try await Self.openssl(["verify", "-CAfile", set.wrongCACertificatePath, set.wrongCAServerCertificatePath])
        #expect(own.status == .exited(0), "\(own.output)")
        let crossed = try await Self.openssl(["verify", "-CAfile", set.wrongCACertificatePath, set.serverCertificatePath])
        #expect(crossed.status != .exited(0))
    }

    @Test func theSubjectAltNamesAreLocalhostOrTheWrongHost() async throws {
        let set = try await Self.certificates()
        let server = try await Self.openssl(["x509", "-noout", "-ext", "subjectAltName", "-in", set.serverCertificatePath])
        #expect(server.output.contains("DNS:localhost") && server.output.contains("IP Address:127.0.0.1"), "\(server.output)")
        let wrong = try await Self.openssl(["x509", "-noout", "-ext", "subjectAltName", "-in", set.wrongHostServerCertificatePath])
        #expect(wrong.output.contains("DNS:wrong.example") && !wrong.output.contains("localhost"), "\(wrong.output)")
        let client = try await Self.openssl(["x509", "-noout", "-subject", "-ext", "extendedKeyUsage", "-in", set.clientCertificatePath])
        #expect(client.output.contains(TestCertificates.clientCommonName) && client.output.contains("TLS Web Client Authentication"), "\(client.output)")
    }

    @Test func theExpiredCertificateIsExpired() async throws {
        let set = try await Self.certificates()
        // -checkend 0: exit 0 when still valid now, 1 when expired.
        let expired = try await Self.openssl(["x509", "-checkend", "0", "-noout", "-in", set.expiredServerCertificatePath])
        #expect(expired.status == .exited(1), "\(expired.output)")
        let valid = try await Self.openssl(["x509", "-checkend", "0", "-noout", "-in", set.serverCertificatePath])
        #expect(valid.status == .exited(0), "\(valid.output)")
        // Signed by the CA, and rejected for its dates only.
        let verify = try await Self.openssl(["verify", "-CAfile", set.caCertificatePath, set.expiredServerCertificatePath])
        #expect(verify.status != .exited(0) && verify.output.contains("expired"), "\(verify.output)")
        // The key matches the certificate.
        let certificateKey = try await Self.openssl(["x509", "-noout", "-pubkey", "-in", set.expiredServerCertificatePath])
        let key = try await Self.openssl(["pkey", "-pubout", "-in", set.expiredServerKeyPath])
        #expect(certificateKey.output == key.output)
    }

    @Test func theEncryptedClientKeyNeedsThePassphrase() async throws {
        let set = try await Self.certificates()
        let opened = try await Self.openssl(["pkey", "-pubout", "-in", set.encryptedClientKeyPath, "-passin", "pass:" + set.clientKeyPassphrase])
        let plain = try await Self.openssl(["pkey", "-pubout", "-in", set.clientKeyPath])
        #expect(opened.status == .exited(0), "\(opened.output)")
        #expect(opened.output == plain.output)
        let wrong = try await Self.openssl(["pkey", "-noout", "-in", set.encryptedClientKeyPath, "-passin", "pass:wrong"])
        #expect(wrong.status != .exited(0))
        // The file itself: PEM "ENCRYPTED PRIVATE KEY" (PKCS#8).
        let fd = open(set.encryptedClientKeyPath, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &bytes, bytes.count)
        #expect(String(decoding: bytes[0..<max(count, 0)], as: UTF8.self).hasPrefix("-----BEGIN ENCRYPTED PRIVATE KEY-----"))
    }

    @Test func aTLSServerAnswersPingWithAVerifiedChain() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            let tlsPort = try #require(server.tlsPort)
            #expect(tlsPort != server.port)
            #expect(server.tlsURL == "rediss://127.0.0.1:\(tlsPort)")
            let ping = try await Self.redisCLI(["--tls", "--cacert", set.caCertificatePath, "-h", "127.0.0.1", "-p", String(tlsPort), "PING"])
            #expect(ping.output.contains("PONG"), "\(ping.output)")
            // The chain and the host name verify (openssl exits 0 only then, with -verify_return_error).
            let handshake = try await Self.openssl([
                "s_client", "-connect", "127.0.0.1:\(tlsPort)", "-CAfile", set.caCertificatePath, "-verify_return_error",
                "-verify_hostname", "localhost", "-verify_ip", "127.0.0.1", "-brief",
            ])
            #expect(handshake.status == .exited(0), "\(handshake.output)")
            // A client trusting only the unrelated CA is refused by its own verification.
            let untrusted = try await Self.redisCLI(["--tls", "--cacert", set.wrongCACertificatePath, "-h", "127.0.0.1", "-p", String(tlsPort), "PING"])
            #expect(!untrusted.output.contains("PONG"), "\(untrusted.output)")
            // The plain port still answers.
            let plain = try await Self.redisCLI(["-h", "127.0.0.1", "-p", String(server.port), "PING"])
            #expect(plain.output.contains("PONG"), "\(plain.output)")
        }
    }

    @Test func mutualTLSRequiresTheClientCertificate() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set, clientAuthentication: .required)) { server in
            let port = String(try #require(server.tlsPort))
            let without = try await Self.redisCLI(["--tls", "--cacert", set.caCertificatePath, "-h", "127.0.0.1", "-p", port, "PING"])
            #expect(!without.output.contains("PONG"), "\(without.output)")
            let with = try await Self.redisCLI([
                "--tls", "--cacert", set.caCertificatePath, "--cert", set.clientCertificatePath, "--key", set.clientKeyPath,
                "-h", "127.0.0.1", "-p", port, "PING",
            ])
            #expect(with.output.contains("PONG"), "\(with.output)")
        }
    }

    @Test func optionalClientAuthenticationAcceptsBoth() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set, clientAuthentication: .optional)) { server in
            let port = String(try #require(server.tlsPort))
            let without = try await Self.redisCLI(["--tls", "--cacert", set.caCertificatePath, "-h", "127.0.0.1", "-p", port, "PING"])
            #expect(without.output.contains("PONG"), "\(without.output)")
            let with = try await Self.redisCLI([
                "--tls", "--cacert", set.caCertificatePath, "--cert", set.clientCertificatePath, "--key", set.clientKeyPath,
                "-h", "127.0.0.1", "-p", port, "PING",
            ])
            #expect(with.output.contains("PONG"), "\(with.output)")
        }
    }

    @Test func restartKeepsTheTLSPort() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            let tlsPort = try #require(server.tlsPort)
            try await server.kill(signal: SIGKILL)
            try await server.restart()
            #expect(server.tlsPort == tlsPort)
            let ping = try await Self.redisCLI(["--tls", "--cacert", set.caCertificatePath, "-h", "127.0.0.1", "-p", String(tlsPort), "PING"])
            #expect(ping.output.contains("PONG"), "\(ping.output)")
        }
    }

    @Test func aServerWithAnExpiredCertificateStartsAndIsRejected() async throws {
        let set = try await Self.certificates()
        let options = RedisServerProcess.TLSOptions(
            certificatePath: set.expiredServerCertificatePath, keyPath: set.expiredServerKeyPath,
            caCertificatePath: set.caCertificatePath)
        try await RedisServerProcess.withServer(tls: options) { server in
            let port = String(try #require(server.tlsPort))
            let ping = try await Self.redisCLI(["--tls", "--cacert", set.caCertificatePath, "-h", "127.0.0.1", "-p", port, "PING"])
            #expect(!ping.output.contains("PONG"), "\(ping.output)")
        }
    }

    @Test func missingOpenSSLIsATypedErrorWithTheInstallHint() async throws {
        do {
            _ = try await onThread { try TestCertificates.create(opensslPath: "/nonexistent/bin/openssl") }
            Issue.record("expected an error")
        } catch let error as TestCertificatesError {
            #expect(error == .opensslNotInstalled(searched: ["/nonexistent/bin/openssl"]))
            #expect("\(error)".contains("apt-get install openssl"))
        }
    }

    @Test func aFailingCommandIsReportedWithItsStatus() async throws {
        do {
            _ = try await onThread { try TestCertificates.create(opensslPath: "/bin/false") }
            Issue.record("expected an error")
        } catch let error as TestCertificatesError {
            guard case .commandFailed(let command, let status, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(command.hasPrefix("openssl req"))
            #expect(status == "exit code 1")
        }
    }

    @Test func aNewSetIsFastAndRemoveDeletesIt() async throws {
        let start = ContinuousClock.now
        let set = try await onThread { try TestCertificates.create() }
        let elapsed = ContinuousClock.now - start
        #expect(access(set.serverKeyPath, R_OK) == 0)
        #expect(elapsed < .seconds(20), "took \(elapsed)")
        set.remove()
        #expect(access(set.directory, F_OK) != 0)
        set.remove()  // idempotent
    }
}
