import CEpoll
import Glibc
import OutboxCore

/// One descriptor for the relay's `poll(2)` that stands for several: an epoll
/// set of a wake-up pipe (results handed over by another thread, a connection
/// attempt finished) and, while a link is up, the transport's own socket.
///
/// The relay waits on `descriptor` with the PostgreSQL socket; whatever makes
/// one of the members ready makes it readable.
public final class Readiness {
    public let descriptor: Int32
    /// Signalled by other threads; cleared by the owner before it looks at what they handed over.
    public let wakeup = Wakeup()
    private var watched: (fd: Int32, writable: Bool)?

    public init() throws(SinkError) {
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw SinkError("epoll_create1: \(String(cString: strerror(errno)))") }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = wakeup.descriptor
        _ = epoll_ctl(descriptor, EPOLL_CTL_ADD, wakeup.descriptor, &event)
    }

    deinit { close(descriptor) }

    /// Watches `fd` for input (and output when `writable`); one transport descriptor at a time.
    public func watch(_ fd: Int32, writable: Bool) {
        if let watched, watched.fd == fd, watched.writable == writable { return }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd
        if let old = watched, old.fd != fd { unwatch(old.fd) }
        let operation = watched?.fd == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD
        _ = epoll_ctl(descriptor, operation, fd, &event)
        watched = (fd, writable)
    }

    /// Stops watching the transport's descriptor (before it is closed).
    public func unwatchAll() {
        if let watched { unwatch(watched.fd) }
    }

    private func unwatch(_ fd: Int32) {
        guard watched?.fd == fd else { return }
        _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, fd, nil)
        watched = nil
    }

    /// Waits until a member is ready or `deadline` passes (nil: only `timeoutMilliseconds`).
    public func wait(timeoutMilliseconds: Int32) {
        var fd = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        _ = Glibc.poll(&fd, 1, timeoutMilliseconds)
    }
}
