import ConnPoolRedis
import ConnPoolTestSupport
import Foundation
import RedisServerLauncher
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One server shared by the tests that need nothing special (they use distinct keys). Stopped by the
/// launcher's exit hook when the test process ends.
enum SharedServer {
    /// Started once, by the first test that asks, with the launcher's async form: the tests that ask
    /// meanwhile suspend on the task instead of blocking on a lazy global's lock.
    private static let server = Task { try await RedisServerProcess.start(unixSocket: true) }

    static func get() async throws -> RedisServerProcess { try await server.value }

    static func configuration(
        commandTimeout: Duration? = .seconds(10)
    ) async throws -> RedisConnectionConfiguration {
        var configuration = try await RedisConnectionConfiguration(port: get().port)
        configuration.commandTimeout = commandTimeout
        return configuration
    }
}

/// A key no other test uses.
func uniqueKey(_ name: String = #function) -> String {
    "test:\(name):\(UInt64.random(in: 0...UInt64.max))"
}

/// Waits (polling CLIENT LIST through `observer`) until a client of the server runs `command`; with
/// `named`, the client with that CLIENT SETNAME name (other tests share the server).
func waitUntilClientRuns(_ command: String, named name: String? = nil, observer: RedisConnection) async throws -> Bool {
    try await eventually(pollingEvery: .milliseconds(5)) {
        let list = try await observer.command("CLIENT", "LIST").string
        return list.split(separator: "\n").contains { line in
            line.contains(" cmd=\(command) ") && (name.map { line.contains(" name=\($0) ") } ?? true)
        }
    }
}

/// Expects `body` to throw a `RedisError` and returns it.
func expectRedisError(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async -> RedisError? {
    do {
        try await body()
        Issue.record("expected a RedisError, got success", sourceLocation: sourceLocation)
        return nil
    } catch let error as RedisError {
        return error
    } catch {
        Issue.record("expected a RedisError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// A free loopback port with nothing listening on it (bind port 0, read it, close).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length)
            return getsockname(fd, pointer, &length)
        }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A socket listening on an ephemeral loopback port, and its address.
func loopbackListener(backlog: Int32) -> (fd: Int32, address: sockaddr_in) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(listener, pointer, length)
            return getsockname(listener, pointer, &length)
        }
    }
    listen(listener, backlog)
    return (listener, address)
}

/// A loopback listener that never accepts, with `listen(fd, 0)`, whose accept queue is filled with
/// connections until a further connect no longer completes: a connect to it hangs (the kernel drops the
/// SYN), which is how a connect timeout is provoked without an unreachable address.
final class FullBacklogListener: @unchecked Sendable {
    // @unchecked Sendable: `fillers` is written only by `init` and read only by `deinit`; the rest is `let`.
    let port: Int
    private let listener: Int32
    private var fillers: [Int32] = []

    init() throws {
        let (listener, address) = loopbackListener(backlog: 0)
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        var fillers: [Int32] = []
        defer { self.fillers = fillers }
        for _ in 0..<64 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var target = address
            let result = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if result == 0 {
                fillers.append(fd)
                continue
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&pfd, 1, 200) == 1 {
                fillers.append(fd)
                continue
            }
            close(fd)  // this one did not complete: the backlog is full
            return
        }
        throw RedisError.invalidCommand("could not fill the listen backlog")
    }

    deinit {
        for fd in fillers { close(fd) }
        close(listener)
    }
}

/// Counts calls across tasks.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func increment() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}
