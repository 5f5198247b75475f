import ConnPoolTCP
import Dispatch
import Foundation
import Glibc

/// The server side of one accepted connection: a blocking socket with a small line reader.
/// Used by one handler thread only.
final class ServerPeer: @unchecked Sendable {
    // @unchecked Sendable: used by the one handler thread that owns it; `fd` is immutable.
    let fd: Int32
    private var pending: [UInt8] = []

    init(fd: Int32) {
        self.fd = fd
    }

    /// Reads one `\n`-terminated line without the terminator and without a `\r` before it; nil at end
    /// of stream.
    func readLine() -> String? {
        while true {
            if let index = pending.firstIndex(of: 0x0A) {
                var line = Array(pending[..<index])
                pending.removeFirst(index + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard readMore() else { return nil }
        }
    }

    /// Reads exactly `count` bytes; nil at end of stream.
    func readExactly(_ count: Int) -> [UInt8]? {
        while pending.count < count {
            guard readMore() else { return nil }
        }
        let result = Array(pending[..<count])
        pending.removeFirst(count)
        return result
    }

    /// Reads whatever arrives next (at least one byte); nil at end of stream.
    func readSome() -> [UInt8]? {
        if pending.isEmpty, !readMore() { return nil }
        defer { pending.removeAll() }
        return pending
    }

    private func readMore() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n > 0 {
                pending.append(contentsOf: chunk[..<n])
                return true
            }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// Writes all of `bytes`; false if the peer is gone.
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    @discardableResult
    func write(_ text: String) -> Bool {
        write(Array(text.utf8))
    }
}

/// An in-process loopback TCP server: an accept thread, and one thread per connection running
/// `handler`. Listens on an ephemeral port (port 0) of 127.0.0.1 or ::1.
///
/// ``stop()`` never waits for those threads (it runs in tests, on cooperative threads): it shuts the
/// sockets down, and each descriptor is closed by whoever comes last, `stop()` or the thread using it.
final class TestServer: @unchecked Sendable {
    // @unchecked Sendable: `listenFD`, `port`, `host`, `handler` and `acceptsConnections` are
    // immutable; every other stored property is only read or written with `lock` held.
    let port: Int
    let host: String
    private let listenFD: Int32
    private let handler: @Sendable (ServerPeer) -> Void
    private let acceptsConnections: Bool
    private let lock = NSLock()
    /// Accepted connections whose handler still runs.
    private var clients: Set<Int32> = []
    /// Accepted connections whose handler has returned, open until `stop()`.
    private var finishedClients: Set<Int32> = []
    private var stopped = false
    private var listenerClosed = false
    /// How many connections were accepted so far.
    private var acceptedCount = 0

    init(ipv6: Bool = false, backlog: Int32 = 128, acceptConnections: Bool = true, handler: @escaping @Sendable (ServerPeer) -> Void) throws {
        self.handler = handler
        host = ipv6 ? "::1" : "127.0.0.1"
        let (fd, port) = try TestServer.listen(ipv6: ipv6, backlog: backlog)
        listenFD = fd
        self.port = port
        acceptsConnections = acceptConnections
        if acceptConnections {
            Thread.detachNewThread { [self] in
                acceptLoop()
                lock.withLock {
                    if !listenerClosed {
                        listenerClosed = true
                        close(listenFD)
                    }
                }
            }
        }
    }

    var accepted: Int {
        lock.withLock { acceptedCount }
    }

    static func listen(ipv6: Bool, backlog: Int32) throws -> (Int32, Int) {
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var rc: Int32
        if ipv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_addr = in6addr_loopback
            address.sin6_port = 0
            rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            address.sin_port = 0
            rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        guard rc == 0, Glibc.listen(fd, backlog) == 0 else {
            let code = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EINVAL)
        }
        return (fd, boundPort(fd))
    }

    static func boundPort(_ fd: Int32) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return withUnsafeBytes(of: &storage) { raw in
            // sin_port and sin6_port are both at offset 2.
            Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
        }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return  // shut down by stop()
            }
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let accepted: Bool = lock.withLock {
                if stopped { return false }
                clients.insert(client)
                acceptedCount += 1
                return true
            }
            guard accepted else {
                close(client)
                return
            }
            let handler = self.handler
            Thread.detachNewThread { [self] in
                handler(ServerPeer(fd: client))
                lock.withLock {
                    clients.remove(client)
                    if stopped {
                        close(client)
                    } else {
                        shutdown(client, Int32(SHUT_WR))  // the handler is done: the client sees end of stream
                        finishedClients.insert(client)
                    }
                }
            }
        }
    }

    /// Stops accepting and ends every connection (its handler sees end of stream, its client a hang-up),
    /// without waiting for the threads: each closes its own descriptor once it sees the end.
    func stop() {
        lock.withLock {
            if stopped { return }
            stopped = true
            if !listenerClosed {
                shutdown(listenFD, Int32(SHUT_RDWR))  // ends the accept thread's accept(), which closes it
                if !acceptsConnections {
                    listenerClosed = true
                    close(listenFD)
                }
            }
            for fd in clients { shutdown(fd, Int32(SHUT_RDWR)) }
            for fd in finishedClients {
                shutdown(fd, Int32(SHUT_RDWR))
                close(fd)
            }
            finishedClients.removeAll()
        }
    }

    deinit {
        stop()
    }
}

// MARK: - Handlers

enum Handlers {
    /// Echoes each line back, `\n`-terminated.
    static let echoLines: @Sendable (ServerPeer) -> Void = { peer in
        while let line = peer.readLine() {
            guard peer.write(line + "\n") else { return }
        }
    }

    /// Answers `PING` with `+PONG\r\n`, `ECHO x` with `x\n`, and anything else with `-WHAT\r\n`.
    static let redisLike: @Sendable (ServerPeer) -> Void = { peer in
        while let line = peer.readLine() {
            let reply: String
            if line == "PING" {
                reply = "+PONG\r\n"
            } else if line.hasPrefix("ECHO ") {
                reply = String(line.dropFirst(5)) + "\n"
            } else {
                reply = "-WHAT\r\n"  // as long as "+PONG\r\n"
            }
            guard peer.write(reply) else { return }
        }
    }

    /// Reads a 4-byte big-endian length and that many bytes, then sends them back in one go.
    static let sinkThenEcho: @Sendable (ServerPeer) -> Void = { peer in
        while let header = peer.readExactly(4) {
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            guard let payload = peer.readExactly(length), peer.write(payload) else { return }
        }
    }

    /// Echoes raw bytes back as they arrive.
    static let echoBytes: @Sendable (ServerPeer) -> Void = { peer in
        while let bytes = peer.readSome() {
            guard peer.write(bytes) else { return }
        }
    }

    /// Never reads: waits (in poll, for no event but a hang-up) until the server stops.
    static let neverReads: @Sendable (ServerPeer) -> Void = { peer in
        var entry = pollfd(fd: peer.fd, events: 0, revents: 0)
        while true {
            let rc = poll(&entry, 1, -1)
            if rc > 0 || (rc < 0 && errno != EINTR) { return }
        }
    }

    /// Reads and never answers.
    static let silent: @Sendable (ServerPeer) -> Void = { peer in
        while peer.readSome() != nil {}
    }
}

// MARK: - Test utilities

/// Connects, without a pool, to a test server with short timeouts.
func testConfiguration(
    _ server: TestServer,
    readTimeout: Duration = .seconds(5),
    probe: TCPValidationProbe? = nil
) -> TCPConnectionConfiguration {
    var configuration = TCPConnectionConfiguration(host: server.host, port: server.port)
    configuration.connectTimeout = .seconds(5)
    configuration.readTimeout = readTimeout
    configuration.writeTimeout = .seconds(5)
    configuration.validationProbe = probe
    return configuration
}
