// TCPLineClientExample: a pool of raw TCP connections talking a tiny line protocol.
//
// Starts an in-process line server on a free loopback port (one thread per connection), then sends a
// few requests through a `ConnectionPool` of `TCPConnection`s, from concurrent tasks and from a plain
// thread, and prints what happened. Needs no arguments and exits 0 within a few seconds.
//
//     swift run TCPLineClientExample

import ConnPool
import ConnPoolTCP
import Foundation
import Glibc

// MARK: - A tiny line server

/// Answers one request per line: `PING` → `PONG`, `UPPER text` → `TEXT`, `ADD a b` → the sum,
/// anything else → `ERR unknown command`.
func answer(_ request: String) -> String {
    let parts = request.split(separator: " ", maxSplits: 1).map(String.init)
    switch parts.first {
    case "PING": return "PONG"
    case "UPPER": return parts.count > 1 ? parts[1].uppercased() : ""
    case "ADD":
        let numbers = (parts.count > 1 ? parts[1] : "").split(separator: " ").compactMap { Int($0) }
        return numbers.count == 2 ? String(numbers[0] + numbers[1]) : "ERR ADD needs two integers"
    default: return "ERR unknown command"
    }
}

/// Listens on 127.0.0.1, port chosen by the kernel; returns the socket and the port.
func listenOnLoopback() -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && listen(fd, 64) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard fd >= 0, ok else {
        fatalError("could not listen on 127.0.0.1: \(String(cString: strerror(errno)))")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// Serves one client: reads `\n`-terminated lines and writes one answer line each, until the client
/// closes.
func serve(_ client: Int32) {
    defer { close(client) }
    var pending: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        while let newline = pending.firstIndex(of: 0x0A) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeFirst(newline + 1)
            let reply = Array((answer(line) + "\n").utf8)
            var offset = 0
            while offset < reply.count {
                let n = reply.withUnsafeBytes { send(client, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                offset += n
            }
        }
        let n = recv(client, &chunk, chunk.count, 0)
        if n <= 0 { return }
        pending.append(contentsOf: chunk[..<n])
    }
}

let (listenFD, port) = listenOnLoopback()
Thread.detachNewThread {
    while true {
        let client = accept(listenFD, nil, nil)
        if client < 0 { return }  // the listening socket was shut down
        Thread.detachNewThread { serve(client) }
    }
}
print("line server listening on 127.0.0.1:\(port)")

// MARK: - The client side: a pool of TCP connections

let configuration = TCPConnectionConfiguration(
    host: "127.0.0.1",
    port: port,
    connectTimeout: .seconds(2),
    readTimeout: .seconds(2),
    writeTimeout: .seconds(2),
    validationProbe: TCPValidationProbe(request: "PING\n", expectedResponse: "PONG\n")
)
let pool = try ConnectionPool(
    factory: try TCPConnectionFactory(configuration: configuration),
    configuration: PoolConfiguration().maxSize(4).acquireTimeout(.seconds(5))
)

/// Sends one request through the pool and returns the answer.
@Sendable func request(_ line: String) async throws -> String {
    try await pool.withConnection { connection in
        try await connection.send(line + "\n")
        return try await connection.readLine()
    }
}

// A few requests from concurrent tasks.
let requests = ["PING", "UPPER hello, pool", "ADD 40 2", "ADD 1", "FLY", "UPPER tcp"] + (1...10).map { "ADD \($0) \($0 * $0)" }
let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
    for (index, line) in requests.enumerated() {
        group.addTask { (index, try await request(line)) }
    }
    var answers = [String](repeating: "", count: requests.count)
    for try await (index, reply) in group {
        answers[index] = reply
    }
    return answers
}
for (line, reply) in zip(requests, answers) {
    print("  \(line.padding(toLength: 18, withPad: " ", startingAt: 0)) -> \(reply)")
}

// The same pool from a plain thread, through the blocking interface.
let blockingReply = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
    Thread.detachNewThread {
        continuation.resume(with: Result {
            try pool.withConnectionBlocking { connection in
                try connection.sendBlocking("UPPER from a plain thread\n")
                return try connection.readLineBlocking()
            }
        })
    }
}
print("  blocking interface -> \(blockingReply)")

// A lease, checked with the configured probe before use. (Kept in a function: with Swift 6.3 a
// `~Copyable` lease declared in a top-level `do` block of main.swift is not destroyed at the end of
// the block, so it would never return to the pool.)
func leaseAndProbe() async throws {
    let lease = try await pool.acquire()
    let valid = await lease.connection.isValid(timeout: .seconds(1))
    print("  leased \(lease.connection.remoteAddress), probe PING/PONG valid: \(valid)")
}
try await leaseAndProbe()

let metrics = pool.metrics()
print("served \(requests.count + 1) requests over \(metrics.total) pooled connection(s) (max \(metrics.maxSize))")
await pool.shutdown()
shutdown(listenFD, Int32(SHUT_RDWR))
close(listenFD)

let expected = requests.map(answer)
guard answers == expected, blockingReply == "FROM A PLAIN THREAD" else {
    print("unexpected answers: \(answers)")
    exit(1)
}
print("done")
