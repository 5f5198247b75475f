// launcher-probe: a helper process for ServerLifetimeTests (not a tool). It starts a throwaway
// redis-server with RedisServerProcess from a short-lived thread, waits for that thread to exit, prints
// `pid=<server pid> port=<port> dir=<directory>` on one line of standard output, and then waits forever
// for the test to kill it.
//
// Starting from a thread that exits before the line is printed proves that a server does not die with
// the thread that started it (a naive PR_SET_PDEATHSIG would kill it then); the test's SIGKILL of this
// process proves that the server dies with the process.

import RedisServerLauncher

#if canImport(Glibc)
import Glibc
#endif

final class Outcome: @unchecked Sendable {
    // Written by the starter thread before it exits, read by the main thread after pthread_join (which
    // orders the two).
    var line = ""
    var failure: String?
}

let outcome = Outcome()
let context = Unmanaged.passRetained(outcome).toOpaque()
var thread = pthread_t()
let created = pthread_create(&thread, nil, Starter.entry, context)

/// The starter thread's body, outside the top-level code (whose closures are main-actor isolated).
enum Starter {
    static let entry: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { context in
        let outcome = Unmanaged<Outcome>.fromOpaque(context!).takeRetainedValue()
        do {
            let server = try RedisServerProcess.start()
            outcome.line = "pid=\(server.pid) port=\(server.port) dir=\(server.directory)"
            // Keep the server: it must outlive this thread (it is released only with the process).
            _ = Unmanaged.passRetained(server)
        } catch {
            outcome.failure = "\(error)"
        }
        return nil
    }
}

func say(_ text: String, to fd: Int32) {
    var text = text + "\n"
    text.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
}
guard created == 0 else {
    say("launcher-probe: pthread_create failed: \(created)", to: STDERR_FILENO)
    exit(2)
}
pthread_join(thread, nil)
if let failure = outcome.failure {
    say("launcher-probe: \(failure)", to: STDERR_FILENO)
    exit(1)
}
say(outcome.line, to: STDOUT_FILENO)
while true { pause() }
