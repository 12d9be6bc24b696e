import Glibc
import OutboxCore

/// A self-pipe another thread signals (a stop request) to end a `poll(2)` at once.
///
/// `@unchecked Sendable`: the descriptors are immutable; pipe reads and writes are thread-safe.
public final class Wakeup: @unchecked Sendable {
    /// Readable once signalled, until cleared.
    public let descriptor: Int32
    private let writeEnd: Int32

    public init() {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe: \(String(cString: strerror(errno)))")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        descriptor = fds[0]
        writeEnd = fds[1]
    }

    deinit {
        close(descriptor)
        close(writeEnd)
    }

    public func signal() {
        var one: UInt8 = 1
        _ = write(writeEnd, &one, 1)
    }

    public func clear() {
        var scratch = [UInt8](repeating: 0, count: 64)
        while scratch.withUnsafeMutableBytes({ read(descriptor, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// Waits up to `milliseconds`, returning early once `unless()` holds after a signal.
    public func wait(milliseconds: Int, unless: () -> Bool) {
        let deadline = Instant.now() + milliseconds
        while !unless() {
            let left = Instant.now().millisecondsRoundedUp(until: deadline)
            if left <= 0 { return }
            var fd = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            if poll(&fd, 1, left) > 0 { clear() }
        }
    }
}

extension Instant {
    /// Now on CLOCK_BOOTTIME: monotonic, and it keeps counting while the machine
    /// is suspended, so a freeze of any kind shows up as elapsed time. The one
    /// clock every deadline of the relay and its destinations is read from.
    public static func now() -> Instant {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Instant(nanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec))
    }
}

extension EventSink {
    /// `flush` for a sink whose `poll(timeoutMilliseconds:)` waits for its next
    /// answer: polls until `unsettled()` is false or the time is up, one wait
    /// per wake-up (no slices). For shutdown, and before a reconnect to PostgreSQL.
    public func pollUntilSettled(timeoutMilliseconds: Int, unsettled: () -> Bool) throws -> [Acknowledgement] {
        let deadline = Instant.now() + timeoutMilliseconds
        var acknowledged: [Acknowledgement] = []
        repeat {
            acknowledged += try poll(timeoutMilliseconds: Int(Instant.now().millisecondsRoundedUp(until: deadline)))
        } while unsettled() && Instant.now() < deadline
        return acknowledged
    }
}
