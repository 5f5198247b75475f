import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import Glibc
import RedisServerLauncher
import Testing

/// TLS against real `redis-server --tls-port` processes with certificates made in the test
/// (``TestCertificates``: an own CA, server and client certificates, an expired one, one for another host).
@Suite("Redis over TLS", .serialized, .processExclusive)
struct RedisTLSTests {
    static func certificates() async throws -> TestCertificates {
        try await onThread { try TestCertificates.shared() }
    }

    /// A configuration for the server's TLS port that trusts the test CA.
    static func configuration(_ server: RedisServerProcess, _ set: TestCertificates) throws -> RedisConnectionConfiguration {
        var configuration = try RedisConnectionConfiguration(host: "127.0.0.1", port: server.tlsPort!)
        configuration.tls = TLSConfiguration(trustRoots: .certificateFile(set.caCertificatePath))
        configuration.connectTimeout = .seconds(5)
        configuration.commandTimeout = .seconds(5)
        return configuration
    }

    /// The `RedisError.tls` a connect threw, or `nil` (recording the unexpected outcome).
    static func tlsError(_ body: () async throws -> Void) async -> TLSError? {
        do {
            try await body()
            Issue.record("expected a TLS error, the connect succeeded")
        } catch let RedisError.tls(error) {
            return error
        } catch {
            Issue.record("expected RedisError.tls, got \(error)")
        }
        return nil
    }

    @Test func aVerifiedConnectionServesCommandsAsyncAndBlocking() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            let configuration = try Self.configuration(server, set)
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(connection.isTLS)
            #expect(try await connection.command("PING") == .status("PONG"))
            // A value larger than a TLS record (16 KiB) and the socket buffers: partial writes, several
            // records per reply, decrypted bytes left in OpenSSL between reads.
            let big = [UInt8](repeating: 0x61, count: 3 << 20)
            _ = try await connection.command("SET", "big", big)
            #expect(try await connection.command("GET", "big").bytes == big)
            let replies = try await connection.pipeline((0..<2000).map { ["INCR", .string("n\($0 % 7)")] })
            #expect(replies.count == 2000)
            #expect(try await connection.command("GET", "n0").string == "286")
            // The server sees a TLS client (its CLIENT LIST has no TLS column; INFO counts TLS clients via
            // connected clients on the TLS port, so check the port instead).
            await connection.close()

            let blocking = try await onThread { try RedisConnection.connectBlocking(configuration: configuration) }
            let value = try await onThread { try blocking.commandBlocking("GET", "big").bytes }
            #expect(value == big)
            await blocking.close()
        }
    }

    @Test func theCAGivenAsPEMTextAndARedissURLWork() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            var configuration = try Self.configuration(server, set)
            let pem = try String(contentsOfFile: set.caCertificatePath, encoding: .utf8)
            configuration.tls?.trustRoots = .certificatePEM(pem)
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(try await connection.command("PING") == .status("PONG"))
            await connection.close()

            let url = "rediss://127.0.0.1:\(server.tlsPort!)/3?ca=\(set.caCertificatePath)"
            let parsed = try RedisConnectionConfiguration(url: url)
            #expect(parsed.tls?.trustRoots == .certificateFile(set.caCertificatePath))
            #expect(parsed.database == 3)
            let viaURL = try await RedisConnection.connect(configuration: parsed)
            let info = try await viaURL.command("CLIENT", "INFO").string
            #expect(info.contains("db=3"))
            await viaURL.close()
        }
    }

    @Test func aCertificateFromAnotherCAIsRejected() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            var configuration = try Self.configuration(server, set)
            configuration.tls?.trustRoots = .certificateFile(set.wrongCACertificatePath)
            let error = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            guard case .certificateVerificationFailed(.untrustedIssuer, _)? = error else {
                Issue.record("expected untrustedIssuer, got \(String(describing: error))")
                return
            }
            #expect("\(error!)".contains("not issued by a trusted CA"))
            #expect(RedisError.tls(error!).isPermanent)
            // Blocking connects say the same.
            let fixed = configuration
            let blockingError = try await onThread { () -> (any Error)? in
                do { _ = try RedisConnection.connectBlocking(configuration: fixed) } catch { return error }
                return nil
            }
            #expect(blockingError as? RedisError == .tls(error!))
        }
    }

    @Test func aCertificateForAnotherHostIsRejectedUnlessTheServerNameSaysSo() async throws {
        let set = try await Self.certificates()
        let options = RedisServerProcess.TLSOptions(
            certificatePath: set.wrongHostServerCertificatePath, keyPath: set.wrongHostServerKeyPath,
            caCertificatePath: set.caCertificatePath)
        try await RedisServerProcess.withServer(tls: options) { server in
            var configuration = try Self.configuration(server, set)
            let error = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            guard case .certificateVerificationFailed(.hostnameMismatch, _)? = error else {
                Issue.record("expected hostnameMismatch, got \(String(describing: error))")
                return
            }
            #expect("\(error!)".contains("does not match the host name"))
            // The name the certificate was issued for (sent as SNI and checked) makes it pass.
            configuration.tls?.serverName = "wrong.example"
            let named = try await RedisConnection.connect(configuration: configuration)
            #expect(try await named.command("PING") == .status("PONG"))
            await named.close()
            // So does turning host name verification off (the chain is still checked).
            configuration.tls?.serverName = nil
            configuration.tls?.certificateVerification = .noHostnameVerification
            let unnamed = try await RedisConnection.connect(configuration: configuration)
            await unnamed.close()
            configuration.tls?.trustRoots = .certificateFile(set.wrongCACertificatePath)
            let untrusted = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            #expect(untrusted.map { if case .certificateVerificationFailed(.untrustedIssuer, _) = $0 { true } else { false } } == true)
        }
    }

    @Test func anExpiredCertificateIsRejectedAndVerifyNoneAcceptsAnything() async throws {
        let set = try await Self.certificates()
        let options = RedisServerProcess.TLSOptions(
            certificatePath: set.expiredServerCertificatePath, keyPath: set.expiredServerKeyPath,
            caCertificatePath: set.caCertificatePath)
        try await RedisServerProcess.withServer(tls: options) { server in
            var configuration = try Self.configuration(server, set)
            let error = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            guard case .certificateVerificationFailed(.expired, _)? = error else {
                Issue.record("expected expired, got \(String(describing: error))")
                return
            }
            #expect("\(error!)".contains("expired"))
            configuration.tls?.certificateVerification = .none
            configuration.tls?.trustRoots = .certificateFile(set.wrongCACertificatePath)
            let unchecked = try await RedisConnection.connect(configuration: configuration)
            #expect(try await unchecked.command("PING") == .status("PONG"))
            await unchecked.close()
        }
    }

    @Test func mutualTLSNeedsTheClientCertificate() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set, clientAuthentication: .required)) { server in
            var configuration = try Self.configuration(server, set)
            configuration.connectTimeout = .seconds(60)
            let started = ContinuousClock.now
            let error = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            #expect(ContinuousClock.now - started < .seconds(15))  // far below the 60 s connect timeout
            guard case .clientCertificateRequired? = error else {
                Issue.record("expected clientCertificateRequired, got \(String(describing: error))")
                return
            }
            #expect("\(error!)".contains("clientCertificate"))

            configuration.tls?.clientCertificate = .files(
                certificatePath: set.clientCertificatePath, privateKeyPath: set.clientKeyPath)
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(try await connection.command("PING") == .status("PONG"))
            await connection.close()

            // An encrypted key with its passphrase.
            configuration.tls?.clientCertificate = .files(
                certificatePath: set.clientCertificatePath, privateKeyPath: set.encryptedClientKeyPath,
                passphrase: set.clientKeyPassphrase)
            let encrypted = try await RedisConnection.connect(configuration: configuration)
            #expect(try await encrypted.command("PING") == .status("PONG"))
            await encrypted.close()

            // A wrong passphrase, and none: typed configuration errors that never show the passphrase.
            for passphrase in ["not-the-S3CRET-pass", nil] as [String?] {
                configuration.tls?.clientCertificate = .files(
                    certificatePath: set.clientCertificatePath, privateKeyPath: set.encryptedClientKeyPath,
                    passphrase: passphrase)
                let keyError = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
                guard case .invalidConfiguration(let field, let reason)? = keyError else {
                    Issue.record("expected invalidConfiguration, got \(String(describing: keyError))")
                    continue
                }
                #expect(field == "clientCertificate.privateKey")
                #expect(reason.contains(passphrase == nil ? "no passphrase" : "wrong passphrase"))
                #expect(!"\(keyError!)".contains("S3CRET"))
            }
        }
    }

    @Test func aPlainClientOnTheTLSPortAndATLSClientOnThePlainPortFailFast() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            // Plain text to the TLS port.
            var plain = try RedisConnectionConfiguration(host: "127.0.0.1", port: server.tlsPort!)
            plain.pingOnConnect = true
            plain.connectTimeout = .seconds(60)
            let plainStarted = ContinuousClock.now
            do {
                _ = try await RedisConnection.connect(configuration: plain)
                Issue.record("a plain connect to the TLS port succeeded")
            } catch let error as RedisError {
                // redis-server resets a client whose first bytes are not TLS.
                #expect("\(error)".contains("connect with rediss://"), "\(error)")
            }
            #expect(ContinuousClock.now - plainStarted < .seconds(15))

            // TLS to the plain port: redis-server reads the ClientHello as the start of an inline command
            // and waits silently for its end of line (its NUL bytes stop the line search), so nothing comes
            // back; the connect timeout bounds it, and the error says what to check.
            var configuration = try Self.configuration(server, set)
            configuration.endpoint = .tcp(host: "127.0.0.1", port: server.port)
            configuration.connectTimeout = .milliseconds(500)
            let tlsStarted = ContinuousClock.now
            let error = await Self.tlsError { _ = try await RedisConnection.connect(configuration: configuration) }
            #expect(ContinuousClock.now - tlsStarted < .seconds(15))
            #expect(error == .handshakeTimedOut(serverAnswered: false))
            #expect(error.map { "\($0)".contains("plain-text port") } == true)
        }
    }

    @Test func aServerKilledMidHandshakeFailsTheConnectAtOnce() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            var configuration = try Self.configuration(server, set)
            configuration.connectTimeout = .seconds(60)
            // A frozen server: the kernel accepts the TCP connection, nobody answers the ClientHello.
            try await server.kill(signal: SIGSTOP)
            let attempt = Task { () -> (any Error)? in
                do { _ = try await RedisConnection.connect(configuration: configuration) } catch { return error }
                return nil
            }
            try await Task.sleep(for: .milliseconds(300))  // let the connect reach the handshake
            let killed = ContinuousClock.now
            try await server.kill(signal: SIGKILL)
            let error = await attempt.value
            #expect(ContinuousClock.now - killed < .seconds(15))  // far below the 60 s connect timeout
            guard case RedisError.tls(.handshakeFailed(let detail))? = error else {
                Issue.record("expected a TLS handshake failure, got \(String(describing: error))")
                return
            }
            #expect(detail.contains("closed the connection during the handshake"))
        }
    }

    @Test func aFrozenServerTimesTheHandshakeOutAtTheConnectTimeout() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            var configuration = try Self.configuration(server, set)
            configuration.connectTimeout = .milliseconds(400)
            try await server.kill(signal: SIGSTOP)
            defer { try? server.kill(signal: SIGCONT) }
            let started = ContinuousClock.now
            do {
                _ = try await RedisConnection.connect(configuration: configuration)
                Issue.record("connected to a frozen server")
            } catch let error as RedisError {
                #expect(error.isTimeout, "\(error)")
            }
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .milliseconds(400) && elapsed < .seconds(15))
            let blockingStarted = ContinuousClock.now
            let fixed = configuration
            let blockingError = try await onThread { () -> (any Error)? in
                do { _ = try RedisConnection.connectBlocking(configuration: fixed) } catch { return error }
                return nil
            }
            #expect((blockingError as? RedisError)?.isTimeout == true)
            #expect(ContinuousClock.now - blockingStarted < .seconds(15))
        }
    }

    @Test func aPoolResumesTLSSessionsAndRecoversAfterAServerRestart() async throws {
        let set = try await Self.certificates()
        try await RedisServerProcess.withServer(tls: .init(certificates: set)) { server in
            let factory = try RedisConnectionFactory(configuration: Self.configuration(server, set))
            // One factory's connections resume each other's sessions.
            let first = try await factory.makeConnection()
            #expect(!first.isTLSSessionReused)
            let second = try await factory.makeConnection()
            #expect(second.isTLSSessionReused)
            await first.close()
            await second.close()
            // Connections made without a factory share nothing.
            let alone = try await RedisConnection.connect(configuration: factory.configuration)
            #expect(!alone.isTLSSessionReused)
            await alone.close()

            var poolConfiguration = PoolConfiguration().maxSize(4)
            poolConfiguration.acquireTimeout = .seconds(10)
            let pool = try ConnectionPool(factory: factory, configuration: poolConfiguration)
            _ = try await pool.withConnection { try await $0.command("SET", "k", "before") }
            try await server.restart()
            let recovered = await eventually(timeout: .seconds(15)) {
                (try? await pool.withConnection { try await $0.command("PING") }) == .status("PONG")
            }
            #expect(recovered)
            _ = await pool.shutdown()
        }
    }

    @Test func aTLSConfigurationNeverShowsItsSecrets() throws {
        let keyText = "-----BEGIN PRIVATE KEY-----\nS3CRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
        let certificateText = "-----BEGIN CERTIFICATE-----\nCERTIFICATEBODY\n-----END CERTIFICATE-----\n"
        var tls = TLSConfiguration(trustRoots: .certificatePEM(certificateText))
        tls.clientCertificate = .init(certificate: .pem(certificateText), privateKey: .pem(keyText), passphrase: "pass-S3CRET")
        var configuration = try RedisConnectionConfiguration(url: "rediss://:pw-S3CRET@127.0.0.1:6380")
        configuration.tls = tls
        for text in ["\(configuration)", String(reflecting: configuration), "\(tls)", "\(String(describing: configuration.tls))"] {
            #expect(!text.contains("S3CRET"), "leaked: \(text)")
            #expect(!text.contains("CERTIFICATEBODY"), "leaked: \(text)")
        }
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(!dumped.contains("S3CRET") && !dumped.contains("CERTIFICATEBODY"), "leaked: \(dumped)")
        #expect("\(tls)".contains("pem("))
    }

    @Test func rediss_URLsCarryTheTLSOptions() throws {
        let configuration = try RedisConnectionConfiguration(
            url: "rediss://alice:pw@redis.example:6390/2?ca=%2Fetc%2Fca.pem&server_name=cache.example&verify=no-hostname&cert=/c.pem&key=/k.pem")
        #expect(configuration.endpoint == .tcp(host: "redis.example", port: 6390))
        #expect(configuration.database == 2)
        let tls = try #require(configuration.tls)
        #expect(tls.trustRoots == .certificateFile("/etc/ca.pem"))
        #expect(tls.serverName == "cache.example")
        #expect(tls.certificateVerification == .noHostnameVerification)
        #expect(tls.clientCertificate == .files(certificatePath: "/c.pem", privateKeyPath: "/k.pem"))
        #expect(try RedisConnectionConfiguration(url: "redis://h").tls == nil)
        #expect(try RedisConnectionConfiguration(url: "rediss://h").tls == TLSConfiguration())
        #expect(try RedisConnectionConfiguration(url: "rediss://h?verify=none").tls?.certificateVerification == TLSConfiguration.CertificateVerification.none)
    }
}
