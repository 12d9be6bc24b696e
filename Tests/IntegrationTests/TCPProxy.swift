import Foundation
import Synchronization

/// A loopback TCP proxy in front of a broker, to take the broker off the
/// network and bring it back: `stop()` resets every connection and closes the
/// port (new connections are refused), `start()` listens on the same port again.
///
/// tansu keeps its records and idempotent-producer state only in memory, so a
/// real process restart would also wipe the broker — a data loss no Kafka
/// broker with a durable log has. Restarting the broker's network edge instead
/// gives clients exactly what they see of a restarted broker: reset
/// connections, refused connects for the outage, then a fresh connection to a
/// broker that still has its log. The broker advertises the proxy's address,
/// so every client connection (bootstrap and partition leader) goes through it.
final class TCPProxy: @unchecked Sendable {
    // @unchecked Sendable: the descriptors are behind `state`'s lock; threads only copy them out.
    let port: Int
    let targetPort: Int
    private let state = Mutex<(listener: Int32, connections: Set<Int32>, generation: Int)>((-1, [], 0))
    private let paused = Atomic<Bool>(false)

    /// A silent cut: nothing is forwarded any more in either direction, nothing
    /// is closed or reset, and new connections are left unanswered (as when a
    /// firewall starts dropping packets or a NAT entry expires).
    func pause() { paused.store(true, ordering: .releasing) }

    /// The path heals: forwarding resumes where it stopped.
    func resume() { paused.store(false, ordering: .releasing) }

    private func waitWhilePaused() {
        while paused.load(ordering: .acquiring) { usleep(20_000) }
    }

    /// Forwards `127.0.0.1:port` to `127.0.0.1:targetPort` once started.
    init(port: Int, targetPort: Int) {
        self.port = port
        self.targetPort = targetPort
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = Self.loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Whether something accepts connections on 127.0.0.1:`port`.
    static func canConnect(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = Self.loopback(port: port)
        return withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        } == 0
    }

    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return address
    }

    /// Listens on `port` and forwards each connection to `targetPort`.
    func start() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: port)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ShellError(message: "proxy cannot listen on 127.0.0.1:\(port): \(reason)")
        }
        let generation = state.withLock { s -> Int in
            s.listener = fd
            s.generation += 1
            return s.generation
        }
        Thread { [self] in acceptLoop(listener: fd, generation: generation) }.start()
    }

    /// Closes the port and resets every open connection.
    func stop() {
        let (listener, connections) = state.withLock { s -> (Int32, Set<Int32>) in
            defer {
                s.listener = -1
                s.connections = []
                s.generation += 1
            }
            return (s.listener, s.connections)
        }
        if listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
        for fd in connections {
            // SO_LINGER 0: close sends a reset, as a crashed broker's kernel does.
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    private func acceptLoop(listener: Int32, generation: Int) {
        defer { close(listener) }
        while state.withLock({ $0.generation == generation }) {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 100) > 0 else { continue }
            waitWhilePaused()
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var target = Self.loopback(port: targetPort)
            let connected = withUnsafeMutablePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            let registered =
                connected == 0
                && state.withLock { s -> Bool in
                    guard s.generation == generation else { return false }
                    s.connections.formUnion([client, upstream])
                    return true
                }
            guard registered else {
                close(client)
                close(upstream)
                continue
            }
            // A proxy must not add delays of its own: without TCP_NODELAY, Nagle
            // holds the second small write of an answer (headers, then body) until
            // the client's delayed ACK, 40 ms later, on every request.
            for fd in [client, upstream] {
                var one: Int32 = 1
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            // Two pumps; the second to finish closes both sockets.
            let finished = Atomic<Int>(0)
            for (from, to) in [(client, upstream), (upstream, client)] {
                Thread { [self] in
                    pump(from: from, to: to)
                    if finished.add(1, ordering: .acquiringAndReleasing).newValue == 2 {
                        state.withLock { $0.connections.subtract([client, upstream]) }
                        close(client)
                        close(upstream)
                    }
                }.start()
            }
        }
    }

    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            waitWhilePaused()
            let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            waitWhilePaused()
            guard n > 0 else { break }
            var sent = 0
            while sent < n {
                let m = buffer[sent..<n].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard m > 0 else { break }
                sent += m
            }
            guard sent == n else { break }
        }
        shutdown(from, Int32(SHUT_RDWR))
        shutdown(to, Int32(SHUT_RDWR))
    }
}
