import ConnPool
import Dispatch
import Glibc

// Low-level socket helpers shared by the blocking and the async paths. Everything here works on
// non-blocking sockets and never waits: waiting is the caller's business (poll() for the blocking
// API, IOReactor for the async one).

/// One address returned by `getaddrinfo`, copied out of its list.
struct ResolvedAddress: Sendable {
    var family: Int32
    var bytes: [UInt8]  // a sockaddr_in or sockaddr_in6

    /// `1.2.3.4:80` or `[::1]:80`.
    var description: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        var port: UInt16 = 0
        bytes.withUnsafeBytes { raw in
            if family == AF_INET6 {
                var address = raw.loadUnaligned(as: sockaddr_in6.self)
                port = UInt16(bigEndian: address.sin6_port)
                _ = inet_ntop(AF_INET6, &address.sin6_addr, &text, socklen_t(text.count))
            } else {
                var address = raw.loadUnaligned(as: sockaddr_in.self)
                port = UInt16(bigEndian: address.sin_port)
                _ = inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(text.count))
            }
        }
        let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

enum SocketSupport {
    /// Whether `host` is a numeric IPv4 or IPv6 address (resolving it never blocks).
    static func isNumericHost(_ host: String) -> Bool {
        var storage = in6_addr()
        return inet_pton(AF_INET, host, &storage) == 1 || inet_pton(AF_INET6, host, &storage) == 1
    }

    /// Resolves `host` and `port` to TCP addresses with `getaddrinfo` (IPv4 and IPv6, in the
    /// resolver's preferred order, duplicates removed). May block on a DNS query unless the host is
    /// numeric.
    static func resolve(host: String, port: Int) throws(TCPConnectionError) -> [ResolvedAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        hints.ai_flags = AI_NUMERICSERV | (isNumericHost(host) ? AI_NUMERICHOST : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0 else {
            let reason = rc == EAI_SYSTEM ? errorText(errno) : String(cString: gai_strerror(rc))
            throw .resolutionFailed(host: host, reason: reason)
        }
        defer { freeaddrinfo(list) }
        var result: [ResolvedAddress] = []
        var cursor = list
        while let info = cursor {
            let entry = info.pointee
            if let address = entry.ai_addr, entry.ai_family == AF_INET || entry.ai_family == AF_INET6 {
                let bytes = Array(UnsafeRawBufferPointer(start: address, count: Int(entry.ai_addrlen)))
                let resolved = ResolvedAddress(family: entry.ai_family, bytes: bytes)
                if !result.contains(where: { $0.bytes == bytes }) {
                    result.append(resolved)
                }
            }
            cursor = entry.ai_next
        }
        if result.isEmpty {
            throw .resolutionFailed(host: host, reason: "no IPv4 or IPv6 address")
        }
        return result
    }

    /// Resolves on a dispatch thread and waits at most until `deadline` (a blocking wait on the
    /// calling thread). A numeric host is resolved inline.
    static func resolveBlocking(
        host: String,
        port: Int,
        deadline: ContinuousClock.Instant,
        timeout: Duration
    ) throws(TCPConnectionError) -> [ResolvedAddress] {
        if isNumericHost(host) {
            return try resolve(host: host, port: port)
        }
        let box = ResolutionBox()
        let semaphore = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            do throws(TCPConnectionError) {
                box.result = .success(try resolve(host: host, port: port))
            } catch {
                box.result = .failure(error)
            }
            semaphore.signal()
        }
        let remaining = ContinuousClock.now.duration(to: deadline)
        let nanoseconds = max(0, remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000)
        guard semaphore.wait(timeout: .now() + .nanoseconds(Int(min(nanoseconds, Int64(Int.max))))) == .success else {
            // The resolver goes on in the background; its result is dropped.
            throw .connectTimedOut(host: host, port: port, timeout: timeout)
        }
        // The semaphore orders the worker's write before this read.
        return try box.result!.get()
    }

    /// Resolves on a dispatch thread (never blocking a cooperative thread) and gives up at `deadline`
    /// or on cancellation, whichever comes first, without waiting for `getaddrinfo` to return (a task
    /// group would wait for its uncancellable child). A numeric host is resolved inline.
    static func resolveAsync(
        host: String,
        port: Int,
        deadline: ContinuousClock.Instant,
        timeout: Duration
    ) async throws -> [ResolvedAddress] {
        if isNumericHost(host) {
            return try resolve(host: host, port: port)
        }
        let once = ResumeOnce<[ResolvedAddress]>()
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                once.install(continuation)
                DispatchQueue.global().async {
                    let result: Result<[ResolvedAddress], any Error>
                    do throws(TCPConnectionError) {
                        result = .success(try resolve(host: host, port: port))
                    } catch {
                        result = .failure(error)
                    }
                    once.resume(with: result)
                }
                let remaining = ContinuousClock.now.duration(to: deadline)
                let nanoseconds = max(0, remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000)
                // After a result this fires into a finished ResumeOnce and does nothing.
                DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) {
                    once.resume(with: .failure(TCPConnectionError.connectTimedOut(host: host, port: port, timeout: timeout)))
                }
            }
        } onCancel: {
            once.resume(with: .failure(CancellationError()))
        }
    }

    enum ConnectStart {
        case connected(Int32)
        case inProgress(Int32)
        case failed(errno: Int32)
    }

    /// Creates a non-blocking socket for `address`, applies the options and starts connecting.
    static func startConnect(
        _ address: ResolvedAddress,
        configuration: TCPConnectionConfiguration
    ) throws(TCPConnectionError) -> ConnectStart {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(address.family, type, Int32(IPPROTO_TCP))
        guard fd >= 0 else {
            let code = errno
            if code == EAFNOSUPPORT {
                return .failed(errno: code)  // no IPv6 (or IPv4) here: try the next address
            }
            throw .systemError(operation: "socket", errno: code)
        }
        do throws(TCPConnectionError) {
            if configuration.noDelay {
                try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, name: "setsockopt(TCP_NODELAY)")
            }
            if configuration.keepAlive {
                try setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1, name: "setsockopt(SO_KEEPALIVE)")
            }
        } catch {
            Glibc.close(fd)
            throw error
        }
        let rc = address.bytes.withUnsafeBytes { raw in
            Glibc.connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
        if rc == 0 {
            return .connected(fd)
        }
        let code = errno
        if code == EINPROGRESS || code == EINTR || code == EAGAIN {
            return .inProgress(fd)  // after EINTR the connect goes on asynchronously
        }
        Glibc.close(fd)
        return .failed(errno: code)
    }

    /// The outcome of a connect that reported writable: 0 or an errno (`SO_ERROR`).
    static func connectResult(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) != 0 {
            return errno
        }
        return value
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32, name: String) throws(TCPConnectionError) {
        var value = value
        if setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            throw .systemError(operation: name, errno: errno)
        }
    }

    enum PollOutcome {
        case ready
        case timedOut
        case failed(errno: Int32)
    }

    /// Blocks the calling thread in `poll` until `fd` reports one of `events` (or an error or
    /// hang-up), or `deadline` passes. Retries after `EINTR` with the remaining time.
    static func pollWait(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant) -> PollOutcome {
        while true {
            let milliseconds = millisecondsUntil(deadline)
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&entry, 1, milliseconds)
            if rc > 0 {
                return .ready
            }
            if rc == 0 {
                if milliseconds == 0 || ContinuousClock.now >= deadline {
                    return .timedOut
                }
                continue
            }
            let code = errno
            if code != EINTR {
                return .failed(errno: code)
            }
        }
    }

    /// Milliseconds from now until `deadline`, rounded up (a wait never ends early), 0 if past.
    static func millisecondsUntil(_ deadline: ContinuousClock.Instant) -> Int32 {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        if seconds >= Int64(Int32.max / 1000) { return Int32.max }
        let perMillisecond: Int64 = 1_000_000_000_000_000
        return Int32(seconds * 1000 + (attoseconds + perMillisecond - 1) / perMillisecond)
    }

    /// The outcome of one `recv` or `send`.
    enum TransferResult {
        case transferred(Int)
        case wouldBlock
        case endOfStream
    }

    /// One `recv` into `pointer`, retried after `EINTR`.
    @inline(__always)
    static func receive(_ fd: Int32, into pointer: UnsafeMutableRawPointer, count: Int) throws(TCPConnectionError) -> TransferResult {
        while true {
            let n = recv(fd, pointer, count, 0)
            if n > 0 { return .transferred(n) }
            if n == 0 { return .endOfStream }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            case ECONNRESET: throw .connectionReset
            default: throw .systemError(operation: "recv", errno: code)
            }
        }
    }

    /// One `send` from `pointer` (without SIGPIPE), retried after `EINTR`.
    @inline(__always)
    static func send(_ fd: Int32, from pointer: UnsafeRawPointer, count: Int) throws(TCPConnectionError) -> TransferResult {
        while true {
            let n = Glibc.send(fd, pointer, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .transferred(n) }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            case EPIPE: throw .peerClosed
            case ECONNRESET: throw .connectionReset
            default: throw .systemError(operation: "send", errno: code)
            }
        }
    }

    /// Whether the peer has closed (or reset) the connection, found without a round trip: `poll` with
    /// a zero timeout, then, if readable, `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: 0 bytes means
    /// the peer sent FIN. Pending data means the peer is alive (the data stays queued).
    static func peerHasClosed(_ fd: Int32) -> Bool {
        let pollReadHangUp: Int16 = 0x2000  // POLLRDHUP (a GNU extension the Glibc module does not export)
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | pollReadHangUp, revents: 0)
        var rc: Int32
        repeat {
            rc = poll(&entry, 1, 0)
        } while rc < 0 && errno == EINTR
        if rc < 0 { return true }
        if rc == 0 { return false }  // nothing to read, no error: alive and idle
        if entry.revents & (Int16(POLLERR) | Int16(POLLNVAL)) != 0 { return true }
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
            if n > 0 { return false }
            if n == 0 { return true }
            let code = errno
            if code == EINTR { continue }
            return !(code == EAGAIN || code == EWOULDBLOCK)
        }
    }
}

/// Carries a resolution result from a dispatch thread to the thread waiting on a semaphore.
private final class ResolutionBox: @unchecked Sendable {
    // @unchecked Sendable: `result` is written once by the worker before it signals the semaphore and
    // read by the waiter only after `wait` succeeded, so the semaphore orders the two accesses; after a
    // timeout the waiter never reads it.
    var result: Result<[ResolvedAddress], TCPConnectionError>?
}

/// Resumes a continuation exactly once, whichever of several racing events (a result, a timeout, a
/// cancellation) comes first; the later ones are ignored. A cancellation that arrives before the
/// continuation is installed is remembered and applied at installation.
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
