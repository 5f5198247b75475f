// Socket plumbing for RedisConnection: address resolution, non-blocking connect, socket options and
// poll() with deadlines. hiredis is handed an already connected, non-blocking descriptor.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A resolved address to connect to.
struct SocketAddress: @unchecked Sendable {
    // @unchecked: a plain C value type (sockaddr_storage) with no pointers inside.
    var storage: sockaddr_storage
    var length: socklen_t
    var family: Int32

    static func unix(path: String) -> SocketAddress {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { raw in
            withUnsafeBytes(of: &address) { raw.copyBytes(from: $0) }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return SocketAddress(storage: storage, length: length, family: AF_UNIX)
    }

    /// Parses an IPv4 or IPv6 literal without any lookup; `nil` for a host name.
    static func numeric(host: String, port: Int) -> SocketAddress? {
        var storage = sockaddr_storage()
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr = v4
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: &address) { raw.copyBytes(from: $0) } }
            return SocketAddress(storage: storage, length: socklen_t(MemoryLayout<sockaddr_in>.size), family: AF_INET)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            address.sin6_addr = v6
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: &address) { raw.copyBytes(from: $0) } }
            return SocketAddress(
                storage: storage, length: socklen_t(MemoryLayout<sockaddr_in6>.size), family: AF_INET6)
        }
        return nil
    }

    /// Resolves a host name with getaddrinfo (blocking: the async path runs it through BlockingOffload).
    static func resolve(host: String, port: Int) throws(RedisError) -> [SocketAddress] {
        if let numeric = numeric(host: host, port: port) { return [numeric] }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            throw .hostNotFound(host: host, detail: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var result = [SocketAddress]()
        var cursor: UnsafeMutablePointer<addrinfo>? = list
        while let entry = cursor {
            if let address = entry.pointee.ai_addr, entry.pointee.ai_addrlen <= MemoryLayout<sockaddr_storage>.size {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(entry.pointee.ai_addrlen)))
                }
                result.append(
                    SocketAddress(storage: storage, length: entry.pointee.ai_addrlen, family: entry.pointee.ai_family))
            }
            cursor = entry.pointee.ai_next
        }
        if result.isEmpty { throw .hostNotFound(host: host, detail: "no addresses") }
        return result
    }
}

enum ConnectStart {
    /// Connected at once.
    case connected(Int32)
    /// Connect in progress: wait for writability, then call ``Sockets/finishConnect(_:endpoint:)``.
    case inProgress(Int32)
    /// A unix socket whose backlog is full (EAGAIN): try again shortly.
    case retryLater
}

enum Sockets {
    /// Starts a non-blocking connect on a fresh socket.
    static func startConnect(_ address: SocketAddress, endpoint: String) throws(RedisError) -> ConnectStart {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .connectFailed(endpoint: endpoint, operation: "socket", errno: errno) }
        var storage = address.storage
        let result = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, address.length) }
        }
        if result == 0 { return .connected(fd) }
        let code = errno
        if code == EINPROGRESS || code == EINTR { return .inProgress(fd) }
        closeDescriptor(fd)
        if code == EAGAIN && address.family == AF_UNIX { return .retryLater }
        throw connectError(code, endpoint: endpoint)
    }

    /// Reads the outcome of a connect that was in progress (after the socket became writable).
    static func finishConnect(_ fd: Int32, endpoint: String) throws(RedisError) {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) != 0 { code = errno }
        if code != 0 {
            closeDescriptor(fd)
            throw connectError(code, endpoint: endpoint)
        }
    }

    static func connectError(_ code: Int32, endpoint: String) -> RedisError {
        switch code {
        case ECONNREFUSED, ENOENT: return .connectionRefused(endpoint: endpoint)
        default: return .connectFailed(endpoint: endpoint, operation: "connect", errno: code)
        }
    }

    /// TCP_NODELAY and keepalive (idle = interval, probes every idle/3, 3 probes) on a TCP socket.
    static func configureTCP(_ fd: Int32, keepAlive: Duration?) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        guard let keepAlive else { return }
        let idle = Int32(clamping: keepAlive.components.seconds)
        var interval = max(1, idle / 3)
        var idleSeconds = max(1, idle)
        var count: Int32 = 3
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idleSeconds, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, socklen_t(MemoryLayout<Int32>.size))
    }

    /// `true` when `fd` has one of `events` (or an error or hang-up) right now: a zero-timeout poll().
    static func isReady(_ fd: Int32, events: Int16) -> Bool {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        return Glibc.poll(&pfd, 1, 0) > 0
    }

    /// Waits with poll() until `fd` has one of `events` or the deadline passes.
    ///
    /// - Returns: `false` when the deadline passed; `true` when ready (or in error/hang-up, which the next
    ///   read or write reports).
    /// - Throws: ``RedisError/io(operation:errno:)`` if poll fails.
    static func poll(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant?) throws(RedisError) -> Bool {
        while true {
            var timeoutMilliseconds: Int32 = -1
            if let deadline {
                let remaining = ContinuousClock.now.duration(to: deadline)
                if remaining <= .zero { return false }
                let (seconds, attoseconds) = remaining.components
                // Round up so that a wait never ends before its deadline.
                let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
                timeoutMilliseconds = Int32(clamping: milliseconds)
            }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let result = Glibc.poll(&pfd, 1, timeoutMilliseconds)
            if result > 0 { return true }
            if result < 0 {
                let code = errno
                if code == EINTR { continue }
                throw .io(operation: "poll", errno: code)
            }
            // result == 0: loop to re-check the deadline (poll may wake a little early).
        }
    }
}

/// `close(2)`, named apart from the `close()` methods of the types that call it.
func closeDescriptor(_ fd: Int32) {
    _ = Glibc.close(fd)
}
