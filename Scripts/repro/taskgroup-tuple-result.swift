// A toolchain bug, reproduced with no code of connpool's (Swift 6.3.1, Linux x86_64, 2026-12-06).
//
// A task group whose children *return* a tuple holding a reference together with an enum with payloads
// (here `(Node, Result<Reply, any Error>)`) hands the parent garbage in optimized builds under
// concurrency: the process crashes when the results are released (`destroyTask`,
// `TaskGroupBase::prepareWaitingTaskWithTask`, SIGILL/SIGSEGV/SIGABRT).
//
//   swiftc -O -parse-as-library Scripts/repro/taskgroup-tuple-result.swift -o /tmp/tg && /tmp/tg
//     crashes every run here;
//   swiftc -Onone … runs clean, and so do the child result types `(Int, Result<Reply, any Error>)`,
//   `Result<Reply, any Error>`, `(Node, Node)`, `(Node, Int)` and `([Double], Int)`; `(Node, Reply)` and
//   `(String, Result<Reply, any Error>)` crash too.
//
// connpool's cluster client therefore never lets children return their results
// (`Sources/ConnPoolRedisCluster/ConcurrentGather.swift`), and `.ci/run` exercises those paths from a
// release build (`Scripts/release-smoke.sh`).
final class Node: Sendable {
    let name: String
    init(_ name: String) { self.name = name }
}

enum Reply: Sendable, Hashable {
    case status(String), error(String), integer(Int), bulk([UInt8]), null, array([Reply])
}

struct Failure: Error { let message: String }

@inline(never) func work(_ node: Node, _ i: Int) async throws -> Reply {
    if i % 7 == 0 { await Task.yield() }
    if i % 11 == 0 { throw Failure(message: "x\(i)") }
    return .status("PONG\(node.name)")
}

@main struct Reproducer {
    static func main() async {
        let nodes = (0..<3).map { Node("n\($0)") }
        let rounds = Int(CommandLine.arguments.dropFirst().first ?? "20000")!
        await withTaskGroup(of: Void.self) { outer in
            for t in 0..<8 {
                outer.addTask {
                    var count = 0
                    for r in 0..<rounds {
                        let results = await withTaskGroup(of: (Node, Result<Reply, any Error>).self) { group in
                            for node in nodes {
                                group.addTask {
                                    do { return (node, .success(try await work(node, r + t))) } catch { return (node, .failure(error)) }
                                }
                            }
                            var all: [(Node, Result<Reply, any Error>)] = []
                            for await item in group { all.append(item) }
                            return all
                        }
                        count += results.count
                    }
                    precondition(count == rounds * 3)
                }
            }
        }
        print("no crash: \(rounds) rounds of 8 tasks × 3 children")
    }
}
