import AMQP1Sink
import Foundation
import OutboxCore
import PGOutput
import Testing

/// The AMQP 1.0 sink against a real broker: Debian's RabbitMQ 3.10 with its
/// AMQP 1.0 plugin (`rabbitmq_amqp1_0`), started per test on 127.0.0.1, read
/// back over AMQP 0-9-1 with rabbitmq-c from a queue bound to the exchange.
/// RabbitMQ 3.x keeps an AMQP 1.0 message's sections encoded (the body holds
/// the data section, `x-amqp-1.0-*` headers the others): `AMQP1Read` decodes
/// the part of the AMQP 1.0 type system the relay sends.
@Suite(
    "AMQP 1.0 sink", .serialized,
    .enabled(
        if: CLI.available && RabbitMQServer.available, "needs OUTBOX_TEST_PG, a built binary and rabbitmq-server"),
    .timeLimit(.minutes(6)))
struct AMQP1SinkTests {
    static func arguments(_ outbox: TestOutbox, url: String, _ more: [String] = []) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "amqp1", "--amqp1-url", url, "--amqp1-address", "/exchange/outbox",
            "--topic-template", "\(outbox.name).{aggregatetype}",
        ] + more
    }

    static func broker() throws -> (RabbitMQServer, RabbitMQClient) {
        let server = try RabbitMQServer(plugins: ["rabbitmq_amqp1_0"])
        let client = try RabbitMQClient(url: server.url)
        try client.declareExchange("outbox")
        try client.declareQueue("events", boundTo: "outbox")
        return (server, client)
    }

    static func deliveries(
        _ messages: [RabbitMQClient.Message], routingKey: String
    ) -> [(
        id: String, key: String, seq: Int
    )] {
        messages.filter { $0.routingKey == routingKey }.map { message in
            let payload = AMQP1Read.payload(message.body)
            let seq = (try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any])?["seq"] as? Int
            return (message.messageID, AMQP1Read.applicationProperties(message)["key"] ?? "", seq ?? -1)
        }
    }

    @Test func eventsBecomeMessagesWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let (server, client) = try Self.broker()
        let cli = try CLI.start(Self.arguments(outbox, url: server.url))
        try await cli.waitForStderr("msg=streaming", within: 30)
        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("guest:guest"), "the password never reaches a log")

        let messages = try client.messages("events")
        let orders = messages.filter { $0.routingKey == "\(outbox.name).order" }
        #expect(orders.count == 2)
        let created = try #require(orders.first)
        #expect(created.messageID == shaped[0])
        #expect(created.deliveryMode == 2, "durable")
        let properties = AMQP1Read.applicationProperties(created)
        #expect(properties["key"] == "o-1" && properties["type"] == "OrderCreated" && properties["tenant"] == "t9")
        #expect(LSN(string: properties["lsn"] ?? "") != nil)
        #expect(String(decoding: AMQP1Read.payload(created.body), as: UTF8.self) == #"{"total": 5}"#)
        let header = created.rawHeaders["x-amqp-1.0-properties"] ?? []
        #expect(
            AMQP1Read.contains(header, "o-1") && AMQP1Read.contains(header, "application/json"),
            "group-id, content type")
        let tombstone = try #require(orders.last)
        #expect(tombstone.messageID == shaped[1] && AMQP1Read.payload(tombstone.body).isEmpty)
        #expect(AMQP1Read.applicationProperties(tombstone)["tombstone"] == "true")

        let check = DeliveryCheck(
            events: Self.deliveries(messages, routingKey: "\(outbox.name).crash"), written: written)
        print("AMQP 1.0 sink, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// The broker stopped for 10 s under load and started again: nothing confirmed meanwhile, nothing lost.
    @Test func brokerStoppedUnderLoadConfirmsNothingAndLosesNothing() async throws {
        let outbox = try TestOutbox()
        let (server, _) = try Self.broker()
        let endpoint = try AMQP1Endpoint.parse(server.url).get()
        var config = AMQP1SinkConfig(
            endpoint: endpoint, address: "/exchange/outbox", subject: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try AMQP1Sink(config: config, logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", seconds: 10, stop: server.stop,
            start: server.start)
        let messages = try RabbitMQClient(url: server.url).messages("events")
        let check = DeliveryCheck(
            events: Self.deliveries(messages, routingKey: "\(outbox.name).crash"), written: written)
        print("AMQP 1.0 broker stopped for 10 s under load: \(check)")
        check.expectIntact(duplicates: true)
    }

    /// The path to the broker goes silent under load: the relay keeps answering
    /// PostgreSQL, nothing after the cut is confirmed, nothing lost after.
    @Test func blackHoledBrokerNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let (server, client) = try Self.broker()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let endpoint = try AMQP1Endpoint.parse("amqp://guest:guest@127.0.0.1:\(proxy.port)").get()
        var config = AMQP1SinkConfig(
            endpoint: endpoint, address: "/exchange/outbox", subject: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let report = try await destinationBlackHole(
            outbox, sink: try AMQP1Sink(config: config, logger: RunningRelay.logger),
            topicTemplate: "\(outbox.name).{aggregatetype}", proxy: proxy, seconds: NATSSinkTests.blackHoleSeconds)
        let check = DeliveryCheck(
            events: Self.deliveries(try client.messages("events"), routingKey: "\(outbox.name).crash"),
            written: report.written)
        print("AMQP 1.0 black-holed for \(NATSSinkTests.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// A queue at its `x-max-length` with `reject-publish`: RabbitMQ 3.10's
    /// AMQP 1.0 plugin answers the nack by closing the connection (no `rejected`
    /// outcome). The relay reconnects and sends the event again until the queue
    /// has room: nothing past it is confirmed meanwhile, and nothing is lost.
    @Test func aFullQueueHoldsTheEventUntilItHasRoom() async throws {
        let outbox = try TestOutbox()
        let (server, client) = try Self.broker()
        try client.declareQueue("full", boundTo: "outbox", bindingKey: "\(outbox.name).full", maxLength: 1)
        let cli = try CLI.start(Self.arguments(outbox, url: server.url))
        defer { _ = cli.terminate() }
        try await cli.waitForStderr("msg=streaming", within: 30)
        let first = try outbox.insert(aggregate: "full", key: "a")[0]
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        let held = try outbox.insert(aggregate: "full", key: "b")[0]
        let end = try outbox.currentWAL
        try await Task.sleep(for: .seconds(4))
        #expect(try outbox.confirmedFlush < end, "the held event is not confirmed while the queue is full")
        #expect(cli.process.isRunning)
        #expect(try client.messages("full").map(\.messageID) == [first])  // room again
        try await outbox.waitUntilConfirmed(end, within: 60)
        #expect(try client.messages("full").map(\.messageID) == [held])
    }

    @Test func sigkillLoopLosesNothing() async throws {
        let outbox = try TestOutbox()
        let (server, client) = try Self.broker()
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let (written, last) = try await writers.sigkillLoop(
            Self.arguments(outbox, url: server.url), kills: 6, pauses: 500...1_200)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL, within: 60)
        #expect(last.terminate() == 0)
        let check = DeliveryCheck(
            events: Self.deliveries(try client.messages("events"), routingKey: "\(outbox.name).crash"),
            written: written)
        print("AMQP 1.0 crash loop, 6 SIGKILLs: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
    }

    /// A target address the broker does not have: a start-up error naming it, exit 1.
    @Test func aMissingAddressOrWrongPasswordIsAStartUpError() async throws {
        let outbox = try TestOutbox()
        let (server, _) = try Self.broker()
        let missing = try CLI.start(
            Self.arguments(outbox, url: server.url).map { $0 == "/exchange/outbox" ? "/exchange/no-such-exchange" : $0 }
        )
        #expect(await MistakeTests.exitCode(missing) == 1)
        #expect(
            missing.stderr.contains("not-found") || missing.stderr.contains("no-such-exchange"), "\(missing.stderr)")
        let wrong = try CLI.start(
            Self.arguments(outbox, url: "amqp://guest:wrong-s3cret@127.0.0.1:\(server.port)"))
        #expect(await MistakeTests.exitCode(wrong) == 1)
        #expect(!wrong.stderr.contains("wrong-s3cret"), "\(wrong.stderr)")
    }
}

/// The few AMQP 1.0 encodings the relay's messages use (AMQP 1.0 part 1, types).
enum AMQP1Read {
    /// The value of a data (0x75) or amqp-value (0x77) section holding binary.
    static func payload(_ body: [UInt8]) -> [UInt8] {
        guard body.count >= 3, body[0] == 0, body[1] == 0x53, body[2] == 0x75 || body[2] == 0x77 else { return body }
        return value(body, at: 3)?.bytes ?? []
    }

    /// Application properties (section 0x74) as strings.
    static func applicationProperties(_ message: RabbitMQClient.Message) -> [String: String] {
        let raw = message.rawHeaders["x-amqp-1.0-app-properties"] ?? []
        guard raw.count > 4, raw[0] == 0, raw[1] == 0x53, raw[2] == 0x74 else { return [:] }
        var at = 3
        let code = raw[at]
        guard code == 0xc1 || code == 0xd1 else { return [:] }
        let wide = code == 0xd1
        at += 1 + (wide ? 8 : 2)
        var out: [String: String] = [:]
        while let key = value(raw, at: at), let item = value(raw, at: key.end) {
            out[String(decoding: key.bytes, as: UTF8.self)] = String(decoding: item.bytes, as: UTF8.self)
            at = item.end
        }
        return out
    }

    /// A str8/str32/vbin8/vbin32 value at `at`: its bytes and where the next value starts.
    static func value(_ data: [UInt8], at: Int) -> (bytes: [UInt8], end: Int)? {
        guard at < data.count else { return nil }
        switch data[at] {
        case 0xa0, 0xa1, 0xa3:
            guard at + 1 < data.count else { return nil }
            let length = Int(data[at + 1])
            guard at + 2 + length <= data.count else { return nil }
            return (Array(data[(at + 2)..<(at + 2 + length)]), at + 2 + length)
        case 0xb0, 0xb1, 0xb3:
            guard at + 4 < data.count else { return nil }
            let length = data[(at + 1)...(at + 4)].reduce(0) { $0 << 8 | Int($1) }
            guard at + 5 + length <= data.count else { return nil }
            return (Array(data[(at + 5)..<(at + 5 + length)]), at + 5 + length)
        default:
            return nil
        }
    }

    static func contains(_ data: [UInt8], _ text: String) -> Bool {
        let needle = Array(text.utf8)
        return data.count >= needle.count
            && (0...(data.count - needle.count)).contains { Array(data[$0..<($0 + needle.count)]) == needle }
    }
}
