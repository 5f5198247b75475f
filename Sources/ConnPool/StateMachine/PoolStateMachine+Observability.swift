/// Runtime resize, leak detection and the metrics handler's schedule.
extension PoolStateMachine {
    /// Sets a new maximum. Growing past the slot array's capacity reallocates it (the caller grows
    /// the connection buffer to match first) and serves waiters with new connections. Shrinking closes
    /// idle extras now (least recently used first); leased ones close when they come back and ones
    /// being opened when they open; from then on the new maximum holds. Closes already under way do not
    /// count: they are on their way out.
    mutating func resize(maxSize newMaxSize: Int, now: Int64, into effects: inout Effects) {
        precondition(newMaxSize >= 1)
        if newMaxSize > slots.capacity { slots.grow(to: newMaxSize) }
        maxSize = newMaxSize
        while slots.heldCount > maxSize, !slots.idle.isEmpty {
            let index = slots.idle.element(at: 0)
            effects.closes.append(slots.markClosing(index, reason: .resize, deadline: later(now, by: closeTimeout)))
        }
        while case .create(let token) = creationDecision(now: now) { effects.creations.append(token) }
    }

    /// A lease held past the leak threshold, reported once per lease.
    struct LeakReport {
        var index: Int32
        var heldFor: Int64
        var file: StaticString
        var line: UInt
    }

    /// Leases held longer than the leak threshold and not reported yet (maintenance only).
    mutating func detectLeaks(now: Int64) -> [LeakReport] {
        guard let leakThreshold, slots.leasedCount > 0 else { return [] }
        var reports: [LeakReport] = []
        for slot in 0..<slots.capacity where slots.states[slot] == .leased {
            let heldFor = now &- slots.leasedAt[slot]
            guard heldFor >= leakThreshold, slots.leakReported[slot] != slots.generations[slot] else { continue }
            slots.markLeakReported(Int32(slot))
            counters.leaksDetected += 1
            reports.append(LeakReport(index: Int32(slot), heldFor: heldFor, file: slots.leaseFiles[slot], line: slots.leaseLines[slot]))
        }
        return reports
    }

    /// Starts (or stops, with nil) the periodic metrics report.
    mutating func setMetricsInterval(_ interval: Int64?, now: Int64) {
        metricsInterval = interval
        guard let interval else {
            nextMetricsAt = .max
            return
        }
        nextMetricsAt = later(now, by: interval)
        requestTimer(at: nextMetricsAt)
    }

    /// Whether the metrics handler is due; if so, schedules the next report.
    mutating func takeMetricsReportDue(now: Int64) -> Bool {
        guard let metricsInterval, now >= nextMetricsAt else { return false }
        nextMetricsAt = later(now, by: metricsInterval)
        return true
    }
}
