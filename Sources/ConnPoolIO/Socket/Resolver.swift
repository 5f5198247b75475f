import ConnPool
import Dispatch
import Glibc

/// Turns a host name into addresses with `getaddrinfo`, bounded by a deadline.
///
/// `getaddrinfo` blocks and cannot be interrupted, so a name (not an IP literal) is resolved on a
/// dispatch thread and the caller stops waiting at the deadline (or on cancellation) without waiting
/// for it: the lookup then finishes in the background and its result is dropped. A numeric host is
/// parsed inline and never leaves the calling thread.
package enum Resolver {
    /// Resolves `host` and `port` to stream-socket addresses (IPv4 and IPv6, in the resolver's
    /// preferred order, duplicates removed). Blocks on a DNS query unless `host` is numeric.
    ///
    /// - Throws: ``TransportError/hostNotFound(host:detail:)``.
    package static func resolveNow(host: String, port: Int) throws(TransportError) -> [SocketAddress] {
        if let numeric = SocketAddress.numeric(host: host, port: port) { return [numeric] }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            let detail = status == EAI_SYSTEM ? describeErrno(errno) : String(cString: gai_strerror(status))
            throw .hostNotFound(host: host, detail: detail)
        }
        defer { freeaddrinfo(list) }
        var result = [SocketAddress]()
        var cursor: UnsafeMutablePointer<addrinfo>? = list
        while let entry = cursor {
            let info = entry.pointee
            if let address = info.ai_addr, info.ai_family == AF_INET || info.ai_family == AF_INET6,
                Int(info.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size
            {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(info.ai_addrlen)))
                }
                let resolved = SocketAddress(storage: storage, length: info.ai_addrlen, family: info.ai_family)
                if !result.contains(where: { $0.description == resolved.description }) {
                    result.append(resolved)
                }
            }
            cursor = info.ai_next
        }
        if result.isEmpty { throw .hostNotFound(host: host, detail: "no IPv4 or IPv6 address") }
        return result
    }

    /// The addresses of `endpoint`, waiting on the calling thread at most until `deadline`.
    ///
    /// - Throws: ``TransportError/hostNotFound(host:detail:)`` or ``TransportError/connectTimedOut``.
    package static func resolveBlocking(
        _ endpoint: SocketEndpoint, deadline: ContinuousClock.Instant
    ) throws(TransportError) -> [SocketAddress] {
        guard case .tcp(let host, let port) = endpoint else {
            if case .unixSocket(let path) = endpoint { return [.unix(path: path)] }
            return []
        }
        if SocketAddress.isNumeric(host) { return try resolveNow(host: host, port: port) }
        let box = ResolutionBox()
        let semaphore = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            do throws(TransportError) {
                box.result = .success(try resolveNow(host: host, port: port))
            } catch {
                box.result = .failure(error)
            }
            semaphore.signal()
        }
        guard semaphore.wait(timeout: dispatchTime(deadline)) == .success else {
            throw .connectTimedOut  // the lookup goes on in the background; its result is dropped
        }
        // The semaphore orders the worker's write before this read.
        return try box.result!.get()
    }

    /// The addresses of `endpoint`, without blocking a cooperative thread; gives up at `deadline` or on
    /// cancellation, whichever comes first.
    ///
    /// - Throws: ``TransportError/hostNotFound(host:detail:)``, ``TransportError/connectTimedOut`` or
    ///   `CancellationError`.
    package static func resolve(
        _ endpoint: SocketEndpoint, deadline: ContinuousClock.Instant
    ) async throws -> [SocketAddress] {
        guard case .tcp(let host, let port) = endpoint else {
            if case .unixSocket(let path) = endpoint { return [.unix(path: path)] }
            return []
        }
        if SocketAddress.isNumeric(host) { return try resolveNow(host: host, port: port) }
        let once = ResumeOnce<[SocketAddress]>()
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                once.install(continuation)
                DispatchQueue.global().async {
                    let result: Result<[SocketAddress], any Error>
                    do throws(TransportError) {
                        result = .success(try resolveNow(host: host, port: port))
                    } catch {
                        result = .failure(error)
                    }
                    once.resume(with: result)
                }
                // After a result this fires into a finished ResumeOnce and does nothing.
                DispatchQueue.global().asyncAfter(deadline: dispatchTime(deadline)) {
                    once.resume(with: .failure(TransportError.connectTimedOut))
                }
            }
        } onCancel: {
            once.resume(with: .failure(CancellationError()))
        }
    }

    private static func dispatchTime(_ deadline: ContinuousClock.Instant) -> DispatchTime {
        let remaining = ContinuousClock.now.duration(to: deadline)
        let nanoseconds = max(0, remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000)
        return .now() + .nanoseconds(Int(min(nanoseconds, Int64(Int.max))))
    }
}

/// Carries a resolution result from a dispatch thread to the thread waiting on a semaphore.
private final class ResolutionBox: @unchecked Sendable {
    // @unchecked Sendable: `result` is written once by the worker before it signals the semaphore and
    // read by the waiter only after `wait` succeeded, so the semaphore orders the two accesses; after a
    // timeout the waiter never reads it.
    var result: Result<[SocketAddress], TransportError>?
}

/// Resumes a continuation exactly once, whichever of several racing events (a result, a timeout, a
/// cancellation) comes first; the later ones are ignored. An event that arrives before the continuation
/// is installed is remembered and applied at installation.
private final class ResumeOnce<Value: Sendable>: Sendable {
    private struct State {
        var continuation: UnsafeContinuation<Value, any Error>?
        var pending: Result<Value, any Error>?
        var done = false
    }

    private let state = LockedValue(State())

    func install(_ continuation: UnsafeContinuation<Value, any Error>) {
        let pending = state.withLock { state -> Result<Value, any Error>? in
            guard let pending = state.pending else {
                state.continuation = continuation
                return nil
            }
            state.pending = nil
            return pending
        }
        if let pending { continuation.resume(with: pending) }
    }

    func resume(with result: Result<Value, any Error>) {
        let continuation = state.withLock { state -> UnsafeContinuation<Value, any Error>? in
            if state.done { return nil }
            state.done = true
            guard let continuation = state.continuation else {
                state.pending = result  // not installed yet: install() resumes with it
                return nil
            }
            state.continuation = nil
            return continuation
        }
        continuation?.resume(with: result)
    }
}
