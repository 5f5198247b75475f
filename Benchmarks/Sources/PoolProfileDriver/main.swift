// A plain-thread driver of the pool's hot paths, for profiling outside ordo-one/benchmark:
//
//   valgrind --tool=callgrind --callgrind-out-file=sync.out .build/release/PoolProfileDriver sync 100000
//   callgrind_annotate sync.out | head -40
//
// valgrind 3.19 crashes on Swift's async thread pool, so everything measured here runs on plain threads
// (the pool still opens its connections on a task, once, before measuring). Without valgrind it also
// prints wall-clock ns/op and context switches (the pools are dropped without shutdown() at exit, which
// logs a warning on stderr), e.g. for the contended modes:
//
//   .build/release/PoolProfileDriver contended-pool 1000000 8 4
//   .build/release/PoolProfileDriver contended-naive 1000000 8 4
import ConnPool
import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

final class DriverConnection: Connection {
    func isValid(timeout: Duration) async -> Bool { true }
    func close() async {}
}

struct DriverFactory: ConnectionFactory {
    func makeConnection() async throws -> DriverConnection { DriverConnection() }
}

typealias DriverPool = ConnectionPool<DriverFactory>

final class Box: @unchecked Sendable {
    var lease: ConnectionLease<DriverFactory>?
}

/// A pool of `size` connections, all opened and idle. Blocking acquires from this plain thread.
func warmPool(size: Int) -> DriverPool {
    let pool = try! DriverPool(factory: DriverFactory(), configuration: PoolConfiguration().maxSize(size))
    let boxes = (0..<size).map { _ in Box() }
    for box in boxes { box.lease = try! pool.acquireBlocking() }
    for box in boxes { box.lease = nil }
    precondition(pool.metrics().idle == size)
    return pool
}

/// The same naive pool as the benchmark's: an array behind an NSCondition.
final class NaivePool: @unchecked Sendable {
    private let condition = NSCondition()
    private var idle: [DriverConnection]
    init(_ connections: [DriverConnection]) { idle = connections }
    func acquire() -> DriverConnection {
        condition.lock()
        while idle.isEmpty { condition.wait() }
        let connection = idle.removeLast()
        condition.unlock()
        return connection
    }
    func release(_ connection: DriverConnection) {
        condition.lock()
        idle.append(connection)
        condition.signal()
        condition.unlock()
    }
}

@inline(never) func sink<T>(_ value: T) { withExtendedLifetime(value) {} }

func nowNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

func contextSwitches() -> (voluntary: Int, involuntary: Int) {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// Runs `operation` `operations` times in batches of 1,000 and prints the median and mean ns per
/// operation over the batches: the median shrugs off the batches in which another process took the core.
@inline(__always)
func report(_ label: String, _ operations: Int, _ operation: () -> Void) {
    let batch = 1_000
    var perBatch: [Int64] = []
    perBatch.reserveCapacity(operations / batch + 1)
    let start = nowNanoseconds()
    for _ in 0..<max(1, operations / batch) {
        let batchStart = nowNanoseconds()
        for _ in 0..<batch { operation() }
        perBatch.append(nowNanoseconds() - batchStart)
    }
    let mean = Double(nowNanoseconds() - start) / Double(max(1, operations / batch) * batch)
    perBatch.sort()
    let median = Double(perBatch[perBatch.count / 2]) / Double(batch)
    print("\(label): p50 \((median * 10).rounded() / 10) ns/op, mean \((mean * 10).rounded() / 10) ns/op")
}

/// Runs `body(worker)` on `threads` plain threads at once and returns the elapsed nanoseconds.
func onThreads(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) -> Int64 {
    let ready = DispatchSemaphore(value: 0)
    let go = DispatchSemaphore(value: 0)
    let done = DispatchSemaphore(value: 0)
    for worker in 0..<threads {
        Thread {
            ready.signal()
            go.wait()
            body(worker)
            done.signal()
        }.start()
    }
    for _ in 0..<threads { ready.wait() }
    let start = nowNanoseconds()
    for _ in 0..<threads { go.signal() }
    for _ in 0..<threads { done.wait() }
    return nowNanoseconds() - start
}

// glibc skips the atomic instructions of a mutex while the process has a single thread; a pool always has
// its timer thread. Start an idle thread first so that every mode pays for real atomics.
Thread { while true { sleep(3600) } }.start()

let arguments = CommandLine.arguments
guard arguments.count >= 3, let operations = Int(arguments[2]) else {
    print("usage: PoolProfileDriver sync|withConnection|lock|naive|slots|contended-pool|contended-naive OPS [SLOTS | THREADS CONNECTIONS]")
    exit(2)
}
let mode = arguments[1]

switch mode {
case "sync", "withConnection", "slots":
    let size = mode == "slots" ? Int(arguments[3])! : 1
    let pool = warmPool(size: size)
    let withConnection = mode == "withConnection"
    report("\(mode)\(mode == "slots" ? " \(size)" : "")", operations) {
        if withConnection {
            try! pool.withConnectionBlocking { sink($0) }
        } else {
            let lease = try! pool.acquireBlocking()
            sink(lease.connection)
        }
    }
case "lock":
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    pthread_mutex_init(mutex, nil)
    report("lock", operations) {
        pthread_mutex_lock(mutex)
        pthread_mutex_unlock(mutex)
    }
case "naive":
    let naive = NaivePool([DriverConnection()])
    report("naive", operations) {
        let connection = naive.acquire()
        sink(connection)
        naive.release(connection)
    }
case "contended-pool", "contended-naive":
    let threads = arguments.count > 3 ? Int(arguments[3])! : 8
    let connections = arguments.count > 4 ? Int(arguments[4])! : 4
    let perThread = operations / threads
    let before = contextSwitches()
    let elapsed: Int64
    if mode == "contended-pool" {
        let pool = warmPool(size: connections)
        elapsed = onThreads(threads) { _ in
            for _ in 0..<perThread {
                let lease = try! pool.acquireBlocking()
                sink(lease.connection)
            }
        }
    } else {
        let naive = NaivePool((0..<connections).map { _ in DriverConnection() })
        elapsed = onThreads(threads) { _ in
            for _ in 0..<perThread {
                let connection = naive.acquire()
                sink(connection)
                naive.release(connection)
            }
        }
    }
    let after = contextSwitches()
    let total = perThread * threads
    print(
        "\(mode) \(threads) threads / \(connections) connections: \(elapsed / Int64(total)) ns/op, "
            + "\(Int(Double(total) * 1e9 / Double(elapsed))) ops/s, voluntary context switches "
            + "\(after.voluntary - before.voluntary), involuntary \(after.involuntary - before.involuntary)")
default:
    print("unknown mode \(mode)")
    exit(2)
}
