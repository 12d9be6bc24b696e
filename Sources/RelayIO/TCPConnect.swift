import Glibc
import OutboxCore

/// A TCP connection opened with a deadline: a black-holed address costs the
/// timeout, not the kernel's two minutes of SYN retries. Non-blocking,
/// close-on-exec, `TCP_NODELAY` and keepalive on. For connector threads.
public enum TCPConnect {
    /// The connected descriptor, or why there is none (for the log; no secrets in it).
    public static func open(host: String, port: Int, timeoutMilliseconds: Int) -> Result<Int32, TCPConnectFailure> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let first = list else {
            return .failure(
                TCPConnectFailure(description: "cannot resolve \(host): \(String(cString: gai_strerror(resolved)))"))
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        let deadline = Instant.now() + timeoutMilliseconds
        while let address = candidate {
            candidate = address.pointee.ai_next
            let fd = socket(
                address.pointee.ai_family,
                Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if Glibc.poll(&p, 1, Instant.now().millisecondsRoundedUp(until: deadline)) == 1 {
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                    if error == 0 { return .success(fd) }
                    lastError = String(cString: strerror(error))
                } else {
                    lastError = "connect timed out after \(timeoutMilliseconds) ms"
                }
            } else {
                lastError = String(cString: strerror(errno))
            }
            close(fd)
        }
        return .failure(TCPConnectFailure(description: "cannot connect to \(host):\(port): \(lastError)"))
    }
}

public struct TCPConnectFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
}
