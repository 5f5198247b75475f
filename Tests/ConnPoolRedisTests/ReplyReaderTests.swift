import CHiredis
@testable import ConnPoolRedis
import ConnPoolTestSupport
import Testing

/// The reply reader's fast path (simple replies taken straight from hiredis' buffer) against hiredis'
/// own parser: the same byte stream, cut at random places, fed to two readers, must give the same
/// replies in the same order, and the expected ones.
@Suite("Reply reader: simple replies from the buffer vs hiredis")
struct ReplyReaderTests {
    /// A reader context of the kind a `RedisConnection` uses (no socket).
    final class Reader {
        let context: UnsafeMutablePointer<redisContext>
        let fast: Bool
        init(fast: Bool) {
            context = redisConnectFd(-1)!
            self.fast = fast
        }
        deinit { redisFree(context) }

        func feed(_ bytes: ArraySlice<UInt8>) {
            let rc = bytes.withUnsafeBufferPointer { buffer in
                buffer.withMemoryRebound(to: CChar.self) { connpool_redisFeed(context, $0.baseAddress, $0.count) }
            }
            precondition(rc == REDIS_OK)
        }

        /// Every whole reply buffered now; `failed` when the reader reported a protocol error.
        func drain() -> (replies: [RedisReply], failed: Bool) {
            var replies = [RedisReply]()
            while true {
                guard let taken = RedisReply.take(from: context, simpleRepliesFromBuffer: fast) else { return (replies, true) }
                guard let reply = taken.reply else { return (replies, false) }
                replies.append(reply)
            }
        }

        var bufferedBytes: Int { context.pointee.reader.pointee.len - context.pointee.reader.pointee.pos }
    }

    static func encode(_ reply: RedisReply, into bytes: inout [UInt8]) {
        switch reply {
        case .status(let text): bytes += Array("+\(text)\r\n".utf8)
        case .error(let text): bytes += Array("-\(text)\r\n".utf8)
        case .integer(let value): bytes += Array(":\(value)\r\n".utf8)
        case .bulkString(let value): bytes += Array("$\(value.count)\r\n".utf8) + value + Array("\r\n".utf8)
        case .null: bytes += Array("$-1\r\n".utf8)
        case .array(let elements):
            bytes += Array("*\(elements.count)\r\n".utf8)
            for element in elements { encode(element, into: &bytes) }
        }
    }

    static func randomReply(_ random: inout SeededRandom, depth: Int = 0) -> RedisReply {
        switch Int.random(in: 0..<(depth < 2 ? 7 : 6), using: &random) {
        case 0: return .status(["OK", "PONG", "QUEUED", "", String(repeating: "s", count: Int.random(in: 0..<40, using: &random))].randomElement(using: &random)!)
        case 1: return .error(["ERR unknown command", "WRONGTYPE Operation against a key", "MOVED 3999 127.0.0.1:6381"].randomElement(using: &random)!)
        case 2: return .integer([0, 1, -1, 42, Int.max, Int.min + 1, 999_999_999_999].randomElement(using: &random)!)
        case 3, 4:
            // Binary bulk strings, CR LF inside, empty, and some over 1 KiB (the reader's compaction).
            let length = [0, 1, 3, 17, 200, 1500, 5000].randomElement(using: &random)!
            return .bulkString((0..<length).map { _ in [13, 10, 0, 36, 43, UInt8.random(in: 0...255, using: &random)].randomElement(using: &random)! })
        case 5: return .null
        default: return .array((0..<Int.random(in: 0..<5, using: &random)).map { _ in randomReply(&random, depth: depth + 1) })
        }
    }

    /// 200 seeds × 300 replies, fed in random cuts (1 byte to 4 KiB) to both readers.
    @Test func fastPathMatchesHiredisOnRandomStreams() {
        for seed in 0..<200 {
            var random = SeededRandom(seed: UInt64(seed))
            let expected = (0..<300).map { _ in Self.randomReply(&random) }
            var stream = [UInt8]()
            for reply in expected { Self.encode(reply, into: &stream) }
            let fast = Reader(fast: true), reference = Reader(fast: false)
            var gotFast = [RedisReply](), gotReference = [RedisReply]()
            var offset = 0
            while offset < stream.count {
                let cut = min(stream.count, offset + (Bool.random(using: &random) ? Int.random(in: 1...8, using: &random) : Int.random(in: 1...4096, using: &random)))
                fast.feed(stream[offset..<cut])
                reference.feed(stream[offset..<cut])
                offset = cut
                let (a, failedA) = fast.drain(), (b, failedB) = reference.drain()
                #expect(!failedA && !failedB)
                gotFast += a
                gotReference += b
                // Same progress at every cut, not only at the end.
                #expect(gotFast.count == gotReference.count, "seed \(seed): \(gotFast.count) vs \(gotReference.count) replies after \(offset) bytes")
            }
            #expect(gotFast == expected, "seed \(seed)")
            #expect(gotReference == expected, "seed \(seed)")
            #expect(fast.bufferedBytes == 0 && reference.bufferedBytes == 0)
        }
    }

    /// Malformed or unusual lines: the fast path leaves them to hiredis, so both readers agree (a reply
    /// or the same protocol error).
    @Test(arguments: [
        ":12a\r\n", ":\r\n", ":+5\r\n", ":12345678901234567890\r\n", "$-2\r\n", "$3\r\nabcXY+OK\r\n",
        "$01\r\nx\r\n", "?what\r\n", "+a\rb\r\n", "$536870913\r\n", "*-1\r\n", "*1\r\n:5\r\n", "-\r\n", "+\r\n",
        ":05\r\n", ":-0\r\n", "$-0\r\n", "$0\r\n\r\n", ":-12\r\n", "$-01\r\n",
    ])
    func unusualInputAgrees(_ text: String) {
        let fast = Reader(fast: true), reference = Reader(fast: false)
        fast.feed(ArraySlice(text.utf8))
        reference.feed(ArraySlice(text.utf8))
        let a = fast.drain(), b = reference.drain()
        #expect(a.replies == b.replies, "\(text.debugDescription)")
        #expect(a.failed == b.failed, "\(text.debugDescription)")
    }

    /// The fast path really is taken for simple replies: a reply's bytes are read without hiredis'
    /// reply objects (its reader task stack is never used), and the buffer is emptied when consumed.
    @Test func simpleRepliesSkipHiredisObjects() {
        let fast = Reader(fast: true)
        fast.feed(ArraySlice("+PONG\r\n:7\r\n$3\r\nabc\r\n$-1\r\n-ERR x\r\n".utf8))
        var simple = connpool_simple_reply()
        #expect(connpool_redisTakeSimpleReply(fast.context, &simple) == 1)
        #expect(simple.type == REDIS_REPLY_STATUS && simple.len == 4)
        connpool_redisReaderCompact(fast.context)
        #expect(fast.drain().replies == [.integer(7), .bulkString(Array("abc".utf8)), .null, .error("ERR x")])
        #expect(fast.context.pointee.reader.pointee.len == 0)
        fast.feed(ArraySlice("*1\r\n+OK\r\n".utf8))
        #expect(connpool_redisTakeSimpleReply(fast.context, &simple) == 0)
        #expect(fast.drain().replies == [.array([.status("OK")])])
    }
}
