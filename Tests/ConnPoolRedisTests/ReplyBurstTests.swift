import ConnPoolRedis
import ConnPoolTestSupport
import Glibc
import Testing

/// A loopback server that accepts one connection, reads until it has `requestBytes` bytes, then sends
/// `reply` in a single write and keeps the connection open (until `stop`).
final class OneBurstServer: @unchecked Sendable {
    // @unchecked Sendable: `listener` and `port` are immutable; the accepted descriptor lives only on the
    // server's own thread.
    let port: Int
    private let listener: Int32

    init(requestBytes: Int, reply: [UInt8]) throws {
        let (listener, address) = loopbackListener(backlog: 4)
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        detachedThread {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            var received = 0
            var buffer = [UInt8](repeating: 0, count: 65536)
            while received < requestBytes {
                let count = recv(client, &buffer, buffer.count, 0)
                if count <= 0 { close(client); return }
                received += count
            }
            _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // Keep it open until the peer closes.
            while recv(client, &buffer, buffer.count, 0) > 0 {}
            close(client)
        }
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

/// Runs `body` on a detached pthread.
private func detachedThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        // @unchecked Sendable: written once before the thread starts, read only by that thread.
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    pthread_create(&thread, nil, { context in
        Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, context)
    pthread_detach(thread)
}

/// The replies of a pipeline that all arrive at once, more than one read's worth: each later reply must
/// be read from what is already there, not waited for (the socket's reactor registration is
/// edge-triggered: a wait after a read that left bytes in the socket would never wake).
@Suite("Replies that arrive in one burst", .serialized, .processExclusive)
struct ReplyBurstTests {
    @Test func aPipelinesRepliesArrivingInOneWriteAreAllRead() async throws {
        // Three 20 KB bulk strings in one write: the first read (16 KB) cannot hold even the first.
        let value = [UInt8](repeating: 0x62, count: 20_000)
        let bulk: [UInt8] = Array("$\(value.count)\r\n".utf8) + value + Array("\r\n".utf8)
        let commands: [[RedisArgument]] = [["GET", "a"], ["GET", "b"], ["GET", "c"]]
        let requestBytes = 3 * Array("*2\r\n$3\r\nGET\r\n$1\r\na\r\n".utf8).count
        for blocking in [false, true] {
            let server = try OneBurstServer(requestBytes: requestBytes, reply: bulk + bulk + bulk)
            defer { server.stop() }
            var configuration = try RedisConnectionConfiguration(host: "127.0.0.1", port: server.port)
            configuration.commandTimeout = .seconds(3)
            configuration.replySpin = .disabled
            let connection = try await RedisConnection.connect(configuration: configuration)
            let replies: [RedisReply]
            if blocking {
                replies = try await onThread { try connection.pipelineBlocking(commands) }
            } else {
                replies = try await connection.pipeline(commands)
            }
            #expect(replies.count == 3)
            #expect(replies.allSatisfy { (try? $0.bytes) == value })
            await connection.close()
        }
    }
}
