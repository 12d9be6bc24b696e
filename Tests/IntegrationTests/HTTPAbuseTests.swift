import Foundation
import Synchronization
import Testing

/// The probes answer whatever other clients do: a slow-loris client and 50
/// idle connections hold nothing up, and SIGTERM never waits for a client.
@Suite(
    "HTTP endpoints under abuse", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(3)))
struct HTTPAbuseTests {
    /// A TCP connection to 127.0.0.1:`port`, or -1.
    static func connect(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = TCPProxy.loopback(port: port)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if ok != 0 {
            close(fd)
            return -1
        }
        return fd
    }

    /// One GET on a fresh connection: the status code and how long it took, in ms.
    static func probe(_ port: Int, _ path: String) -> (status: Int, milliseconds: Double) {
        let start = Date()
        let fd = connect(port)
        guard fd >= 0 else { return (0, 0) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            response += buffer[0..<n]
        }
        let line = String(decoding: response.prefix { $0 != 13 }, as: UTF8.self).split(separator: " ")
        return (line.count > 1 ? Int(line[1]) ?? 0 : 0, Date().timeIntervalSince(start) * 1000)
    }

    @Test func probesAnswerWithin100msWhateverOtherClientsDo() async throws {
        let outbox = try TestOutbox()
        let relay = try CLI.start([
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--message-prefix", outbox.name, "--http-address", "127.0.0.1:0",
        ])
        let base = try await OperationsTests.address(from: relay)
        let port = Int(base.split(separator: ":").last!)!
        try await relay.waitForStderr("msg=streaming")

        // 50 connections that send nothing, and a client sending one byte every 1.5 s.
        let idle = (0..<50).map { _ in Self.connect(port) }
        defer { idle.forEach { if $0 >= 0 { close($0) } } }
        #expect(idle.allSatisfy { $0 >= 0 })
        let loris = Self.connect(port)
        let stopLoris = Atomic<Bool>(false)
        let lorisThread = Thread {
            for byte in Array("GET /healthz HTTP/1.1\r\nHost: slow\r\n".utf8)
            where !stopLoris.load(ordering: .acquiring) {
                var b = byte
                _ = send(loris, &b, 1, Int32(MSG_NOSIGNAL))
                usleep(1_500_000)
            }
        }
        lorisThread.start()
        defer {
            stopLoris.store(true, ordering: .releasing)
            close(loris)
        }

        var latencies: [Double] = []
        for _ in 0..<30 {
            let (status, ms) = Self.probe(port, "/healthz")
            #expect(status == 200)
            latencies.append(ms)
            try await Task.sleep(for: .milliseconds(200))
        }
        let worst = latencies.max() ?? 0
        #expect(worst < 100, "slowest probe \(worst) ms")

        // SIGTERM with a slow client connected: the process exits within the shutdown timeout.
        let another = Self.connect(port)
        defer { if another >= 0 { close(another) } }
        _ = Array("GET /hea".utf8).withUnsafeBytes { send(another, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let signalled = Date()
        #expect(relay.terminate() == 0)
        let exit = Date().timeIntervalSince(signalled)
        #expect(exit < 10)
        print(
            "HTTP under abuse: 30 /healthz probes every 200 ms beside 50 idle connections and a slow-loris client: slowest \(String(format: "%.1f", worst)) ms, median \(String(format: "%.1f", latencies.sorted()[latencies.count / 2])) ms; SIGTERM with a slow client connected exited in \(String(format: "%.2f", exit)) s"
        )
    }
}
