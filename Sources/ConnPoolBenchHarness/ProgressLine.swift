#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Whether and where the live progress line is shown.
public enum BenchProgress {
    /// `true` when standard output is a terminal: only then does the harness draw a progress line.
    public static var standardOutputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
}

/// The counters a running phase exposes to the progress line (relaxed atomics; the workers touch
/// `errors` only when a request fails).
final class PhaseCounters: Sendable {
    /// Requests claimed by workers (a claim happens just before the request starts).
    let claimed = Atomic<Int>(0)
    /// Requests that failed so far.
    let errors = Atomic<Int>(0)
}

/// A carriage-return-updated status line on standard output, redrawn four times a second by a plain
/// thread of its own while a phase runs, and erased when it stops. Draws nothing when disabled.
final class ProgressLine: Sendable {
    private let label: String
    private let counters: PhaseCounters
    private let stop: BenchStopCondition
    private let commandsPerRequest: Int
    private let state: ProgressThreadState?

    init(enabled: Bool, label: String, counters: PhaseCounters, stop: BenchStopCondition, commandsPerRequest: Int) {
        self.label = label
        self.counters = counters
        self.stop = stop
        self.commandsPerRequest = commandsPerRequest
        state = enabled ? ProgressThreadState() : nil
    }

    /// Starts the drawing thread (no-op when disabled).
    func start() {
        guard let state else { return }
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let line = Unmanaged<ProgressLine>.fromOpaque(context!).takeRetainedValue()
            line.drawLoop()
            return nil
        }, context)
        if rc == 0 {
            state.setThread(thread)
        } else {
            Unmanaged<ProgressLine>.fromOpaque(context).release()
        }
    }

    /// Stops the drawing thread, waits for it, and erases the line.
    func finish() {
        guard let state, let thread = state.requestStop() else { return }
        pthread_join(thread, nil)
        writeToTerminal("\r\u{1B}[2K")
    }

    private func drawLoop() {
        guard let state else { return }
        let start = benchMonotonicNanoseconds()
        while state.sleep(milliseconds: 250) {
            let elapsed = Double(benchMonotonicNanoseconds() - start) / 1e9
            let claimed = counters.claimed.load(ordering: .relaxed)
            let errors = counters.errors.load(ordering: .relaxed)
            let rate = elapsed > 0 ? Double(claimed * commandsPerRequest) / elapsed : 0
            var text = "\r\u{1B}[2K  \(label): "
            switch stop {
            case .requests(let total), .requestsOrDuration(let total, _):
                let done = min(claimed, total)
                text += "\(done)/\(total) requests (\(done * 100 / max(total, 1))%)"
            case .duration(let duration):
                let total = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
                text += "\(TextFormat.fixed(min(elapsed, total), 1))/\(TextFormat.fixed(total, 1)) s, \(claimed) requests"
            }
            text += ", \(TextFormat.grouped(rate)) ops/s"
            if errors > 0 { text += ", \(errors) errors" }
            writeToTerminal(text)
        }
    }
}

/// The stop flag and thread handle of a ``ProgressLine``, with a condition variable so that stopping
/// wakes the drawing thread at once.
///
/// `@unchecked Sendable` is safe because `stopped` and `thread` are read and written only with `mutex`
/// held; the mutex and condition live at fixed addresses from `init` to `deinit`.
private final class ProgressThreadState: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var stopped = false
    private var thread: pthread_t?

    init() {
        mutex.initialize(to: pthread_mutex_t())
        condition.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func setThread(_ value: pthread_t) {
        pthread_mutex_lock(mutex)
        thread = value
        pthread_mutex_unlock(mutex)
    }

    /// Sets the stop flag, wakes the thread, and returns its handle (once).
    func requestStop() -> pthread_t? {
        pthread_mutex_lock(mutex)
        stopped = true
        let value = thread
        thread = nil
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
        return value
    }

    /// Waits `milliseconds` or until stopped; returns `false` once stopped.
    func sleep(milliseconds: Int) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        var deadline = now
        let nanoseconds = Int(now.tv_nsec) + milliseconds * 1_000_000
        deadline.tv_sec += nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !stopped {
            if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { break }
        }
        return !stopped
    }
}

/// Writes `text` to standard output at once, unbuffered (`write(2)`; the line is only drawn on a terminal,
/// where Swift's `print` is line-buffered and flushed by each newline, so the two do not interleave).
private func writeToTerminal(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(STDOUT_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}
