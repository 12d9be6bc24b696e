import Foundation
import HTTPSink
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import Testing

/// `scripts/webhook-receiver.py` on 127.0.0.1: a real HTTP server (Python's
/// ThreadingHTTPServer) that logs every request and can fail on purpose.
final class WebhookReceiver: @unchecked Sendable {
    struct Request {
        var status: Int
        var headers: [String: String]
        var body: String
        var event: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:] }
    }

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "../../scripts/webhook-receiver.py"
    ).standardized.path
    let port: Int
    let log = NSTemporaryDirectory() + "webhooks-\(UUID().uuidString.prefix(8)).ndjson"
    let options: [String]
    private var process: Process?
    var url: String { "http://127.0.0.1:\(port)/hooks" }

    init(_ options: [String] = []) throws {
        port = try TCPProxy.freePort()
        self.options = options
        FileManager.default.createFile(atPath: log, contents: nil)
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: log)
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Self.script, "--port", "\(port)", "--log", log] + options
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if TCPProxy.canConnect(port: port) { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw SinkError("the webhook receiver did not start on port \(port)")
    }

    /// SIGKILL (a Python started from a test thread would not see SIGTERM, which that thread blocks).
    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    var requests: [Request] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                return nil
            }
            return Request(
                status: object["status"] as? Int ?? 0, headers: object["headers"] as? [String: String] ?? [:],
                body: object["body"] as? String ?? "")
        }
    }
}

@Suite(
    "HTTP webhook sink", .serialized,
    .enabled(
        if: CLI.available && VersionIndependent.enabled,
        "needs OUTBOX_TEST_PG and a built binary; runs with the default PostgreSQL"),
    .timeLimit(.minutes(6)))
struct HTTPSinkTests {
    static func arguments(_ outbox: TestOutbox, _ receiver: WebhookReceiver, _ more: [String] = []) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "http", "--webhook-url", receiver.url, "--webhook-concurrency", "8",
        ] + more
    }

    static func deliveries(_ requests: [WebhookReceiver.Request]) -> [(id: String, key: String, seq: Int)] {
        requests.filter { $0.status == 200 }.map { request in
            let event = request.event
            let payload = event["payload"] as? [String: Any]
            return (event["id"] as? String ?? "", event["key"] as? String ?? "", payload?["seq"] as? Int ?? -1)
        }
    }

    @Test func eventsArePostedSignedWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver(["--delay-ms", "5"])
        let secretFile = NSTemporaryDirectory() + "webhook-secret-\(UUID().uuidString.prefix(8))"
        try "k3y-s3cret\n".write(toFile: secretFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: secretFile) }
        let cli = try CLI.start(
            Self.arguments(
                outbox, receiver,
                ["--webhook-secret-file", secretFile, "--webhook-header", "Authorization: Bearer t0ken-value"]))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let shaped = try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload, headers)
            VALUES ('order', 'o-1', 'OrderCreated', '{"total": 5}', '{"tenant": "t9"}') RETURNING id
            """
        ).values.map { $0[0]! }
        let writers = ContinuousWriters(
            conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 3, pauseMicroseconds: 5_000)
        try await Task.sleep(for: .seconds(3))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("k3y-s3cret") && !cli.stderr.contains("t0ken-value"), "secrets never reach a log")

        let requests = receiver.requests
        let created = try #require(requests.first { $0.event["id"] as? String == shaped[0] })
        #expect(created.event["topic"] as? String == "outbox.event.order")
        #expect(created.event["key"] as? String == "o-1")
        #expect((created.event["payload"] as? [String: Any])?["total"] as? Int == 5)
        #expect((created.event["headers"] as? [String: String])?["tenant"] == "t9")
        #expect(created.headers["Content-Type"] == "application/json")
        #expect(created.headers["Idempotency-Key"] == shaped[0])
        #expect(created.headers["Authorization"] == "Bearer t0ken-value")
        let expected =
            "sha256="
            + HMACSHA256.hex(HMACSHA256.signature(key: Array("k3y-s3cret".utf8), message: Array(created.body.utf8)))
        #expect(
            created.headers["X-Outbox-Signature-256"] == expected,
            "HMAC-SHA256 of the body, key without the file's newline")

        let check = DeliveryCheck(
            events: Self.deliveries(requests.filter { $0.event["topic"] as? String == "outbox.event.crash" }),
            written: written)
        print("HTTP sink, 3 writers, 8 concurrent requests: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// 503s (10%) and 429s (1%, Retry-After: 1) at random: retried, nothing lost, order per key kept.
    @Test func failingAnswersAreRetriedInOrder() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver(["--flaky", "0.1", "--throttle", "0.01"])
        let cli = try CLI.start(Self.arguments(outbox, receiver))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let writers = ContinuousWriters(
            conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 3, pauseMicroseconds: 5_000)
        try await Task.sleep(for: .seconds(3))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(cli.terminate() == 0)
        let requests = receiver.requests
        let check = DeliveryCheck(events: Self.deliveries(requests), written: written)
        let failed = requests.filter { $0.status != 200 }
        print("HTTP sink with 10% 503 and 1% 429: \(check); \(failed.count) failed answers retried")
        #expect(failed.count > 10)
        check.expectIntact(duplicates: false)
    }

    /// The endpoint down for 30 s under load (connections refused), then back on its port.
    @Test func endpointDownUnderLoadConfirmsNothingAndCatchesUp() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver()
        let sink = try HTTPSink(config: HTTPSinkConfig(url: receiver.url), logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, seconds: NATSSinkTests.outageSeconds, stop: receiver.stop, start: receiver.start)
        let check = DeliveryCheck(events: Self.deliveries(receiver.requests), written: written)
        print("HTTP endpoint down for \(NATSSinkTests.outageSeconds) s under load: \(check); retries: \(sink.retries)")
        check.expectIntact(duplicates: true)
    }

    /// The path to the endpoint goes silent for 60 s under load: requests time
    /// out and are retried, the relay keeps answering PostgreSQL, nothing after
    /// the cut is confirmed, nothing lost after.
    @Test func blackHoledEndpointNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: receiver.port)
        try proxy.start()
        defer { proxy.stop() }
        var config = HTTPSinkConfig(url: "http://127.0.0.1:\(proxy.port)/hooks")
        config.timeoutMilliseconds = 2_000
        let sink = try HTTPSink(config: config, logger: RunningRelay.logger)
        let report = try await destinationBlackHole(
            outbox, sink: sink, proxy: proxy, seconds: NATSSinkTests.blackHoleSeconds)
        let check = DeliveryCheck(events: Self.deliveries(receiver.requests), written: report.written)
        print("HTTP endpoint black-holed for \(NATSSinkTests.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// SIGTERM while the endpoint is black-holed (requests in flight that
    /// will never be answered): out within the shutdown timeout plus a second.
    @Test func sigtermWhileBlackHoledExitsInTime() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: receiver.port)
        try proxy.start()
        defer { proxy.stop() }
        let arguments = FaultTests.relayArguments(
            outbox,
            sink: [
                "--sink", "http", "--webhook-url", "http://127.0.0.1:\(proxy.port)/hooks", "--webhook-timeout-ms",
                "30000",
            ])
        let took = try await sigtermDuringBlackHole(outbox, arguments: arguments, proxy: proxy)
        print("HTTP endpoint black-holed, SIGTERM: out after \(String(format: "%.2f", took)) s")
    }

    @Test func sigkillLoopLosesNothing() async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver()
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let kills = 6
        let (written, last) = try await writers.sigkillLoop(
            Self.arguments(outbox, receiver), kills: kills, pauses: 300...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(last.terminate() == 0)
        let check = DeliveryCheck(events: Self.deliveries(receiver.requests), written: written)
        print("HTTP crash loop, \(kills) SIGKILLs: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
    }

    /// A 400 for one event: POSTed to the dead-letter URL with the reason, or the relay stops before confirming it.
    @Test(arguments: [true, false])
    func aRefusedEventGoesToTheDeadLetterURLOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let receiver = try WebhookReceiver(["--reject-key", "bad"])
        let dead = try WebhookReceiver()
        let cli = try CLI.start(Self.arguments(outbox, receiver, withDLQ ? ["--dlq-topic", dead.url] : []))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        try outbox.insert(aggregate: "order", key: "a")
        let refused = try outbox.insert(aggregate: "order", key: "bad")[0]
        try outbox.insert(aggregate: "order", key: "c")
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            #expect(cli.terminate() == 0)
            let letters = dead.requests
            #expect(letters.count == 1)
            #expect((letters.first?.event["event"] as? [String: Any])?["id"] as? String == refused)
            #expect((letters.first?.event["error"] as? String)?.contains("HTTP 400") == true)
            #expect(letters.first?.headers["X-Outbox-Dead-Letter"] == "true")
            #expect(
                Set(receiver.requests.filter { $0.status == 200 }.compactMap { $0.event["key"] as? String }) == [
                    "a", "c",
                ])
        } else {
            #expect(cli.wait() == 1)
            #expect(cli.stderr.contains("the HTTP endpoint refused event id=\(refused)"), "\(cli.stderr)")
            #expect(cli.stderr.contains("HTTP 400"))
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }
}
