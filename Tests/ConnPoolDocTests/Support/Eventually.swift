/// Waits (yielding, never sleeping) until `condition` holds or `timeout` of wall time passes: for the
/// pool's background work (closing, opening) that a sample's assertion depends on.
func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { return false }
        await Task.yield()
    }
    return true
}
