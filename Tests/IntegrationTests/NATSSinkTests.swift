import Foundation
import Logging
import NATSSink
import OutboxCore
import OutboxRelay
import PGOutput
import Testing

/// The NATS JetStream sink against a real nats-server (Debian's, started per
/// test on 127.0.0.1), read back with the C client.
@Suite(
    "NATS JetStream sink", .serialized,
    .enabled(if: CLI.available && NATSServer.available, "needs OUTBOX_TEST_PG, a built binary and nats-server"),
    .timeLimit(.minutes(6)))
struct NATSSinkTests {
    static let outageSeconds = Int(ProcessInfo.processInfo.environment["OUTBOX_BROKER_OUTAGE_SECONDS"] ?? "") ?? 30

    /// How long the black-hole tests keep the path silent (the issue asks for 60 s).
    static let blackHoleSeconds = Int(ProcessInfo.processInfo.environment["OUTBOX_BLACKHOLE_SECONDS"] ?? "") ?? 60

    static func arguments(
        _ outbox: TestOutbox, _ server: NATSServer, url: String? = nil, _ more: [String] = []
    ) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "nats", "--nats-url", url ?? server.url, "--topic-template", "\(outbox.name).{aggregatetype}",
        ] + more
    }

    static func deliveries(_ messages: [NATSClient.Message]) -> [(id: String, key: String, seq: Int)] {
        messages.map { ($0.headers["id"] ?? "", $0.headers["key"] ?? "", $0.json()?["seq"] as? Int ?? -1) }
    }

    @Test func eventsBecomeJetStreamMessagesWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        let client = try NATSClient(url: server.url)
        try client.addStream("OUTBOX", subjects: ["\(outbox.name).>"])
        // A password in the URL (this server has no auth, so it is ignored) must never be logged.
        let url = "nats://alice:s3cret-nats@127.0.0.1:\(server.port)"
        let cli = try CLI.start(Self.arguments(outbox, server, url: url))
        try await cli.waitForStderr("msg=streaming", within: 20)

        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("s3cret"), "the password never reaches a log")

        let messages = try client.messages("OUTBOX")
        let created = try #require(messages.first { $0.headers["id"] == shaped[0] })
        #expect(created.subject == "\(outbox.name).order")
        #expect(created.json()?["total"] as? Int == 5)
        #expect(created.headers["Nats-Msg-Id"] == shaped[0])
        #expect(created.headers["key"] == "o-1")
        #expect(created.headers["type"] == "OrderCreated")
        #expect(created.headers["tenant"] == "t9")
        #expect(LSN(string: created.headers["lsn"] ?? "") != nil)
        let tombstone = try #require(messages.first { $0.headers["id"] == shaped[1] })
        #expect(tombstone.body.isEmpty && tombstone.headers["tombstone"] == "true")
        #expect(tombstone.sequence > created.sequence)

        let check = DeliveryCheck(
            events: Self.deliveries(messages.filter { $0.subject.hasSuffix(".crash") }), written: written)
        print("NATS sink, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// The server stopped for 30 s under load, then started again on its port
    /// and store: nothing confirmed while it is away, not ready, nothing lost after.
    @Test func natsDownUnderLoadConfirmsNothingAndCatchesUp() async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        try NATSClient(url: server.url).addStream("OUTBOX", subjects: ["\(outbox.name).>"])
        var config = NATSSinkConfig(url: server.url, subject: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try NATSSink(config: config, logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", seconds: Self.outageSeconds,
            stop: server.stop, start: server.start)

        let check = DeliveryCheck(
            events: Self.deliveries(try NATSClient(url: server.url).messages("OUTBOX")), written: written)
        print(
            "NATS stopped for \(Self.outageSeconds) s under load: \(check); duplicates dropped by JetStream: \(sink.duplicates)"
        )
        check.expectIntact(duplicates: true)
    }

    /// The path to the server goes silent for 60 s under load (nothing
    /// forwarded or closed): the relay keeps answering PostgreSQL at its
    /// status interval, the session never ends, nothing after the cut is
    /// confirmed, and everything arrives in order once the path heals.
    @Test func blackHoledServerNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        try NATSClient(url: server.url).addStream("OUTBOX", subjects: ["\(outbox.name).>"])
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        var config = NATSSinkConfig(url: "nats://127.0.0.1:\(proxy.port)", subject: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try NATSSink(config: config, logger: RunningRelay.logger)
        let report = try await destinationBlackHole(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", proxy: proxy,
            seconds: Self.blackHoleSeconds)
        let check = DeliveryCheck(
            events: Self.deliveries(try NATSClient(url: server.url).messages("OUTBOX")), written: report.written)
        print("NATS black-holed for \(Self.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// SIGTERM while the server is black-holed: out within the shutdown timeout plus a second.
    @Test func sigtermWhileBlackHoledExitsInTime() async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        try NATSClient(url: server.url).addStream("OUTBOX", subjects: ["\(outbox.name).>"])
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let took = try await sigtermDuringBlackHole(
            outbox, arguments: Self.arguments(outbox, server, url: "nats://127.0.0.1:\(proxy.port)"), proxy: proxy)
        print("NATS black-holed, SIGTERM: out after \(String(format: "%.2f", took)) s")
    }

    /// SIGKILL in a loop under load. Inside JetStream's duplicate window
    /// (2 minutes by default) the redeliveries are dropped by `Nats-Msg-Id`;
    /// with a 100 ms window they reach the stream.
    @Test(arguments: [120_000, 100])
    func sigkillLoopLosesNothingAndTheDuplicateWindowDropsRedeliveries(windowMilliseconds: Int) async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        let client = try NATSClient(url: server.url)
        try client.addStream(
            "OUTBOX", subjects: ["\(outbox.name).>"], duplicateWindow: .milliseconds(windowMilliseconds))
        let arguments = Self.arguments(outbox, server)
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let kills = 8
        let (written, last) = try await writers.sigkillLoop(arguments, kills: kills, pauses: 300...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(last.terminate() == 0)

        let check = DeliveryCheck(events: Self.deliveries(try client.messages("OUTBOX")), written: written)
        print("NATS crash loop, \(kills) SIGKILLs, duplicate window \(windowMilliseconds) ms: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
        if windowMilliseconds >= 60_000 { #expect(check.duplicates == 0, "redeliveries inside the window are dropped") }
    }

    /// An event no stream covers: to the dead-letter subject with the reason, or the relay stops before confirming it.
    @Test(arguments: [true, false])
    func anEventNoStreamCoversGoesToTheDeadLetterSubjectOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let server = try NATSServer()
        let client = try NATSClient(url: server.url)
        try client.addStream("OUTBOX", subjects: ["\(outbox.name).covered"])
        try client.addStream("DLQ", subjects: ["\(outbox.name)-dlq"])
        let cli = try CLI.start(Self.arguments(outbox, server, withDLQ ? ["--dlq-topic", "\(outbox.name)-dlq"] : []))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        try outbox.insert(aggregate: "covered", key: "a")
        let lost = try outbox.insert(aggregate: "uncovered", key: "b")[0]
        try outbox.insert(aggregate: "covered", key: "c")
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            #expect(cli.terminate() == 0, "\(cli.stderr)")
            let dead = try client.messages("DLQ")
            #expect(dead.count == 1)
            #expect(dead.first?.headers["id"] == lost)
            #expect(dead.first?.headers["dlq.original.subject"] == "\(outbox.name).uncovered")
            #expect(dead.first?.headers["dlq.error"]?.contains("no JetStream stream covers subject") == true)
            #expect(try client.messages("OUTBOX").map { $0.headers["key"] } == ["a", "c"])
        } else {
            #expect(cli.wait() == 1, "\(cli.stderr)")
            #expect(cli.stderr.contains("NATS refused event id=\(lost)"), "\(cli.stderr)")
            #expect(cli.stderr.contains("no JetStream stream covers subject \(outbox.name).uncovered"))
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }

    @Test func aServerWithoutJetStreamIsAStartUpError() async throws {
        let outbox = try TestOutbox()
        let port = try TCPProxy.freePort()
        let plain = Process()
        plain.executableURL = URL(fileURLWithPath: NATSServer.binary)
        plain.arguments = ["-a", "127.0.0.1", "-p", "\(port)"]
        plain.standardError = FileHandle.nullDevice
        try plain.run()
        defer { plain.terminate() }
        try await Task.sleep(for: .milliseconds(500))
        let cli = try CLI.start([
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--sink", "nats", "--nats-url", "nats://127.0.0.1:\(port)",
        ])
        #expect(cli.wait() == 1)
        #expect(cli.stderr.contains("JetStream is not enabled"), "\(cli.stderr)")
    }
}
