/// The error ``ConnectionPool`` throws when it cannot lend a connection.
///
/// What happened is its ``code``; the data that goes with it is in the optional properties
/// (``timeout``, ``lastConnectError``, ``consecutiveFailures``, ``limit``), set for the codes they
/// belong to and `nil` otherwise. Its ``description`` is one line that says what happened and what to
/// check.
///
/// A struct rather than an enum so that it can grow: **new codes may be added in any release**, so a
/// `switch` over ``code`` needs a `default` branch. Match a code by comparing it, or with a code as a
/// pattern against any error:
/// ```swift
/// do {
///     try await pool.withConnection { connection in ... }
/// } catch let error as ConnectionPoolError where error.code == .tooManyWaiters {
///     // shed: retry later
/// } catch ConnectionPoolError.Code.shutDown {
///     // the pool is shutting down
/// }
///
/// switch error.code {
/// case .acquireTimeout, .connectFailing: ...
/// default: ...  // .shutDown, .tooManyWaiters, and codes added later
/// }
/// ```
/// Create one with the static factories, named as the codes: ``acquireTimeout(after:lastConnectError:)``,
/// ``shutDown``, ``connectFailing(lastConnectError:consecutiveFailures:)``,
/// ``tooManyWaiters(limit:)`` and ``connectTimedOut(after:)``.
public struct ConnectionPoolError: Error, CustomStringConvertible {
    /// What went wrong: one of a set of static values that may grow in later releases.
    ///
    /// Compare codes with `==`, or `switch` over them with a `default` branch. A code also matches
    /// any error that is a ``ConnectionPoolError`` with that code, as a pattern (see
    /// ``~=(_:_:)``).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: UInt8, Hashable, Sendable {
            case acquireTimeout, shutDown, connectFailing, tooManyWaiters, connectTimedOut
        }

        fileprivate let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// No connection became available within the acquire timeout. See
        /// ``ConnectionPoolError/acquireTimeout(after:lastConnectError:)``.
        public static let acquireTimeout = Code(.acquireTimeout)
        /// The pool is shutting down or has shut down. See ``ConnectionPoolError/shutDown``.
        public static let shutDown = Code(.shutDown)
        /// The backend looks down and the acquire failed fast. See
        /// ``ConnectionPoolError/connectFailing(lastConnectError:consecutiveFailures:)``.
        public static let connectFailing = Code(.connectFailing)
        /// Too many callers were already waiting; the acquire was shed. See
        /// ``ConnectionPoolError/tooManyWaiters(limit:)``.
        public static let tooManyWaiters = Code(.tooManyWaiters)
        /// A connection attempt outlived ``PoolConfiguration/connectTimeout``. See
        /// ``ConnectionPoolError/connectTimedOut(after:)``.
        public static let connectTimedOut = Code(.connectTimedOut)

        /// The code's name, as written in Swift: `"acquireTimeout"`, `"shutDown"`, ….
        public var description: String {
            switch base {
            case .acquireTimeout: "acquireTimeout"
            case .shutDown: "shutDown"
            case .connectFailing: "connectFailing"
            case .tooManyWaiters: "tooManyWaiters"
            case .connectTimedOut: "connectTimedOut"
            }
        }

        /// Whether `error` is a ``ConnectionPoolError`` with this code, so that a code works as a
        /// pattern against any error: `catch ConnectionPoolError.Code.shutDown { … }`, or
        /// `case ConnectionPoolError.Code.acquireTimeout:` in a `switch` over an `any Error`.
        public static func ~= (code: Code, error: any Error) -> Bool {
            (error as? ConnectionPoolError)?.code == code
        }
    }

    /// What went wrong.
    public let code: Code

    /// For ``Code/acquireTimeout``, how long the acquire waited; for ``Code/connectTimedOut``, the
    /// ``PoolConfiguration/connectTimeout`` the attempt outlived. `nil` for the other codes.
    public let timeout: Duration?

    /// The most recent error from ``ConnectionFactory/makeConnection()`` (or a
    /// ``Code/connectTimedOut`` error for an attempt that outlived
    /// ``PoolConfiguration/connectTimeout``): always set for ``Code/connectFailing``; for
    /// ``Code/acquireTimeout``, set if any creation failed since the last success, and usually the
    /// real reason the caller waited (the server is down, the password is wrong). `nil` otherwise.
    public let lastConnectError: (any Error)?

    /// ``consecutiveFailures`` or ``limit``, depending on ``code``.
    private let count: Int

    /// For ``Code/connectFailing``, how many connection attempts in a row failed (at least
    /// ``PoolConfiguration/circuitBreakerThreshold``). `nil` for the other codes.
    public var consecutiveFailures: Int? { code == .connectFailing ? count : nil }

    /// For ``Code/tooManyWaiters``, the configured ``PoolConfiguration/maxWaiters`` that was reached.
    /// `nil` for the other codes.
    public var limit: Int? { code == .tooManyWaiters ? count : nil }

    private init(code: Code, timeout: Duration? = nil, lastConnectError: (any Error)? = nil, count: Int = 0) {
        self.code = code
        self.timeout = timeout
        self.lastConnectError = lastConnectError
        self.count = count
    }

    /// No connection became available within the acquire timeout.
    ///
    /// - Parameters:
    ///   - after: how long the acquire waited (``timeout``).
    ///   - lastConnectError: the most recent connection failure since the last success, if any
    ///     (``lastConnectError``).
    /// - Returns: an error with code ``Code/acquireTimeout``.
    public static func acquireTimeout(after: Duration, lastConnectError: (any Error)?) -> ConnectionPoolError {
        ConnectionPoolError(code: .acquireTimeout, timeout: after, lastConnectError: lastConnectError)
    }

    /// The pool is shutting down or has shut down; it lends no more connections. Code
    /// ``Code/shutDown``.
    public static var shutDown: ConnectionPoolError {
        ConnectionPoolError(code: .shutDown)
    }

    /// The backend looks down: `consecutiveFailures` connection attempts in a row failed (at least
    /// ``PoolConfiguration/circuitBreakerThreshold``, or one that failed permanently: see
    /// ``ConnectErrorClassifying``) and no open connection could serve the acquire, so it fails at
    /// once instead of waiting for its timeout. One probe keeps retrying in the background; the first
    /// success lets acquires wait again.
    ///
    /// - Parameters:
    ///   - lastConnectError: the most recent connection failure (``lastConnectError``).
    ///   - consecutiveFailures: failed attempts in a row (``consecutiveFailures``).
    /// - Returns: an error with code ``Code/connectFailing``.
    public static func connectFailing(lastConnectError: any Error, consecutiveFailures: Int) -> ConnectionPoolError {
        ConnectionPoolError(code: .connectFailing, lastConnectError: lastConnectError, count: consecutiveFailures)
    }

    /// The configured limit of waiting callers (`maxWaiters`) is reached; the acquire was shed at once
    /// instead of queueing without bound. Retry later, or raise `maxWaiters`/`maxSize`.
    ///
    /// - Parameter limit: the ``PoolConfiguration/maxWaiters`` that was reached (``limit``).
    /// - Returns: an error with code ``Code/tooManyWaiters``.
    public static func tooManyWaiters(limit: Int) -> ConnectionPoolError {
        ConnectionPoolError(code: .tooManyWaiters, count: limit)
    }

    /// A connection attempt took longer than ``PoolConfiguration/connectTimeout`` and was given up
    /// on. Reported as the ``lastConnectError`` of ``Code/acquireTimeout`` and
    /// ``Code/connectFailing`` errors, never thrown by an acquire directly.
    ///
    /// - Parameter after: the connect timeout the attempt outlived (``timeout``).
    /// - Returns: an error with code ``Code/connectTimedOut``.
    public static func connectTimedOut(after: Duration) -> ConnectionPoolError {
        ConnectionPoolError(code: .connectTimedOut, timeout: after)
    }

    /// One line that says what happened and what to check, with the last connection error when there
    /// is one (the backends keep passwords out of their errors' descriptions).
    public var description: String {
        switch code.base {
        case .acquireTimeout:
            var text = "connection pool: acquire timed out after \(Self.format(timeout ?? .zero))"
            if let lastConnectError {
                text += "; last connect error: \(lastConnectError)"
            } else {
                text += "; every connection was in use (raise maxSize, shorten leases, or raise acquireTimeout)"
            }
            return text
        case .shutDown:
            return "connection pool: the pool is shut down and lends no more connections"
        case .connectFailing:
            if Self.isPermanent(lastConnectError) {
                return "connection pool: failing fast: connecting failed with a permanent error, which retrying will not fix: "
                    + "\(lastConnectError.map { "\($0)" } ?? "unknown") (fix the configuration or the server's; "
                    + "a probe retries every connectRetryMaxBackoff)"
            }
            return "connection pool: failing fast after \(count) consecutive connect failures; "
                + "last connect error: \(lastConnectError.map { "\($0)" } ?? "unknown") (a probe keeps retrying; check the server)"
        case .connectTimedOut:
            return "connection pool: a connection attempt took longer than \(Self.format(timeout ?? .zero)) (connectTimeout) and was given up on"
        case .tooManyWaiters:
            return "connection pool: \(count) callers are already waiting (maxWaiters); request shed, retry later"
        }
    }

    /// "2 s", "250 ms", "1.5 s": short human units for error texts.
    static func format(_ duration: Duration) -> String {
        let nanoseconds = duration.nanosecondsClamped
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000) s" }
        if nanoseconds >= 1_000_000_000 { return "\(Double(nanoseconds) / 1e9) s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000) ms" }
        if nanoseconds >= 1_000 { return "\(Double(nanoseconds) / 1e3) µs" }
        return "\(nanoseconds) ns"
    }
}
