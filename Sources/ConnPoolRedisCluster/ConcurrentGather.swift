import ConnPool

/// Runs `body(0)`, …, `body(count - 1)` as child tasks of one task group and returns their results in
/// index order (not completion order).
///
/// Why not a plain `withTaskGroup(of: (Int, T).self)`: with Swift 6.3.1 on Linux, a task group whose
/// children *return* a tuple that holds a reference together with an enum with payloads, such as
/// `(ClusterNode, Result<RedisReply, any Error>)` or `(String, Result<…>)`, hands the parent garbage
/// in release builds under concurrency (a crash in `TaskGroupBase::prepareWaitingTaskWithTask` or
/// `destroyTask` when the result is released; debug builds are clean). `redis-bench --cluster 3
/// --workload ping --concurrency 8` crashed every time that way. `Scripts/repro/taskgroup-tuple-result.swift`
/// reproduces it with no code of ours (crashes at `-O`, clean at `-Onone`; `(Int, Result<…>)`,
/// `(ClusterNode, Int)` and `Result<…>` alone run clean). So here the children return nothing: each
/// stores its result under a lock, in its own index. `.ci/run` runs the cluster fan-out, pipeline and
/// topology paths from a release build (`Scripts/release-smoke.sh`) to keep it that way.
///
/// - Parameters:
///   - count: how many children to run; `0` returns `[]` at once.
///   - body: the work of child `index`; it must not throw: wrap failures in the result type.
/// - Returns: `count` results, `result[i]` from `body(i)`.
func gatherConcurrently<Result: Sendable>(
    _ count: Int,
    _ body: @escaping @Sendable (_ index: Int) async -> Result
) async -> [Result] {
    guard count > 0 else { return [] }
    let slots = LockedValue<[Result?]>(Array(repeating: nil, count: count))
    await withTaskGroup(of: Void.self) { group in
        for index in 0..<count {
            group.addTask {
                let result = await body(index)
                slots.withLock { $0[index] = result }
            }
        }
    }
    // Every child has finished (the group awaited them all) and each filled its own slot.
    return slots.withLock { $0.map { $0! } }
}
