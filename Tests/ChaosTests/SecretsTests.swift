import ConnPool
import ConnPoolPrometheus
import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import Logging
import RedisServerLauncher
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Passwords never leak: servers with `--requirepass` and with an ACL user, pools with the right and
/// the wrong passwords (and a refused port), every log line captured at trace level through a
/// bootstrap-free LogHandler given to the pool and the factory; the secrets must appear in no log
/// line, no error text (`description`, `debugDescription`, `String(reflecting:)`, `dump`), no
/// description of the configuration, the factory or a connection, no `pool.status()` JSON and no
/// Prometheus exposition.
@Suite("SecretsTests", .serialized, .processExclusive)
struct SecretsTests {
    typealias Pool = ConnectionPool<RedisConnectionFactory>

    /// A random secret (lower-case letters and digits), long enough never to occur by chance.
    static func randomSecret(_ prefix: String) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return prefix + String((0..<24).map { _ in alphabet.randomElement()! })
    }

    /// Every log line, rendered with its metadata (handler, provider and call site) and attached error.
    final class LogCapture: @unchecked Sendable {
        // @unchecked Sendable: `lines` is only read or written with `lock` held.
        private let lock = NSLock()
        private var lines: [String] = []

        func append(_ line: String) {
            lock.lock()
            lines.append(line)
            lock.unlock()
        }

        var all: [String] {
            lock.lock()
            defer { lock.unlock() }
            return lines
        }

        func logger(_ label: String) -> Logger {
            var logger = Logger(label: label) { label in Handler(label: label, capture: self) }
            logger.logLevel = .trace
            return logger
        }

        struct Handler: LogHandler {
            let label: String
            let capture: LogCapture
            var metadata: Logger.Metadata = [:]
            var metadataProvider: Logger.MetadataProvider?
            var logLevel: Logger.Level = .trace

            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }

            func log(event: LogEvent) {
                var merged = metadata
                if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
                if let extra = event.metadata { merged.merge(extra) { $1 } }
                var line = "\(label) \(event.level) \(event.message) \(merged)"
                if let error = event.error { line += " error=\(error) \(String(reflecting: error))" }
                capture.append(line)
            }
        }
    }

    /// Collects every text that must not hold a secret, with where it came from.
    struct Texts {
        var items: [(source: String, text: String)] = []

        mutating func add(_ source: String, _ text: String) { items.append((source, text)) }

        /// `description`, `debugDescription` (when there is one), `String(reflecting:)` and `dump`.
        mutating func addAllForms(_ source: String, _ value: Any) {
            add("\(source) description", String(describing: value))
            if let debug = value as? any CustomDebugStringConvertible { add("\(source) debugDescription", debug.debugDescription) }
            add("\(source) reflecting", String(reflecting: value))
            var dumped = ""
            dump(value, to: &dumped)
            add("\(source) dump", dumped)
        }

        mutating func addError(_ source: String, _ error: any Error) {
            addAllForms("\(source) error", error)
            add("\(source) error localizedDescription", error.localizedDescription)
            if let last = (error as? ConnectionPoolError)?.lastConnectError { addAllForms("\(source) lastConnectError", last) }
        }

        mutating func addPool(_ source: String, _ pool: Pool) throws {
            let status = pool.status()
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            add("\(source) status JSON", String(decoding: try encoder.encode(status), as: UTF8.self))
            addAllForms("\(source) status", status)
            addAllForms("\(source) metrics", pool.metrics())
            add("\(source) prometheus", PrometheusExposition.render([status]))
            addAllForms("\(source) factory", pool.factory)
            addAllForms("\(source) configuration", pool.factory.configuration)
        }

        /// The texts that hold one of `secrets`, as "source: text".
        func leaks(of secrets: [String]) -> [String] {
            items.filter { item in secrets.contains { item.text.contains($0) } }
                .map { "\($0.source): \($0.text.prefix(400))" }
        }

        /// Checks that no text holds any of `secrets`; returns how many texts were checked.
        @discardableResult
        func expectClean(of secrets: [String], sourceLocation: SourceLocation = #_sourceLocation) -> Int {
            for leak in leaks(of: secrets) {
                Issue.record("a secret appears in \(leak)", sourceLocation: sourceLocation)
            }
            return items.count
        }
    }

    static func makePool(url: String, capture: LogCapture, name: String, minSize: Int = 0) throws -> Pool {
        var configuration = try RedisConnectionConfiguration(url: url)
        configuration.connectTimeout = .milliseconds(500)
        configuration.commandTimeout = .seconds(2)
        let factory = try RedisConnectionFactory(configuration: configuration, logger: capture.logger("factory.\(name)"))
        return try Pool(
            factory: factory,
            configuration: PoolConfiguration().name(name).maxSize(4).minSize(minSize).acquireTimeout(.milliseconds(600))
                .circuitBreakerThreshold(3).maintenanceInterval(.milliseconds(200))
                .healthCheck(interval: .milliseconds(200), timeout: .milliseconds(300))
                .connectRetryBackoff(initial: .milliseconds(5), max: .milliseconds(50))
                .leakDetectionThreshold(.seconds(30)),
            logger: capture.logger("pool.\(name)"))
    }

    /// Shuts `pool` down (1 s grace period by default) and records an issue if that has not returned after
    /// 20 s, instead of hanging the test run: a shutdown that starts while a connection attempt is under
    /// way (the breaker's probe of a pool with a wrong password) was seen never to return (see the
    /// partest report: a lost drain wake-up in the pool core, not fixed here).
    ///
    /// The shutdown starts once no connection attempt is under way (the pool has no demand left, so none
    /// starts after that): this test is about secrets, not that race, which stays reported.
    @discardableResult
    static func expectShutdownReturns(
        _ pool: Pool, label: String, gracePeriod: Duration = .seconds(1)
    ) async -> ShutdownReport? {
        let settled = await eventually(timeout: .seconds(10), pollingEvery: .milliseconds(5)) {
            pool.metrics().connecting == 0
        }
        #expect(settled, "\(label) pool: a connection attempt still under way after 10 s: \(pool.metrics())")
        let report = LockedValue<ShutdownReport?>(nil)
        let shutdown = Task {
            let result = await pool.shutdown(gracePeriod: gracePeriod)
            report.withLock { $0 = result }
        }
        let done = await eventually(timeout: .seconds(20), pollingEvery: .milliseconds(10)) {
            report.withLock { $0 != nil }
        }
        if done {
            await shutdown.value
        } else {
            Issue.record("\(label) pool: shutdown(gracePeriod: \(gracePeriod)) did not return within 20 s: \(pool.metrics())")
        }
        return report.withLock { $0 }
    }

    /// Acquires until one fails (a pool with a wrong password or no server), collecting the errors.
    static func collectFailures(_ pool: Pool, into texts: inout Texts, label: String, attempts: Int = 6) async {
        for attempt in 0..<attempts {
            do {
                _ = try await pool.withConnection { try await $0.command("PING") }
                Issue.record("\(label): an acquire succeeded with a wrong password or no server")
            } catch {
                texts.addError("\(label) #\(attempt)", error)
            }
        }
    }

    /// A port with nothing listening: bound to 127.0.0.1, read and closed.
    static func refusedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                guard bind(fd, pointer, length) == 0 else { return -1 }
                return getsockname(fd, pointer, &length)
            }
        }
        #expect(bound == 0)
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test("the checker catches a planted secret in a log line and in an error's reflection")
    func checkerCatchesPlantedSecrets() {
        let secret = Self.randomSecret("Pl")
        struct LeakyError: Error { let password: String }
        var texts = Texts()
        texts.add("log line", "connected with \(secret)")
        texts.addError("leaky", LeakyError(password: secret))
        // The log line, and the error's description, reflection and dump.
        let leaks = texts.leaks(of: [secret])
        #expect(leaks.count == 4, "\(leaks)")
        #expect(texts.leaks(of: [Self.randomSecret("Other")]).isEmpty)
    }

    @Test("requirepass: right, wrong and missing passwords, a refused port, restarts and killed clients leak nothing")
    func requirePass() async throws {
        let secret = Self.randomSecret("Rp")
        let wrong = Self.randomSecret("Wr")
        try await RedisServerProcess.withServer(extraArguments: ["--requirepass", secret]) { server in
            let capture = LogCapture()
            var texts = Texts()

            // The right password: commands, a server error, killed clients, a crash and restart.
            let good = try Self.makePool(url: "redis://:\(secret)@127.0.0.1:\(server.port)/0", capture: capture, name: "good", minSize: 2)
            try await good.warm()
            let key = "secrets:\(UInt64.random(in: 0...UInt64.max))"
            _ = try await good.withConnection { try await $0.command("SET", key, "value") }
            do {
                _ = try await good.withConnection { try await $0.command("INCR", key) }  // WRONGTYPE-like error
                Issue.record("INCR of a non-numeric value succeeded")
            } catch {
                texts.addError("server error", error)
            }
            try await good.withConnection { connection in
                texts.addAllForms("connection", connection)
            }
            let admin = try await RedisConnection.connect(
                configuration: good.factory.configuration, logger: capture.logger("admin"))
            _ = try await admin.command("CLIENT", "KILL", "TYPE", "normal")
            await admin.close()
            texts.addAllForms("closed admin connection", admin)
            // Requests on killed connections fail (the pool closes them) and then work again.
            #expect(await eventually(pollingEvery: .milliseconds(10)) { (try? await good.withConnection { try await $0.command("PING") }) != nil })
            try await server.kill(signal: SIGKILL)
            await Self.collectFailures(good, into: &texts, label: "server down", attempts: 3)
            try texts.addPool("good pool while down", good)
            try await server.restart()
            #expect(await eventually(pollingEvery: .milliseconds(10)) { (try? await good.withConnection { try await $0.command("PING") }) != nil })
            // A blocking-interface round trip from a plain thread.
            let blocking: String = try await withCheckedThrowingContinuation { continuation in
                Thread {
                    continuation.resume(with: Result { try good.withConnectionBlocking { try $0.commandBlocking("PING").string } })
                }.start()
            }
            #expect(blocking == "PONG")
            try texts.addPool("good pool", good)
            texts.addAllForms("good shutdown", await Self.expectShutdownReturns(good, label: "good", gracePeriod: .seconds(2)))

            // A wrong password and no password: every acquire fails (timeout, then fail-fast).
            for (name, url) in [
                ("wrong", "redis://:\(wrong)@127.0.0.1:\(server.port)"),
                ("none", "redis://127.0.0.1:\(server.port)"),
            ] {
                let pool = try Self.makePool(url: url, capture: capture, name: name)
                await Self.collectFailures(pool, into: &texts, label: name)
                try texts.addPool("\(name) pool", pool)
                await Self.expectShutdownReturns(pool, label: name)
            }
            // Direct connects with the wrong password, async and blocking.
            var wrongConfiguration = try RedisConnectionConfiguration(url: "redis://:\(wrong)@127.0.0.1:\(server.port)")
            wrongConfiguration.connectTimeout = .seconds(1)
            do {
                _ = try await RedisConnection.connect(configuration: wrongConfiguration, logger: capture.logger("direct"))
                Issue.record("a wrong password connected")
            } catch {
                texts.addError("direct connect", error)
                if case .authenticationFailed? = error as? RedisError {} else {
                    Issue.record("expected authenticationFailed, got \(error)")
                }
            }
            // The blocking connect on a plain thread, never on a cooperative one.
            let blockingConfiguration = wrongConfiguration
            let blockingLogger = capture.logger("direct")
            let blockingOutcome: Result<Void, any Error> = await withCheckedContinuation { continuation in
                Thread {
                    continuation.resume(returning: Result {
                        _ = try RedisConnection.connectBlocking(configuration: blockingConfiguration, logger: blockingLogger)
                    })
                }.start()
            }
            switch blockingOutcome {
            case .success: Issue.record("a wrong password connected")
            case .failure(let error): texts.addError("direct blocking connect", error)
            }

            // The right password at a port nothing listens on.
            let refused = try Self.makePool(url: "redis://:\(secret)@127.0.0.1:\(try Self.refusedPort())", capture: capture, name: "refused")
            await Self.collectFailures(refused, into: &texts, label: "refused")
            try texts.addPool("refused pool", refused)
            await Self.expectShutdownReturns(refused, label: "refused")

            let lines = capture.all
            for (index, line) in lines.enumerated() { texts.add("log line \(index)", line) }
            #expect(lines.contains { $0.contains("opening a connection failed") }, "the failures were logged")
            #expect(lines.contains { $0.contains("redis connection opened") }, "trace/debug lines were captured")
            let checked = texts.expectClean(of: [secret, wrong])
            #expect(checked > 50)
        }
    }

    @Test("ACL user: right and wrong passwords, an unknown user, killed clients leak nothing")
    func aclUser() async throws {
        let secret = Self.randomSecret("Acl")
        let wrong = Self.randomSecret("Bad")
        try await RedisServerProcess.withServer(extraArguments: [
            "--user", "alice", "on", ">\(secret)", "~*", "&*", "+@all",
        ]) { server in
            let capture = LogCapture()
            var texts = Texts()

            let good = try Self.makePool(url: "redis://alice:\(secret)@127.0.0.1:\(server.port)", capture: capture, name: "alice", minSize: 1)
            try await good.warm()
            let whoami = try await good.withConnection { try await $0.command("ACL", "WHOAMI").string }
            #expect(whoami == "alice")
            try await good.withConnection { connection in
                texts.addAllForms("connection", connection)
                // Kills this very connection too: its reply may never come.
                _ = try? await connection.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
            }
            #expect(await eventually(pollingEvery: .milliseconds(10)) { (try? await good.withConnection { try await $0.command("PING") }) != nil })
            do {
                _ = try await good.withConnection { try await $0.command("ACL", "SETUSER") }  // wrong arity
            } catch {
                texts.addError("server error", error)
            }
            // ACL LOG records failed logins: its text must not hold the passwords either.
            try texts.addPool("alice pool", good)

            for (name, url) in [
                ("alice-wrong", "redis://alice:\(wrong)@127.0.0.1:\(server.port)"),
                ("mallory", "redis://mallory:\(secret)@127.0.0.1:\(server.port)"),
            ] {
                let pool = try Self.makePool(url: url, capture: capture, name: name)
                await Self.collectFailures(pool, into: &texts, label: name)
                try texts.addPool("\(name) pool", pool)
                await Self.expectShutdownReturns(pool, label: name)
            }
            let log = try await good.withConnection { try await $0.command("ACL", "LOG") }
            texts.addAllForms("ACL LOG reply", log)
            texts.addAllForms("alice shutdown", await Self.expectShutdownReturns(good, label: "alice", gracePeriod: .seconds(2)))

            let lines = capture.all
            for (index, line) in lines.enumerated() { texts.add("log line \(index)", line) }
            #expect(lines.contains { $0.contains("opening a connection failed") })
            texts.expectClean(of: [secret, wrong])
        }
    }

    @Test("TLS: client keys, passphrases and certificate contents leak nowhere, with right and wrong material")
    func tls() async throws {
        let set = try await onThread { try TestCertificates.shared() }
        let secret = Self.randomSecret("Tp")
        let wrongPassphrase = Self.randomSecret("Wp")
        let certificatePEM = try String(contentsOfFile: set.clientCertificatePath, encoding: .utf8)
        let keyPEM = try String(contentsOfFile: set.encryptedClientKeyPath, encoding: .utf8)
        let caPEM = try String(contentsOfFile: set.caCertificatePath, encoding: .utf8)
        /// A line of each PEM body: distinctive base64 that must appear in no text.
        func bodyLine(_ pem: String) -> String {
            pem.split(separator: "\n").dropFirst().first.map(String.init) ?? pem
        }
        let material = [secret, wrongPassphrase, set.clientKeyPassphrase, bodyLine(certificatePEM), bodyLine(keyPEM), bodyLine(caPEM)]
        try await RedisServerProcess.withServer(
            extraArguments: ["--requirepass", secret], tls: .init(certificates: set, clientAuthentication: .required)
        ) { server in
            let capture = LogCapture()
            var texts = Texts()
            func tlsPool(_ name: String, passphrase: String?, certificate: Bool = true) throws -> Pool {
                var configuration = try RedisConnectionConfiguration(url: "rediss://:\(secret)@127.0.0.1:\(server.tlsPort!)")
                configuration.tls?.trustRoots = .certificatePEM(caPEM)
                if certificate {
                    configuration.tls?.clientCertificate = .init(
                        certificate: .pem(certificatePEM), privateKey: .pem(keyPEM), passphrase: passphrase)
                }
                configuration.connectTimeout = .seconds(2)
                configuration.commandTimeout = .seconds(2)
                let factory = try RedisConnectionFactory(configuration: configuration, logger: capture.logger("factory.\(name)"))
                return try Pool(
                    factory: factory,
                    configuration: PoolConfiguration().name(name).maxSize(2).acquireTimeout(.milliseconds(800))
                        .circuitBreakerThreshold(3).connectRetryBackoff(initial: .milliseconds(5), max: .milliseconds(50)),
                    logger: capture.logger("pool.\(name)"))
            }

            let good = try tlsPool("tls-good", passphrase: set.clientKeyPassphrase)
            let pong = try await good.withConnection { connection in
                texts.addAllForms("tls connection", connection)
                return try await connection.command("PING")
            }
            #expect(pong == .status("PONG"))
            try texts.addPool("tls good pool", good)
            await Self.expectShutdownReturns(good, label: "tls-good")

            for (name, pool) in [
                ("tls-wrong-passphrase", try tlsPool("tls-wrong-passphrase", passphrase: wrongPassphrase)),
                ("tls-no-passphrase", try tlsPool("tls-no-passphrase", passphrase: nil)),
                ("tls-no-certificate", try tlsPool("tls-no-certificate", passphrase: nil, certificate: false)),
            ] {
                await Self.collectFailures(pool, into: &texts, label: name, attempts: 3)
                try texts.addPool("\(name) pool", pool)
                await Self.expectShutdownReturns(pool, label: name)
            }
            let lines = capture.all
            for (index, line) in lines.enumerated() { texts.add("log line \(index)", line) }
            #expect(lines.contains { $0.contains("opening a connection failed") })
            let checked = texts.expectClean(of: material)
            #expect(checked > 30)
        }
    }
}
