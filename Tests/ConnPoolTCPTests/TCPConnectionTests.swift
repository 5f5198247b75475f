import ConnPoolIO
import ConnPoolTCP
import ConnPoolTestSupport
import Foundation
import Glibc
import Testing

/// Yields until the shared reactor holds more waits than `baseline` (the task under test is then most
/// likely suspended in its wait), for at most 10 s of wall time. A hint, not a proof: the reactor is
/// shared with every other test of the process, whose waits start and end meanwhile (in a parallel run
/// the count can drop below the baseline and never pass it again), so callers must not assert on it.
@discardableResult
func reactorWaitStarted(above baseline: Int) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(10)
    while IOReactor.shared.pendingWaitCount <= baseline {
        if ContinuousClock.now > deadline { return false }
        await Task.yield()
    }
    return true
}

@Suite("TCPConnection", .serialized, .processExclusive)
struct TCPConnectionTests {
    // MARK: Exact reads and sends

    @Test("send and read exactly, async")
    func sendReadExactAsync() async throws {
        let server = try TestServer(handler: Handlers.echoBytes)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        #expect(connection.remoteAddress == "127.0.0.1:\(server.port)")
        try await connection.send([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        #expect(try await connection.read(exactly: 10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        try await connection.send("hello")
        #expect(try await connection.read(exactly: 2) == Array("he".utf8))
        #expect(try await connection.read(exactly: 3) == Array("llo".utf8))
        #expect(try await connection.read(exactly: 0) == [])
        #expect(!connection.isBroken)
    }

    @Test("send and read exactly, blocking, on a plain thread")
    func sendReadExactBlocking() async throws {
        let server = try TestServer(handler: Handlers.echoBytes)
        defer { server.stop() }
        let configuration = testConfiguration(server)
        try await onThread {
            let connection = try TCPConnection.connectBlocking(configuration)
            defer { connection.closeBlocking() }
            try connection.sendBlocking([9, 8, 7])
            #expect(try connection.readBlocking(exactly: 3) == [9, 8, 7])
            try connection.sendBlocking("abc")
            #expect(try connection.readBlocking(exactly: 3) == Array("abc".utf8))
        }
    }

    @Test("1 MiB round trip, async and blocking")
    func oneMebibyteRoundTrip() async throws {
        let server = try TestServer(handler: Handlers.sinkThenEcho)
        defer { server.stop() }
        let size = 1 << 20
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) }
        let message = [UInt8(size >> 24 & 0xFF), UInt8(size >> 16 & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size & 0xFF)] + payload

        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        try await connection.send(message)
        let echoed = try await connection.read(exactly: size)
        #expect(echoed == payload)

        let configuration = testConfiguration(server)
        try await onThread {
            let blocking = try TCPConnection.connectBlocking(configuration)
            defer { blocking.closeBlocking() }
            try blocking.sendBlocking(message)
            let echoed = try blocking.readBlocking(exactly: size)
            #expect(echoed == payload)
        }
    }

    // MARK: Delimiter framing

    @Test("delimiter framing with data split across many small writes")
    func delimiterAcrossSmallWrites() async throws {
        let text = "first line\r\nsecond\r\n\r\nfourth, after an empty one\r\ntail"
        let server = try TestServer { peer in
            _ = peer.readLine()  // wait for the client's go
            for byte in text.utf8 {
                guard peer.write([byte]) else { return }
                usleep(300)  // the client's reads see one or a few bytes at a time
            }
            _ = peer.readLine()
        }
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        try await connection.send("go\n")
        let crlf: [UInt8] = [0x0D, 0x0A]
        #expect(try await connection.read(until: crlf, maxLength: 100) == Array("first line".utf8))
        #expect(try await connection.read(until: crlf, maxLength: 100, includeDelimiter: true) == Array("second\r\n".utf8))
        #expect(try await connection.read(until: crlf, maxLength: 100) == [])
        #expect(try await connection.readLine(maxLength: 100) == "fourth, after an empty one")
        #expect(try await connection.read(exactly: 4) == Array("tail".utf8))
    }

    @Test("bytes after a delimiter stay buffered for the next read")
    func bytesAfterDelimiterAreKept() async throws {
        let server = try TestServer { peer in
            _ = peer.readLine()
            peer.write("one\ntwo\nthree\nBINARY")  // one write: one recv on the client gets it all
            _ = peer.readLine()
        }
        defer { server.stop() }
        let configuration = testConfiguration(server)
        try await onThread {
            let connection = try TCPConnection.connectBlocking(configuration)
            defer { connection.closeBlocking() }
            try connection.sendBlocking("go\n")
            #expect(try connection.readLineBlocking() == "one")
            #expect(try connection.readLineBlocking() == "two")
            #expect(try connection.readBlocking(until: Array("e\n".utf8), maxLength: 10) == Array("thre".utf8))
            #expect(try connection.readBlocking(exactly: 6) == Array("BINARY".utf8))
        }
    }

    @Test("a frame longer than maxLength throws delimiterNotFound and breaks the connection")
    func frameTooLong() async throws {
        let server = try TestServer { peer in
            _ = peer.readLine()
            peer.write(String(repeating: "x", count: 100_000) + "\n")
            _ = peer.readLine()
        }
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        try await connection.send("go\n")
        await #expect(throws: TCPConnectionError.delimiterNotFound(maxLength: 50_000)) {
            try await connection.read(until: [0x0A], maxLength: 50_000)
        }
        #expect(connection.isBroken)
        await #expect(throws: TCPConnectionError.connectionBroken) { try await connection.read(exactly: 1) }
    }

    @Test("a long frame within maxLength grows the buffer")
    func longFrameWithinLimit() async throws {
        let line = String(repeating: "y", count: 200_000)
        let server = try TestServer { peer in
            _ = peer.readLine()
            peer.write(line + "\nnext\n")
            _ = peer.readLine()
        }
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        try await connection.send("go\n")
        #expect(try await connection.readLine(maxLength: 200_000) == line)
        #expect(try await connection.readLine() == "next")
    }

    // MARK: Timeouts, cancellation, peer close

    @Test("read timeout, async: readTimedOut, broken afterwards")
    func readTimeoutAsync() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .milliseconds(200)))
        defer { connection.closeBlocking() }
        let start = ContinuousClock.now
        await #expect(throws: TCPConnectionError.readTimedOut(timeout: .milliseconds(200))) {
            try await connection.readLine()
        }
        let elapsed = start.duration(to: .now)
        #expect(elapsed >= .milliseconds(200))
        #expect(elapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines
        #expect(connection.isBroken)
        await #expect(throws: TCPConnectionError.connectionBroken) { try await connection.send("x") }
    }

    @Test("read timeout, blocking")
    func readTimeoutBlocking() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let configuration = testConfiguration(server, readTimeout: .milliseconds(150))
        try await onThread {
            let connection = try TCPConnection.connectBlocking(configuration)
            defer { connection.closeBlocking() }
            let start = ContinuousClock.now
            #expect(throws: TCPConnectionError.readTimedOut(timeout: .milliseconds(150))) {
                try connection.readBlocking(exactly: 1)
            }
            #expect(start.duration(to: .now) >= .milliseconds(150))
            #expect(connection.isBroken)
        }
    }

    @Test("write timeout when the peer does not read, async and blocking")
    func writeTimeout() async throws {
        let server = try TestServer(handler: Handlers.neverReads)
        defer { server.stop() }
        var configuration = testConfiguration(server)
        configuration.writeTimeout = .milliseconds(200)
        let big = [UInt8](repeating: 0x41, count: 64 << 20)  // more than the socket buffers hold

        let connection = try await TCPConnection.connect(configuration)
        defer { connection.closeBlocking() }
        let start = ContinuousClock.now
        await #expect(throws: TCPConnectionError.writeTimedOut(timeout: .milliseconds(200))) {
            try await connection.send(big)
        }
        let elapsed = start.duration(to: .now)
        #expect(elapsed >= .milliseconds(200))
        #expect(elapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines
        #expect(connection.isBroken)

        let blockingConfiguration = configuration
        try await onThread {
            let connection = try TCPConnection.connectBlocking(blockingConfiguration)
            defer { connection.closeBlocking() }
            #expect(throws: TCPConnectionError.writeTimedOut(timeout: .milliseconds(200))) {
                try connection.sendBlocking(big)
            }
            #expect(connection.isBroken)
        }
    }

    @Test("a cancelled read throws CancellationError at once and breaks the connection")
    func cancelledRead() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server, readTimeout: .seconds(30)))
        defer { connection.closeBlocking() }
        let waits = IOReactor.shared.pendingWaitCount
        let reader = Task { try await connection.readLine() }
        await reactorWaitStarted(above: waits)  // cancel it while it waits, not before
        let start = ContinuousClock.now
        reader.cancel()
        await #expect(throws: CancellationError.self) { try await reader.value }
        #expect(start.duration(to: .now) < .seconds(10))  // a sanity bound, loose for loaded CI machines
        #expect(connection.isBroken)
    }

    @Test("a peer that closed is detected by isValid without a round trip")
    func peerCloseDetected() async throws {
        let closed = ServerFlag()
        let server = try TestServer { peer in
            shutdown(peer.fd, Int32(SHUT_RDWR))
            closed.set()
        }
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        defer { connection.closeBlocking() }
        #expect(await eventually(pollingEvery: .milliseconds(2)) { closed.isSet })
        // No probe is configured: isValid sends nothing. It turns false once the FIN has arrived.
        #expect(await eventually(pollingEvery: .milliseconds(2)) { !connection.isValidBlocking(timeout: .seconds(1)) })
        #expect(connection.isBroken)
        let async = try await TCPConnection.connect(testConfiguration(server))
        defer { async.closeBlocking() }
        #expect(await eventually(timeout: .seconds(5), pollingEvery: .milliseconds(2)) { server.accepted >= 2 })
        #expect(await eventually(timeout: .seconds(5), pollingEvery: .milliseconds(2)) { await !async.isValid(timeout: .seconds(1)) })
    }

    @Test("a live idle connection is valid without a probe; a closed one is not")
    func validWithoutProbe() async throws {
        let server = try TestServer(handler: Handlers.echoLines)
        defer { server.stop() }
        let connection = try await TCPConnection.connect(testConfiguration(server))
        #expect(await connection.isValid(timeout: .seconds(1)))
        #expect(connection.isValidBlocking(timeout: .seconds(1)))
        try await connection.send("still works\n")
        #expect(try await connection.readLine() == "still works")
        await connection.close()
        await connection.close()  // closes once; a second close is harmless
        #expect(connection.isClosed)
        #expect(connection.isBroken)
        #expect(!(await connection.isValid(timeout: .seconds(1))))
        await #expect(throws: TCPConnectionError.connectionClosed) { try await connection.send("x") }
    }

    // MARK: Validation probe

    @Test("probe success and failure, async and blocking")
    func probe() async throws {
        let server = try TestServer(handler: Handlers.redisLike)
        defer { server.stop() }
        let good = TCPValidationProbe(request: "PING\r\n", expectedResponse: "+PONG\r\n")
        let connection = try await TCPConnection.connect(testConfiguration(server, probe: good))
        defer { connection.closeBlocking() }
        #expect(await connection.isValid(timeout: .seconds(2)))
        #expect(try await onThread { connection.isValidBlocking(timeout: .seconds(2)) })  // a round trip
        try await connection.send("ECHO after probes\n")
        #expect(try await connection.readLine() == "after probes")

        // The server answers -WHAT to this request: same length as expected, different bytes.
        let bad = TCPValidationProbe(request: "HELLO\r\n", expectedResponse: "+PONG\r\n")
        let wrong = try await TCPConnection.connect(testConfiguration(server, probe: bad))
        defer { wrong.closeBlocking() }
        #expect(!(await wrong.isValid(timeout: .seconds(2))))
        #expect(wrong.isBroken)

        let configuration = testConfiguration(server, probe: bad)
        let blockingResult = try await onThread {
            let connection = try TCPConnection.connectBlocking(configuration)
            defer { connection.closeBlocking() }
            return (connection.isValidBlocking(timeout: .seconds(2)), connection.isBroken)
        }
        #expect(blockingResult == (false, true))
    }

    @Test("a probe that gets no answer fails within its timeout")
    func probeTimeout() async throws {
        let server = try TestServer(handler: Handlers.silent)
        defer { server.stop() }
        let probe = TCPValidationProbe(request: "PING\r\n", expectedResponse: "+PONG\r\n")
        let connection = try await TCPConnection.connect(testConfiguration(server, probe: probe))
        defer { connection.closeBlocking() }
        let start = ContinuousClock.now
        #expect(!(await connection.isValid(timeout: .milliseconds(150))))
        let elapsed = start.duration(to: .now)
        #expect(elapsed >= .milliseconds(150))
        #expect(elapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines
        #expect(connection.isBroken)
    }

    // MARK: Connecting

    @Test("connect to a closed port: connectionRefused, fast")
    func connectRefused() async throws {
        let port = try closedPort()
        // A refusal must not wait for the (long) connect timeout.
        let configuration = TCPConnectionConfiguration(host: "127.0.0.1", port: port, connectTimeout: .seconds(30))
        let start = ContinuousClock.now
        await #expect(throws: TCPConnectionError.connectionRefused(host: "127.0.0.1", port: port)) {
            try await TCPConnection.connect(configuration)
        }
        #expect(start.duration(to: .now) < .seconds(10))  // a sanity bound, loose for loaded CI machines
        let blocking = try await onThread {
            Result { () throws(TCPConnectionError) in try TCPConnection.connectBlocking(configuration) }
        }
        #expect(throws: TCPConnectionError.connectionRefused(host: "127.0.0.1", port: port)) { try blocking.get() }
        let description = TCPConnectionError.connectionRefused(host: "127.0.0.1", port: port).description
        #expect(description.contains("refused"))
        #expect(description.contains("127.0.0.1:\(port)"))
    }

    @Test("connect timeout against a listener whose backlog is full")
    func connectTimeout() async throws {
        let backlog = try await onThread { try FullBacklogListener() }  // its connects wait up to 200 ms
        defer { backlog.close() }
        let configuration = TCPConnectionConfiguration(host: "127.0.0.1", port: backlog.port, connectTimeout: .milliseconds(300))
        let start = ContinuousClock.now
        await #expect(throws: TCPConnectionError.connectTimedOut(host: "127.0.0.1", port: backlog.port, timeout: .milliseconds(300))) {
            try await TCPConnection.connect(configuration)
        }
        let elapsed = start.duration(to: .now)
        #expect(elapsed >= .milliseconds(300))
        #expect(elapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines

        let blockingElapsed = try await onThread {
            let start = ContinuousClock.now
            #expect(throws: TCPConnectionError.connectTimedOut(host: "127.0.0.1", port: backlog.port, timeout: .milliseconds(300))) {
                try TCPConnection.connectBlocking(configuration)
            }
            return start.duration(to: .now)
        }
        #expect(blockingElapsed >= .milliseconds(300))

        // A cancelled connect ends at once with CancellationError, long before its timeout.
        let patient = TCPConnectionConfiguration(host: "127.0.0.1", port: backlog.port, connectTimeout: .seconds(60))
        let waits = IOReactor.shared.pendingWaitCount
        let connecting = Task { try await TCPConnection.connect(patient) }
        await reactorWaitStarted(above: waits)  // cancel it while it waits, not before
        let cancelledAt = ContinuousClock.now
        connecting.cancel()
        await #expect(throws: CancellationError.self) { try await connecting.value }
        #expect(cancelledAt.duration(to: .now) < .seconds(10))  // a sanity bound, loose for loaded CI machines
        #expect(blockingElapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines
    }

    @Test("IPv6 loopback, bracketed literal, and a host name that resolves through getaddrinfo")
    func addressFamilies() async throws {
        let server6 = try TestServer(ipv6: true, handler: Handlers.echoLines)
        defer { server6.stop() }
        for host in ["::1", "[::1]"] {
            let connection = try await TCPConnection.connect(TCPConnectionConfiguration(host: host, port: server6.port))
            defer { connection.closeBlocking() }
            #expect(connection.remoteAddress == "[::1]:\(server6.port)")
            try await connection.send("six\n")
            #expect(try await connection.readLine() == "six")
        }
        let server4 = try TestServer(handler: Handlers.echoLines)
        defer { server4.stop() }
        // "localhost" comes from /etc/hosts (no DNS query); every address it yields is tried in turn.
        let connection = try await TCPConnection.connect(TCPConnectionConfiguration(host: "localhost", port: server4.port))
        defer { connection.closeBlocking() }
        try await connection.send("named\n")
        #expect(try await connection.readLine() == "named")
        let configuration = TCPConnectionConfiguration(host: "localhost", port: server4.port)
        try await onThread {
            let blocking = try TCPConnection.connectBlocking(configuration)
            defer { blocking.closeBlocking() }
            try blocking.sendBlocking("named blocking\n")
            #expect(try blocking.readLineBlocking() == "named blocking")
        }
    }

    @Test("bad configurations are refused with clear errors")
    func badConfigurations() async throws {
        func field(_ configuration: TCPConnectionConfiguration) -> String? {
            do {
                _ = try TCPConnectionFactory(configuration: configuration)
                return nil
            } catch {
                guard case .invalidConfiguration(let field, _) = error else { return "unexpected \(error)" }
                return field
            }
        }
        let good = TCPConnectionConfiguration(host: "127.0.0.1", port: 1234)
        #expect(field(good) == nil)
        var c = good
        c.host = ""
        #expect(field(c) == "host")
        c = good
        c.port = 0
        #expect(field(c) == "port")
        c.port = 65536
        #expect(field(c) == "port")
        c.port = -1
        #expect(field(c) == "port")
        c = good
        c.connectTimeout = .zero
        #expect(field(c) == "connectTimeout")
        c = good
        c.readTimeout = .zero
        #expect(field(c) == "readTimeout")
        c = good
        c.writeTimeout = .milliseconds(-5)
        #expect(field(c) == "writeTimeout")
        c = good
        c.validationProbe = TCPValidationProbe(request: "", expectedResponse: "+PONG\r\n")
        #expect(field(c) == "validationProbe.request")
        c.validationProbe = TCPValidationProbe(request: "PING\r\n", expectedResponse: "")
        #expect(field(c) == "validationProbe.expectedResponse")

        // connect validates too, and says what to fix.
        var bad = good
        bad.port = 70000
        do {
            _ = try await TCPConnection.connect(bad)
            Issue.record("expected invalidConfiguration")
        } catch let error as TCPConnectionError {
            #expect(error == .invalidConfiguration(field: "port", reason: "is 70000, must be in 1...65535"))
            #expect(error.description.contains("port is 70000"))
        }
        #expect(throws: TCPConnectionError.self) { try TCPConnection.connectBlocking(bad) }
    }

    @Test("error descriptions say what went wrong and what to do")
    func errorDescriptions() {
        let cases: [(TCPConnectionError, String)] = [
            (.resolutionFailed(host: "nowhere", reason: "Name or service not known"), "nowhere"),
            (.connectTimedOut(host: "h", port: 1, timeout: .seconds(1)), "connectTimeout"),
            (.readTimedOut(timeout: .seconds(2)), "readTimeout"),
            (.writeTimedOut(timeout: .seconds(2)), "writeTimeout"),
            (.peerClosed, "closed"),
            (.delimiterNotFound(maxLength: 10), "maxLength"),
            (.connectFailed(host: "h", port: 2, errno: ENETUNREACH), "unreachable"),
        ]
        for (error, fragment) in cases {
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test("the factory opens connections with its configuration")
    func factory() async throws {
        let server = try TestServer(handler: Handlers.echoLines)
        defer { server.stop() }
        let factory = try TCPConnectionFactory(configuration: testConfiguration(server))
        let connection = try await factory.makeConnection()
        defer { connection.closeBlocking() }
        try await connection.send("via factory\n")
        #expect(try await connection.readLine() == "via factory")
        let blocking = try await onThread { try factory.makeConnectionBlocking() }
        defer { blocking.closeBlocking() }
        #expect(blocking.configuration == factory.configuration)
    }
}

// MARK: - Helpers

final class ServerFlag: @unchecked Sendable {
    // @unchecked Sendable: `value` is only touched with `lock` held.
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// A loopback port with no listener: bound (so nobody else takes it during the test) but not listening.
func closedPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw POSIXError(.EADDRINUSE) }
    let port = TestServer.boundPort(fd)
    // Keep the port reserved while the process runs; a bound, non-listening socket refuses connects.
    ReservedPorts.keep(fd)
    return port
}

enum ReservedPorts {
    nonisolated(unsafe) private static var fds: [Int32] = []
    private static let lock = NSLock()
    static func keep(_ fd: Int32) { lock.withLock { fds.append(fd) } }
}

/// A listener with `listen(fd, 0)` that never accepts, filled with connections until a new connect
/// no longer completes: from then on, connects to it hang until they time out.
final class FullBacklogListener: @unchecked Sendable {
    // @unchecked Sendable: immutable after init except `close()`, called once by the test.
    let port: Int
    private let listenFD: Int32
    private var fillers: [Int32] = []

    init() throws {
        (listenFD, port) = try TestServer.listen(ipv6: false, backlog: 0)
        for _ in 0..<256 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            fillers.append(fd)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            address.sin_port = UInt16(port).bigEndian
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc == 0 { continue }
            guard errno == EINPROGRESS else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EINVAL) }
            var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&entry, 1, 200) == 0 {
                return  // this connect hangs: the backlog is full
            }
        }
        throw POSIXError(.EAGAIN)  // the backlog never filled
    }

    func close() {
        for fd in fillers { Glibc.close(fd) }
        fillers.removeAll()
        Glibc.close(listenFD)
    }
}
