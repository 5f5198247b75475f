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
    let start = nowNanoseconds()
    if mode == "withConnection" {
        for _ in 0..<operations { try! pool.withConnectionBlocking { sink($0) } }
    } else {
        for _ in 0..<operations {
            let lease = try! pool.acquireBlocking()
            sink(lease.connection)
        }
    }
    let elapsed = nowNanoseconds() - start
    print("\(mode)\(mode == "slots" ? " \(size)" : ""): \(elapsed / Int64(operations)) ns/op")
case "lock":
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    pthread_mutex_init(mutex, nil)
    let start = nowNanoseconds()
    for _ in 0..<operations {
        pthread_mutex_lock(mutex)
        pthread_mutex_unlock(mutex)
    }
    print("lock: \(Double(nowNanoseconds() - start) / Double(operations)) ns/op")
case "naive":
    let naive = NaivePool([DriverConnection()])
    let start = nowNanoseconds()
    for _ in 0..<operations {
        let connection = naive.acquire()
        sink(connection)
        naive.release(connection)
    }
    print("naive: \((nowNanoseconds() - start) / Int64(operations)) ns/op")
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
