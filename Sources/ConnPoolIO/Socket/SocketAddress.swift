import Glibc

/// Where a connection goes: a host and port over TCP, or a unix domain socket.
package enum SocketEndpoint: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unixSocket(path: String)

    /// `host:port` (`[::1]:port` for an IPv6 literal) or `unix:path`.
    package var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unixSocket(let path): "unix:\(path)"
        }
    }
}

/// One resolved address to connect to: an IPv4, IPv6 or unix socket address.
package struct SocketAddress: @unchecked Sendable {
    // @unchecked Sendable: a plain C value (sockaddr_storage) with no pointers inside, copied by value.
    var storage: sockaddr_storage
    var length: socklen_t
    var family: Int32

    init(storage: sockaddr_storage, length: socklen_t, family: Int32) {
        self.storage = storage
        self.length = length
        self.family = family
    }

    /// The address of a unix domain socket at `path`.
    package static func unix(path: String) -> SocketAddress {
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
    package static func numeric(host: String, port: Int) -> SocketAddress? {
        var storage = sockaddr_storage()
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            address.sin_addr = v4
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: &address) { raw.copyBytes(from: $0) } }
            return SocketAddress(storage: storage, length: socklen_t(MemoryLayout<sockaddr_in>.size), family: AF_INET)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            address.sin6_addr = v6
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: &address) { raw.copyBytes(from: $0) } }
            return SocketAddress(
                storage: storage, length: socklen_t(MemoryLayout<sockaddr_in6>.size), family: AF_INET6)
        }
        return nil
    }

    /// Whether `host` is an IPv4 or IPv6 literal (resolving it never blocks).
    package static func isNumeric(_ host: String) -> Bool {
        var storage = in6_addr()
        return inet_pton(AF_INET, host, &storage) == 1 || inet_pton(AF_INET6, host, &storage) == 1
    }

    /// `1.2.3.4:80`, `[::1]:80` or `unix:/path`.
    package var description: String {
        var copy = storage
        return withUnsafeBytes(of: &copy) { raw -> String in
            switch family {
            case AF_INET6:
                var address = raw.loadUnaligned(as: sockaddr_in6.self)
                var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
                _ = inet_ntop(AF_INET6, &address.sin6_addr, &text, socklen_t(text.count))
                return "[\(text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })]:\(UInt16(bigEndian: address.sin6_port))"
            case AF_INET:
                var address = raw.loadUnaligned(as: sockaddr_in.self)
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN) + 1)
                _ = inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(text.count))
                return "\(text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }):\(UInt16(bigEndian: address.sin_port))"
            default:
                let path = raw.dropFirst(MemoryLayout<sa_family_t>.size).prefix { $0 != 0 }
                return "unix:" + String(decoding: path, as: UTF8.self)
            }
        }
    }
}
