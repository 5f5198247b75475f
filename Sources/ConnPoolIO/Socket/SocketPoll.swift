import Glibc

/// `poll()` on one descriptor: a zero-timeout readiness check, a wait with a deadline for blocking
/// callers, and a check whether the peer has closed.
package enum SocketPoll {
    /// `true` when `fd` has one of `events` (or an error or hang-up) right now: a zero-timeout poll().
    @inline(__always)
    package static func isReady(_ fd: Int32, events: Int16) -> Bool {
        var entry = pollfd(fd: fd, events: events, revents: 0)
        return Glibc.poll(&entry, 1, 0) > 0
    }

    /// Blocks the calling thread in `poll()` until `fd` reports one of `events` (or an error or hang-up,
    /// which the next read or write reports) or `deadline` passes (`nil`: no deadline). Retries after
    /// `EINTR` with the remaining time.
    ///
    /// - Throws: ``TransportError/timedOut`` at the deadline, ``TransportError/io(operation:errno:)`` if
    ///   poll fails.
    package static func wait(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant?) throws(TransportError) {
        while true {
            let milliseconds = deadline.map(millisecondsUntil) ?? -1
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let result = Glibc.poll(&entry, 1, milliseconds)
            if result > 0 { return }
            if result == 0 {
                // poll may wake a little early: only the clock says the deadline has passed.
                if let deadline, milliseconds == 0 || ContinuousClock.now >= deadline { throw .timedOut }
                continue
            }
            let code = errno
            if code != EINTR { throw .io(operation: "poll", errno: code) }
        }
    }

    /// Milliseconds from now until `deadline`, rounded up (a wait never ends early), 0 if past.
    package static func millisecondsUntil(_ deadline: ContinuousClock.Instant) -> Int32 {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        if seconds >= Int64(Int32.max / 1000) { return Int32.max }
        let perMillisecond: Int64 = 1_000_000_000_000_000
        return Int32(seconds * 1000 + (attoseconds + perMillisecond - 1) / perMillisecond)
    }

    /// Whether the peer has closed (or reset) the connection, found without a round trip: `poll` with a
    /// zero timeout, then, if readable, `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: 0 bytes means the
    /// peer sent FIN. Pending data means the peer is alive (the data stays queued).
    package static func peerHasClosed(_ fd: Int32) -> Bool {
        let pollReadHangUp: Int16 = 0x2000  // POLLRDHUP (a GNU extension the Glibc module does not export)
        var entry = pollfd(fd: fd, events: Int16(POLLIN) | pollReadHangUp, revents: 0)
        var result: Int32
        repeat {
            result = Glibc.poll(&entry, 1, 0)
        } while result < 0 && errno == EINTR
        if result < 0 { return true }
        if result == 0 { return false }  // nothing to read, no error: alive and idle
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
