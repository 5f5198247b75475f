import Testing
@testable import ConnPool

@Suite("ConnectionPoolError: codes, data, descriptions, pattern matching")
struct ConnectionPoolErrorTests {
    struct Refused: Error, CustomStringConvertible {
        var description: String { "connection refused" }
    }

    static let allCodes: [ConnectionPoolError.Code] = [
        .acquireTimeout, .shutDown, .connectFailing, .tooManyWaiters, .connectTimedOut,
    ]

    @Test("codes are distinct and describe themselves by their Swift name")
    func codes() {
        #expect(Set(Self.allCodes).count == Self.allCodes.count)
        #expect(Self.allCodes.map(\.description) == [
            "acquireTimeout", "shutDown", "connectFailing", "tooManyWaiters", "connectTimedOut",
        ])
    }

    @Test("each factory sets its code and its data, and leaves the other properties nil")
    func factories() {
        let timeout = ConnectionPoolError.acquireTimeout(after: .seconds(2), lastConnectError: Refused())
        #expect(timeout.code == .acquireTimeout)
        #expect(timeout.timeout == .seconds(2))
        #expect(timeout.lastConnectError is Refused)
        #expect(timeout.consecutiveFailures == nil && timeout.limit == nil)

        let busy = ConnectionPoolError.acquireTimeout(after: .milliseconds(250), lastConnectError: nil)
        #expect(busy.code == .acquireTimeout && busy.timeout == .milliseconds(250) && busy.lastConnectError == nil)

        let shutDown = ConnectionPoolError.shutDown
        #expect(shutDown.code == .shutDown)
        #expect(shutDown.timeout == nil && shutDown.lastConnectError == nil)
        #expect(shutDown.consecutiveFailures == nil && shutDown.limit == nil)

        let failing = ConnectionPoolError.connectFailing(lastConnectError: Refused(), consecutiveFailures: 7)
        #expect(failing.code == .connectFailing)
        #expect(failing.consecutiveFailures == 7)
        #expect(failing.lastConnectError is Refused)
        #expect(failing.timeout == nil && failing.limit == nil)

        let shed = ConnectionPoolError.tooManyWaiters(limit: 64)
        #expect(shed.code == .tooManyWaiters)
        #expect(shed.limit == 64)
        #expect(shed.timeout == nil && shed.lastConnectError == nil && shed.consecutiveFailures == nil)

        let timedOut = ConnectionPoolError.connectTimedOut(after: .milliseconds(1_500))
        #expect(timedOut.code == .connectTimedOut)
        #expect(timedOut.timeout == .milliseconds(1_500))
        #expect(timedOut.lastConnectError == nil && timedOut.consecutiveFailures == nil && timedOut.limit == nil)
    }

    @Test("descriptions are the enum's texts, word for word")
    func descriptions() {
        #expect(
            ConnectionPoolError.acquireTimeout(after: .seconds(2), lastConnectError: Refused()).description
                == "connection pool: acquire timed out after 2 s; last connect error: connection refused")
        #expect(
            ConnectionPoolError.acquireTimeout(after: .milliseconds(250), lastConnectError: nil).description
                == "connection pool: acquire timed out after 250 ms; every connection was in use "
                + "(raise maxSize, shorten leases, or raise acquireTimeout)")
        #expect(
            ConnectionPoolError.shutDown.description
                == "connection pool: the pool is shut down and lends no more connections")
        #expect(
            ConnectionPoolError.connectFailing(lastConnectError: Refused(), consecutiveFailures: 5).description
                == "connection pool: failing fast after 5 consecutive connect failures; "
                + "last connect error: connection refused (a probe keeps retrying; check the server)")
        #expect(
            ConnectionPoolError.tooManyWaiters(limit: 100).description
                == "connection pool: 100 callers are already waiting (maxWaiters); request shed, retry later")
        #expect(
            ConnectionPoolError.connectTimedOut(after: .milliseconds(1_500)).description
                == "connection pool: a connection attempt took longer than 1.5 s (connectTimeout) and was given up on")
        // An acquire timeout that carries a connect timeout names both.
        let nested = ConnectionPoolError.acquireTimeout(
            after: .seconds(1), lastConnectError: ConnectionPoolError.connectTimedOut(after: .seconds(10)))
        #expect("\(nested)".hasSuffix("last connect error: connection pool: a connection attempt took longer than 10 s (connectTimeout) and was given up on"))
    }

    static func classify(_ error: any Error) -> String {
        switch error {
        case ConnectionPoolError.Code.acquireTimeout: "timeout"
        case ConnectionPoolError.Code.shutDown: "shut down"
        case is CancellationError: "cancelled"
        default: "other"
        }
    }

    @Test("a code matches, as a pattern, exactly the pool errors with that code")
    func codeAsPattern() {
        #expect(Self.classify(ConnectionPoolError.acquireTimeout(after: .seconds(1), lastConnectError: nil)) == "timeout")
        #expect(Self.classify(ConnectionPoolError.shutDown) == "shut down")
        #expect(Self.classify(ConnectionPoolError.tooManyWaiters(limit: 1)) == "other")
        #expect(Self.classify(CancellationError()) == "cancelled")
        #expect(Self.classify(Refused()) == "other")
        for code in Self.allCodes {
            for other in Self.allCodes {
                let error: any Error = Self.error(with: other)
                #expect((code ~= error) == (code == other), "\(code) against \(other)")
            }
            #expect(!(code ~= Refused()))
        }
    }

    static func error(with code: ConnectionPoolError.Code) -> ConnectionPoolError {
        switch code {
        case .acquireTimeout: .acquireTimeout(after: .seconds(1), lastConnectError: nil)
        case .shutDown: .shutDown
        case .connectFailing: .connectFailing(lastConnectError: Refused(), consecutiveFailures: 5)
        case .tooManyWaiters: .tooManyWaiters(limit: 1)
        case .connectTimedOut: .connectTimedOut(after: .seconds(10))
        default: .shutDown
        }
    }

    @Test("catch by code, with a where clause or a code pattern")
    func catchByCode() {
        func fail(_ error: ConnectionPoolError) throws { throw error }
        var caught: [String] = []
        for code in [ConnectionPoolError.Code.tooManyWaiters, .shutDown, .acquireTimeout] {
            do {
                try fail(Self.error(with: code))
            } catch let error as ConnectionPoolError where error.code == .tooManyWaiters {
                caught.append("shed \(error.limit ?? 0)")
            } catch ConnectionPoolError.Code.shutDown {
                caught.append("shut down")
            } catch {
                caught.append("other")
            }
        }
        #expect(caught == ["shed 1", "shut down", "other"])
    }
}
