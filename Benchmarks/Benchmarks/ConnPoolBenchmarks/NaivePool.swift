import Foundation

/// The pool most people write first, for comparison: an array of idle connections behind one
/// `NSCondition` (a pthread mutex and condition variable). Acquire waits on the condition while the
/// array is empty; release appends and signals. Blocking only: it cannot serve async tasks without
/// blocking a cooperative thread.
final class NaivePool<Connection: AnyObject>: @unchecked Sendable {
    // @unchecked Sendable: `idle` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var idle: [Connection]

    init(_ connections: [Connection]) {
        idle = connections
        idle.reserveCapacity(connections.count)
    }

    func acquire() -> Connection {
        condition.lock()
        while idle.isEmpty { condition.wait() }
        let connection = idle.removeLast()
        condition.unlock()
        return connection
    }

    func release(_ connection: Connection) {
        condition.lock()
        idle.append(connection)
        condition.signal()
        condition.unlock()
    }
}
