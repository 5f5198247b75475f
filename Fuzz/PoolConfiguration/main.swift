// libFuzzer target: `PoolConfiguration.validate()` fed random field values.
//
// Properties checked:
// - `validate()` never crashes, whatever the values (negative, zero, huge, NaN, infinite, empty);
// - a rejected configuration names a real field, and its description is not empty;
// - a valid configuration constructs a pool (with sizes up to `maxConstructedSize`: the pool
//   allocates its slot array for `maxSize` up front), whose metrics show the configured `maxSize` and
//   which shuts down cleanly; `ConnectionPool.init` itself must accept it (it validates again); the
//   pool and its clock are deallocated soon after the shutdown (nothing keeps them).
@testable import ConnPool

#if canImport(Glibc)
import Glibc
#endif

/// Valid configurations with a larger `maxSize` are validated but not constructed, to keep each run
/// fast. Found by this target, and fixed: `validate()` accepted `maxSize` up to `Int32.max`, but a pool
/// allocates ~110 bytes a slot at init, so an accepted value could crash init; it is now capped at
/// `PoolConfiguration.maxSizeLimit`, and any configuration that validates is checked against that cap.
let maxConstructedSize = 4096

/// Found by this target, and fixed: `PoolStateMachine.expiry(createdAt:)` trapped (or wrapped to a
/// deadline in the past) for a `maxLifetime` of centuries; deadlines now saturate at `Int64.max`. The
/// seed `known-bug-huge-max-lifetime` is the input that found it and keeps it covered.

/// `FUZZ_VERBOSE=1` prints each configuration (to replay an artifact and see what it was).
let verbose = getenv("FUZZ_VERBOSE").map { String(cString: $0) == "1" } ?? false

final class FuzzConnection: Connection {
    func isValid(timeout: Duration) async -> Bool { true }
    func close() async {}
}

struct FuzzFactory: ConnectionFactory {
    func makeConnection() async throws -> FuzzConnection { FuzzConnection() }
}

/// Reads typed values from the fuzzer's bytes; past the end every read is 0.
struct ByteReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var offset = 0

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint64() -> UInt64 {
        var value: UInt64 = 0
        for _ in 0..<8 { value = value << 8 | UInt64(byte()) }
        return value
    }

    /// Mostly small values around the boundaries, sometimes extremes, sometimes anything.
    mutating func int() -> Int {
        switch byte() % 8 {
        case 0, 1, 2: return Int(byte() % 24) - 4
        case 3: return [Int.min, Int.max, Int(Int32.max), PoolConfiguration.maxSizeLimit, PoolConfiguration.maxSizeLimit + 1, -1, 0][Int(byte() % 7)]
        case 4: return Int(byte()) * 64
        default: return Int(truncatingIfNeeded: uint64())
        }
    }

    mutating func optionalInt() -> Int? { byte() % 4 == 0 ? nil : int() }

    mutating func duration() -> Duration {
        switch byte() % 8 {
        case 0: return .zero
        case 1: return .nanoseconds(-Int64(byte()))
        case 2: return .milliseconds(Int64(byte()))
        case 3: return .seconds(Int64(byte()))
        case 4: return [Duration.seconds(Int64.max), .seconds(Int64.min), .nanoseconds(Int64.max), .nanoseconds(1)][Int(byte() % 4)]
        case 5: return Duration(secondsComponent: Int64(bitPattern: uint64()), attosecondsComponent: Int64(byte()) * 1_000_000_000_000)
        default: return .nanoseconds(Int64(bitPattern: uint64()))
        }
    }

    mutating func optionalDuration() -> Duration? { byte() % 4 == 0 ? nil : duration() }

    mutating func double() -> Double {
        switch byte() % 6 {
        case 0: return [0, 0.05, 0.5, 1, 2, -0.0][Int(byte() % 6)]
        case 1: return [Double.nan, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude, -1][Int(byte() % 6)]
        case 2: return Double(byte()) / 100
        default: return Double(bitPattern: uint64())
        }
    }

    mutating func bool() -> Bool { byte() & 1 == 1 }

    mutating func name() -> String {
        let length = Int(byte() % 12)
        var scalars = String.UnicodeScalarView()
        for _ in 0..<length { scalars.append(Unicode.Scalar(byte() % 0x7f) ?? "x") }
        return String(scalars)
    }
}

let fieldNames: Set<String> = [
    "minSize", "maxSize", "acquireTimeout", "idleTimeout", "connectRetryInitialBackoff", "connectRetryMultiplier",
    "connectRetryMaxBackoff", "connectRetryJitter", "maintenanceInterval", "healthCheckInterval", "healthCheckTimeout",
    "maxLifetime", "maxLifetimeJitter", "validationBypassWindow", "maxConcurrentConnects", "circuitBreakerThreshold",
    "shutdownGracePeriod", "name", "leakDetectionThreshold", "maxWaiters", "connectTimeout", "closeTimeout",
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPoolConfiguration(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var reader = ByteReader(bytes: UnsafeBufferPointer(start: data, count: size))
    var configuration = PoolConfiguration()
    configuration.minSize = reader.int()
    configuration.maxSize = reader.int()
    configuration.acquireTimeout = reader.duration()
    configuration.idleTimeout = reader.optionalDuration()
    configuration.reuseOrder = reader.bool() ? .lifo : .fifo
    configuration.connectRetryInitialBackoff = reader.duration()
    configuration.connectRetryMultiplier = reader.double()
    configuration.connectRetryMaxBackoff = reader.duration()
    configuration.connectRetryJitter = reader.double()
    configuration.maxWaiters = reader.optionalInt()
    configuration.maintenanceInterval = reader.duration()
    configuration.healthCheckInterval = reader.optionalDuration()
    configuration.healthCheckTimeout = reader.duration()
    configuration.maxLifetime = reader.optionalDuration()
    configuration.maxLifetimeJitter = reader.double()
    configuration.validateOnAcquire = reader.bool()
    configuration.validationBypassWindow = reader.duration()
    configuration.warmUpOnInit = reader.bool()
    configuration.maxConcurrentConnects = reader.int()
    configuration.circuitBreakerThreshold = reader.optionalInt()
    configuration.shutdownGracePeriod = reader.duration()
    configuration.name = reader.bool() ? "default" : reader.name()
    configuration.leakDetectionThreshold = reader.optionalDuration()
    configuration.recordsLeaseHoldTime = reader.bool()
    configuration.connectTimeout = reader.duration()
    configuration.closeTimeout = reader.duration()

    if verbose { fputs("configuration: \(configuration)\n", stderr) }
    do {
        try configuration.validate()
    } catch {
        guard fieldNames.contains(error.field) else { fatalError("validate() names an unknown field: \(error.field)") }
        if error.description.isEmpty || error.rule.isEmpty { fatalError("empty PoolConfigurationError text") }
        return 0
    }
    if configuration.maxSize > PoolConfiguration.maxSizeLimit {
        fatalError("validate() accepted maxSize \(configuration.maxSize) above maxSizeLimit")
    }
    guard configuration.maxSize <= maxConstructedSize else { return 0 }
    let released = exercise(configuration)
    // The pool's last references may be held by its own tasks (a connection attempt or a close that
    // finished just now): wait until it is gone, so that libFuzzer's leak check (which runs right after
    // this function returns) does not see its memory in flight, and so that a pool that outlives its
    // shutdown for good is caught.
    let deadline = ContinuousClock.now + .seconds(10)
    while released.pool != nil || released.clock != nil {
        if ContinuousClock.now > deadline {
            fatalError("a pool (or its clock) is still alive 10 s after shutdown returned: something keeps it")
        }
        usleep(200)
    }
    return 0
}

/// Weak references to a pool and its clock, to see them go.
final class Released {
    weak var pool: ConnectionPool<FuzzFactory>?
    weak var clock: ManualClock?
}

/// Constructs a pool for a valid configuration, checks it, shuts it down; returns weak references.
func exercise(_ configuration: PoolConfiguration) -> Released {
    let clock = ManualClock()
    let pool: ConnectionPool<FuzzFactory>
    do {
        pool = try ConnectionPool(factory: FuzzFactory(), configuration: configuration, clock: .manual(clock))
    } catch {
        fatalError("a configuration that validate() accepts was refused by ConnectionPool.init: \(error)")
    }
    let metrics = pool.metrics()
    if metrics.maxSize != configuration.maxSize || metrics.total > configuration.maxSize {
        fatalError("a new pool's metrics disagree with its configuration: \(metrics)")
    }
    _ = pool.status()
    let report = pool.shutdownBlocking(gracePeriod: nil)
    if report.forceClosed != 0 || report.stillInFlight != 0 {
        fatalError("an idle pool's shutdown left work behind: \(report)")
    }
    let released = Released()
    released.pool = pool
    released.clock = clock
    return released
}
