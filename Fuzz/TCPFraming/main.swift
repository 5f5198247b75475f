// libFuzzer target: the TCP backend's delimiter framing (`ReadUntilOperation` over `ReadBuffer`, the
// code behind `TCPConnection.read(until:maxLength:includeDelimiter:)` and `readLine`).
//
// The input chooses a delimiter (1 to 3 bytes), a `maxLength`, `includeDelimiter`, and a byte stream
// cut into chunks. Each chunk is written into one end of a unix socket pair, and the framing reads
// from the other end until it would block, exactly as a connection does when a chunk arrives. The
// frames it returns must equal the stream split at the delimiter (first occurrences, left to right);
// a frame longer than `maxLength` must fail with `delimiterNotFound` (and nothing may be returned
// after it); bytes after the last delimiter stay buffered.
@testable import ConnPoolIO
@testable import ConnPoolTCP

#if canImport(Glibc)
import Glibc
#endif

/// One socket pair for the whole run: the read end is non-blocking, like a connection's socket.
let sockets: (write: Int32, read: Int32) = {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { fatalError("socketpair failed") }
    _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
    return (fds[0], fds[1])
}()

struct Input {
    var delimiter: [UInt8] = []
    var maxLength = 0
    var includeDelimiter = false
    var chunks: [[UInt8]] = []

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        var index = 0
        func next() -> UInt8? {
            guard index < bytes.count else { return nil }
            defer { index += 1 }
            return bytes[index]
        }
        let header = next() ?? 0
        let delimiterLength = 1 + Int(header % 3)
        includeDelimiter = header & 0x80 != 0
        for _ in 0..<delimiterLength { delimiter.append(next() ?? 0x0A) }
        let limit = next() ?? 0
        maxLength = limit == 0xFF ? 1 << 20 : Int(limit % 64) * (header & 0x40 != 0 ? 64 : 1)
        // The rest: [chunk length][chunk bytes]… Payload bytes are mapped onto a small alphabet that
        // includes the delimiter's bytes, so that delimiters (and near misses) are frequent.
        let alphabet = delimiter + [0x61, 0x62, 0x0D, 0x0A]
        while let lengthByte = next() {
            var chunk: [UInt8] = []
            for _ in 0..<(1 + Int(lengthByte % 40)) {
                guard let byte = next() else { break }
                chunk.append(byte & 0x80 != 0 ? byte : alphabet[Int(byte) % alphabet.count])
            }
            if !chunk.isEmpty { chunks.append(chunk) }
        }
    }
}

/// The reference: the stream split at the first occurrences of `delimiter`, and what is left over.
func referenceFrames(_ stream: [UInt8], _ delimiter: [UInt8]) -> (frames: [[UInt8]], rest: [UInt8]) {
    var frames: [[UInt8]] = []
    var start = 0
    var position = 0
    while position + delimiter.count <= stream.count {
        if stream[position..<(position + delimiter.count)].elementsEqual(delimiter) {
            frames.append(Array(stream[start..<position]))
            position += delimiter.count
            start = position
        } else {
            position += 1
        }
    }
    return (frames, Array(stream[start...]))
}

/// The read end as the framing operations' transport (it owns the descriptor for the process' life).
let readTransport = Transport.adopting(connectedSocket: sockets.read)

func writeAll(_ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(sockets.write, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 { fatalError("write to the socket pair failed: errno \(errno)") }
        offset += n
    }
}

/// Reads and drops whatever is left in the read end, so that each input starts clean.
func drain() {
    var scratch = [UInt8](repeating: 0, count: 4096)
    while scratch.withUnsafeMutableBytes({ recv(sockets.read, $0.baseAddress, $0.count, 0) }) > 0 {}
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTCPFraming(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Input(UnsafeBufferPointer(start: data, count: size))
    let buffer = UnsafeMutablePointer<ReadBuffer>.allocate(capacity: 1)
    buffer.initialize(to: ReadBuffer())
    defer {
        buffer.pointee.free()
        buffer.deinitialize(count: 1)
        buffer.deallocate()
        drain()
    }

    var frames: [[UInt8]] = []
    var failure: TCPConnectionError?
    var operation = ReadUntilOperation(
        delimiter: input.delimiter, maxLength: input.maxLength, includeDelimiter: input.includeDelimiter)
    chunks: for chunk in input.chunks {
        writeAll(chunk)
        while true {
            do {
                switch try operation.step(transport: readTransport, buffer: buffer) {
                case .finished(let frame):
                    frames.append(frame)
                    operation = ReadUntilOperation(
                        delimiter: input.delimiter, maxLength: input.maxLength, includeDelimiter: input.includeDelimiter)
                case .waitFor(.readable):
                    continue chunks
                case .waitFor(.writable):
                    fatalError("a read waited for writability")
                }
            } catch {
                failure = error
                break chunks
            }
        }
    }

    let stream = input.chunks.flatMap { $0 }
    let (expectedFrames, rest) = referenceFrames(stream, input.delimiter)
    let suffix = input.includeDelimiter ? input.delimiter : []
    // Frames up to the first one longer than maxLength come back; that one fails the read.
    var expected: [[UInt8]] = []
    var expectFailure = false
    for frame in expectedFrames {
        if frame.count > input.maxLength {
            expectFailure = true
            break
        }
        expected.append(frame + suffix)
    }
    // Without a delimiter, more than maxLength + delimiter length - 1 bytes also fail the read.
    if !expectFailure, rest.count - (input.delimiter.count - 1) > input.maxLength { expectFailure = true }

    if frames != expected {
        fatalError("frames differ: got \(frames.count) \(frames), expected \(expected.count) \(expected)")
    }
    if expectFailure {
        guard case .delimiterNotFound(let maxLength)? = failure, maxLength == input.maxLength else {
            fatalError("expected delimiterNotFound(maxLength: \(input.maxLength)), got \(String(describing: failure))")
        }
    } else if let failure {
        fatalError("unexpected error: \(failure)")
    } else {
        // What is left buffered is exactly the bytes after the last delimiter.
        let buffered = [UInt8](UnsafeRawBufferPointer(start: buffer.pointee.storage + buffer.pointee.start, count: buffer.pointee.count))
        if buffered != rest { fatalError("buffered \(buffered), expected \(rest)") }
    }
    return 0
}
