public import ServiceLifecycle

/// Run the pool in a swift-service-lifecycle `ServiceGroup`: on a graceful shutdown (SIGTERM, say)
/// the pool shuts down, letting leased connections return for up to
/// ``PoolConfiguration/shutdownGracePeriod`` before closing them by force.
///
/// ```swift
/// let group = ServiceGroup(services: [pool, server], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await group.run()
/// ```
extension ConnectionPool: Service {
    /// Waits for a graceful shutdown (or cancellation), then shuts the pool down. The pool serves
    /// acquires from the moment it is created; `run()` only ties its end to the service group's.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown(gracePeriod: configuration.shutdownGracePeriod)
    }
}
