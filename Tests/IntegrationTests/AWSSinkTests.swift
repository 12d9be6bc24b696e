import AWSSink
import Foundation
import OutboxCore
import PGOutput
import Testing

/// The SQS and SNS sinks against moto's server (PyPI's `moto[server]`), started
/// per test on 127.0.0.1: it speaks SQS's JSON protocol, SNS's and STS's query
/// protocol and, when asked, checks SigV4 signatures and IAM keys. What an
/// emulator cannot show (AWS's own limits, throttling, KMS) is in docs/destinations.md.
@Suite(
    "SQS and SNS sinks", .serialized,
    .enabled(if: CLI.available && MotoServer.available, "needs OUTBOX_TEST_PG, a built binary and moto_server"),
    .timeLimit(.minutes(6)))
struct AWSSinkTests {
    static func arguments(_ outbox: TestOutbox, endpoint: String, sink: String = "sqs", target: String) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", sink, sink == "sqs" ? "--sqs-queue-url" : "--sns-topic-arn", target, "--aws-endpoint-url",
            endpoint,
        ]
    }

    static func deliveries(
        _ received: [AWSClient.Received], key prefix: String = "w"
    ) -> [(
        id: String, key: String, seq: Int
    )] {
        received.filter { $0.attributes["key"]?.hasPrefix(prefix) == true }.map {
            ($0.id, $0.attributes["key"] ?? "", $0.seq)
        }
    }

    static func config(_ server: MotoServer, endpoint: String? = nil, queue: String) -> AWSSinkConfig {
        var config = AWSSinkConfig(
            service: .sqs, target: queue, region: "us-east-1", endpointURL: endpoint ?? server.url,
            stsURL: server.url, environment: server.relayEnvironment)
        config.requestTimeoutMilliseconds = 2_000
        config.connectTimeoutMilliseconds = 1_000
        return config
    }

    @Test(arguments: ["sqs", "sns"])
    func eventsBecomeFIFOMessagesWithTheirFieldsInOrderPerKey(sink: String) async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer(authenticating: true)  // every request's signature checked
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        var target = queue
        if sink == "sns" {
            target = try server.client.createTopic("\(outbox.name).fifo")
            try server.client.subscribe(queue: "\(outbox.name).fifo", to: target)
        }
        let cli = try CLI.start(
            Self.arguments(outbox, endpoint: server.url, sink: sink, target: target),
            environment: server.relayEnvironment)
        try await cli.waitForStderr("msg=streaming", within: 30)
        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains(server.client.secret), "the secret never reaches a log")
        #expect(!cli.stderr.contains("no particular order"), "a FIFO target keeps order")

        let received = try server.client.drain(queue)
        let orders = received.filter { $0.attributes["key"] == "o-1" }
        #expect(orders.count == 2)
        let created = try #require(orders.first)
        #expect(created.id == shaped[0])
        #expect(created.body == #"{"total": 5}"#)
        #expect(created.attributes["type"] == "OrderCreated" && created.attributes["tenant"] == "t9")
        #expect(LSN(string: created.attributes["lsn"] ?? "") != nil)
        if sink == "sqs" {
            #expect(created.group == "o-1" && created.deduplicationID == shaped[0], "group = key, dedup id = event id")
        }
        let tombstone = try #require(orders.last)
        #expect(tombstone.id == shaped[1] && tombstone.body == "null" && tombstone.attributes["tombstone"] == "true")

        let check = DeliveryCheck(events: Self.deliveries(received), written: written)
        print("\(sink.uppercased()) FIFO, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// A standard queue keeps no order: said at start-up; nothing lost.
    @Test func aStandardQueueSaysItKeepsNoOrderAndLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue(outbox.name)
        let cli = try CLI.start(
            Self.arguments(outbox, endpoint: server.url, target: queue), environment: server.relayEnvironment)
        try await cli.waitForStderr("msg=streaming", within: 30)
        let (_, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(cli.stderr.contains("events arrive in no particular order"), "\(cli.stderr)")
        let received = try server.client.drain(queue)
        #expect(received.allSatisfy { $0.group == nil })
        let check = DeliveryCheck(events: Self.deliveries(received), written: written)
        print("SQS standard queue, 3 writers: \(check)")
        #expect(check.lost.isEmpty && check.phantoms.isEmpty && check.duplicates == 0, "\(check)")
    }

    /// The path to SQS refused for 30 s under load (the server's port closed):
    /// nothing confirmed meanwhile, nothing lost, order kept.
    @Test func sqsUnreachableUnderLoadConfirmsNothingAndLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let sink = try AWSSink(
            config: Self.config(server, endpoint: "http://127.0.0.1:\(proxy.port)/", queue: queue),
            logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, seconds: 30, stop: proxy.stop, start: proxy.start)
        let check = DeliveryCheck(events: Self.deliveries(try server.client.drain(queue)), written: written)
        print("SQS unreachable for 30 s under load: \(check)")
        check.expectIntact(duplicates: false)
    }

    /// The path to SQS goes silent under load: the relay keeps answering PostgreSQL,
    /// requests time out, nothing after the cut is confirmed, nothing lost after.
    /// 20 s, not the other sinks' 60: reading back and deleting costs moto time
    /// in proportion to the queue's length, and 60 s of writes make it minutes.
    static let blackHoleSeconds = min(NATSSinkTests.blackHoleSeconds, 20)

    @Test func blackHoledSQSNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let report = try await destinationBlackHole(
            outbox,
            sink: try AWSSink(
                config: Self.config(server, endpoint: "http://127.0.0.1:\(proxy.port)/", queue: queue),
                logger: RunningRelay.logger),
            proxy: proxy, seconds: Self.blackHoleSeconds)
        let check = DeliveryCheck(events: Self.deliveries(try server.client.drain(queue)), written: report.written)
        print("SQS black-holed for \(Self.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: false)
    }

    /// SIGKILLed over and over under load: nothing lost, and the FIFO queue
    /// drops the redeliveries inside its five-minute deduplication window.
    @Test func sigkillLoopLosesNothingAndTheFIFOQueueDropsRedeliveries() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        // Two writers, not three: reading back costs moto time in proportion to the queue's length.
        let writers = ContinuousWriters(
            conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 10_000)
        let kills = 6
        var arguments = Self.arguments(outbox, endpoint: server.url, target: queue)
        arguments += ["--aws-max-in-flight", "2"]
        var runs: [CLI] = []
        for _ in 0..<kills {
            let cli = try CLI.start(arguments, environment: server.relayEnvironment)
            try await Task.sleep(for: .milliseconds(Int.random(in: 400...900)))
            cli.kill9()
            runs.append(cli)
        }
        let last = try CLI.start(arguments, environment: server.relayEnvironment)
        try await Task.sleep(for: .milliseconds(500))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        try await Task.sleep(for: .milliseconds(500))
        #expect(last.terminate() == 0)
        let check = DeliveryCheck(events: Self.deliveries(try server.client.drain(queue)), written: written)
        print("SQS FIFO crash loop, \(kills) SIGKILLs: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// A queue whose MaximumMessageSize is 1 KiB refuses a larger event (moto
    /// refuses the whole batch): the relay finds the entry at fault by sending
    /// one per request, then dead-letters it with the reason, or stops before confirming it.
    @Test(arguments: [true, false])
    func anEventTheQueueRefusesGoesToTheDeadLetterQueueOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue(outbox.name, attributes: ["MaximumMessageSize": "1024"])
        let dlq = try server.client.createQueue("\(outbox.name)-dlq")
        var arguments = Self.arguments(outbox, endpoint: server.url, target: queue)
        if withDLQ { arguments += ["--dlq-topic", dlq] }
        let cli = try CLI.start(arguments, environment: server.relayEnvironment)
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        _ = try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES
              ('free', 'a', 'T', '{}'),
              ('free', 'b', 'T', json_build_object('pad', repeat('x', 2000))::jsonb),
              ('free', 'c', 'T', '{}')
            """)
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            #expect(cli.terminate() == 0)
            let dead = try server.client.drain(dlq)
            #expect(dead.count == 1)
            #expect(dead.first?.attributes["key"] == "b")
            #expect(dead.first?.attributes["dlq.error"]?.contains("shorter than 1024") == true, "\(dead)")
            #expect(dead.first?.attributes["dlq.original"] == queue)
            let delivered = try server.client.drain(queue).compactMap { $0.attributes["key"] }
            #expect(Set(delivered) == ["a", "c"])
        } else {
            #expect(await MistakeTests.exitCode(cli) == 1)
            #expect(cli.stderr.contains("SQS refused event"), "\(cli.stderr)")
            #expect(cli.stderr.contains("shorter than 1024"))
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }

    /// moto checking signatures: a wrong secret is a start-up error that names
    /// AWS's reason and never shows the secret.
    @Test func aWrongSecretIsAStartUpErrorAndNeverLogged() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer(authenticating: true)
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        var environment = server.relayEnvironment
        environment["AWS_SECRET_ACCESS_KEY"] = "wrong-s3cret-value"
        let cli = try CLI.start(Self.arguments(outbox, endpoint: server.url, target: queue), environment: environment)
        #expect(await MistakeTests.exitCode(cli) == 1)
        #expect(cli.stderr.contains("SignatureDoesNotMatch"), "\(cli.stderr)")
        #expect(!cli.stderr.contains("wrong-s3cret-value") && !cli.stdout.contains("wrong-s3cret-value"))
        #expect(!cli.stderr.contains(server.client.secret))
    }

    /// Web identity, as on EKS: a token file and a role traded at STS for
    /// temporary credentials, renewed before they expire while events flow.
    @Test func webIdentityCredentialsAreRenewedWhileEventsFlow() async throws {
        let outbox = try TestOutbox()
        let server = try MotoServer()
        let queue = try server.client.createQueue("\(outbox.name).fifo")
        let tokenFile = NSTemporaryDirectory() + "token-\(outbox.name)"
        try "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl-secret-token".write(
            toFile: tokenFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let environment = [
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/relay", "AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile,
            "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
        ]
        let cli = try CLI.start(
            Self.arguments(outbox, endpoint: server.url, target: queue) + ["--aws-session-duration-s", "6"],
            environment: environment)
        try await cli.waitForStderr("msg=streaming", within: 30)
        let writers = ContinuousWriters(
            conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 20_000)
        try await Task.sleep(for: .seconds(10))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(cli.terminate() == 0)
        let renewals = cli.stderr.components(separatedBy: "AWS credentials renewed").count - 1
        #expect(renewals >= 2, "renewed at two thirds of each 6 s life: \(cli.stderr.suffix(2000))")
        #expect(!cli.stderr.contains("secret-token"), "the web identity token never reaches a log")
        let check = DeliveryCheck(events: Self.deliveries(try server.client.drain(queue)), written: written)
        print("SQS with web identity, \(renewals) renewals: \(check)")
        check.expectIntact(duplicates: false)
    }
}
