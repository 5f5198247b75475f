import Glibc
import RedisServerLauncher
import Testing
import ConnPoolTestSupport

/// Every test is async and uses the launcher's async forms: starting and stopping a server waits on a
/// thread of the launcher's, never on a cooperative thread (a synchronous test function runs on one too).
@Suite("RedisServerProcess", .serialized, .processExclusive)
struct RedisServerLauncherTests {
    @Test func startsAnswersAndStops() async throws {
        let server = try await RedisServerProcess.start()
        #expect(server.port > 0)
        #expect(server.url == "redis://127.0.0.1:\(server.port)")
        #expect(server.isRunning)
        let pid = server.pid
        #expect(kill(pid, 0) == 0)
        await server.stop()
        #expect(!server.isRunning)
        #expect(kill(pid, 0) != 0)
        #expect(access(server.directory, F_OK) != 0)
        await server.stop()  // idempotent
    }

    @Test func killAndRestartOnSamePort() async throws {
        try await RedisServerProcess.withServer(unixSocket: true) { server in
            let firstPid = server.pid
            #expect(access(server.unixSocketPath!, F_OK) == 0)
            try await server.kill(signal: SIGKILL)
            #expect(!server.isRunning)
            await #expect(throws: RedisServerLauncherError.self) { try await server.kill(signal: SIGTERM) }
            try await server.restart()
            #expect(server.isRunning)
            #expect(server.pid != firstPid)
        }
    }

    @Test func missingRedisServerIsATypedErrorWithTheInstallHint() async {
        do {
            _ = try await RedisServerProcess.start(executablePath: "/nonexistent/bin/redis-server")
            Issue.record("expected an error")
        } catch let error as RedisServerLauncherError {
            #expect(error == .redisServerNotInstalled(searched: ["/nonexistent/bin/redis-server"]))
            #expect("\(error)".contains("apt-get install redis-server"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func restartAfterStop() async throws {
        let server = try await RedisServerProcess.start(unixSocket: true)
        await server.stop()
        #expect(!server.isRunning)
        try await server.restart()
        #expect(server.isRunning)
        #expect(access(server.unixSocketPath!, F_OK) == 0)
        await server.stop()
        #expect(access(server.directory, F_OK) != 0)
    }

    @Test func stopsAStoppedProcess() async throws {
        let server = try await RedisServerProcess.start()
        try await server.kill(signal: SIGSTOP)
        #expect(server.isRunning)
        await server.stop(timeout: .seconds(2))
        #expect(!server.isRunning)
    }

    @Test func manyInParallel() async throws {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<6 {
                group.addTask { try await RedisServerProcess.withServer { $0.port } }
            }
            var ports = Set<Int>()
            for try await port in group { ports.insert(port) }
            #expect(ports.count == 6)
        }
    }

    /// A descriptor of the test process left open without O_CLOEXEC (here one end of a socket pair) must
    /// not stay open in the server: else closing it here would not hang up the other end, and a pipe
    /// read here would never reach its end while the server runs.
    @Test func theServerInheritsNoDescriptor() async throws {
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]) }
        let flags = fcntl(fds[1], F_GETFD)
        #expect(flags >= 0 && flags & FD_CLOEXEC == 0)
        try await RedisServerProcess.withServer { server in
            let inherited = Self.openDescriptors(of: server.pid)
            #expect(!inherited.isEmpty)
            #expect(!inherited.contains { Self.isSocket(pid: server.pid, fd: $0, like: fds[1]) })
            close(fds[1])
            // The peer sees the hang-up: no copy of fds[1] is left open in the server. (The 5 s bound only
            // covers a short-lived child that another test may start meanwhile, such as promtool.)
            var entry = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            #expect(poll(&entry, 1, 5_000) == 1)
            var byte: UInt8 = 0
            #expect(read(fds[0], &byte, 1) == 0)
        }
    }

    /// The descriptor numbers open in process `pid` (from /proc).
    static func openDescriptors(of pid: Int32) -> [Int32] {
        guard let directory = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(directory) }
        var result: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let fd = Int32(name) { result.append(fd) }
        }
        return result
    }

    /// Whether descriptor `fd` of process `pid` is the socket that `local` is in this process.
    static func isSocket(pid: Int32, fd: Int32, like local: Int32) -> Bool {
        func target(_ path: String) -> String {
            var buffer = [CChar](repeating: 0, count: 256)
            let count = readlink(path, &buffer, buffer.count - 1)
            return count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        }
        let mine = target("/proc/self/fd/\(local)")
        return !mine.isEmpty && target("/proc/\(pid)/fd/\(fd)") == mine
    }
}
