import CHiredis
import Glibc
import Testing

/// `connpool_redisAppendCommand` (the CHiredis shim) writes exactly what hiredis' own
/// `redisFormatCommandArgv` writes, for any arguments: binary, empty, long, many.
@Suite("RESP command encoding")
struct CommandEncodingTests {
    /// hiredis' encoding of `arguments`.
    static func hiredis(_ arguments: [[UInt8]]) -> [UInt8] {
        var target: UnsafeMutablePointer<CChar>?
        let length = withArgv(arguments) { argc, argv, lengths in redisFormatCommandArgv(&target, argc, argv, lengths) }
        defer { free(target) }
        return Array(UnsafeRawBufferPointer(start: target, count: Int(length)))
    }

    /// Ours, appended to a context's output buffer after `prefix` (which must stay).
    static func ours(_ arguments: [[UInt8]], after prefix: [[UInt8]]) -> [UInt8] {
        let context = redisConnectFd(-1)!
        defer { redisFree(context) }
        if !prefix.isEmpty {
            #expect(withArgv(prefix) { argc, argv, lengths in connpool_redisAppendCommand(context, argc, argv, lengths) } == REDIS_OK)
        }
        #expect(withArgv(arguments) { argc, argv, lengths in connpool_redisAppendCommand(context, argc, argv, lengths) } == REDIS_OK)
        var length = 0
        let bytes = connpool_redisOutput(context, &length)!
        return Array(UnsafeRawBufferPointer(start: bytes, count: length))
    }

    static func withArgv<R>(
        _ arguments: [[UInt8]],
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafeMutablePointer<Int>) -> R
    ) -> R {
        let copies = arguments.map { argument -> UnsafeMutablePointer<CChar> in
            let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, argument.count))
            argument.withUnsafeBytes { raw in
                if raw.count > 0 { UnsafeMutableRawPointer(pointer).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
            }
            return pointer
        }
        defer { copies.forEach { $0.deallocate() } }
        var argv = copies.map { UnsafePointer<CChar>?(UnsafePointer($0)) }
        var lengths = arguments.map(\.count)
        return argv.withUnsafeMutableBufferPointer { argvBuffer in
            lengths.withUnsafeMutableBufferPointer { lengthBuffer in
                body(Int32(arguments.count), argvBuffer.baseAddress!, lengthBuffer.baseAddress!)
            }
        }
    }

    @Test func sameBytesAsHiredisForRandomCommands() {
        var generator = SystemRandomNumberGenerator()
        let sizes = [0, 1, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 65_536, 100_000]
        for round in 0..<300 {
            let count = round < 20 ? round + 1 : Int.random(in: 1...40, using: &generator)
            let arguments = (0..<count).map { _ in
                (0..<sizes.randomElement(using: &generator)!).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            let expected = Self.hiredis(arguments)
            let prefix: [[UInt8]] = round % 2 == 0 ? [] : [Array("PING".utf8)]
            let prefixBytes = prefix.isEmpty ? [] : Self.hiredis(prefix)
            #expect(Self.ours(arguments, after: prefix) == prefixBytes + expected, "round \(round)")
        }
    }
}
