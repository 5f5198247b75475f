/// Polls `condition` until it holds or `timeout` of wall time passes, and returns whether it held (one
/// last check runs at the deadline). A poll with a deadline, never a fixed sleep.
///
/// - Parameters:
///   - timeout: how long to keep polling.
///   - interval: the pause between two checks. `.zero` (the default) yields the task: for conditions
///     that other tasks of the process make true. A duration sleeps that long: for conditions that a
///     server, a thread or the kernel makes true, or whose check costs a round trip.
///   - condition: the check; what it throws is rethrown.
public func eventually(
    timeout: Duration = .seconds(10), pollingEvery interval: Duration = .zero,
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        if interval == .zero {
            await Task.yield()
        } else {
            try? await Task.sleep(for: interval)
        }
    }
    return try await condition()
}
