import ConnPool

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's resident memory, read from `/proc/self/statm`.
public enum ResidentMemory {
    /// The resident set size in bytes (second field of `/proc/self/statm` × page size), or `nil` where
    /// `/proc` is not available.
    public static func currentBytes() -> Int? {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return parseStatm(String(decoding: buffer[0..<count], as: UTF8.self), pageSize: Int(sysconf(Int32(_SC_PAGESIZE))))
    }

    /// The resident bytes in a `/proc/<pid>/statm` line (`size resident shared text lib data dt`, in pages).
    public static func parseStatm(_ line: String, pageSize: Int) -> Int? {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        return pages * pageSize
    }

    /// `12.3 MiB`: a byte count for people.
    public static func describe(_ bytes: Int?) -> String {
        guard let bytes else { return "n/a" }
        return "\(TextFormat.fixed(Double(bytes) / 1_048_576, 1)) MiB"
    }
}

/// CPU time used by a process (user + system), for the client-CPU-per-request figure
/// (``BenchResult/clientCPUMicrosecondsPerOp``).
public enum ProcessCPU {
    /// The user + system CPU time this process (every thread) has used so far, in µs, from
    /// `getrusage(RUSAGE_SELF)`; `nil` if that fails.
    public static func selfMicroseconds() -> Double? {
        var usage = rusage()
        #if canImport(Glibc)
        let who = RUSAGE_SELF.rawValue  // an enum in glibc's header
        #else
        let who = RUSAGE_SELF
        #endif
        guard getrusage(who, &usage) == 0 else { return nil }
        return microseconds(
            userSeconds: Int(usage.ru_utime.tv_sec), userMicroseconds: Int(usage.ru_utime.tv_usec),
            systemSeconds: Int(usage.ru_stime.tv_sec), systemMicroseconds: Int(usage.ru_stime.tv_usec))
    }

    /// `user + system` CPU time in µs, from the two `timeval`s of a `rusage` (as `getrusage` or `wait4`
    /// fill it) given as seconds and microseconds.
    public static func microseconds(
        userSeconds: Int, userMicroseconds: Int, systemSeconds: Int, systemMicroseconds: Int
    ) -> Double {
        Double(userSeconds + systemSeconds) * 1e6 + Double(userMicroseconds + systemMicroseconds)
    }

    /// CPU µs per request: `cpuMicroseconds ÷ requests`; `nil` when there were no requests or the CPU
    /// time is unknown or negative (a clock that went backwards).
    public static func perRequest(cpuMicroseconds: Double?, requests: Int) -> Double? {
        guard let cpuMicroseconds, cpuMicroseconds >= 0, requests > 0 else { return nil }
        return cpuMicroseconds / Double(requests)
    }
}

/// How a failed request is counted: a short category for an error.
public enum BenchErrorCategory {
    /// The error's type name, followed by its enum case when the case carries a payload
    /// (`RedisError.io`), or for a ``ConnPool/ConnectionPoolError`` by its code
    /// (`ConnectionPoolError.acquireTimeout`); `CancellationError` for cancellation.
    ///
    /// A case without payload cannot be named without its own `description` (which may be long): give
    /// the harness a categorizer of your own for such enums.
    public static func `default`(_ error: any Error) -> String {
        if let poolError = error as? ConnectionPoolError { return "ConnectionPoolError.\(poolError.code)" }
        let typeName = String(describing: type(of: error))
        let mirror = Mirror(reflecting: error)
        if mirror.displayStyle == .enum, let label = mirror.children.first?.label {
            return "\(typeName).\(label)"
        }
        return typeName
    }
}

/// Number formatting for tables, progress lines and charts (no Foundation needed).
public enum TextFormat {
    /// `value` with exactly `places` decimals: `fixed(3.14159, 2)` is `3.14`.
    public static func fixed(_ value: Double, _ places: Int) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
        var scale = 1.0
        for _ in 0..<places { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return String(value) }
        let integer = UInt64(scaled)
        let divisor = UInt64(scale)
        let whole = integer / divisor
        var text = (value < 0 && scaled > 0 ? "-" : "") + String(whole)
        if places > 0 {
            let fraction = String(integer % divisor)
            text += "." + String(repeating: "0", count: places - fraction.count) + fraction
        }
        return text
    }

    /// An integer-rounded value with thousands separators: `1234567.8` is `1,234,568`.
    public static func grouped(_ value: Double) -> String {
        guard value.isFinite else { return "-" }
        let rounded = Int(value.rounded())
        let digits = String(abs(rounded))
        var result = ""
        for (index, character) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { result.append(",") }
            result.append(character)
        }
        return (rounded < 0 ? "-" : "") + result
    }

    /// A latency in µs with a precision that suits its size: `12.3`, `456`, `1,234`.
    public static func microseconds(_ value: Double?) -> String {
        guard let value else { return "-" }
        if value < 100 { return fixed(value, 1) }
        return grouped(value)
    }

    /// A compact axis label: `950`, `12k`, `1.5M`.
    public static func compact(_ value: Double) -> String {
        let magnitude = abs(value)
        func trimmed(_ scaled: Double) -> String {
            let text = fixed(scaled, scaled < 10 ? 1 : 0)
            return text.hasSuffix(".0") ? String(text.dropLast(2)) : text
        }
        if magnitude >= 1_000_000 { return trimmed(value / 1_000_000) + "M" }
        if magnitude >= 1_000 { return trimmed(value / 1_000) + "k" }
        if magnitude >= 10 || magnitude == 0 { return fixed(value, 0) }
        return trimmed(value)
    }
}
