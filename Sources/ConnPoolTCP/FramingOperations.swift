import ConnPoolIO
import Glibc

// The TCP backend is framing over the shared transport (ConnPoolIO's `Transport`, plain or TLS). Each I/O
// call of TCPConnection is a small state machine (a `SocketOperation`) that does as much non-blocking work
// as it can and then says what it waits for. The same operation is driven by the blocking driver (poll()
// on the calling thread) and by the async driver (IOReactor): the logic for partial reads and writes and
// framing exists once.

/// The result of one step: finished with a value, or waiting for readiness.
enum SocketStep<Output> {
    case finished(Output)
    case waitFor(SocketInterest)
}

/// A resumable I/O operation on a non-blocking socket.
protocol SocketOperation {
    associatedtype Output
    /// Whether the operation sends (a request, whose reply is then expected) rather than reads.
    static var isSend: Bool { get }
    /// Does all the work possible without blocking. Called again after the awaited readiness.
    mutating func step(transport: Transport, buffer: UnsafeMutablePointer<ReadBuffer>) throws(TCPConnectionError) -> SocketStep<Output>
}

extension SocketOperation {
    /// A read, unless the operation says otherwise.
    static var isSend: Bool { false }
}

/// The connection's read-ahead buffer: bytes received but not yet returned to the caller. Delimiter
/// reads read ahead, and the bytes after a delimiter stay here for the next read.
struct ReadBuffer {
    static let initialCapacity = 16 * 1024

    var storage: UnsafeMutableRawPointer
    var capacity: Int
    /// Unread bytes are `storage[start..<end]`.
    var start = 0
    var end = 0
    /// How many unread bytes (from `start`) a delimiter search has already ruled out.
    var scanned = 0

    init() {
        capacity = ReadBuffer.initialCapacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    func free() {
        storage.deallocate()
    }

    var count: Int { end - start }

    mutating func consume(_ n: Int) {
        start += n
        scanned = Swift.max(0, scanned - n)
        if start == end {
            start = 0
            end = 0
            scanned = 0
        }
    }

    /// Makes room for at least one more byte at the end: moves the unread bytes to the front, and
    /// grows the storage (doubling, at least to `minimumCapacity`) if they fill it.
    mutating func reserveTail(minimumCapacity: Int) {
        if end < capacity { return }
        if start > 0 {
            memmove(storage, storage + start, count)  // the regions may overlap
            end -= start
            start = 0
            if end < capacity { return }
        }
        let newCapacity = Swift.max(capacity * 2, minimumCapacity, end + 1)
        let newStorage = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        newStorage.copyMemory(from: storage, byteCount: end)
        storage.deallocate()
        storage = newStorage
        capacity = newCapacity
    }

    /// Receives as much as fits (one read from the transport).
    mutating func fill(transport: Transport, minimumCapacity: Int = 0) throws(TCPConnectionError) -> TransferResult {
        reserveTail(minimumCapacity: minimumCapacity)
        let result = try TCPConnectionError.converting { () throws(TransportError) in
            try transport.receive(into: storage + end, count: capacity - end)
        }
        if case .transferred(let n) = result {
            end += n
        }
        return result
    }

    /// The offset (from `start`) of the first occurrence of `delimiter` at or after `scanned`, or nil.
    /// Updates `scanned` so that a later search does not look at the same bytes again.
    mutating func find(_ delimiter: UnsafeRawBufferPointer) -> Int? {
        let length = delimiter.count
        let first = delimiter.load(as: UInt8.self)
        let base = storage + start
        var offset = scanned
        while count - offset >= length {
            guard let hit = memchr(base + offset, Int32(first), count - offset - length + 1) else {
                break
            }
            let position = hit - base
            if length == 1 || memcmp(hit, delimiter.baseAddress!, length) == 0 {
                return position
            }
            offset = position + 1
        }
        // The last length-1 bytes may be the beginning of a delimiter split across reads.
        scanned = Swift.max(scanned, count - length + 1)
        return nil
    }
}

/// Sends every byte of `bytes`, in as many partial writes as it takes.
struct SendOperation: SocketOperation {
    static var isSend: Bool { true }

    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func step(transport: Transport, buffer: UnsafeMutablePointer<ReadBuffer>) throws(TCPConnectionError) -> SocketStep<Void> {
        while offset < bytes.count {
            let start = offset
            let result = try bytes.withUnsafeBytes { raw in
                Result { () throws(TCPConnectionError) in
                    try TCPConnectionError.converting { () throws(TransportError) in
                        try transport.send(from: raw.baseAddress! + start, count: raw.count - start)
                    }
                }
            }.get()
            switch result {
            case .transferred(let n): offset += n
            case .wouldBlock(let interest): return .waitFor(interest)
            case .endOfStream: throw .peerClosed
            }
        }
        return .finished(())
    }
}

/// Reads exactly `count` bytes: first what the buffer holds, then from the socket (straight into the
/// result when the rest is at least a buffer's worth, otherwise through the buffer, reading ahead).
struct ReadExactlyOperation: SocketOperation {
    var result: [UInt8]
    var filled = 0

    init(count: Int) {
        result = [UInt8](repeating: 0, count: count)
    }

    mutating func step(transport: Transport, buffer: UnsafeMutablePointer<ReadBuffer>) throws(TCPConnectionError) -> SocketStep<[UInt8]> {
        let total = result.count
        while true {
            let available = Swift.min(buffer.pointee.count, total - filled)
            if available > 0 {
                let from = buffer.pointee.storage + buffer.pointee.start
                let at = filled
                result.withUnsafeMutableBytes { raw in
                    (raw.baseAddress! + at).copyMemory(from: from, byteCount: available)
                }
                buffer.pointee.consume(available)
                filled += available
            }
            if filled == total {
                return .finished(result)
            }
            let remaining = total - filled
            let transfer: TransferResult
            if remaining >= buffer.pointee.capacity {
                let at = filled
                transfer = try result.withUnsafeMutableBytes { raw in
                    Result { () throws(TCPConnectionError) in
                        try TCPConnectionError.converting { () throws(TransportError) in
                            try transport.receive(into: raw.baseAddress! + at, count: remaining)
                        }
                    }
                }.get()
                if case .transferred(let n) = transfer {
                    filled += n
                }
            } else {
                transfer = try buffer.pointee.fill(transport: transport)
            }
            switch transfer {
            case .transferred: continue
            case .wouldBlock(let interest): return .waitFor(interest)
            case .endOfStream: throw .peerClosed
            }
        }
    }
}

/// Reads up to and including `delimiter`; returns the bytes before it (and the delimiter itself if
/// `includeDelimiter`). Bytes after the delimiter stay buffered for the next read.
struct ReadUntilOperation: SocketOperation {
    let delimiter: [UInt8]
    let maxLength: Int
    let includeDelimiter: Bool

    mutating func step(transport: Transport, buffer: UnsafeMutablePointer<ReadBuffer>) throws(TCPConnectionError) -> SocketStep<[UInt8]> {
        let length = delimiter.count
        while true {
            let position = delimiter.withUnsafeBytes { buffer.pointee.find($0) }
            if let position {
                if position > maxLength {
                    throw .delimiterNotFound(maxLength: maxLength)
                }
                let frameLength = position + (includeDelimiter ? length : 0)
                let frame = [UInt8](UnsafeRawBufferPointer(start: buffer.pointee.storage + buffer.pointee.start, count: frameLength))
                buffer.pointee.consume(position + length)
                buffer.pointee.scanned = 0
                return .finished(frame)
            }
            // No delimiter yet. If the buffered bytes already exceed the limit, none can come in time.
            if buffer.pointee.count - (length - 1) > maxLength {
                throw .delimiterNotFound(maxLength: maxLength)
            }
            switch try buffer.pointee.fill(transport: transport, minimumCapacity: Swift.min(maxLength + length, 1 << 30)) {
            case .transferred: continue
            case .wouldBlock(let interest): return .waitFor(interest)
            case .endOfStream: throw .peerClosed
            }
        }
    }
}
