// Small additions for the Redis Cluster client (ConnPoolRedisCluster), built on the connection's
// existing internals only.

import ConnPoolIO

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension RedisConnection {
    /// `true` when the socket of this idle connection is readable or hung up: with no command under way
    /// no reply is due, so that means the server closed the connection (or reset it), typically because it
    /// was killed or restarted. A zero-timeout `poll()`; nothing is read or sent, and the connection's state
    /// does not change.
    ///
    /// The cluster client checks this before sending a write on a pooled connection to a node that just
    /// had a connection error, so that a write on a connection whose node died is known not to have been
    /// sent (and may be retried elsewhere) instead of failing with an unknown outcome.
    ///
    /// - Precondition: the caller holds the connection (a lease) and no command is under way on it.
    package func peerHasClosed() -> Bool {
        // A closed transport's TLS object may be freed: never look at it then.
        if transport.isClosing { return true }
        return transport.hasBufferedInput || SocketPoll.isReady(transport.fd, events: Int16(POLLIN))
    }
}
