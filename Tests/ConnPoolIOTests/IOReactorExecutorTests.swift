import ConnPoolIO
import ConnPoolTestSupport
import Glibc
import Testing

/// The reactor as a task executor (SE-0417): tasks that prefer it run on its thread, and a wait's
/// resumption continues them there, without a hand-off.
@Suite("IOReactor as a task executor", .serialized, .processExclusive)
struct IOReactorExecutorTests {
    @Test("a task that prefers the reactor runs on its thread, also after each of its waits")
    func tasksRunOnTheReactorThread() async throws {
        try await withReactor { reactor in
            let pair = try SocketPair()
            // Off the reactor thread here (a plain task).
            #expect(!reactor.isCurrentThread)
            let seen = try await Task(executorPreference: reactor) { () throws -> [Bool] in
                var onReactor = [reactor.isCurrentThread]
                for round in 0..<50 {
                    pair.write("\(round)", to: pair.b)
                    try await reactor.waitReadable(pair.a, deadline: .now + .seconds(10))
                    onReactor.append(reactor.isCurrentThread)
                    #expect(pair.drain(pair.a) > 0)
                }
                return onReactor
            }.value
            #expect(seen.count == 51)
            #expect(seen.allSatisfy { $0 }, "\(seen)")
        }
    }

    @Test("withTaskExecutorPreference moves the body onto the reactor thread and back off it")
    func preferenceScope() async throws {
        try await withReactor { reactor in
            let inside = await withTaskExecutorPreference(reactor) { reactor.isCurrentThread }
            #expect(inside)
            #expect(!reactor.isCurrentThread)
        }
    }

    @Test("many tasks on the reactor, each waiting for its own peer, all finish (jobs from other threads wake it)")
    func manyTasks() async throws {
        try await withReactor { reactor in
            let pairs = try (0..<64).map { _ in try SocketPair() }
            let done = try await withThrowingTaskGroup(of: Int.self) { group in
                for pair in pairs {
                    group.addTask(executorPreference: reactor) {
                        var received = 0
                        var offReactor = 0
                        while received < 20 {  // writes may coalesce: count bytes, not wake-ups
                            try await reactor.waitReadable(pair.a, deadline: .now + .seconds(20))
                            received += max(0, pair.drain(pair.a))
                            if !reactor.isCurrentThread { offReactor += 1 }
                        }
                        return offReactor == 0 ? 1 : 0
                    }
                }
                // Writers on plain threads: every wake-up comes from outside the reactor.
                group.addTask {
                    try await onThread {
                        for _ in 0..<20 {
                            for pair in pairs {
                                pair.write("x", to: pair.b)
                            }
                            usleep(200)
                        }
                    }
                    return 0
                }
                return try await group.reduce(0, +)
            }
            #expect(done == 64)
        }
    }

    @Test("jobs enqueued on a reactor that shuts down still run")
    func jobsSurviveShutdown() async throws {
        let reactor = try IOReactor()
        let ran = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<32 {
                group.addTask(executorPreference: reactor) {
                    await Task.yield()
                    return true
                }
            }
            reactor.shutdown()
            var count = 0
            for await value in group where value { count += 1 }
            return count
        }
        #expect(ran == 32)
    }

    @Test("waiting for the end of the round resumes every task in the same pass, without a hang; off the reactor it returns at once")
    func endOfRound() async throws {
        try await withReactor { reactor in
            await reactor.waitForEndOfRound()  // not on the reactor thread: returns at once
            let finished = await withTaskGroup(of: Int.self) { group in
                for _ in 0..<50 {
                    group.addTask(executorPreference: reactor) {
                        var passes = 0
                        for _ in 0..<100 {
                            await reactor.waitForEndOfRound()
                            if reactor.isCurrentThread { passes += 1 }
                        }
                        return passes
                    }
                }
                return await group.reduce(0, +)
            }
            #expect(finished == 5_000)
        }
    }
}
