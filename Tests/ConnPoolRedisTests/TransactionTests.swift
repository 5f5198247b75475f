import ConnPoolRedis
import ConnPoolTestSupport
import Synchronization
import Testing

private struct BodyFailed: Error {}

@Suite("Redis transactions", .serialized, .processExclusive)
struct TransactionTests {
    @Test func typedResultsAsync() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        guard let (set, incremented, value) = try await connection.transaction(.set(key, "1"), .incr(key), .get(key)) else {
            Issue.record("the transaction aborted")
            return
        }
        #expect(try set.get())
        #expect(try incremented.get() == 2)
        #expect(try value.get() == "2")

        // any number of commands of one type
        let counts = try await connection.transaction((0..<5).map { _ in RedisCommand<Int>.incr(key) })
        #expect(try counts?.map { try $0.get() } == [3, 4, 5, 6, 7])
        #expect(try await connection.send(.ping()) == "PONG")
    }

    @Test func typedResultsBlocking() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        try await onThread {
            let results = try connection.sendBlocking(RedisTransaction(.rpush(key, ["a", "b"]), .lrange(key, 0, -1)))
            #expect(try results?.0.get() == 2)
            #expect(try results?.1.get() == ["a", "b"])
            let counts = try connection.transactionBlocking([RedisCommand<Int>.llen(key), .rpush(key, ["c"])])
            #expect(try counts?.map { try $0.get() } == [2, 3])
            let (pong) = try connection.transactionBlocking(.ping()) ?? .failure(.connectionClosed)
            #expect(try pong.get() == "PONG")
            #expect(try connection.sendBlocking(.ping()) == "PONG")
        }
    }

    /// A command failing at run time (WRONGTYPE) fails its own result; the others ran.
    @Test func errorsInsideExecArePerCommand() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        guard let (set, push, get) = try await connection.transaction(.set(key, "x"), .lpush(key, ["a"]), .get(key)) else {
            Issue.record("the transaction aborted")
            return
        }
        #expect(try set.get())
        guard case .failure(.server(let message)) = push else {
            Issue.record("expected WRONGTYPE, got \(push)")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(try get.get() == "x")
    }

    /// A command rejected when queued: EXECABORT, nothing ran, a typed error naming the command, and the
    /// connection is clean.
    @Test func commandRejectedWhenQueued() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer { connection.closeBlocking() }
        let key = uniqueKey()
        do {
            _ = try await connection.transaction(.set(key, "1"), Command.raw(["GET"]), .incr(key))
            Issue.record("expected the transaction to be rejected")
        } catch let error as RedisTransactionError {
            guard case .commandRejected(let index, let command, let message) = error else {
                Issue.record("expected commandRejected, got \(error)")
                return
            }
            #expect(index == 1)
            #expect(command == "GET")
            #expect(message.contains("wrong number of arguments"))
            #expect(error.description.contains("command 1 (GET)"))
        }
        #expect(try await connection.send(.get(key)) == nil)  // nothing ran
        #expect(try await connection.send(.ping()) == "PONG")  // not QUEUED: no MULTI left open
        try await onThread { () throws -> Void in
            #expect(throws: RedisTransactionError.self) { _ = try connection.transactionBlocking([Command.raw(["NOSUCH"])]) }
            #expect(try connection.sendBlocking(.ping()) == "PONG")
        }
    }

    /// EXEC answers nil when a watched key changed: the transaction returns nil.
    @Test func watchedKeyChangedAborts() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        try await connection.send(.watch([key]))
        #expect(try await other.send(.set(key, "theirs")))
        let aborted = try await connection.transaction(.set(key, "mine"))
        #expect(aborted == nil)
        #expect(try await connection.send(.get(key)) == "theirs")
        // EXEC dropped the watch: the next transaction runs
        #expect(try await connection.transaction(.set(key, "mine")) != nil)
    }

    /// WATCH conflict: a second connection changes the key between WATCH and EXEC of the first attempt;
    /// the first attempt aborts and the retry succeeds.
    @Test func withWatchRetriesAfterAConflictAsync() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        #expect(try await connection.send(.set(key, "10")))
        var attempts = 0
        let (set) = try await connection.withWatch([key], maxAttempts: 3) { connection in
            attempts += 1
            let value = Int(try await connection.send(.get(key)) ?? "0") ?? 0
            if attempts == 1 { _ = try await other.send(.incrBy(key, 5)) }
            return RedisTransaction(.set(key, value * 2))
        }
        #expect(try set.get())
        #expect(attempts == 2)
        #expect(try await connection.send(.get(key)) == "30")  // (10 + 5) * 2: the retry read the new value
    }

    @Test func withWatchRetriesAfterAConflictBlocking() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        try await onThread {
            #expect(try connection.sendBlocking(.set(key, "10")))
            var attempts = 0
            let (count, value) = try connection.withWatchBlocking([key], maxAttempts: 2) { connection in
                attempts += 1
                let value = Int(try connection.sendBlocking(.get(key)) ?? "0") ?? 0
                if attempts == 1 { _ = try other.sendBlocking(.incrBy(key, 5)) }
                return RedisTransaction(.incrBy(key, value), .get(key))
            }
            #expect(attempts == 2)
            #expect(try count.get() == 30)
            #expect(try value.get() == "30")
        }
    }

    @Test func withWatchGivesUpAfterMaxAttempts() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        var attempts = 0
        await #expect(throws: RedisTransactionError.watchConflict(attempts: 3)) {
            _ = try await connection.withWatch([key], maxAttempts: 3) { _ in
                attempts += 1
                _ = try await other.send(.incr(key))
                return RedisTransaction(.set(key, "never"))
            }
        }
        #expect(attempts == 3)
        #expect(try await connection.send(.get(key)) == "3")
        try await onThread {
            #expect(throws: RedisTransactionError.watchConflict(attempts: 1)) {
                _ = try connection.withWatchBlocking([key], maxAttempts: 1) { _ in
                    _ = try other.sendBlocking(.incr(key))
                    return RedisTransaction(.set(key, "never"))
                }
            }
        }
    }

    /// An error thrown inside the transaction's body leaves the connection clean: the next command gets
    /// its normal reply (not QUEUED), and the key is no longer watched (a later transaction runs although
    /// another client changed the key).
    @Test func errorInsideTheBodyLeavesTheConnectionClean() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        await #expect(throws: BodyFailed.self) {
            _ = try await connection.withWatch([key]) { connection -> RedisTransaction<Bool> in
                _ = try await connection.send(.get(key))
                throw BodyFailed()
            }
        }
        #expect(try await connection.send(.ping()) == "PONG")
        #expect(try await other.send(.set(key, "theirs")))
        #expect(try await connection.transaction(.set(key, "mine")) != nil)
        #expect(try await connection.send(.get(key)) == "mine")

        try await onThread { () throws -> Void in
            #expect(throws: BodyFailed.self) {
                _ = try connection.withWatchBlocking([key]) { _ -> RedisTransaction<Bool> in throw BodyFailed() }
            }
            #expect(try connection.sendBlocking(.ping()) == "PONG")
            #expect(try other.sendBlocking(.set(key, "theirs")))
            #expect(try connection.transactionBlocking(.set(key, "mine")) != nil)
        }
    }

    /// A cancelled task's error still unwatches (the UNWATCH is sent from an uncancelled task).
    @Test func cancelledBodyStillUnwatches() async throws {
        let connection = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let other = try await RedisConnection.connect(configuration: SharedServer.configuration())
        defer {
            connection.closeBlocking()
            other.closeBlocking()
        }
        let key = uniqueKey()
        let task = Task {
            try await connection.withWatch([key]) { _ in
                withUnsafeCurrentTask { $0?.cancel() }
                try Task.checkCancellation()
                return RedisTransaction(.set(key, "never"))
            }
        }
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(try await other.send(.set(key, "theirs")))
        #expect(try await connection.transaction(.set(key, "mine")) != nil)
    }
}

private typealias Command = RedisCommand<RedisReply>
