import Foundation
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import RabbitMQSink
import Testing

/// The RabbitMQ sink against a real RabbitMQ node (Debian's, started per test
/// on 127.0.0.1), read back with rabbitmq-c.
@Suite(
    "RabbitMQ sink", .serialized,
    .enabled(if: CLI.available && RabbitMQServer.available, "needs OUTBOX_TEST_PG, a built binary and rabbitmq-server"),
    .timeLimit(.minutes(6)))
struct RabbitMQSinkTests {
    static let exchange = "outbox"

    static func arguments(_ outbox: TestOutbox, url: String, _ more: [String] = []) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "rabbitmq", "--rabbitmq-url", url, "--rabbitmq-exchange", exchange,
            "--topic-template", "\(outbox.name).{aggregatetype}",
        ] + more
    }

    /// A topic exchange and a durable queue `events` bound to everything of this outbox.
    static func prepare(
        _ server: RabbitMQServer, _ outbox: TestOutbox, bindingKey: String? = nil
    ) throws -> RabbitMQClient {
        let client = try RabbitMQClient(url: server.url)
        try client.declareExchange(exchange)
        try client.declareQueue("events", boundTo: exchange, bindingKey: bindingKey ?? "\(outbox.name).#")
        return client
    }

    static func deliveries(_ messages: [RabbitMQClient.Message]) -> [(id: String, key: String, seq: Int)] {
        messages.map { ($0.messageID, $0.headers["key"] ?? "", $0.json()?["seq"] as? Int ?? -1) }
    }

    @Test func eventsBecomePersistentMessagesWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        let client = try Self.prepare(server, outbox)
        let url = "amqp://guest:guest@127.0.0.1:\(server.port)"
        let cli = try CLI.start(Self.arguments(outbox, url: url))
        try await cli.waitForStderr("msg=streaming", within: 20)

        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("guest:guest"), "credentials never reach a log")

        let messages = try client.messages("events")
        let created = try #require(messages.first { $0.messageID == shaped[0] })
        #expect(created.routingKey == "\(outbox.name).order")
        #expect(created.deliveryMode == 2, "persistent")
        #expect(created.json()?["total"] as? Int == 5)
        #expect(created.headers["id"] == shaped[0])
        #expect(created.headers["key"] == "o-1")
        #expect(created.headers["type"] == "OrderCreated")
        #expect(created.headers["tenant"] == "t9")
        #expect(LSN(string: created.headers["lsn"] ?? "") != nil)
        let tombstoneIndex = try #require(messages.firstIndex { $0.messageID == shaped[1] })
        #expect(messages[tombstoneIndex].body.isEmpty && messages[tombstoneIndex].headers["tombstone"] == "true")
        #expect(messages.firstIndex { $0.messageID == shaped[0] }! < tombstoneIndex)

        let check = DeliveryCheck(
            events: Self.deliveries(messages.filter { $0.routingKey.hasSuffix(".crash") }), written: written)
        print("RabbitMQ sink, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// The node stopped for 30 s under load, then started again on its port and
    /// data: nothing confirmed while it is away, not ready, nothing lost after.
    @Test func rabbitMQDownUnderLoadConfirmsNothingAndCatchesUp() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        _ = try Self.prepare(server, outbox)
        var config = RabbitMQSinkConfig(
            url: server.url, exchange: Self.exchange, routingKey: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try RabbitMQSink(config: config, logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", seconds: NATSSinkTests.outageSeconds,
            stop: server.stop, start: server.start)

        let messages = try RabbitMQClient(url: server.url).messages("events")
        let check = DeliveryCheck(events: Self.deliveries(messages), written: written)
        print("RabbitMQ stopped for \(NATSSinkTests.outageSeconds) s under load: \(check)")
        check.expectIntact(duplicates: true)
    }

    /// The path to the node goes silent for 60 s under load: the relay keeps
    /// answering PostgreSQL, nothing after the cut is confirmed, nothing lost after.
    @Test func blackHoledServerNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        _ = try Self.prepare(server, outbox)
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        var config = RabbitMQSinkConfig(
            url: "amqp://guest:guest@127.0.0.1:\(proxy.port)", exchange: Self.exchange,
            routingKey: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try RabbitMQSink(config: config, logger: RunningRelay.logger)
        let report = try await destinationBlackHole(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", proxy: proxy,
            seconds: NATSSinkTests.blackHoleSeconds)
        let check = DeliveryCheck(
            events: Self.deliveries(try RabbitMQClient(url: server.url).messages("events")), written: report.written)
        print("RabbitMQ black-holed for \(NATSSinkTests.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// SIGTERM while the node is black-holed: out within the shutdown timeout plus a second.
    @Test func sigtermWhileBlackHoledExitsInTime() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        _ = try Self.prepare(server, outbox)
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let took = try await sigtermDuringBlackHole(
            outbox, arguments: Self.arguments(outbox, url: "amqp://guest:guest@127.0.0.1:\(proxy.port)"), proxy: proxy)
        print("RabbitMQ black-holed, SIGTERM: out after \(String(format: "%.2f", took)) s")
    }

    /// SIGKILL in a loop under load: nothing lost; RabbitMQ has no duplicate
    /// window, so what was in flight at each kill can arrive twice (counted).
    @Test func sigkillLoopLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        let client = try Self.prepare(server, outbox)
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let kills = 6
        let (written, last) = try await writers.sigkillLoop(
            Self.arguments(outbox, url: server.url), kills: kills, pauses: 300...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(last.terminate() == 0)

        let check = DeliveryCheck(events: Self.deliveries(try client.messages("events")), written: written)
        print("RabbitMQ crash loop, \(kills) SIGKILLs: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
        #expect(check.duplicates <= kills * 500 * 2)
    }

    /// An unroutable event (no queue bound for its routing key): to the
    /// dead-letter routing key with the reason, or the relay stops before confirming it.
    @Test(arguments: [true, false])
    func anUnroutableEventGoesToTheDeadLetterRoutingKeyOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        let client = try Self.prepare(server, outbox, bindingKey: "\(outbox.name).covered")
        try client.declareQueue("dead", boundTo: Self.exchange, bindingKey: "\(outbox.name)-dlq")
        let cli = try CLI.start(
            Self.arguments(outbox, url: server.url, withDLQ ? ["--dlq-topic", "\(outbox.name)-dlq"] : []))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        try outbox.insert(aggregate: "covered", key: "a")
        let lost = try outbox.insert(aggregate: "uncovered", key: "b")[0]
        try outbox.insert(aggregate: "covered", key: "c")
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            #expect(cli.terminate() == 0)
            let dead = try client.messages("dead")
            #expect(dead.count == 1)
            #expect(dead.first?.messageID == lost)
            #expect(dead.first?.headers["dlq.original.routing.key"] == "\(outbox.name).uncovered")
            #expect(dead.first?.headers["dlq.error"]?.contains("unroutable") == true, "\(dead.first?.headers ?? [:])")
            #expect(try client.messages("events").map { $0.headers["key"] } == ["a", "c"])
        } else {
            #expect(cli.wait() == 1)
            #expect(cli.stderr.contains("RabbitMQ refused event id=\(lost)"), "\(cli.stderr)")
            #expect(cli.stderr.contains("no queue is bound to exchange"))
            #expect(
                cli.stderr.contains("for routing key \\\"\(outbox.name).uncovered\\\""), "logfmt escapes the quotes")
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }

    /// A queue at its length limit with reject-publish: the broker nacks; without a DLQ the relay stops unconfirmed.
    @Test func aNackedEventStopsTheRelayBeforeItIsConfirmed() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        let client = try RabbitMQClient(url: server.url)
        try client.declareExchange(Self.exchange)
        try client.declareQueue("small", boundTo: Self.exchange, bindingKey: "#", maxLength: 2)
        let cli = try CLI.start(Self.arguments(outbox, url: server.url))
        try await cli.waitForStderr("msg=streaming", within: 20)
        try outbox.insert(aggregate: "order", key: "a")
        try outbox.insert(aggregate: "order", key: "b")
        let third = try outbox.insert(aggregate: "order", key: "c")[0]
        #expect(cli.wait() == 1)
        #expect(cli.stderr.contains("RabbitMQ refused event id=\(third)"), "\(cli.stderr)")
        #expect(cli.stderr.contains("nacked"))
        #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
    }

    @Test func wrongCredentialsAndAMissingExchangeAreStartUpErrors() async throws {
        let outbox = try TestOutbox()
        let server = try RabbitMQServer()
        let wrong = try CLI.start(Self.arguments(outbox, url: "amqp://guest:not-the-password@127.0.0.1:\(server.port)"))
        #expect(wrong.wait() == 1)
        #expect(wrong.stderr.contains("403") || wrong.stderr.contains("credentials"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("not-the-password"))
        let emptyVhost = try CLI.start(Self.arguments(outbox, url: server.url + "/"))
        #expect(emptyVhost.wait() == 1)
        #expect(emptyVhost.stderr.contains("names the empty vhost"), "\(emptyVhost.stderr)")
        let missing = try CLI.start(Self.arguments(outbox, url: server.url))
        #expect(missing.wait() == 1)
        #expect(
            missing.stderr.contains("exchange \\\"outbox\\\"") || missing.stderr.contains("exchange \"outbox\""),
            "\(missing.stderr)")
        #expect(missing.stderr.contains("404"))
    }
}
