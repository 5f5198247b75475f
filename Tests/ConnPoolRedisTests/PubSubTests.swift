import ConnPool
import ConnPoolRedis
import ConnPoolTestSupport
import RedisServerLauncher
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// ``RedisSubscriber`` and PUBLISH against real redis-server processes: channel and pattern delivery,
/// unsubscribe, the end of the sequence, resubscription after the server restarts or is killed, and no
/// leaked connection.
@Suite("PubSubTests", .serialized, .processExclusive)
struct PubSubTests {
    /// Collects what a subscriber delivers, from a task of its own.
    final class Collector: Sendable {
        final class Box: Sendable {
            let messages = LockedValue<[RedisPubSubMessage]>([])
            let ended = LockedValue<Result<Void, any Error>?>(nil)
        }

        let box = Box()
        let task: Task<Void, Never>

        init(_ subscriber: RedisSubscriber) {
            let box = self.box
            let stream = subscriber.messages
            task = Task {
                do {
                    for try await message in stream { box.messages.withLock { $0.append(message) } }
                    box.ended.withLock { $0 = .success(()) }
                } catch {
                    box.ended.withLock { $0 = .failure(error) }
                }
            }
        }

        var received: [RedisPubSubMessage] { box.messages.withLock { $0 } }
        var strings: [String] { received.map(\.string) }
        var hasEnded: Bool { box.ended.withLock { $0 != nil } }
        var ending: Result<Void, any Error>? { box.ended.withLock { $0 } }

        func waitFor(count: Int) async -> Bool {
            await eventually(pollingEvery: .milliseconds(2)) { self.received.count >= count }
        }
    }

    static func subscriberConfiguration(port: Int, name: String? = nil) throws -> RedisConnectionConfiguration {
        var configuration = try RedisConnectionConfiguration(port: port)
        configuration.connectTimeout = .seconds(2)
        configuration.clientName = name
        return configuration
    }

    static let quickReconnect: RedisSubscriber.Options = {
        var options = RedisSubscriber.Options()
        options.initialReconnectDelay = .milliseconds(10)
        options.maximumReconnectDelay = .milliseconds(200)
        return options
    }()

    @Test func channelAndPatternMessagesArriveInOrder() async throws {
        let server = try await SharedServer.get()
        let subscriber = try RedisSubscriber(configuration: Self.subscriberConfiguration(port: server.port))
        let collector = Collector(subscriber)
        let channel = uniqueKey()
        try await subscriber.subscribe([channel])
        try await subscriber.psubscribe([channel + ".*"])
        let publisher = try await RedisConnection.connect(configuration: SharedServer.configuration())
        for index in 0..<50 {
            #expect(try await publisher.publish(channel, "c\(index)") == 1)
            #expect(try await publisher.publish(channel + ".sub", Array("p\(index)".utf8)) == 1)
        }
        #expect(await collector.waitFor(count: 100))
        let received = collector.received
        #expect(received.count == 100)
        let direct = received.filter { $0.pattern == nil }
        let matched = received.filter { $0.pattern != nil }
        #expect(direct.map(\.string) == (0..<50).map { "c\($0)" })
        #expect(direct.allSatisfy { $0.channel == channel })
        #expect(matched.map(\.string) == (0..<50).map { "p\($0)" })
        #expect(matched.allSatisfy { $0.channel == channel + ".sub" && $0.pattern == channel + ".*" })
        // Interleaved as published.
        #expect(received.map(\.string).prefix(4) == ["c0", "p0", "c1", "p1"])
        await subscriber.close()
        await publisher.close()
        #expect(await eventually { collector.hasEnded })
    }

    @Test func unsubscribeStopsMessages() async throws {
        let server = try await SharedServer.get()
        let subscriber = try RedisSubscriber(configuration: Self.subscriberConfiguration(port: server.port))
        let collector = Collector(subscriber)
        let (a, b, pattern) = (uniqueKey() + ".a", uniqueKey() + ".b", uniqueKey())
        try await subscriber.subscribe([a, b])
        try await subscriber.psubscribe([pattern + ":*"])
        let publisher = try await RedisConnection.connect(configuration: SharedServer.configuration())
        #expect(try await publisher.publish(a, "a1") == 1)
        try await subscriber.unsubscribe([a])
        try await subscriber.punsubscribe([pattern + ":*"])
        #expect(try await publisher.publish(a, "a2") == 0)
        #expect(try await publisher.publish(pattern + ":x", "p2") == 0)
        #expect(try await publisher.publish(b, "b1") == 1)
        #expect(await collector.waitFor(count: 2))
        #expect(collector.strings == ["a1", "b1"])
        await subscriber.close()
        await publisher.close()
    }

    @Test func finishEndsTheSequenceAndFailsLaterSubscribes() async throws {
        let server = try await SharedServer.get()
        let subscriber = try RedisSubscriber(configuration: Self.subscriberConfiguration(port: server.port))
        let collector = Collector(subscriber)
        try await subscriber.subscribe([uniqueKey()])
        #expect(!collector.hasEnded)
        subscriber.finish()
        #expect(await eventually { collector.hasEnded })
        #expect(throws: Never.self) { try collector.ending?.get() }
        let error = await expectRedisError { try await subscriber.subscribe([uniqueKey()]) }
        #expect(error == .connectionClosedLocally)
        await subscriber.close()  // idempotent; returns once the driver ended
    }

    @Test func closeAndCancellationLeaveNoConnection() async throws {
        let server = try await SharedServer.get()
        let observer = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let name = "pubsub-leak-\(UInt32.random(in: 0...UInt32.max))"
        func connectedCount() async throws -> Int {
            let list = try await observer.command("CLIENT", "LIST").string
            return list.split(separator: "\n").filter { $0.contains(" name=\(name) ") }.count
        }
        let configuration = try Self.subscriberConfiguration(port: server.port, name: name)
        // Closed explicitly.
        for _ in 0..<5 {
            let subscriber = try RedisSubscriber(configuration: configuration)
            try await subscriber.subscribe([uniqueKey()])
            await subscriber.close()
        }
        // Ended by cancelling the consuming task.
        let subscriber = try RedisSubscriber(configuration: configuration)
        try await subscriber.subscribe([uniqueKey()])
        #expect(try await connectedCount() == 1)
        let collector = Collector(subscriber)
        collector.task.cancel()
        await collector.task.value
        #expect(try await eventually(pollingEvery: .milliseconds(5)) { try await connectedCount() == 0 })
        let error = await expectRedisError { try await subscriber.subscribe([uniqueKey()]) }
        #expect(error == .connectionClosedLocally)
        // Released without finish().
        do {
            let dropped = try RedisSubscriber(configuration: configuration)
            try await dropped.subscribe([uniqueKey()])
        }
        #expect(try await eventually(pollingEvery: .milliseconds(5)) { try await connectedCount() == 0 })
        await observer.close()
    }

    @Test(arguments: ["restart", "kill"])
    func messagesResumeAfterTheServerRestarts(how: String) async throws {
        try await RedisServerProcess.withServer { server in
            let subscriber = try RedisSubscriber(
                configuration: Self.subscriberConfiguration(port: server.port), options: Self.quickReconnect)
            let collector = Collector(subscriber)
            try await subscriber.subscribe(["news"])
            try await subscriber.psubscribe(["events.*"])
            let publisherConfiguration = try Self.subscriberConfiguration(port: server.port)
            var publisher = try await RedisConnection.connect(configuration: publisherConfiguration)
            #expect(try await publisher.publish("news", "before") == 1)
            #expect(await collector.waitFor(count: 1))
            #expect(subscriber.reconnectCount == 0)

            if how == "kill" {
                try await server.kill(signal: SIGKILL)
            }
            try await server.restart()
            publisher = try await RedisConnection.connect(configuration: publisherConfiguration)
            let connection = publisher
            var sent = 0
            let resumed = await eventually(timeout: .seconds(20), pollingEvery: .milliseconds(20)) {
                sent += 1
                _ = try? await connection.publish("news", "after")
                _ = try? await connection.publish("events.x", "after-pattern")
                let strings = collector.strings
                return strings.contains("after") && strings.contains("after-pattern")
            }
            #expect(resumed, "no message after the restart (\(sent) sent, received \(collector.strings))")
            #expect(subscriber.reconnectCount >= 1)
            #expect(collector.received.first { $0.string == "after-pattern" }?.pattern == "events.*")
            #expect(!collector.hasEnded)
            await subscriber.close()
            await publisher.close()
            #expect(await eventually { collector.hasEnded })
        }
    }

    @Test func givesUpAfterTheConfiguredAttempts() async throws {
        var options = Self.quickReconnect
        options.maximumReconnectAttempts = 3
        let subscriber = try RedisSubscriber(
            configuration: Self.subscriberConfiguration(port: freeLoopbackPort()), options: options)
        let collector = Collector(subscriber)
        #expect(await eventually { collector.hasEnded })
        let result = collector.ending
        #expect(throws: RedisError.self) { try result?.get() }
        await subscriber.close()
    }

    @Test func confirmationTimesOutOnAFrozenServer() async throws {
        try await RedisServerProcess.withServer { server in
            var options = Self.quickReconnect
            options.confirmationTimeout = .milliseconds(300)
            let subscriber = try RedisSubscriber(
                configuration: Self.subscriberConfiguration(port: server.port), options: options)
            // On a loaded machine (a parallel swift test) connecting and the first confirmation can take longer
            // than 300 ms; a timed-out channel stays recorded, so asking again is safe.
            var subscribed = false
            for _ in 0..<20 where !subscribed { subscribed = (try? await subscriber.subscribe(["a"])) != nil }
            #expect(subscribed)
            try await server.kill(signal: SIGSTOP)
            let error = await expectRedisError { try await subscriber.subscribe(["b"]) }
            #expect(error?.isTimeout == true)
            try await server.kill(signal: SIGCONT)
            await subscriber.close()
        }
    }

    @Test func receiveBlockingDeliversOnTheCallingThread() async throws {
        let server = try await SharedServer.get()
        let subscriber = try RedisSubscriber(configuration: Self.subscriberConfiguration(port: server.port))
        let channel = uniqueKey()
        try await subscriber.subscribe([channel])
        let delivered = Collector.Box()
        let receiver = Task {
            try await onThread {
                try subscriber.receiveBlocking { message in
                    let count = delivered.messages.withLock {
                        $0.append(message)
                        return $0.count
                    }
                    if count == 3 { subscriber.finish() }
                }
            }
        }
        let publisher = try await RedisConnection.connect(configuration: SharedServer.configuration())
        let publishedBlocking = try await onThread { [publisher] in try publisher.publishBlocking(channel, "1") }
        #expect(publishedBlocking == 1)
        for index in 2...5 { _ = try await publisher.publish(channel, "\(index)") }
        #expect(await eventually { delivered.messages.withLock { $0.count >= 3 } })
        subscriber.finish()  // ends the receiver even when the messages did not come
        try await receiver.value
        #expect(delivered.messages.withLock { $0.map(\.string) } == ["1", "2", "3"])
        await subscriber.close()
        await publisher.close()
    }
}
