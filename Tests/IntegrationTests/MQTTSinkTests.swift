import Foundation
import MQTTSink
import OutboxCore
import PGOutput
import Testing

/// The MQTT 5 sink against a real mosquitto (Debian's, started per test on
/// 127.0.0.1), read back with mosquitto_sub.
@Suite(
    "MQTT sink", .serialized,
    .enabled(if: CLI.available && MosquittoServer.available, "needs OUTBOX_TEST_PG, a built binary and mosquitto"),
    .timeLimit(.minutes(6)))
struct MQTTSinkTests {
    static let outageSeconds = Int(ProcessInfo.processInfo.environment["OUTBOX_BROKER_OUTAGE_SECONDS"] ?? "") ?? 30

    static func arguments(_ outbox: TestOutbox, url: String, _ more: [String] = []) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "mqtt", "--mqtt-url", url, "--topic-template", "\(outbox.name).{aggregatetype}",
        ] + more
    }

    static func sink(port: Int, _ outbox: TestOutbox) throws -> MQTTSink {
        let endpoint = try MQTTEndpoint.parse("mqtt://127.0.0.1:\(port)").get()
        var config = MQTTSinkConfig(
            endpoint: endpoint, topic: try DestinationTemplate("{topic}"), clientID: outbox.name)
        config.acknowledgementTimeoutMilliseconds = 2_000
        return try MQTTSink(config: config, logger: RunningRelay.logger)
    }

    @Test func eventsBecomeMessagesWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer(users: ["relay": "s3cret-mqtt"])
        let received = try server.subscribe("#", user: ("relay", "s3cret-mqtt"))
        let cli = try CLI.start(Self.arguments(outbox, url: "mqtt://relay:s3cret-mqtt@127.0.0.1:\(server.port)"))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        try await Task.sleep(for: .milliseconds(300))
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("s3cret"), "the password never reaches a log")

        let orders = try MosquittoServer.messages(received).filter { $0.topic == "\(outbox.name).order" }
        #expect(orders.count == 2)
        let created = try #require(orders.first)
        #expect(created.property("id") == shaped[0])
        #expect(created.json()?["total"] as? Int == 5)
        #expect(created.property("key") == "o-1")
        #expect(created.property("type") == "OrderCreated")
        #expect(created.property("tenant") == "t9")
        #expect(LSN(string: created.property("lsn") ?? "") != nil)
        #expect(created.contentType == "application/json")
        let tombstone = try #require(orders.last)
        #expect(tombstone.property("id") == shaped[1])
        #expect(tombstone.payload == "" && tombstone.property("tombstone") == "true")

        let check = DeliveryCheck(
            events: try MosquittoServer.deliveries(received, topic: "\(outbox.name).crash"), written: written)
        print("MQTT sink, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// The path to the broker refused (every connection reset, connects refused)
    /// for 30 s under load: not ready, nothing confirmed while it is away, nothing lost after.
    @Test func brokerUnreachableUnderLoadConfirmsNothingAndLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer()
        let received = try server.subscribe("#")
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let written = try await destinationOutage(
            outbox, sink: try Self.sink(port: proxy.port, outbox), topicTemplate: "\(outbox.name).{aggregatetype}",
            seconds: Self.outageSeconds, stop: proxy.stop, start: proxy.start)
        try await Task.sleep(for: .milliseconds(500))
        let check = DeliveryCheck(
            events: try MosquittoServer.deliveries(received, topic: "\(outbox.name).crash"), written: written)
        print("MQTT broker unreachable for \(Self.outageSeconds) s under load: \(check)")
        check.expectIntact(duplicates: true)
    }

    /// The path to the broker goes silent under load: the relay keeps answering
    /// PostgreSQL, nothing after the cut is confirmed, nothing lost after.
    @Test func blackHoledBrokerNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer()
        let received = try server.subscribe("#")
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let report = try await destinationBlackHole(
            outbox, sink: try Self.sink(port: proxy.port, outbox), topicTemplate: "\(outbox.name).{aggregatetype}",
            proxy: proxy, seconds: NATSSinkTests.blackHoleSeconds)
        try await Task.sleep(for: .milliseconds(500))
        let check = DeliveryCheck(
            events: try MosquittoServer.deliveries(received, topic: "\(outbox.name).crash"), written: report.written)
        print("MQTT black-holed for \(NATSSinkTests.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// SIGTERM while the broker is black-holed: out within the shutdown timeout plus a second.
    @Test func sigtermWhileBlackHoledExitsInTime() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let took = try await sigtermDuringBlackHole(
            outbox, arguments: Self.arguments(outbox, url: "mqtt://127.0.0.1:\(proxy.port)"), proxy: proxy)
        print("MQTT black-holed, SIGTERM: out after \(String(format: "%.2f", took)) s")
    }

    @Test func sigkillLoopLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer()
        let received = try server.subscribe("#")
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let kills = 8
        let (written, last) = try await writers.sigkillLoop(
            Self.arguments(outbox, url: "mqtt://127.0.0.1:\(server.port)"), kills: kills, pauses: 300...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        try await Task.sleep(for: .milliseconds(500))
        #expect(last.terminate() == 0)
        let check = DeliveryCheck(
            events: try MosquittoServer.deliveries(received, topic: "\(outbox.name).crash"), written: written)
        print("MQTT crash loop, \(kills) SIGKILLs: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
    }

    /// A topic the broker's ACL denies: PUBACK "Not authorized" (0x87). To the
    /// dead-letter topic with the reason, or the relay stops before confirming it.
    @Test(arguments: [true, false])
    func anEventTheBrokerRefusesGoesToTheDeadLetterTopicOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let acl = NSTemporaryDirectory() + "acl-\(outbox.name)"
        try "topic readwrite \(outbox.name).free\ntopic readwrite \(outbox.name)-dlq\n".write(
            toFile: acl, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: acl) }
        let server = try MosquittoServer(["acl_file \(acl)"])
        let received = try server.subscribe("#")
        let cli = try CLI.start(
            Self.arguments(
                outbox, url: "mqtt://127.0.0.1:\(server.port)", withDLQ ? ["--dlq-topic", "\(outbox.name)-dlq"] : []))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        try outbox.insert(aggregate: "free", key: "a")
        let refused = try outbox.insert(aggregate: "taken", key: "b")[0]
        try outbox.insert(aggregate: "free", key: "c")
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            try await Task.sleep(for: .milliseconds(300))
            #expect(cli.terminate() == 0)
            let messages = try MosquittoServer.messages(received)
            let dead = messages.filter { $0.topic == "\(outbox.name)-dlq" }
            #expect(dead.count == 1)
            #expect(dead.first?.property("id") == refused)
            #expect(dead.first?.property("dlq.original.topic") == "\(outbox.name).taken")
            #expect(dead.first?.property("dlq.error")?.contains("Not authorized") == true, "\(dead)")
            #expect(messages.filter { $0.topic == "\(outbox.name).free" }.map { $0.property("key") } == ["a", "c"])
        } else {
            #expect(cli.wait() == 1)
            #expect(cli.stderr.contains("MQTT refused event id=\(refused)"), "\(cli.stderr)")
            #expect(cli.stderr.contains("Not authorized"))
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }

    @Test func aWrongPasswordIsAStartUpErrorAndNeverLogged() async throws {
        let outbox = try TestOutbox()
        let server = try MosquittoServer(users: ["relay": "right-one"])
        let cli = try CLI.start(Self.arguments(outbox, url: "mqtt://relay:wrong-s3cret@127.0.0.1:\(server.port)"))
        #expect(await MistakeTests.exitCode(cli) == 1)
        #expect(cli.stderr.contains("refused the connection"), "\(cli.stderr)")
        #expect(!cli.stderr.contains("wrong-s3cret") && !cli.stdout.contains("wrong-s3cret"))
    }
}
