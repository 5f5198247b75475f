import ConnPool
import ConnPoolTestSupport
import Foundation
import Synchronization
import Testing

// The samples of WritingAConnectionType.md, verbatim. The C library `libkv` and the async library
// `KVAsyncClient` they wrap are stand-ins (Support/FakeKVServer.swift), so the samples run without a
// server. The other articles use `KVConnectionFactory` as their example backend.

// MARK: A blocking C client

/// A failure of `libkv`.
enum KVError: Error, CustomStringConvertible {
    case connectFailed(host: String, port: Int, errno: Int32)
    case io(errno: Int32)
    /// The connection failed earlier; it must not be used again.
    case broken

    var description: String {
        switch self {
        case .connectFailed(let host, let port, let errno): "kv: connect to \(host):\(port) failed (errno \(errno))"
        case .io(let errno): "kv: I/O error (errno \(errno))"
        case .broken: "kv: the connection is broken"
        }
    }
}

/// One `libkv` connection: blocking calls on the caller's thread, async ones offloaded.
final class KVConnection: Connection, @unchecked Sendable {
    // @unchecked Sendable: `context` is used by one thread at a time, because the pool lends a
    // connection to one borrower at a time and never checks or closes a lent connection.
    private let context: OpaquePointer
    private let broken = Atomic<Bool>(false)

    init(context: OpaquePointer) {
        self.context = context
    }

    // MARK: The client's own API

    /// Stores `value` under `key`, blocking the calling thread.
    func setBlocking(_ key: String, _ value: String, timeout: Duration = .seconds(1)) throws(KVError) {
        try checkNotBroken()
        if kv_set(context, key, value, timeout.milliseconds) != 0 { throw breakWithLastError() }
    }

    /// The value stored under `key`, blocking the calling thread.
    func getBlocking(_ key: String, timeout: Duration = .seconds(1)) throws(KVError) -> String? {
        try checkNotBroken()
        guard let value = kv_get(context, key, timeout.milliseconds) else {
            if kv_error(context) != 0 { throw breakWithLastError() }
            return nil
        }
        defer { free(value) }
        return String(cString: value)
    }

    /// ``setBlocking(_:_:timeout:)`` on a dispatch thread: never blocks a cooperative thread.
    func set(_ key: String, _ value: String, timeout: Duration = .seconds(1)) async throws {
        try await BlockingOffload.run { try self.setBlocking(key, value, timeout: timeout) }
    }

    /// ``getBlocking(_:timeout:)`` on a dispatch thread: never blocks a cooperative thread.
    func get(_ key: String, timeout: Duration = .seconds(1)) async throws -> String? {
        try await BlockingOffload.run { try self.getBlocking(key, timeout: timeout) }
    }

    private func checkNotBroken() throws(KVError) {
        if broken.load(ordering: .relaxed) { throw .broken }
    }

    /// After an I/O error the protocol state is unknown: mark the connection broken.
    private func breakWithLastError() -> KVError {
        broken.store(true, ordering: .relaxed)
        return .io(errno: kv_error(context))
    }

    // MARK: Connection

    var isBroken: Bool { broken.load(ordering: .relaxed) }

    func isValidBlocking(timeout: Duration) -> Bool {
        !isBroken && kv_ping(context, timeout.milliseconds) == 0
    }

    func closeBlocking() {
        kv_free(context)
    }

    func isValid(timeout: Duration) async -> Bool {
        (try? await BlockingOffload.run { self.isValidBlocking(timeout: timeout) }) ?? false
    }

    func close() async {
        _ = try? await BlockingOffload.run { self.closeBlocking() }
    }
}

extension Duration {
    /// Whole milliseconds, for C APIs that take an `int timeout_ms`.
    var milliseconds: Int32 {
        Int32(clamping: components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000)
    }
}

/// Opens `libkv` connections for a pool.
struct KVConnectionFactory: ConnectionFactory {
    var host: String
    var port: Int
    var connectTimeout: Duration = .seconds(2)

    func makeConnection() async throws -> KVConnection {
        try await BlockingOffload.run { try makeConnectionBlocking() }
    }

    func makeConnectionBlocking() throws(KVError) -> KVConnection {
        guard let context = kv_connect(host, Int32(port), connectTimeout.milliseconds) else {
            throw KVError.connectFailed(host: host, port: port, errno: errno)
        }
        return KVConnection(context: context)
    }
}

// MARK: An async client

/// A connection of the Swift-native async client `KVAsyncClient`.
final class AsyncKVConnection: Connection {
    let client: KVAsyncClient

    init(client: KVAsyncClient) {
        self.client = client
    }

    func isValid(timeout: Duration) async -> Bool {
        do {
            try await client.ping(timeout: timeout)
            return true
        } catch {
            return false
        }
    }

    func close() async {
        await client.close()
    }

    var isBroken: Bool { client.isBroken }
}

struct AsyncKVConnectionFactory: ConnectionFactory {
    var host: String
    var port: Int

    func makeConnection() async throws -> AsyncKVConnection {
        AsyncKVConnection(client: try await KVAsyncClient.connect(host: host, port: port))
    }
}

// MARK: Testing a connection type

@Suite("Writing a connection type", .serialized, .processExclusive)
struct WritingAConnectionTypeSamples {
    @Test("the blocking C client in a pool, from both interfaces")
    func blockingClientInAPool() async throws {
        let server = FakeKVServer.start()
        let pool = try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().maxSize(2))
        try await pool.withConnection { kv in try await kv.set("greeting", "hello") }
        let fromThread = try await onThread {  // a plain thread: the blocking form waits there
            try pool.withConnectionBlocking { kv in try kv.getBlocking("greeting") }
        }
        #expect(fromThread == "hello")
        await pool.shutdown()
        #expect(server.connectionCount == 0)
    }

    @Test("the async client in a pool, and its blocking defaults")
    func asyncClientInAPool() async throws {
        try await asyncClientSample(port: FakeKVServer.start().port)
    }

    @Test("a broken connection is closed on release, not lent again")
    func brokenConnectionIsReplaced() async throws {
        try await brokenConnectionSample(server: FakeKVServer.start())
    }

    func asyncClientSample(port: Int) async throws {
        let pool = try ConnectionPool(
            factory: AsyncKVConnectionFactory(host: "127.0.0.1", port: port),
            configuration: PoolConfiguration().maxSize(4))
        try await pool.withConnection { connection in
            try await connection.client.set("visits", "1")
        }
        let valid = try await pool.withConnection { connection in
            await connection.isValid(timeout: .seconds(1))
        }
        #expect(valid)
        await pool.shutdown()
    }

    func brokenConnectionSample(server: FakeKVServer) async throws {
        let pool = try ConnectionPool(
            factory: KVConnectionFactory(host: "127.0.0.1", port: server.port),
            configuration: PoolConfiguration().maxSize(1),
            clock: .manual(ManualClock()))
        try await pool.withConnection { kv in try await kv.set("key", "value") }

        server.goDown()
        await #expect(throws: KVError.self) {
            try await pool.withConnection { kv in try await kv.get("key") }
        }
        #expect(await eventually { pool.metrics().closedByReason[.broken] == 1 })

        server.comeBack()
        let value = try await pool.withConnection { kv in try await kv.get("key") }
        #expect(value == "value")
        await pool.shutdown()
    }
}
