import ConnPoolIO
import Glibc
import Testing
import ConnPoolTestSupport

@Suite("ReplySpin", .serialized, .processExclusive)
struct ReplySpinTests {
    @Test("waitReadable: true for pending data or a hang-up; false once its budget is spent with nothing to read")
    func waitReadable() throws {
        let pair = try SocketPair()
        // Nothing to read: it gives up after its budget instead of waiting for good.
        #expect(!ReplySpin.waitReadable(pair.a))
        pair.write("+PONG\r\n", to: pair.b)
        #expect(ReplySpin.waitReadable(pair.a))
        #expect(pair.drain(pair.a) == 7)
        #expect(!ReplySpin.waitReadable(pair.a))
        // A closed peer counts as readable: the next read reports the end of the stream.
        Glibc.shutdown(pair.b, Int32(SHUT_WR))
        #expect(ReplySpin.waitReadable(pair.a))
        #expect(pair.drain(pair.a) == 0)
    }
}
