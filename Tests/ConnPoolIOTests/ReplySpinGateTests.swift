import ConnPoolIO
import ConnPoolTestSupport
import Foundation
import Glibc
import Testing

/// The per-connection half of ``ReplySpin``: the record of reply times (driven here outcome by outcome,
/// without sockets, so that these tests do not depend on what other tests do at the same time) and the
/// striped count of operations under way.
@Suite("ReplySpin.Gate", .serialized, .processExclusive)
struct ReplySpinGateTests {
    /// Spins once, as a connection would, with `caught` as the outcome; `false` if the gate said no.
    private func spin(_ gate: inout ReplySpin.Gate, caught: Bool) -> Bool {
        guard gate.mayTry() else { return false }
        gate.record(caught: caught)
        return true
    }

    @Test("a run of late replies stops the spin; a stopped gate spins once every probeInterval waits")
    func lateRepliesStopTheSpin() {
        var gate = ReplySpin.Gate(policy: .adaptive)
        #expect(gate.isSpinning)
        // A server out of reach of the budget: every spin gives up. The gate stops after maximumScore.
        for _ in 0..<Int(ReplySpin.maximumScore) { #expect(spin(&gate, caught: false)) }
        #expect(!gate.isSpinning)
        #expect(gate.statistics.gaveUp == Int(ReplySpin.maximumScore))

        // In steady state, one wait in probeInterval spins (and gives up again).
        let waits = 10 * ReplySpin.probeInterval
        var spins = 0
        for _ in 0..<waits where spin(&gate, caught: false) { spins += 1 }
        #expect(spins == 10)
        #expect(!gate.isSpinning)
        #expect(gate.statistics.skippedLate == waits - 10)
        #expect(gate.statistics.waits == Int(ReplySpin.maximumScore) + waits)
    }

    @Test("a probe that catches its reply restarts the spin (a server that came close again)")
    func aCaughtProbeRestartsTheSpin() {
        var gate = ReplySpin.Gate(policy: .adaptive)
        for _ in 0..<Int(ReplySpin.maximumScore) { _ = spin(&gate, caught: false) }
        #expect(!gate.isSpinning)
        // The server is close again: the first probe catches, and from then on every wait spins.
        var waitsBeforeProbe = 0
        while !spin(&gate, caught: true) { waitsBeforeProbe += 1 }
        #expect(waitsBeforeProbe == ReplySpin.probeInterval - 1)
        #expect(gate.isSpinning)
        for _ in 0..<100 { #expect(spin(&gate, caught: true)) }
        // Back at the top of the score: it takes a full run of late replies to stop again.
        for _ in 0..<Int(ReplySpin.maximumScore) - 1 { _ = spin(&gate, caught: false) }
        #expect(gate.isSpinning)
    }

    @Test("replies mostly in time keep it spinning, with a late one now and then (a loaded machine)")
    func mostlyInTimeKeepsSpinning() {
        var gate = ReplySpin.Gate(policy: .adaptive)
        for round in 0..<1000 {
            // Two in time, one late; and once a run of maximumScore - 1 late ones.
            #expect(spin(&gate, caught: true))
            #expect(spin(&gate, caught: round == 500))
            #expect(spin(&gate, caught: true))
        }
        for _ in 0..<Int(ReplySpin.maximumScore) - 1 { #expect(spin(&gate, caught: false)) }
        #expect(gate.isSpinning)
        #expect(gate.statistics.skippedLate == 0)
    }

    @Test(".disabled never spins")
    func disabledNeverSpins() throws {
        var gate = ReplySpin.Gate(policy: .disabled)
        #expect(!gate.isSpinning)
        let pair = try SocketPair()
        pair.write("+PONG\r\n", to: pair.b)
        gate.begin()
        // Data is waiting: any spin would catch it at once.
        for _ in 0..<100 {
            let spun = gate.waitReadable(pair.a)
            #expect(!spun)
        }
        gate.end()
        withExtendedLifetime(pair) {}
        #expect(gate.statistics.waits == 100)
        #expect(gate.statistics.spins == 0)
    }

    @Test("an operation under way on another gate (thread, CPU) keeps a gate from spinning; once it ends, the gate spins")
    func othersUnderWayPreventTheSpin() async throws {
        let pair = try SocketPair()
        pair.write("+PONG\r\n", to: pair.b)  // stays unread: a spin would catch it at once
        let fd = pair.a
        // The other operation counts itself in on another thread, so maybe on another CPU's stripe.
        let other = try await onThread { () -> ReplySpin.Gate in
            var gate = ReplySpin.Gate(policy: .disabled)
            gate.begin()
            return gate
        }
        var gate = ReplySpin.Gate(policy: .adaptive)
        for _ in 0..<50 {
            gate.begin()
            let spun = gate.waitReadable(fd)
            gate.end()
            #expect(!spun)
        }
        #expect(gate.statistics.skippedBusy == 50)
        #expect(gate.statistics.spins == 0)

        try await onThread {
            var other = other
            other.end()
        }
        // Alone now, but for what other tests run meanwhile (hence the poll): the spin catches the data.
        let caught = await eventually(timeout: .seconds(60), pollingEvery: .milliseconds(1)) {
            gate.begin()
            defer { gate.end() }
            return gate.waitReadable(fd)
        }
        #expect(caught)
        // It spun; whether that spin counts as caught in time or late depends on the machine's load (a
        // thread descheduled mid-spin finds the data only after the budget: `late`, not `caught`).
        #expect(gate.statistics.spins >= 1)
        withExtendedLifetime(pair) {}  // its descriptors stay open (and unreused) until here
    }

    @Test("the striped count comes back to zero after operations counted in and out on many threads")
    func stripedCountComesBackToZero() async throws {
        #expect(ReplySpin.stripeCount >= 1 && ReplySpin.stripeCount <= 64)
        #expect(ReplySpin.stripeCount & (ReplySpin.stripeCount - 1) == 0)
        let threads = 16
        // Each thread counts in 1,000 operations, keeping the last one under way…
        let begun = try await withThrowingTaskGroup(of: ReplySpin.Gate.self) { group in
            for _ in 0..<threads {
                group.addTask {
                    try await onThread { () -> ReplySpin.Gate in
                        var gate = ReplySpin.Gate(policy: .adaptive)
                        for _ in 0..<999 {
                            gate.begin()
                            gate.end()
                        }
                        gate.begin()
                        return gate
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        // …so at least those are under way (other tests may add theirs).
        #expect(ReplySpin.operationsUnderWay >= threads)
        // Ended on other threads than they began on: each still counts out on its own stripe.
        try await onThread {
            for var gate in begun { gate.end() }
        }
        #expect(await eventually(pollingEvery: .milliseconds(1)) { ReplySpin.operationsUnderWay == 0 })
    }
}

/// Runs blocking `body` on a new plain thread and returns its result.
private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}
