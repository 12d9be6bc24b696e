import Foundation
import Testing

/// The real `outbox-relay` binary, as a user runs it.
@Suite(
    "outbox-relay binary", .serialized,
    .enabled(
        if: CLI.available,
        "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(1)))
struct CLITests {
    @Test func runPrintsOneJSONLinePerEventAndStopsCleanlyOnSIGTERM() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query("DROP PUBLICATION \(outbox.publication)")
        let source = TestDatabase.conninfo! + " password=s3cret-not-logged"
        let cli = try CLI.start([
            "run", "--source", source, "--slot", outbox.slot, "--publication", outbox.publication,
            "--create-slot", "--table", "\(outbox.schema).outbox", "--tombstones",
        ])
        try await cli.waitForStderr("streaming")
        try outbox.insert(payload: #"{"a": 1}"#)
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'k', 'Gone', NULL)"
        )
        try await cli.waitForStdoutLines(2)
        let status = cli.terminate()
        #expect(status == 0)
        let lines = cli.stdout.split(separator: "\n")
        #expect(lines.count == 2)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        #expect(
            first["payload"] as? [String: Int] == ["a": 1]
                && first["topic"] as? String == "outbox.event.order")
        let second = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as! [String: Any]
        #expect(second["tombstone"] as? Bool == true && second["payload"] is NSNull)
        #expect(!cli.stderr.contains("s3cret"))
        #expect(cli.stderr.contains("created replication slot") && cli.stderr.contains("stopped"))
    }

    @Test func debeziumConnectorConfigurationDrivesRoutingAndEncoding() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query("DROP PUBLICATION \(outbox.publication)")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("dbz-\(outbox.name).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let config: [String: Any] = [
            "name": "orders",
            "config": [
                "connector.class": "io.debezium.connector.postgresql.PostgresConnector", "plugin.name": "pgoutput",
                "topic.prefix": "shop", "slot.name": outbox.slot, "publication.name": outbox.publication,
                "table.include.list": "\(outbox.schema).outbox",
                "value.converter": "org.apache.kafka.connect.json.JsonConverter",
                "value.converter.schemas.enable": false,
                "transforms": "outbox", "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
                "transforms.outbox.route.topic.replacement": "evt.${routedByValue}",
                "transforms.outbox.table.fields.additional.placement": "type:envelope:eventType",
                "transforms.outbox.table.expand.json.payload": true,
            ],
        ]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
        let cli = try CLI.start(["run", "--source", TestDatabase.conninfo!, "--debezium-config", path, "--create-slot"])
        try await cli.waitForStderr("streaming")
        try outbox.insert(payload: #"{"a": 1.50, "n": null}"#)
        try await cli.waitForStdoutLines(1)
        #expect(cli.terminate() == 0)
        let event =
            try JSONSerialization.jsonObject(with: Data(cli.stdout.split(separator: "\n")[0].utf8)) as! [String: Any]
        #expect(event["topic"] as? String == "evt.order")
        let value = try #require(event["payload"] as? [String: Any])
        #expect(value["payload"] as? [String: Double] == ["a": 1.5], "expanded, the null member left out")
        #expect(value["eventType"] is String)

        // What the relay cannot honour: one error naming every key, exit 64, no value shown.
        try JSONSerialization.data(withJSONObject: [
            "plugin.name": "decoderbufs", "database.password": "${file:/run/secret-path:pw}",
            "table.include.list": "public.outbox",
            "transforms": "outbox", "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
            "transforms.outbox.table.field.event.timestamp": "created_at",
        ]).write(to: URL(fileURLWithPath: path))
        let refused = try CLI.start(["run", "--debezium-config", path])
        #expect(refused.wait() == 64)
        #expect(
            refused.stderr.contains("plugin.name must be pgoutput")
                && refused.stderr.contains("table.field.event.timestamp has no counterpart"))
        #expect(
            refused.stderr.contains("database.password uses a Kafka Connect config provider")
                && !refused.stderr.contains("secret-path"))
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func usageErrorsNameTheOption() throws {
        let cli = try CLI.start(["run", "--source", "host=127.0.0.1", "--slot", "Bad-Slot"])
        #expect(cli.wait() == 64)
        #expect(cli.stderr.contains("--slot: invalid slot name \"Bad-Slot\""))
        let sink = try CLI.start(["run", "--source", "host=127.0.0.1", "--sink", "kafka2"])
        #expect(sink.wait() == 64)
        #expect(sink.stderr.contains("--sink must be kafka, nats, rabbitmq"), "\(sink.stderr)")
        for (arguments, message) in [
            (["--sink", "nats"], "--sink nats needs --nats-url"),
            (["--sink", "rabbitmq"], "--sink rabbitmq needs --rabbitmq-url"),
            (["--sink", "stdout", "--rabbitmq-exchange", "x"], "apply only to --sink rabbitmq"),
            (
                ["--sink", "rabbitmq", "--rabbitmq-url", "amqp://h", "--rabbitmq-routing-key", "{aggregate}"],
                "--rabbitmq-routing-key"
            ),
            (["--sink", "rabbitmq", "--rabbitmq-url", "amqp://h", "--rabbitmq-exchange", "amq.mine"], "reserved"),
            (["--sink", "nats", "--nats-url", "nats://h", "--dlq-topic", "dead.>"], "wildcard"),
        ] {
            let cli = try CLI.start(["run", "--source", "host=127.0.0.1"] + arguments)
            #expect(cli.wait() == 64, "\(arguments)")
            #expect(cli.stderr.contains(message), "\(arguments): \(cli.stderr)")
        }
    }

    @Test func fatalErrorExitsOneWithTheReason() throws {
        let outbox = try TestOutbox(createSlot: false)
        let cli = try CLI.start([
            "run", "--source", TestDatabase.conninfo!, "--slot", outbox.slot, "--publication",
            outbox.publication, "--table", "\(outbox.schema).outbox",
        ])
        #expect(cli.wait() == 1)
        #expect(cli.stderr.contains(outbox.slot) && cli.stderr.contains("does not exist"))
    }
}

/// A running `outbox-relay` process with captured output.
final class CLI: @unchecked Sendable {
    // @unchecked Sendable: the buffers are only touched under `lock`.
    /// A database to test against and a built binary (`OUTBOX_RELAY_BIN`).
    static var available: Bool { TestDatabase.available && FileManager.default.isExecutableFile(atPath: binary) }

    static let binary =
        ProcessInfo.processInfo.environment["OUTBOX_RELAY_BIN"]
        ?? TestDatabase.repository.appendingPathComponent(".build/debug/outbox-relay").path
    let process = Process()
    private let lock = NSLock()
    private var out = Data()
    private var err = Data()

    static func start(_ arguments: [String], environment: [String: String] = [:]) throws -> CLI {
        let cli = CLI()
        cli.process.executableURL = URL(fileURLWithPath: binary)
        cli.process.arguments = arguments
        if !environment.isEmpty {
            cli.process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let outPipe = Pipe()
        let errPipe = Pipe()
        cli.process.standardOutput = outPipe
        cli.process.standardError = errPipe
        outPipe.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            cli.lock.withLock { cli.out.append(d) }
        }
        errPipe.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            cli.lock.withLock { cli.err.append(d) }
        }
        try cli.process.run()
        return cli
    }

    var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
    var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }

    func wait() -> Int32 {
        process.waitUntilExit()
        usleep(100_000)  // let the pipes drain
        return process.terminationStatus
    }

    func terminate() -> Int32 {
        process.terminate()  // SIGTERM
        return wait()
    }

    func waitForStderr(_ text: String, within seconds: Double = 10) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline && !stderr.contains(text) && process.isRunning {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(stderr.contains(text), "stderr: \(stderr)")
    }

    func waitForStdoutLines(_ count: Int, within seconds: Double = 10) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline && stdout.split(separator: "\n").count < count {
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

@Suite(
    "outbox-relay poll binary", .serialized,
    .enabled(
        if: CLI.available,
        "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(1)))
struct PollCLITests {
    @Test func pollUntilEmptyDrainsTheTableAndExitsZero() throws {
        let outbox = try TestOutbox(createSlot: false)
        let ids = try outbox.insert(7)
        let cli = try CLI.start([
            "poll", "--source", TestDatabase.conninfo!, "--table", "\(outbox.schema).outbox",
            "--batch-size", "3", "--until-empty",
        ])
        #expect(cli.wait() == 0)
        let lines = cli.stdout.split(separator: "\n")
        let published = try lines.map {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["id"] as! String
        }
        #expect(published == ids)
        #expect(
            try outbox.sql.query("SELECT count(*) AS n FROM \(outbox.schema).outbox")[0, "n"] == "0")
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func pollUsageErrorsNameTheOption() throws {
        let cli = try CLI.start(["poll", "--source", "host=127.0.0.1", "--batch-size", "0"])
        #expect(cli.wait() == 64)
        #expect(cli.stderr.contains("--batch-size must be between 1 and 100000"))
    }
}
