import ConnPool
import ConnPoolRedis
import Testing

@Suite("RedisConnectionConfiguration: URLs and secrets")
struct RedisConfigurationTests {
    @Test func parsesTCPURLs() throws {
        let plain = try RedisConnectionConfiguration(url: "redis://example.com")
        #expect(plain.endpoint == .tcp(host: "example.com", port: 6379))
        #expect(plain.database == 0 && plain.password == nil && plain.username == nil)

        let full = try RedisConnectionConfiguration(url: "redis://alice:pa%40ss%3Aw%2Frd%25@10.0.0.5:7000/4")
        #expect(full.endpoint == .tcp(host: "10.0.0.5", port: 7000))
        #expect(full.username == "alice")
        #expect(full.password == "pa@ss:w/rd%")
        #expect(full.database == 4)

        let passwordOnly = try RedisConnectionConfiguration(url: "REDIS://:secret@localhost:6380/")
        #expect(passwordOnly.endpoint == .tcp(host: "localhost", port: 6380))
        #expect(passwordOnly.username == nil)
        #expect(passwordOnly.password == "secret")
        #expect(passwordOnly.database == 0)

        let rawSpecials = try RedisConnectionConfiguration(url: "redis://:a/b?c@host/2")
        #expect(rawSpecials.password == "a/b?c")
        #expect(rawSpecials.endpoint == .tcp(host: "host", port: 6379))
        #expect(rawSpecials.database == 2)

        let ipv6 = try RedisConnectionConfiguration(url: "redis://[::1]:6390?db=7")
        #expect(ipv6.endpoint == .tcp(host: "::1", port: 6390))
        #expect(ipv6.endpoint.description == "[::1]:6390")
        #expect(ipv6.database == 7)

        let bigDatabase = try RedisConnectionConfiguration(url: "redis://h/1000")
        #expect(bigDatabase.database == 1000)  // the server decides (see the type's documentation)
    }

    @Test func parsesUnixURLs() throws {
        let simple = try RedisConnectionConfiguration(url: "unix:///var/run/redis/redis.sock")
        #expect(simple.endpoint == .unixSocket(path: "/var/run/redis/redis.sock"))
        let withDatabase = try RedisConnectionConfiguration(url: "unix:///tmp/my%20redis.sock?db=3")
        #expect(withDatabase.endpoint == .unixSocket(path: "/tmp/my redis.sock"))
        #expect(withDatabase.database == 3)
        let withCredentials = try RedisConnectionConfiguration(url: "unix://bob:pw@/tmp/r.sock")
        #expect(withCredentials.username == "bob" && withCredentials.password == "pw")
        #expect(withCredentials.endpoint == .unixSocket(path: "/tmp/r.sock"))
    }

    @Test(arguments: [
        ("localhost:6379", RedisConfigurationError.malformedURL(reason: "missing '://' after the scheme")),
        ("://host", .malformedURL(reason: "missing scheme")),
        ("http://host", .unknownScheme("http")),
        ("valkeys://host", .unknownScheme("valkeys")),
        ("rediss://host?verify=maybe", .invalidTLS(reason: "verify=maybe is not one of full, no-hostname, none")),
        ("rediss://host?cert=/c.pem", .invalidTLS(reason: "a client certificate needs both 'cert' and 'key' in the URL")),
        ("redis://host?ca=/ca.pem", .unsupportedQueryParameter("ca")),
        ("redis://", .emptyHost),
        ("redis://:6379", .emptyHost),
        ("redis://user:pw@/0", .emptyHost),
        ("redis://host:0", .portOutOfRange(0)),
        ("redis://host:65536", .portOutOfRange(65536)),
        ("redis://host:99999999999999999999", .portOutOfRange(999_999_999)),
        ("redis://host:port", .invalidPort("<not shown: 4 characters>")),
        ("redis://host:", .invalidPort("")),
        ("redis://host:-1", .invalidPort("-1")),
        ("redis://host/x", .invalidDatabase("<not shown: 1 characters>")),
        ("redis://host/-1", .invalidDatabase("-1")),
        ("redis://host/1/2", .invalidDatabase("<not shown: 3 characters>")),
        ("redis://host?db=", .invalidDatabase("")),
        ("redis://host?db=1&db=x", .invalidDatabase("<not shown: 1 characters>")),
        ("redis://host?timeout=1", .unsupportedQueryParameter("timeout")),
        ("redis://::1:6379", .malformedURL(reason: "an IPv6 address must be written in brackets, as [::1]")),
        ("redis://[::1:6379", .malformedURL(reason: "missing ']' after an IPv6 address")),
        ("redis://host#frag", .malformedURL(reason: "fragments ('#') are not allowed")),
        ("redis://:%zz@host", .malformedURL(reason: "invalid percent-encoding in the password")),
        ("redis://user@host", .invalidCredentials(
            reason: "a user name needs a password: use redis://user:password@host or redis://:password@host")),
        ("unix://", .invalidSocketPath(reason: "expected unix:///absolute/path")),
        ("unix:///", .invalidSocketPath(reason: "the path is empty")),
        ("unix://relative/path", .invalidSocketPath(reason: "expected unix:///absolute/path")),
        ("unix:///tmp/x.sock?db=abc", .invalidDatabase("<not shown: 3 characters>")),
        ("ftp://host", .unknownScheme("<not shown: 3 characters>")),
    ])
    func rejectsBadURLs(url: String, expected: RedisConfigurationError) {
        #expect(throws: expected) { try RedisConnectionConfiguration(url: url) }
    }

    @Test func validatesProperties() throws {
        #expect(throws: RedisConfigurationError.emptyHost) { try RedisConnectionConfiguration(host: "") }
        #expect(throws: RedisConfigurationError.portOutOfRange(70000)) {
            try RedisConnectionConfiguration(port: 70000)
        }
        #expect(throws: RedisConfigurationError.self) {
            try RedisConnectionConfiguration(unixSocketPath: "/" + String(repeating: "x", count: 200))
        }
        var configuration = try RedisConnectionConfiguration()
        configuration.database = -1
        #expect(throws: RedisConfigurationError.databaseOutOfRange(-1)) { try configuration.validate() }
        configuration.database = 0
        configuration.commandTimeout = .zero
        #expect(throws: RedisConfigurationError.invalidTimeout(name: "commandTimeout", value: .zero)) {
            try configuration.validate()
        }
        configuration.commandTimeout = nil
        configuration.clientName = "has space"
        #expect(throws: RedisConfigurationError.invalidClientName) { try configuration.validate() }
        configuration.clientName = "ok-name"
        configuration.username = "alice"
        #expect(throws: RedisConfigurationError.invalidCredentials(reason: "a user name needs a password")) {
            try configuration.validate()
        }
        configuration.password = "pw"
        try configuration.validate()
        // errors are readable
        #expect("\(RedisConfigurationError.portOutOfRange(0))" == "Redis port 0 is out of range 1...65535")
        #expect("\(RedisConfigurationError.unknownScheme("valkeys"))".contains("rediss:// (TLS)"))
    }

    static let secret = "hunter2-S3CRET-value"

    @Test func passwordNeverAppearsInTextOrReflection() throws {
        var configuration = try RedisConnectionConfiguration(url: "redis://alice:\(Self.secret)@127.0.0.1:6379/1")
        configuration.clientName = "app"
        #expect(configuration.password == Self.secret)

        var texts = [
            configuration.description,
            configuration.debugDescription,
            "\(configuration)",
            String(describing: configuration),
            String(reflecting: configuration),
            "\(Mirror(reflecting: configuration).children.map { "\($0.label ?? ""): \($0.value)" })",
        ]
        var dumped = ""
        dump(configuration, to: &dumped)
        texts.append(dumped)

        let factory = try RedisConnectionFactory(configuration: configuration)
        texts.append("\(factory)")
        texts.append(String(reflecting: factory))
        var dumpedFactory = ""
        dump(factory, to: &dumpedFactory)
        texts.append(dumpedFactory)
        var dumpedEndpoint = ""
        dump([configuration], to: &dumpedEndpoint)
        texts.append(dumpedEndpoint)

        for text in texts {
            #expect(!text.contains(Self.secret), "password leaked in: \(text)")
            #expect(!text.contains("hunter2"), "password leaked in: \(text)")
        }
        #expect(configuration.description.contains("password: <redacted>"))
        #expect(dumped.contains("<redacted>"))
        #expect(configuration.description.contains("username: alice"))
    }

    @Test(arguments: [
        "redis://:hunter2-S3CRET-value@host:99999",
        "redis://:hunter2-S3CRET-value@",
        "redis://:hunter2-S3CRET-value@host/db",
        "rediss://:hunter2-S3CRET-value@host?verify=hunter2-S3CRET-value",
        "rediss://:hunter2-S3CRET-value@host?hunter2-S3CRET-value=1",
        "hunter2-S3CRET-value://host",
        "redis//:hunter2-S3CRET-value@host",
        "redis://:hunter2-S3CRET-value%zz@host",
        "redis://:hunter2-S3CRET-value@host:hunter2-S3CRET-value",
        "redis://alice:hunter2-S3CRET-value",
        "redis://alice:hunter2-S3CRET-value/0",
        "unix://:hunter2-S3CRET-value@/tmp/x?hunter2-S3CRET-value",
        "redis://:hunter2-S3CRET-value@host?hunter2-S3CRET-value=1",
        "redis://:hunter2-S3CRET-value@host/hunter2-S3CRET-value",
    ])
    func passwordNeverAppearsInURLErrors(url: String) {
        do {
            _ = try RedisConnectionConfiguration(url: url)
            Issue.record("expected an error")
        } catch {
            #expect(!"\(error)".contains("hunter2"), "leaked: \(error)")
            #expect(!String(reflecting: error).contains("hunter2"), "leaked: \(String(reflecting: error))")
        }
    }

    @Test func passwordNeverAppearsInConnectErrors() async throws {
        // refused, through the pool: the pool's acquire timeout quotes the last connect error
        var configuration = try RedisConnectionConfiguration(port: freeLoopbackPort())
        configuration.password = Self.secret
        let factory = try RedisConnectionFactory(configuration: configuration)
        let pool = try ConnectionPool(factory: factory, configuration: PoolConfiguration().acquireTimeout(.milliseconds(300)))
        do {
            try await pool.withConnection { _ in }
            Issue.record("expected an error")
        } catch {
            if "\(error)".contains("last connect error") {
                #expect("\(error)".contains("connection refused"))
            }
            #expect(!"\(error)".contains("hunter2"))
            #expect(!String(reflecting: error).contains("hunter2"))
        }
        await pool.shutdown()

        // a server that echoes a wrong password is redacted too (AUTH against a server without one
        // answers with an error; whatever it says, the secret is scrubbed)
        let server = try await SharedServer.get()
        var noPasswordServer = try RedisConnectionConfiguration(port: server.port)
        noPasswordServer.password = Self.secret
        noPasswordServer.username = "nosuchuser"
        do {
            _ = try await RedisConnection.connect(configuration: noPasswordServer)
            Issue.record("expected an error")
        } catch {
            #expect(!"\(error)".contains("hunter2"))
            #expect(!String(reflecting: error).contains("hunter2"))
        }
    }

    @Test func connectionDescriptionHasNoPassword() async throws {
        var configuration = try await SharedServer.configuration()
        configuration.password = nil
        let connection = try await RedisConnection.connect(configuration: configuration)
        defer { connection.closeBlocking() }
        #expect("\(connection)".hasPrefix("RedisConnection(endpoint: 127.0.0.1:"))
        var dumped = ""
        dump(connection, to: &dumped)
        #expect(!dumped.isEmpty)
    }
}
