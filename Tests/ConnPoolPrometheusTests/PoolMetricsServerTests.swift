import ConnPool
import ConnPoolTestSupport
import Foundation
import Prometheus
import Testing
@testable import ConnPoolPrometheus

/// One HTTP exchange over a real loopback TCP socket: sends `request` as is, reads to the end.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
}

enum ClientError: Error, Equatable, Sendable {
    case connect(Int32)
    case malformed(String)
}

/// ``exchangeBlocking(port:_:)`` on a plain thread: the exchange blocks in `connect`, `send` and `recv`
/// (for up to the server's 2-second client timeout when another client keeps it busy).
func exchange(port: Int, _ request: String) async throws -> HTTPResponse {
    try await onThread { try exchangeBlocking(port: port, request) }
}

func exchangeBlocking(port: Int, _ request: String) throws -> HTTPResponse {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw ClientError.connect(errno) }
    let bytes = Array(request.utf8)
    var offset = 0
    while offset < bytes.count {
        let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent > 0 else { throw ClientError.connect(errno) }
        offset += sent
    }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let received = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if received < 0 && errno == EINTR { continue }
        guard received > 0 else { break }
        response += chunk[..<received]
    }
    guard let split = response.indices.first(where: { response[$0...].starts(with: Array("\r\n\r\n".utf8)) }) else {
        throw ClientError.malformed(String(decoding: response, as: UTF8.self))
    }
    let head = String(decoding: response[..<split], as: UTF8.self).components(separatedBy: "\r\n")
    let statusParts = head[0].split(separator: " ")
    guard statusParts.count >= 2, statusParts[0] == "HTTP/1.1", let status = Int(statusParts[1]) else {
        throw ClientError.malformed(head[0])
    }
    var headers: [String: String] = [:]
    for line in head.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return HTTPResponse(status: status, headers: headers, body: Array(response[(split + 4)...]))
}

func get(port: Int, _ path: String) async throws -> HTTPResponse {
    try await exchange(port: port, "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n")
}

@Suite("ConnPoolPrometheus: HTTP server", .serialized, .processExclusive)
struct PoolMetricsServerTests {
    @Test("serves /metrics and /status on a free loopback port, 404/405/400 otherwise, refuses after stop()")
    func serves() async throws {
        let orders = try await scriptedPool()
        let cache = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("cache").warmUpOnInit(false))
        let app = PrometheusCollectorRegistry()
        app.makeCounter(
            descriptor: MetricNameDescriptor(metricName: "app_requests", unitName: "total", helpText: "Requests."), labels: []).increment(by: Int64(2))
        let server = try PoolMetricsServer(pools: [orders, cache], appending: { app.emit(into: &$0) })
        #expect(server.host == "127.0.0.1")
        #expect(server.port > 0)

        let metrics = try await get(port: server.port, "/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(metrics.headers["content-length"] == String(metrics.body.count))
        #expect(metrics.headers["connection"] == "close")
        let expected = server.registry.prometheusText() + app.emitToString()
        #expect(metrics.text == expected)
        #expect(metrics.text.contains("connpool_acquires_total{pool=\"orders\"} 6\n"))
        #expect(metrics.text.contains("connpool_acquires_total{pool=\"cache\"} 0\n"))
        if let (status, output) = try await promtoolCheck(metrics.text) {
            #expect(status == 0, "promtool check metrics on the served text:\n\(output)")
        } else {
            Issue.record("promtool is not installed: `apt-get install prometheus` (or run Scripts/install-deps.sh)")
        }

        let status = try await get(port: server.port, "/status?verbose=1")
        #expect(status.status == 200)
        #expect(status.headers["content-type"] == "application/json")
        let document = try JSONDecoder().decode(PoolStatusDocument.self, from: Data(status.body))
        #expect(document.pools.map(\.name) == ["orders", "cache"])
        #expect(document.pools[0].metrics == orders.metrics())
        #expect(document.pools[0].health == .healthy)
        #expect(document.pools[1].configuration.warmUpOnInit == false)

        #expect(try await get(port: server.port, "/").status == 404)
        #expect(try await get(port: server.port, "/metricsx").status == 404)
        let post = try await exchange(port: server.port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        #expect(post.status == 405)
        #expect(post.headers["allow"] == "GET, HEAD")
        let head = try await exchange(port: server.port, "HEAD /metrics HTTP/1.1\r\n\r\n")
        #expect(head.status == 200 && head.body.isEmpty && Int(head.headers["content-length"] ?? "") ?? 0 > 0)
        #expect(try await exchange(port: server.port, "nonsense\r\n\r\n").status == 400)
        // A client that connects and sends nothing does not stop the others for long (2 s timeout).
        let idle = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(server.port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(idle, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(try await get(port: server.port, "/metrics").status == 200)
        close(idle)

        // Pools registered later appear; unregistered ones go.
        server.registry.unregister(cache)
        #expect(!(try await get(port: server.port, "/metrics").text.contains("pool=\"cache\"")))

        try await onThread { server.stop() }  // joins the server's thread
        server.stop()  // again: nothing (returns at once)
        await #expect(throws: ClientError.connect(ECONNREFUSED)) { try await get(port: server.port, "/metrics") }
        await orders.shutdown()
        await cache.shutdown()
    }

    @Test("answers many requests in a row and from several threads")
    func manyRequests() async throws {
        let pool = try ConnectionPool(factory: MockFactory(), configuration: PoolConfiguration().name("p").warmUpOnInit(false))
        let server = try PoolMetricsServer(pools: [pool])
        let port = server.port
        let failures = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    var failures = 0
                    for index in 0..<25 {
                        let response = try? await get(port: port, index % 2 == 0 ? "/metrics" : "/status")
                        if response?.status != 200 { failures += 1 }
                    }
                    return failures
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
        try await onThread { server.stop() }  // joins the server's thread
        await pool.shutdown()
    }

    @Test("start-up errors: a port in use, an address that does not resolve, a port out of range")
    func startupErrors() async throws {
        let registry = try PoolMetricsRegistry()
        let first = try PoolMetricsServer(registry: registry)
        #expect(throws: PoolMetricsServerError.self) { try PoolMetricsServer(registry: registry, port: first.port) }
        do {
            _ = try PoolMetricsServer(registry: registry, port: first.port)
        } catch {
            #expect(error.code == EADDRINUSE)
            #expect(error.description.contains("bind 127.0.0.1:\(first.port)"))
        }
        #expect(throws: PoolMetricsServerError.self) { try PoolMetricsServer(registry: registry, host: "no-such-host.invalid") }
        #expect(throws: PoolMetricsServerError.self) { try PoolMetricsServer(registry: registry, port: 70_000) }
        try await onThread { first.stop() }  // joins the server's thread
        // The port is free again at once (SO_REUSEADDR).
        let again = try PoolMetricsServer(registry: registry, port: first.port)
        #expect(try await get(port: again.port, "/metrics").status == 200)
        try await onThread { again.stop() }
    }

    @Test("a dropped server stops by itself")
    func deinitStops() async throws {
        // Dropped on a plain thread: its deinit joins the server's thread.
        let port = try await onThread { () -> Int in
            var server: PoolMetricsServer? = try PoolMetricsServer(registry: try PoolMetricsRegistry())
            let port = server!.port
            #expect(try exchangeBlocking(port: port, "GET /status HTTP/1.1\r\n\r\n").text == "{\"pools\":[]}\n")
            server = nil
            return port
        }
        await #expect(throws: ClientError.connect(ECONNREFUSED)) { try await get(port: port, "/metrics") }
    }
}
