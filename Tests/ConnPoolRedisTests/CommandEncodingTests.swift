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
        // A seeded SplitMix64: the same commands every run, and cheap to make.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let sizes = [0, 1, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 65_536, 100_000]
        // Varied bytes (all 256 values occur, \r, \n and NUL among them), sliced for each argument.
        var pattern = [UInt8](repeating: 0, count: 200_000)
        for index in pattern.indices { pattern[index] = UInt8(truncatingIfNeeded: index &* 131 &+ index >> 8) }
        for round in 0..<200 {
            let count = round < 20 ? round + 1 : Int(next() % 40) + 1
            let arguments = (0..<count).map { _ -> [UInt8] in
                let size = sizes[Int(next() % UInt64(sizes.count))]
                let start = Int(next() % 100_000)
                return Array(pattern[start..<start + size])
            }
            let expected = Self.hiredis(arguments)
            let prefix: [[UInt8]] = round % 2 == 0 ? [] : [Array("PING".utf8)]
            let prefixBytes = prefix.isEmpty ? [] : Self.hiredis(prefix)
            #expect(Self.ours(arguments, after: prefix) == prefixBytes + expected, "round \(round)")
        }
    }
}
