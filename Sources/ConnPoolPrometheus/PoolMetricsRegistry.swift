public import ConnPool

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A pool that can be reported: ``ConnPool/ConnectionPool`` of any factory conforms.
///
/// Lets one registry (and one endpoint) hold pools of different connection types.
public protocol ObservablePool: AnyObject, Sendable {
    /// The pool's configuration; its ``ConnPool/PoolConfiguration/name`` is the `pool` label.
    var configuration: PoolConfiguration { get }
    /// The pool's health, metrics and configuration (see ``ConnPool/ConnectionPool/status()``).
    func status() -> PoolStatus
}

extension ConnectionPool: ObservablePool {}

/// Why a pool could not be registered.
public enum PoolMetricsRegistryError: Error, Hashable, CustomStringConvertible {
    /// A registered pool already has this name: the two would produce the same series.
    case duplicateName(String)

    public var description: String {
        switch self {
        case .duplicateName(let name):
            return "a pool named \"\(name)\" is already registered: give each pool a distinct PoolConfiguration.name"
        }
    }
}

/// The pools one endpoint reports, in registration order. Thread-safe: pools can come and go while
/// the endpoint serves (for instance one pool per benchmark run).
///
/// The registry holds its pools strongly until they are unregistered: unregister a pool when you
/// are done with it (after its shutdown, if its last counters should still be scraped).
public final class PoolMetricsRegistry: Sendable {
    private let pools: LockedValue<[any ObservablePool]>

    /// Creates a registry holding `pools`.
    ///
    /// - Throws: ``PoolMetricsRegistryError/duplicateName(_:)`` if two of them share a name.
    public init(pools: [any ObservablePool] = []) throws(PoolMetricsRegistryError) {
        self.pools = LockedValue([])
        for pool in pools { try register(pool) }
    }

    /// Adds a pool. Registering a pool that is already registered does nothing.
    ///
    /// - Throws: ``PoolMetricsRegistryError/duplicateName(_:)`` if another registered pool has the
    ///   same ``ConnPool/PoolConfiguration/name``.
    public func register(_ pool: any ObservablePool) throws(PoolMetricsRegistryError) {
        let name = pool.configuration.name
        let outcome: PoolMetricsRegistryError? = pools.withLock { pools in
            if pools.contains(where: { $0 === pool }) { return nil }
            if pools.contains(where: { $0.configuration.name == name }) { return .duplicateName(name) }
            pools.append(pool)
            return nil
        }
        if let outcome { throw outcome }
    }

    /// Removes a pool (compared by identity). Does nothing if it is not registered.
    public func unregister(_ pool: any ObservablePool) {
        pools.withLock { pools in pools.removeAll { $0 === pool } }
    }

    /// The registered pools, in registration order.
    public var registered: [any ObservablePool] { pools.withLock { $0 } }

    /// The status of every registered pool, in registration order (each taken under its pool's lock;
    /// the pools' locks are taken one after the other, never together).
    public func statuses() -> [PoolStatus] {
        registered.map { $0.status() }
    }

    /// The Prometheus text exposition of every registered pool (see ``PrometheusExposition``).
    public func prometheusText(buckets: PrometheusExposition.BucketLayout = .octaves) -> String {
        PrometheusExposition.render(statuses(), buckets: buckets)
    }

    /// The pools' statuses as JSON: `{"pools": [<PoolStatus>, …]}` (keys sorted), what
    /// ``PoolMetricsServer`` serves at `/status`. Holds no secret (see ``ConnPool/PoolStatus``).
    ///
    /// - Throws: `EncodingError` if a status cannot be encoded (not expected: every field is plain data).
    public func statusJSON() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(PoolStatusDocument(pools: statuses())))
    }
}

/// The `/status` document.
public struct PoolStatusDocument: Sendable, Codable, Hashable {
    /// The registered pools' statuses, in registration order.
    public var pools: [PoolStatus]

    /// Creates a document.
    public init(pools: [PoolStatus]) { self.pools = pools }
}
