internal import CHiredis

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reusable buffers that turn a command's arguments into hiredis' `argc`/`argv`/`argvlen`, so that
/// sending a command allocates nothing once the buffers have grown to the connection's largest command.
///
/// Owned by one ``RedisConnection`` and used only by the holder of its in-use flag.
struct ArgvScratch {
    private var bytes: UnsafeMutableRawPointer?
    private var byteCapacity = 0
    private var byteCount = 0
    private var offsets: UnsafeMutablePointer<Int>?
    private var lengths: UnsafeMutablePointer<Int>?
    private var argv: UnsafeMutablePointer<UnsafePointer<CChar>?>?
    private var argumentCapacity = 0
    private(set) var argumentCount = 0

    /// Buffers larger than this are released after use instead of being kept for the next command.
    private static let retainedByteLimit = 256 * 1024

    mutating func reset() {
        byteCount = 0
        argumentCount = 0
    }

    mutating func add(_ argument: UnsafeRawBufferPointer) {
        if argumentCount == argumentCapacity { growArguments() }
        if byteCount + argument.count > byteCapacity { growBytes(toFit: byteCount + argument.count) }
        if argument.count > 0, let base = argument.baseAddress {
            (bytes! + byteCount).copyMemory(from: base, byteCount: argument.count)
        }
        offsets![argumentCount] = byteCount
        lengths![argumentCount] = argument.count
        byteCount += argument.count
        argumentCount += 1
    }

    /// The bytes of argument `index` (below ``argumentCount``), valid until the next `add` or `append`.
    func argument(_ index: Int) -> UnsafeRawBufferPointer {
        precondition(index < argumentCount, "argument \(index) of \(argumentCount)")
        let base = bytes.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(bitPattern: 1)!
        return UnsafeRawBufferPointer(start: base + offsets![index], count: lengths![index])
    }

    /// Appends the collected command to the context's output buffer, RESP-encoded in place (see
    /// `connpool_redisAppendCommand` in the CHiredis shim: no allocation per command once the buffer has
    /// grown, where `redisAppendCommandArgv` formats into a fresh buffer first).
    ///
    /// - Returns: hiredis' status (`REDIS_OK` or `REDIS_ERR` when out of memory).
    mutating func append(to context: UnsafeMutablePointer<redisContext>) -> Int32 {
        // Pointers are built only now: `bytes` may have moved while growing.
        let base = bytes.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(bitPattern: 1)!
        for index in 0..<argumentCount {
            argv![index] = (base + offsets![index]).assumingMemoryBound(to: CChar.self)
        }
        let status = connpool_redisAppendCommand(context, Int32(argumentCount), argv, lengths)
        if byteCapacity > Self.retainedByteLimit {
            free(bytes)
            bytes = nil
            byteCapacity = 0
        }
        return status
    }

    private mutating func growArguments() {
        let capacity = max(8, argumentCapacity * 2)
        offsets = realloc(offsets, capacity * MemoryLayout<Int>.stride)!.assumingMemoryBound(to: Int.self)
        lengths = realloc(lengths, capacity * MemoryLayout<Int>.stride)!.assumingMemoryBound(to: Int.self)
        argv = realloc(argv, capacity * MemoryLayout<UnsafePointer<CChar>?>.stride)!
            .assumingMemoryBound(to: UnsafePointer<CChar>?.self)
        argumentCapacity = capacity
    }

    private mutating func growBytes(toFit needed: Int) {
        var capacity = max(256, byteCapacity)
        while capacity < needed { capacity *= 2 }
        bytes = realloc(bytes, capacity)!
        byteCapacity = capacity
    }

    func deallocate() {
        free(bytes)
        free(offsets)
        free(lengths)
        free(argv)
    }
}
