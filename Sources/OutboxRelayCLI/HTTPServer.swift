import Foundation
import Glibc
import Synchronization

/// A small HTTP/1.1 server for the health probes and `/metrics`: GET and HEAD,
/// one request per connection (`Connection: close`), on a thread of its own.
///
/// Deliberately minimal: three read-only endpoints scraped every few seconds
/// do not justify an event-loop framework in a sidecar. Requests are bounded
/// (8 KiB of headers, a 2-second read timeout), so a slow or hostile client
/// cannot hold the probes up for long or grow memory.
final class HTTPServer: @unchecked Sendable {
    // @unchecked Sendable: `listener` is immutable; `running` is atomic; the handler is Sendable.
    struct Response: Sendable {
        var status: Int
        var contentType = "text/plain; charset=utf-8"
        var body: String
    }

    let address: String
    let port: Int
    private let listener: Int32
    private let handler: @Sendable (String) -> Response
    private let running = Atomic<Bool>(true)
    private let finished = DispatchSemaphore(value: 0)

    /// Binds `host:port` (port 0 picks a free one; `port` says which).
    init(host: String, port: Int, handler: @escaping @Sendable (_ path: String) -> Response) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &info) == 0, let first = info else {
            throw ServerError("cannot resolve --http-address host \"\(host)\"")
        }
        defer { freeaddrinfo(info) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { throw ServerError("socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ServerError("cannot listen on \(host):\(port): \(reason)")
        }
        guard listen(fd, 64) == 0 else {
            close(fd)
            throw ServerError("listen: \(String(cString: strerror(errno)))")
        }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        let boundPort = withUnsafePointer(to: &bound) { pointer -> Int in
            pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
        self.listener = fd
        self.port = boundPort
        self.address = "\(host):\(boundPort)"
        self.handler = handler
    }

    struct ServerError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Serves on a new thread until `stop()`.
    func start() {
        Thread { [self] in
            while running.load(ordering: .acquiring) {
                var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&descriptor, 1, 100) > 0 else { continue }
                let client = accept(listener, nil, nil)
                guard client >= 0 else { continue }
                serve(client)
                close(client)
            }
            close(listener)
            finished.signal()
        }.start()
    }

    /// Stops accepting and waits for the serving thread.
    func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        finished.wait()
    }

    private func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.count < 8192 {
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            request.append(contentsOf: buffer[0..<n])
            if request.count >= 4, request.suffix(4).elementsEqual([13, 10, 13, 10]) || containsBlankLine(request) { break }
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self).split(separator: " ")
        var response: Response
        var head = false
        if line.count < 2 || !String(line.last ?? "").hasPrefix("HTTP/1") {
            response = Response(status: 400, body: "bad request\n")
        } else if line[0] != "GET" && line[0] != "HEAD" {
            response = Response(status: 405, body: "only GET and HEAD\n")
        } else {
            head = line[0] == "HEAD"
            let path = String(line[1].split(separator: "?", maxSplits: 1).first ?? "")
            response = handler(path)
        }
        let body = Array(response.body.utf8)
        var out = "HTTP/1.1 \(response.status) \(Self.reason(response.status))\r\n"
        out += "Content-Type: \(response.contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n"
        if response.status == 405 { out += "Allow: GET, HEAD\r\n" }
        out += "\r\n"
        var bytes = Array(out.utf8)
        if !head { bytes += body }
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            sent += n
        }
    }

    private func containsBlankLine(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 4 else { return false }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 { return true }
        return false
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }
}
