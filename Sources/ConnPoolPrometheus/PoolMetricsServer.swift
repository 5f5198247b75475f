#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ConnPool

/// A tiny HTTP/1.1 server for a ``PoolMetricsRegistry``:
/// - `GET /metrics`: the Prometheus text exposition (`text/plain; version=0.0.4`), followed by what
///   the `appending` closure adds (for instance a swift-prometheus registry's `emit(into:)`);
/// - `GET /status`: the pools' statuses as JSON (``PoolMetricsRegistry/statusJSON()``);
/// - another path: 404; another method on those paths: 405. Every response closes the connection.
///
/// ```swift
/// let server = try PoolMetricsServer(pools: [pool], port: 9464)    // 127.0.0.1:9464
/// …
/// server.stop()
/// ```
///
/// Bound to `127.0.0.1` by default: the status holds no secret, but it describes the deployment, so
/// exposing it beyond the host is a decision to make explicitly (`host: "0.0.0.0"`).
///
/// ## Why a thread and blocking sockets
/// A scrape comes every few seconds and is answered in well under a millisecond, so one thread that
/// accepts and answers connections one at a time is plenty, costs nothing while idle (it sleeps in
/// `poll`), and needs no dependency: SwiftNIO would take minutes to build for what is ~200 lines, and
/// would put an event loop in processes (benchmarks, sync-only users) that have none. A client gets
/// 2 seconds to send its request and to take the response (socket timeouts), so a stuck client delays
/// the others by at most that, and ``stop()`` by at most that too. Requests are limited to 8 KiB.
public final class PoolMetricsServer: Sendable {
    /// The address the server listens on, as given.
    public let host: String
    /// The port the server listens on (the one the system chose when `port` was 0).
    public let port: Int
    /// The pools it reports.
    public let registry: PoolMetricsRegistry

    private let listener: Listener
    private let thread: LockedValue<pthread_t?>

    /// Starts serving `registry` on `host:port`, on a thread of its own.
    ///
    /// - Parameters:
    ///   - registry: the pools to report; pools can be registered and unregistered while it serves.
    ///   - host: an address (`127.0.0.1`, `::1`, `0.0.0.0`) or a name resolved with `getaddrinfo`;
    ///     loopback by default.
    ///   - port: the TCP port; 0 lets the system choose a free one (read it back from ``port``).
    ///   - buckets: the bucket bounds of the histograms (see ``PrometheusExposition/BucketLayout``).
    ///   - appending: called on every `/metrics` request with the response body after the pools'
    ///     metrics, to append more (it must render whole metric families whose names are not
    ///     `connpool_*`): `{ registry.emit(into: &$0) }` for swift-prometheus. Runs on the server's thread.
    /// - Throws: ``PoolMetricsServerError`` if the address cannot be resolved, or the socket cannot be
    ///   created, bound (port in use, address not local) or put to listen.
    public init(
        registry: PoolMetricsRegistry,
        host: String = "127.0.0.1",
        port: Int = 0,
        buckets: PrometheusExposition.BucketLayout = .octaves,
        appending: (@Sendable (inout [UInt8]) -> Void)? = nil
    ) throws(PoolMetricsServerError) {
        guard (0...65_535).contains(port) else {
            throw PoolMetricsServerError(operation: "port \(port)", code: EINVAL)
        }
        let (fd, boundPort) = try Self.openListeningSocket(host: host, port: port)
        let listener: Listener
        do {
            listener = try Listener(
                socket: fd, handler: RequestHandler(registry: registry, buckets: buckets, appending: appending))
        } catch {
            close(fd)
            throw error
        }
        self.host = host
        self.port = boundPort
        self.registry = registry
        self.listener = listener
        self.thread = LockedValue(nil)

        let context = Unmanaged.passRetained(listener).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            let listener = Unmanaged<Listener>.fromOpaque(context!).takeRetainedValue()
            listener.run()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        self.thread.withLock { $0 = thread }
    }

    /// Starts serving `pools` (each registered in a new ``PoolMetricsRegistry``) on `host:port`.
    ///
    /// - Throws: ``PoolMetricsRegistryError`` if two pools share a name; ``PoolMetricsServerError``
    ///   as ``init(registry:host:port:buckets:appending:)``.
    public convenience init(
        pools: [any ObservablePool],
        host: String = "127.0.0.1",
        port: Int = 0,
        buckets: PrometheusExposition.BucketLayout = .octaves,
        appending: (@Sendable (inout [UInt8]) -> Void)? = nil
    ) throws {
        try self.init(registry: try PoolMetricsRegistry(pools: pools), host: host, port: port, buckets: buckets, appending: appending)
    }

    deinit { stop() }

    /// Stops listening, finishes the request being answered (at most the 2-second client timeouts),
    /// and returns once the server's thread has ended and its sockets are closed. Calling it again
    /// does nothing. New connections are refused afterwards.
    public func stop() {
        guard let thread = self.thread.withLock({ thread in
            defer { thread = nil }
            return thread
        }) else { return }
        listener.wake()
        pthread_join(thread, nil)
    }

    /// Opens, binds and listens; returns the socket and the bound port.
    private static func openListeningSocket(host: String, port: Int) throws(PoolMetricsServerError) -> (Int32, Int) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw PoolMetricsServerError(operation: "resolve \(host)", code: rc == EAI_SYSTEM ? errno : EINVAL,
                                         detail: rc == 0 ? nil : String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(list) }
        var lastError = PoolMetricsServerError(operation: "bind \(host):\(port)", code: EADDRNOTAVAIL)
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            #if canImport(Glibc)
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
            #else
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, 0)
            #endif
            guard fd >= 0 else {
                lastError = PoolMetricsServerError(operation: "socket", code: errno)
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            // Non-blocking, so that `accept` after `poll` never blocks on a connection the client
            // already reset; the accepted sockets are made blocking again (Darwin lets them inherit it).
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                lastError = PoolMetricsServerError(operation: "bind \(host):\(port)", code: errno)
                close(fd)
                continue
            }
            guard listen(fd, 64) == 0 else {
                lastError = PoolMetricsServerError(operation: "listen on \(host):\(port)", code: errno)
                close(fd)
                continue
            }
            var address = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else {
                lastError = PoolMetricsServerError(operation: "getsockname", code: errno)
                close(fd)
                continue
            }
            let boundPort: UInt16
            if Int32(address.ss_family) == AF_INET6 {
                boundPort = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
                }
            } else {
                boundPort = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
                }
            }
            return (fd, Int(boundPort))
        }
        throw lastError
    }
}

/// Why the server could not start.
public struct PoolMetricsServerError: Error, Hashable, CustomStringConvertible {
    /// What failed, e.g. `bind 127.0.0.1:9464`.
    public var operation: String
    /// The `errno` (or `EINVAL` for an address that does not resolve).
    public var code: Int32
    /// The resolver's message, when resolving failed.
    public var detail: String?

    /// Creates an error.
    public init(operation: String, code: Int32, detail: String? = nil) {
        self.operation = operation
        self.code = code
        self.detail = detail
    }

    public var description: String {
        "metrics server: \(operation) failed: \(detail ?? String(cString: strerror(code)))"
    }
}

/// The listening socket and the loop that serves it, on the server's thread.
///
/// `@unchecked Sendable` is safe because every stored property is immutable after `init` (file
/// descriptors and a `Sendable` handler). Only two threads touch the descriptors: the server's thread,
/// in ``run()``, and the thread calling ``PoolMetricsServer/stop()``, which only `write`s one byte to
/// the wake pipe (``wake()``, called once) and then joins the server's thread. ``run()`` closes the
/// descriptors only after it has seen that byte (the only other way out, a `poll` failure other than
/// `EINTR`, cannot happen with valid descriptors), so the write always happens before the close.
final class Listener: @unchecked Sendable {
    private let socket: Int32
    /// A pipe whose read end `run` polls along with the socket; `wake` writes to it to end `run`.
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let handler: RequestHandler

    init(socket: Int32, handler: RequestHandler) throws(PoolMetricsServerError) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PoolMetricsServerError(operation: "pipe", code: errno) }
        // (pipe2 and accept4, which set it atomically, are GNU extensions that Swift's Glibc does not show.)
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        self.socket = socket
        wakeRead = fds[0]
        wakeWrite = fds[1]
        self.handler = handler
    }

    /// Ends ``run()`` (called once, by `stop`).
    func wake() {
        var byte: UInt8 = 1
        while write(wakeWrite, &byte, 1) < 0 && errno == EINTR {}
    }

    /// Accepts and answers connections until woken, then closes every descriptor.
    func run() {
        var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            let ready = poll(&fds, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if fds[1].revents != 0 { break }
            guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
            let client = accept(socket, nil, nil)
            guard client >= 0 else {
                // EAGAIN, EINTR, ECONNABORTED: poll again; out of descriptors (EMFILE…): pause first,
                // rather than spin on a connection that stays pending.
                if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED { usleep(50_000) }
                continue
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) & ~O_NONBLOCK)
            handler.serve(client)
            close(client)
        }
        close(socket)
        close(wakeRead)
        close(wakeWrite)
    }
}

/// Reads one request from a connection and writes the response.
struct RequestHandler: Sendable {
    let registry: PoolMetricsRegistry
    let buckets: PrometheusExposition.BucketLayout
    let appending: (@Sendable (inout [UInt8]) -> Void)?

    static let maxRequestBytes = 8_192
    static let clientTimeoutSeconds = 2

    func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: Self.clientTimeoutSeconds, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard let request = readRequest(client) else {
            reply(client, status: "400 Bad Request", contentType: "text/plain; charset=utf-8", body: Array("bad request\n".utf8))
            return
        }
        let (status, contentType, body, extraHeaders) = respond(method: request.method, target: request.target)
        reply(client, status: status, contentType: contentType, body: request.method == "HEAD" ? [] : body,
             contentLength: body.count, extraHeaders: extraHeaders)
    }

    /// The response to a request line: status, content type, body, extra headers.
    func respond(method: String, target: String) -> (String, String, [UInt8], String) {
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        let known = path == "/metrics" || path == "/status"
        guard known else { return ("404 Not Found", "text/plain; charset=utf-8", Array("not found: try /metrics or /status\n".utf8), "") }
        guard method == "GET" || method == "HEAD" else {
            return ("405 Method Not Allowed", "text/plain; charset=utf-8", Array("method not allowed\n".utf8), "Allow: GET, HEAD\r\n")
        }
        if path == "/metrics" {
            var body = Array(registry.prometheusText(buckets: buckets).utf8)
            appending?(&body)
            return ("200 OK", PrometheusExposition.contentType, body, "")
        }
        do {
            var body = try registry.statusJSON()
            body.append(UInt8(ascii: "\n"))
            return ("200 OK", "application/json", body, "")
        } catch {
            return ("500 Internal Server Error", "text/plain; charset=utf-8", Array("cannot encode the status\n".utf8), "")
        }
    }

    /// Reads up to the end of the request head; `nil` if it is malformed, too long, or times out.
    private func readRequest(_ client: Int32) -> (method: String, target: String)? {
        var buffer = [UInt8](repeating: 0, count: Self.maxRequestBytes)
        var length = 0
        while length < buffer.count {
            let received = buffer.withUnsafeMutableBytes { raw in
                recv(client, raw.baseAddress! + length, raw.count - length, 0)
            }
            if received < 0 && errno == EINTR { continue }
            guard received > 0 else { return nil }
            length += received
            if Self.headEnd(buffer, length) { break }
        }
        guard Self.headEnd(buffer, length) else { return nil }
        // The request line: METHOD SP TARGET SP VERSION CRLF.
        guard let lineEnd = buffer[..<length].firstIndex(of: UInt8(ascii: "\r")) ?? buffer[..<length].firstIndex(of: UInt8(ascii: "\n"))
        else { return nil }
        let parts = buffer[..<lineEnd].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)) else { return nil }
        return (String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self))
    }

    /// Whether `buffer[..<length]` holds a blank line (the end of the request head).
    private static func headEnd(_ buffer: [UInt8], _ length: Int) -> Bool {
        guard length >= 2 else { return false }
        let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
        for index in 1..<length where buffer[index] == lf {
            if buffer[index - 1] == lf { return true }
            if index >= 3, buffer[index - 1] == cr, buffer[index - 2] == lf { return true }
        }
        return false
    }

    private func reply(
        _ client: Int32, status: String, contentType: String, body: [UInt8], contentLength: Int? = nil,
        extraHeaders: String = ""
    ) {
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(contentLength ?? body.count)\r\n"
            + "Cache-Control: no-store\r\n\(extraHeaders)Connection: close\r\n\r\n"
        if writeAll(client, Array(head.utf8)) { _ = writeAll(client, body) }
    }

    private func writeAll(_ client: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            #if canImport(Glibc)
            let flags = Int32(MSG_NOSIGNAL)
            #else
            let flags: Int32 = 0
            #endif
            let written = bytes.withUnsafeBytes { raw in send(client, raw.baseAddress! + offset, raw.count - offset, flags) }
            if written < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += written
        }
        return true
    }
}
