import Glibc

/// Bindings for `<sys/epoll.h>` and `<sys/eventfd.h>`.
///
/// Swift's `Glibc` module does not include those two headers, and this target may not have a C
/// companion, so the four functions are looked up once with `dlsym` in the C library the process
/// already links and called through `@convention(c)` function pointers (the C calling convention,
/// not a guess at Swift's). The constants and the `struct epoll_event` layout are the Linux ABI, which
/// is stable: on x86_64 the struct is packed (12 bytes, `data` at offset 4), elsewhere it is 16 bytes
/// with `data` at offset 8.
enum EpollSys {
    typealias CreateFunction = @convention(c) (Int32) -> Int32
    typealias ControlFunction = @convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32
    typealias WaitFunction = @convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32
    typealias EventFDFunction = @convention(c) (UInt32, Int32) -> Int32

    static let create: CreateFunction = symbol("epoll_create1")
    static let control: ControlFunction = symbol("epoll_ctl")
    static let wait: WaitFunction = symbol("epoll_wait")
    static let eventfd: EventFDFunction = symbol("eventfd")

    // Event bits.
    static let readable: UInt32 = 0x001  // EPOLLIN
    static let priority: UInt32 = 0x002  // EPOLLPRI
    static let writable: UInt32 = 0x004  // EPOLLOUT
    static let error: UInt32 = 0x008  // EPOLLERR
    static let hangUp: UInt32 = 0x010  // EPOLLHUP
    static let readHangUp: UInt32 = 0x2000  // EPOLLRDHUP
    static let oneShot: UInt32 = 1 << 30  // EPOLLONESHOT
    static let edgeTriggered: UInt32 = 1 << 31  // EPOLLET

    // epoll_ctl operations.
    static let add: Int32 = 1  // EPOLL_CTL_ADD
    static let delete: Int32 = 2  // EPOLL_CTL_DEL
    static let modify: Int32 = 3  // EPOLL_CTL_MOD

    /// EPOLL_CLOEXEC and EFD_CLOEXEC, both O_CLOEXEC.
    static let closeOnExec: Int32 = 0o2_000_000
    /// EFD_NONBLOCK, which is O_NONBLOCK.
    static let nonBlocking: Int32 = 0o4000

    #if arch(x86_64)
    static let eventSize = 12
    static let dataOffset = 4
    #else
    static let eventSize = 16
    static let dataOffset = 8
    #endif

    /// Writes one `struct epoll_event` at `pointer`.
    @inline(__always)
    static func storeEvent(_ events: UInt32, data: UInt64, at pointer: UnsafeMutableRawPointer) {
        pointer.storeBytes(of: events, as: UInt32.self)
        pointer.storeBytes(of: data, toByteOffset: dataOffset, as: UInt64.self)
    }

    /// Reads the `events` and `data` fields of the `index`-th `struct epoll_event` of an array.
    @inline(__always)
    static func loadEvent(at index: Int, in buffer: UnsafeMutableRawPointer) -> (events: UInt32, data: UInt64) {
        let base = buffer + index * eventSize
        return (base.loadUnaligned(as: UInt32.self), base.loadUnaligned(fromByteOffset: dataOffset, as: UInt64.self))
    }

    /// `epoll_ctl` with an event built on the stack.
    @inline(__always)
    static func control(_ epollFD: Int32, _ operation: Int32, _ fd: Int32, events: UInt32, data: UInt64) -> Int32 {
        var storage: (UInt64, UInt64) = (0, 0)
        return withUnsafeMutableBytes(of: &storage) { raw in
            storeEvent(events, data: data, at: raw.baseAddress!)
            return control(epollFD, operation, fd, raw.baseAddress!)
        }
    }

    private static func symbol<T>(_ name: String) -> T {
        // A null handle is RTLD_DEFAULT: the global symbol scope, which holds the C library.
        guard let address = dlsym(nil, name) else {
            fatalError("ConnPoolIO: the C library has no \(name) (this reactor needs Linux epoll)")
        }
        return unsafeBitCast(address, to: T.self)
    }
}
