#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A happens-before annotation that the Swift runtime omits, for ThreadSanitizer.
///
/// When a continuation is resumed before its task has suspended (a hand-off that wins the race with
/// `withUnsafeThrowingContinuation`'s suspension), the Swift 6.3 runtime takes its "already resumed"
/// path without the `_swift_tsan_acquire` that pairs with the resumer's `_swift_tsan_release(task)`.
/// TSan then reports a false race between the resumer's read of the continuation context and the
/// task's later reuse of that task-allocator memory. Acquiring on the task's address after the wait
/// records the ordering the runtime did establish with its atomics.
///
/// `__tsan_acquire` is looked up once with `dlsym`: it exists only in a process built with
/// `-sanitize=thread`, so everywhere else this is a nil check.
@usableFromInline
package enum ThreadSanitizerAnnotations {
    private typealias AcquireFunction = @convention(c) (UnsafeMutableRawPointer?) -> Void

    private static let acquireFunction: AcquireFunction? = {
        guard let process = dlopen(nil, RTLD_NOW), let symbol = dlsym(process, "__tsan_acquire") else { return nil }
        return unsafeBitCast(symbol, to: AcquireFunction.self)
    }()

    /// Tells TSan that whoever resumed the current task happened before what follows.
    @usableFromInline
    package static func acquireCurrentTask() {
        guard let acquire = acquireFunction else { return }
        withUnsafeCurrentTask { task in
            guard let task else { return }
            acquire(unsafeBitCast(task, to: UnsafeMutableRawPointer.self))
        }
    }
}
