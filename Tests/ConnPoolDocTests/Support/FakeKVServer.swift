import Foundation
import ConnPool
import Synchronization

// Stand-ins that let the articles' samples run without a server:
// - `FakeKVServer`: an in-memory key-value "server" per port, which a test can take down and bring back;
// - `kv_*`: a Swift stand-in for the C library `libkv` that "Writing a connection type" wraps, with the
//   signatures Swift would import from its header (an opaque `kv_context *` becomes `OpaquePointer`);
// - `KVAsyncClient`: a stand-in for a Swift-native async client library of the same server.
// None of this appears in the articles; the types that wrap them (`KVConnection`, `AsyncKVConnection`)
// do, verbatim, in WritingAConnectionTypeSamples.swift.

/// An in-memory key-value server listening on a made-up port.
final class FakeKVServer: @unchecked Sendable {
    // @unchecked Sendable: every mutable property is only touched with `lock` held.
    private static let registry = LockedValue<[Int: FakeKVServer]>([:])
    private static let nextPort = Atomic<Int>(17_000)

    let port: Int
    private let lock = NSLock()
    private var store: [String: String] = [:]
    private var down = false
    private var generation = 0
    private var openConnections = 0
    private var acceptedConnections = 0

    private init(port: Int) { self.port = port }

    /// Starts a server on a port of its own.
    static func start() -> FakeKVServer {
        let server = FakeKVServer(port: nextPort.add(1, ordering: .relaxed).newValue)
        registry.withLock { $0[server.port] = server }
        return server
    }

    /// The server listening on `port`, if any.
    static func at(port: Int) -> FakeKVServer? { registry.withLock { $0[port] } }

    /// Takes the server down: new connections are refused and open ones fail (as after a restart,
    /// they stay failed when it comes back).
    func goDown() { lock.withLock { down = true; generation += 1 } }
    /// Brings the server back.
    func comeBack() { lock.withLock { down = false } }

    /// Connections opened and not yet freed.
    var connectionCount: Int { lock.withLock { openConnections } }
    /// Connections ever accepted.
    var acceptedCount: Int { lock.withLock { acceptedConnections } }

    /// Accepts a connection; returns its generation, or nil when down.
    fileprivate func accept() -> Int? {
        lock.withLock {
            guard !down else { return nil }
            openConnections += 1
            acceptedConnections += 1
            return generation
        }
    }

    fileprivate func disconnect() { lock.withLock { openConnections -= 1 } }

    /// Runs `body` on the store for a connection of `generation`; nil when that connection is gone.
    fileprivate func serve<T>(generation: Int, _ body: (inout [String: String]) -> T) -> T? {
        lock.withLock {
            guard !down, generation == self.generation else { return nil }
            return body(&store)
        }
    }
}

// MARK: - libkv, the blocking C client

/// What a `kv_context *` points at.
private final class KVContext {
    let server: FakeKVServer
    let generation: Int
    var lastError: Int32 = 0

    init(server: FakeKVServer, generation: Int) {
        self.server = server
        self.generation = generation
    }

    static func from(_ pointer: OpaquePointer) -> KVContext {
        Unmanaged<KVContext>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }

    /// Runs one request; records ECONNRESET when the server is gone.
    func request<T>(_ body: (inout [String: String]) -> T) -> T? {
        guard let result = server.serve(generation: generation, body) else {
            lastError = ECONNRESET
            return nil
        }
        lastError = 0
        return result
    }
}

/// `kv_context *kv_connect(const char *host, int port, int timeout_ms);`
func kv_connect(_ host: UnsafePointer<CChar>!, _ port: Int32, _ timeoutMilliseconds: Int32) -> OpaquePointer? {
    guard let server = FakeKVServer.at(port: Int(port)), let generation = server.accept() else {
        errno = ECONNREFUSED
        return nil
    }
    let context = KVContext(server: server, generation: generation)
    return OpaquePointer(Unmanaged.passRetained(context).toOpaque())
}

/// `int kv_ping(kv_context *ctx, int timeout_ms);`
func kv_ping(_ context: OpaquePointer!, _ timeoutMilliseconds: Int32) -> Int32 {
    KVContext.from(context).request { _ in () } == nil ? -1 : 0
}

/// `int kv_set(kv_context *ctx, const char *key, const char *value, int timeout_ms);`
func kv_set(
    _ context: OpaquePointer!, _ key: UnsafePointer<CChar>!, _ value: UnsafePointer<CChar>!,
    _ timeoutMilliseconds: Int32
) -> Int32 {
    let key = String(cString: key)
    let value = String(cString: value)
    return KVContext.from(context).request { $0[key] = value } == nil ? -1 : 0
}

/// `char *kv_get(kv_context *ctx, const char *key, int timeout_ms);` (free the result with `free`)
func kv_get(_ context: OpaquePointer!, _ key: UnsafePointer<CChar>!, _ timeoutMilliseconds: Int32) -> UnsafeMutablePointer<CChar>? {
    let key = String(cString: key)
    guard let value = KVContext.from(context).request({ $0[key] }), let value else { return nil }
    return strdup(value)
}

/// `int kv_error(const kv_context *ctx);`
func kv_error(_ context: OpaquePointer!) -> Int32 {
    KVContext.from(context).lastError
}

/// `void kv_free(kv_context *ctx);`
func kv_free(_ context: OpaquePointer!) {
    let context = Unmanaged<KVContext>.fromOpaque(UnsafeRawPointer(context)).takeRetainedValue()
    context.server.disconnect()
}

// MARK: - KVKit, the Swift-native async client

/// Errors of the async client.
enum KVKitError: Error {
    case connectionRefused(host: String, port: Int)
    case connectionReset
    case closed
}

/// A Swift-native async client of the key-value server.
final class KVAsyncClient: Sendable {
    private let server: FakeKVServer
    private let generation: Int
    private let state = LockedValue<(broken: Bool, closed: Bool)>((false, false))

    private init(server: FakeKVServer, generation: Int) {
        self.server = server
        self.generation = generation
    }

    /// Opens a connection.
    static func connect(host: String, port: Int) async throws -> KVAsyncClient {
        await Task.yield()
        guard let server = FakeKVServer.at(port: port), let generation = server.accept() else {
            throw KVKitError.connectionRefused(host: host, port: port)
        }
        return KVAsyncClient(server: server, generation: generation)
    }

    /// `true` after a failed request: the connection is gone.
    var isBroken: Bool { state.withLock { $0.broken } }

    /// A round trip; throws when the server does not answer.
    func ping(timeout: Duration) async throws {
        try await request { _ in () }
    }

    func get(_ key: String) async throws -> String? {
        try await request { $0[key] }
    }

    func set(_ key: String, _ value: String) async throws {
        try await request { $0[key] = value }
    }

    /// Closes the connection; idempotent.
    func close() async {
        let wasOpen = state.withLock { state -> Bool in
            defer { state.closed = true }
            return !state.closed
        }
        if wasOpen { server.disconnect() }
    }

    private func request<T: Sendable>(_ body: (inout [String: String]) -> T) async throws -> T {
        await Task.yield()
        guard !state.withLock({ $0.closed }) else { throw KVKitError.closed }
        guard let result = server.serve(generation: generation, body) else {
            state.withLock { $0.broken = true }
            throw KVKitError.connectionReset
        }
        return result
    }
}
