import Glibc
import RedisServerLauncher
import Testing

@Suite("RedisServerProcess")
struct RedisServerLauncherTests {
    @Test func startsAnswersAndStops() throws {
        let server = try RedisServerProcess.start()
        #expect(server.port > 0)
        #expect(server.url == "redis://127.0.0.1:\(server.port)")
        #expect(server.isRunning)
        let pid = server.pid
        #expect(kill(pid, 0) == 0)
        server.stop()
        #expect(!server.isRunning)
        #expect(kill(pid, 0) != 0)
        #expect(access(server.directory, F_OK) != 0)
        server.stop()  // idempotent
    }

    @Test func killAndRestartOnSamePort() throws {
        let server = try RedisServerProcess.start(unixSocket: true)
        defer { server.stop() }
        let firstPid = server.pid
        #expect(access(server.unixSocketPath!, F_OK) == 0)
        try server.kill(signal: SIGKILL)
        #expect(!server.isRunning)
        #expect(throws: RedisServerLauncherError.self) { try server.kill(signal: SIGTERM) }
        try server.restart()
        #expect(server.isRunning)
        #expect(server.pid != firstPid)
    }

    @Test func missingRedisServerIsATypedErrorWithTheInstallHint() {
        do {
            _ = try RedisServerProcess.start(executablePath: "/nonexistent/bin/redis-server")
            Issue.record("expected an error")
        } catch let error as RedisServerLauncherError {
            #expect(error == .redisServerNotInstalled(searched: ["/nonexistent/bin/redis-server"]))
            #expect("\(error)".contains("apt-get install redis-server"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func restartAfterStop() throws {
        let server = try RedisServerProcess.start(unixSocket: true)
        server.stop()
        #expect(!server.isRunning)
        try server.restart()
        #expect(server.isRunning)
        #expect(access(server.unixSocketPath!, F_OK) == 0)
        server.stop()
        #expect(access(server.directory, F_OK) != 0)
    }

    @Test func stopsAStoppedProcess() throws {
        let server = try RedisServerProcess.start()
        try server.kill(signal: SIGSTOP)
        #expect(server.isRunning)
        server.stop(timeout: .seconds(2))
        #expect(!server.isRunning)
    }

    @Test func manyInParallel() async throws {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<6 {
                group.addTask {
                    let server = try RedisServerProcess.start()
                    defer { server.stop() }
                    return server.port
                }
            }
            var ports = Set<Int>()
            for try await port in group { ports.insert(port) }
            #expect(ports.count == 6)
        }
    }
}
