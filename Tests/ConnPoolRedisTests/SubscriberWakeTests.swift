import ConnPoolTestSupport
import Logging
import Synchronization
import Testing
@testable import ConnPoolRedis

/// The subscriber's driver waits for a queued request in a task group that races the socket; the
/// loser is cancelled. A wait cancelled before it stored its continuation must return at once: before
/// the fix it stayed suspended until the next request, and the group's exit with it (a subscribe timed
/// out after 5 s in a ThreadSanitizer run). An already-cancelled task makes that interleaving
/// deterministic: its cancellation handler runs before the wait's body.
@Suite("RedisSubscriber: the driver's wake-up", .serialized, .processExclusive)
struct SubscriberWakeTests {
    @Test("a wait for a request in an already-cancelled task returns at once")
    func cancelledWaitReturns() async throws {
        let (_, output) = AsyncThrowingStream.makeStream(of: RedisPubSubMessage.self)
        let core = SubscriberCore(
            configuration: try RedisConnectionConfiguration(port: 6379), options: RedisSubscriber.Options(),
            logger: Logger(label: "test"), output: output)
        let returned = Atomic<Bool>(false)
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await core.waitForRequest()
            returned.store(true, ordering: .releasing)
        }
        #expect(await eventually(timeout: .seconds(5)) { returned.load(ordering: .acquiring) })
        if returned.load(ordering: .acquiring) { await task.value }
        output.finish()
    }
}
