import ConnPoolIO
import ConnPoolTestSupport
import Glibc
import Testing

/// A connected pair of non-blocking Unix stream sockets, closed on deinit.
final class SocketPair: Sendable {
    let a: Int32
    let b: Int32

    init() throws {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw IOReactorError.systemError(errno: errno, operation: "socketpair")
        }
        a = fds[0]
        b = fds[1]
    }

    func write(_ text: String, to fd: Int32) {
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        precondition(written == bytes.count)
    }

    func drain(_ fd: Int32) -> Int {
        var buffer = [UInt8](repeating: 0, count: 4096)
        return Glibc.read(fd, &buffer, buffer.count)
    }

    deinit {
        Glibc.close(a)
        Glibc.close(b)
    }
}

/// Runs `body` with a private reactor and shuts it down afterwards.
func withReactor<T>(_ body: (IOReactor) async throws -> T) async throws -> T {
    let reactor = try IOReactor()
    defer { reactor.shutdown() }
    return try await body(reactor)
}

@Suite("IOReactor", .serialized, .processExclusive)
struct IOReactorTests {
    @Test("a wait ends when the peer writes")
    func readableAfterWrite() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let waiter = Task { try await reactor.waitReadable(pair.a, deadline: .now + .seconds(10)) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            pair.write("hello", to: pair.b)
            try await waiter.value
            #expect(pair.drain(pair.a) == 5)
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("an already readable descriptor returns at once, also without a deadline")
    func alreadyReadable() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            pair.write("x", to: pair.b)
            try await reactor.waitReadable(pair.a, deadline: nil)
            try await reactor.waitWritable(pair.a, deadline: nil)
        }
    }

    @Test("a peer close (hang-up) wakes a reader")
    func hangUpWakesReader() async throws {
        try await withReactor { reactor in
            var fds: [Int32] = [-1, -1]
            // Close-on-exec: a redis-server that another test spawns meanwhile must not inherit the peer,
            // or closing it here would not hang up.
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            #expect(socketpair(AF_UNIX, type, 0, &fds) == 0)
            defer { close(fds[0]) }
            let fd = fds[0]
            let waiter = Task { try await reactor.waitReadable(fd, deadline: .now + .seconds(10)) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            close(fds[1])
            try await waiter.value
            var byte: UInt8 = 0
            #expect(read(fd, &byte, 1) == 0)  // end of stream
        }
    }

    @Test("the deadline passes: timedOut, not early and not much late")
    func timeout() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let start = ContinuousClock.now
            await #expect(throws: IOReactorError.timedOut) {
                try await reactor.waitReadable(pair.a, deadline: start + .milliseconds(100))
            }
            let elapsed = start.duration(to: .now)
            #expect(elapsed >= .milliseconds(100))
            #expect(elapsed < .seconds(10))  // a sanity bound, loose for loaded CI machines
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("a deadline in the past throws timedOut at once")
    func pastDeadline() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            await #expect(throws: IOReactorError.timedOut) {
                try await reactor.waitWritable(pair.a, deadline: .now - .seconds(1))
            }
        }
    }

    @Test("an earlier deadline registered later wakes the sleeping reactor")
    func earlierDeadlineWakesReactor() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let long = Task { try await reactor.waitReadable(pair.a, deadline: .now + .seconds(30)) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            let start = ContinuousClock.now
            await #expect(throws: IOReactorError.timedOut) {
                try await reactor.waitReadable(pair.b, deadline: start + .milliseconds(50))
            }
            #expect(start.duration(to: .now) < .seconds(10))  // a sanity bound, loose for loaded CI machines
            long.cancel()
            await #expect(throws: CancellationError.self) { try await long.value }
        }
    }

    @Test("cancellation removes the registration at once")
    func cancellation() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let waiter = Task { try await reactor.waitReadable(pair.a, deadline: nil) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            let start = ContinuousClock.now
            waiter.cancel()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(start.duration(to: .now) < .seconds(10))  // a sanity bound, loose for loaded CI machines
            #expect(reactor.pendingWaitCount == 0)
            // The descriptor can be waited on again, and the stale arming does not resume the new wait early.
            let again = Task { try await reactor.waitReadable(pair.a, deadline: .now + .seconds(10)) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            pair.write("z", to: pair.b)
            try await again.value
        }
    }

    @Test("a task cancelled before it waits throws CancellationError without registering")
    func alreadyCancelled() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let waiter = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                try await reactor.waitReadable(pair.a, deadline: nil)
            }
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("a reader and a writer on one descriptor are served independently")
    func readerAndWriter() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            // Fill the send buffer so that `a` is not writable.
            var chunk = [UInt8](repeating: 7, count: 65536)
            while write(pair.a, &chunk, chunk.count) > 0 {}
            let reader = Task { try await reactor.waitReadable(pair.a, deadline: .now + .seconds(10)) }
            let writer = Task { try await reactor.waitWritable(pair.a, deadline: .now + .seconds(10)) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 2 })
            pair.write("r", to: pair.b)  // makes `a` readable only
            try await reader.value
            #expect(reactor.pendingWaitCount == 1)
            while pair.drain(pair.b) > 0 {}  // makes `a` writable
            try await writer.value
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("a second wait for the same descriptor and direction is refused with EBUSY")
    func duplicateWait() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            let first = Task { try await reactor.waitReadable(pair.a, deadline: nil) }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
            do {
                try await reactor.waitReadable(pair.a, deadline: .now + .seconds(5))
                Issue.record("expected EBUSY")
            } catch IOReactorError.systemError(let code, _) {
                #expect(code == EBUSY)
            }
            first.cancel()
            _ = try? await first.value
        }
    }

    @Test("descriptors epoll cannot watch fail with a system error")
    func badDescriptors() async throws {
        try await withReactor { reactor in
            await #expect(throws: IOReactorError.systemError(errno: EBADF, operation: "waitReadable(fd: -1)")) {
                try await reactor.waitReadable(-1, deadline: nil)
            }
            do {
                try await reactor.waitReadable(1_000_000, deadline: nil)
                Issue.record("expected EBADF")
            } catch IOReactorError.systemError(let code, _) {
                #expect(code == EBADF)
            }
            let file = open("/proc/self/stat", O_RDONLY)
            defer { close(file) }
            do {
                try await reactor.waitReadable(file, deadline: nil)
                Issue.record("expected EPERM")
            } catch IOReactorError.systemError(let code, _) {
                #expect(code == EPERM)
            }
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("a closed and reused descriptor number can be waited on again")
    func descriptorReuse() async throws {
        try await withReactor { reactor in
            for _ in 0..<20 {
                let pair = try SocketPair()
                pair.write("x", to: pair.b)
                try await reactor.waitReadable(pair.a, deadline: .now + .seconds(5))
                let idle = Task { try await reactor.waitReadable(pair.b, deadline: .now + .seconds(10)) }
                #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
                idle.cancel()
                _ = try? await idle.value
            }
        }
    }

    @Test("shutdown resumes pending waits with closed, and later waits throw closed")
    func shutdown() async throws {
        let reactor = try IOReactor()
        let pair = try SocketPair()
        let waiter = Task { try await reactor.waitReadable(pair.a, deadline: nil) }
        #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == 1 })
        reactor.shutdown()
        await #expect(throws: IOReactorError.closed) { try await waiter.value }
        await #expect(throws: IOReactorError.closed) { try await reactor.waitWritable(pair.a, deadline: nil) }
        reactor.shutdown()  // idempotent
    }

    @Test("hundreds of concurrent waits: readiness, timeouts and cancellations mixed")
    func hundredsOfWaits() async throws {
        try await withReactor { reactor in
            let count = 300
            let pairs = try (0..<count).map { _ in try SocketPair() }
            let outcomes = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for (i, pair) in pairs.enumerated() {
                    group.addTask {
                        switch i % 3 {
                        case 0:  // becomes readable
                            try await reactor.waitReadable(pair.a, deadline: .now + .seconds(20))
                            return (i, "ready")
                        case 1:  // times out
                            do {
                                try await reactor.waitReadable(pair.a, deadline: .now + .milliseconds(50 + i))
                                return (i, "ready?!")
                            } catch IOReactorError.timedOut {
                                return (i, "timedOut")
                            }
                        default:  // writable at once
                            try await reactor.waitWritable(pair.a, deadline: .now + .seconds(20))
                            return (i, "writable")
                        }
                    }
                }
                // Let the readable group register (most of them), then make them readable.
                _ = await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount >= count / 3 }
                for (i, pair) in pairs.enumerated() where i % 3 == 0 {
                    pair.write("go", to: pair.b)
                }
                var results: [Int: String] = [:]
                for try await (i, outcome) in group {
                    results[i] = outcome
                }
                return results
            }
            #expect(outcomes.count == count)
            for i in 0..<count {
                let expected = ["ready", "timedOut", "writable"][i % 3]
                #expect(outcomes[i] == expected, "wait \(i)")
            }
            #expect(reactor.pendingWaitCount == 0)

            // And a round of cancellations.
            let tasks = pairs.map { pair in Task { try await reactor.waitReadable(pair.b, deadline: nil) } }
            #expect(await eventually(pollingEvery: .milliseconds(2)) { reactor.pendingWaitCount == count })
            for task in tasks { task.cancel() }
            for task in tasks {
                await #expect(throws: CancellationError.self) { try await task.value }
            }
            #expect(reactor.pendingWaitCount == 0)
        }
    }

    @Test("the shared reactor serves waits")
    func sharedReactor() async throws {
        let pair = try SocketPair()
        let waiter = Task { try await IOReactor.shared.waitReadable(pair.a, deadline: .now + .seconds(10)) }
        pair.write("s", to: pair.b)
        try await waiter.value
        await #expect(throws: IOReactorError.timedOut) {
            try await IOReactor.shared.waitReadable(pair.b, deadline: .now + .milliseconds(20))
        }
    }
}
