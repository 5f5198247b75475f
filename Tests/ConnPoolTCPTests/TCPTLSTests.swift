import COpenSSL
import ConnPool
import ConnPoolIO
import ConnPoolTCP
import ConnPoolTestSupport
import Glibc
import RedisServerLauncher
import Testing

/// The server half of TLS for the tests' in-process servers: an OpenSSL server context with a
/// certificate from ``TestCertificates``, optionally requiring a client certificate.
final class TLSServerContext: @unchecked Sendable {
    // @unchecked Sendable: `context` is configured in init and only read afterwards (OpenSSL allows one
    // SSL_CTX to be shared by threads once set up).
    let context: OpaquePointer

    init(certificatePath: String, keyPath: String, caPath: String, requireClientCertificate: Bool = false) throws {
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw TLSError.handshakeFailed(detail: "SSL_CTX_new") }
        self.context = context
        guard SSL_CTX_use_certificate_chain_file(context, certificatePath) == 1,
            SSL_CTX_use_PrivateKey_file(context, keyPath, SSL_FILETYPE_PEM) == 1,
            SSL_CTX_load_verify_locations(context, caPath, nil) == 1
        else { throw TLSError.invalidConfiguration(field: "test server", reason: "cannot load \(certificatePath)") }
        if requireClientCertificate {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        }
        // A server that verifies clients needs a session id context to resume sessions.
        let name: [UInt8] = Array("connpool-tests".utf8)
        SSL_CTX_set_session_id_context(context, name, UInt32(name.count))
    }

    deinit {
        SSL_CTX_free(context)
    }

    /// A handler that completes the TLS handshake on the accepted (blocking) socket, then echoes every
    /// byte it decrypts. Writes never raise SIGPIPE (the package's socket BIO).
    func echo() -> @Sendable (ServerPeer) -> Void {
        { [self] peer in
            guard let ssl = SSL_new(context), let bio = TLSSession.makeSocketBIO(fd: peer.fd) else { return }
            defer { SSL_free(ssl) }
            SSL_set_bio(ssl, bio, bio)
            guard SSL_accept(ssl) == 1 else { return }
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let count = SSL_read(ssl, &buffer, Int32(buffer.count))
                if count <= 0 { return }
                var offset = 0
                while offset < Int(count) {
                    let written = buffer.withUnsafeBytes { SSL_write(ssl, $0.baseAddress! + offset, count - Int32(offset)) }
                    if written <= 0 { return }
                    offset += Int(written)
                }
            }
        }
    }
}

/// The TCP backend over TLS, against an in-process TLS echo server (OpenSSL, certificates made by
/// ``TestCertificates``).
@Suite("TCP over TLS", .serialized, .processExclusive)
struct TCPTLSTests {
    static func certificates() async throws -> TestCertificates {
        try await onThread { try TestCertificates.shared() }
    }

    static func server(_ set: TestCertificates, requireClientCertificate: Bool = false) throws -> (TestServer, TLSServerContext) {
        let context = try TLSServerContext(
            certificatePath: set.serverCertificatePath, keyPath: set.serverKeyPath, caPath: set.caCertificatePath,
            requireClientCertificate: requireClientCertificate)
        return (try TestServer(handler: context.echo()), context)
    }

    static func configuration(_ server: TestServer, _ set: TestCertificates) -> TCPConnectionConfiguration {
        var configuration = testConfiguration(server)
        configuration.tls = TLSConfiguration(trustRoots: .certificateFile(set.caCertificatePath))
        return configuration
    }

    @Test func framingWorksOverTLSAsyncAndBlocking() async throws {
        let set = try await Self.certificates()
        let (server, context) = try Self.server(set)
        defer { server.stop() }
        _ = context
        let configuration = Self.configuration(server, set)
        let connection = try await TCPConnection.connect(configuration)
        #expect(connection.isTLS)
        try await connection.send("hello over tls\n")
        #expect(try await connection.readLine() == "hello over tls")
        // More than a TLS record and the socket buffers, read back by exact length.
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try await connection.send(payload)
        #expect(try await connection.read(exactly: payload.count) == payload)
        await connection.close()

        let blocking = try await onThread { try TCPConnection.connectBlocking(configuration) }
        let line = try await onThread { () throws -> String in
            try blocking.sendBlocking("blocking\n")
            return try blocking.readLineBlocking()
        }
        #expect(line == "blocking")
        blocking.closeBlocking()
    }

    @Test func aWrongCAAndAPlainServerFailWithTypedErrors() async throws {
        let set = try await Self.certificates()
        let (server, context) = try Self.server(set)
        defer { server.stop() }
        _ = context
        var configuration = Self.configuration(server, set)
        configuration.tls?.trustRoots = .certificateFile(set.wrongCACertificatePath)
        do {
            _ = try await TCPConnection.connect(configuration)
            Issue.record("connected with the wrong CA")
        } catch let TCPConnectionError.tls(.certificateVerificationFailed(problem, _)) {
            #expect(problem == .untrustedIssuer)
        }

        // A plain server that speaks first (a greeting, as SMTP or FTP do): OpenSSL reads it as a bad
        // record, at once.
        let greeter = try TestServer { peer in
            peer.write("220 plain text here\r\n")
            _ = peer.readSome()
        }
        defer { greeter.stop() }
        var plain = Self.configuration(greeter, set)
        plain.connectTimeout = .seconds(60)
        let started = ContinuousClock.now
        do {
            _ = try await TCPConnection.connect(plain)
            Issue.record("a TLS handshake with a plain server succeeded")
        } catch let TCPConnectionError.tls(error) {
            guard case .serverDidNotSpeakTLS = error else {
                Issue.record("expected serverDidNotSpeakTLS, got \(error)")
                return
            }
            #expect("\(error)".contains("plain-text port"))
        }
        #expect(ContinuousClock.now - started < .seconds(15))  // far below the 60 s connect timeout
    }

    @Test func mutualTLSAndSessionResumptionThroughAFactory() async throws {
        let set = try await Self.certificates()
        let (server, context) = try Self.server(set, requireClientCertificate: true)
        defer { server.stop() }
        _ = context
        var configuration = Self.configuration(server, set)
        // Without a client certificate: the server refuses after the handshake, at the first exchange.
        let refused = try await TCPConnection.connect(configuration)
        do {
            try await refused.send("x\n")
            _ = try await refused.readLine()
            Issue.record("the server accepted a client without a certificate")
        } catch let TCPConnectionError.tls(error) {
            guard case .clientCertificateRequired = error else {
                Issue.record("expected clientCertificateRequired, got \(error)")
                return
            }
        }
        #expect(refused.isBroken)
        await refused.close()

        configuration.tls?.clientCertificate = .files(
            certificatePath: set.clientCertificatePath, privateKeyPath: set.encryptedClientKeyPath,
            passphrase: set.clientKeyPassphrase)
        let factory = try TCPConnectionFactory(configuration: configuration)
        let first = try await factory.makeConnection()
        try await first.send("one\n")
        #expect(try await first.readLine() == "one")  // reads the session tickets too
        #expect(!first.isTLSSessionReused)
        let second = try await factory.makeConnection()
        try await second.send("two\n")
        #expect(try await second.readLine() == "two")
        #expect(second.isTLSSessionReused)
        await first.close()
        await second.close()
    }

    @Test func twoCallsAtOnceOnOneConnectionThrowConcurrentUse() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .seconds(10)))
        let reader = Task { try await connection.readLine() }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { connection.isInUse })
        await #expect(throws: TCPConnectionError.concurrentUse) { try await connection.send("x\n") }
        #expect(throws: TCPConnectionError.concurrentUse) { try connection.sendBlocking("x\n") }
        await connection.close()
        _ = await reader.result
    }
}
