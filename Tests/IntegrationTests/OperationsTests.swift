import Foundation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The operator's surface of the real binary: configuration from flags,
/// environment and file; the HTTP endpoints; the status probe; tail; init.
@Suite(
    "operations", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"),
    .timeLimit(.minutes(3)))
struct OperationsTests {
    func temporaryFile(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-relay-\(UUID()).conf").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func slotShown(by cli: CLI) -> String? {
        _ = cli.wait()
        return cli.stdout.split(separator: "\n").first { $0.hasPrefix("slot ") }.map {
            String($0.dropFirst(4)).trimmingCharacters(in: .whitespaces)
        }
    }

    @Test func flagsWinOverEnvironmentWhichWinsOverTheConfigFile() throws {
        let file = try temporaryFile("# comment\nslot = from_file\nsource = \(TestDatabase.conninfo!)\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let environment = ["OUTBOX_RELAY_SLOT": "from_env"]
        #expect(
            slotShown(by: try CLI.start(["status", "--config", file, "--slot", "from_flag"], environment: environment))
                == "from_flag")
        #expect(slotShown(by: try CLI.start(["status", "--config", file], environment: environment)) == "from_env")
        #expect(slotShown(by: try CLI.start(["status", "--config", file])) == "from_file")
        #expect(slotShown(by: try CLI.start(["status", "--source", TestDatabase.conninfo!])) == "outbox_slot")
        // The config file can also come from the environment.
        #expect(slotShown(by: try CLI.start(["status"], environment: ["OUTBOX_RELAY_CONFIG": file])) == "from_file")
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func invalidValuesNameTheOptionAndWhereItWasSet() throws {
        let env = try CLI.start(["run", "--source", "host=127.0.0.1"], environment: ["OUTBOX_RELAY_SLOT": "Bad-Slot"])
        #expect(env.wait() == 64)
        #expect(env.stderr.contains("--slot") && env.stderr.contains("OUTBOX_RELAY_SLOT"))
        let file = try temporaryFile("batch_size = 0\n")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let fromFile = try CLI.start(["poll", "--source", "host=127.0.0.1", "--config", file])
        #expect(fromFile.wait() == 64)
        #expect(fromFile.stderr.contains("--batch-size") && fromFile.stderr.contains("config file \(file) line 1"))
        let unknown = try temporaryFile("slto = x\n")
        defer { try? FileManager.default.removeItem(atPath: unknown) }
        let typo = try CLI.start(["run", "--config", unknown])
        #expect(typo.wait() == 64)
        #expect(typo.stderr.contains("line 1: unknown option \"slto\""))
        let flag = try CLI.start(
            ["run", "--source", "host=127.0.0.1"], environment: ["OUTBOX_RELAY_CREATE_SLOT": "maybe"])
        #expect(flag.wait() == 64)
        #expect(flag.stderr.contains("OUTBOX_RELAY_CREATE_SLOT") && flag.stderr.contains("true or false"))
    }

    @Test func secretsComeFromFilesAndNeverReachTheLogs() async throws {
        let outbox = try TestOutbox()
        let secret = try temporaryFile(TestDatabase.conninfo! + " password=s3cret-from-file\n")
        defer { try? FileManager.default.removeItem(atPath: secret) }
        let properties = try temporaryFile("# producer settings\nsasl.password=kafka-s3cret\n")
        defer { try? FileManager.default.removeItem(atPath: properties) }
        let cli = try CLI.start(
            [
                "run", "--slot", outbox.slot, "--publication", outbox.publication, "--table", "\(outbox.schema).outbox",
                "--message-prefix", outbox.name, "--log-level", "debug",
            ],
            environment: ["OUTBOX_RELAY_SOURCE_FILE": secret])
        try await cli.waitForStderr("streaming")
        try outbox.insert(1)
        try await cli.waitForStdoutLines(1)
        #expect(cli.terminate() == 0)
        #expect(cli.stdout.split(separator: "\n").count == 1)
        #expect(!cli.stderr.contains("s3cret"))
        // A -X property from a properties file is validated like a flag and its secret value masked.
        let kafka = try CLI.start(
            [
                "run", "--source", TestDatabase.conninfo!, "--slot", "nope_\(outbox.name)", "--sink", "kafka",
                "--kafka-brokers", "127.0.0.1:9", "--log-level", "debug",
            ],
            environment: ["OUTBOX_RELAY_KAFKA_PROPERTIES_FILE": properties])
        _ = kafka.wait()
        #expect(!kafka.stderr.contains("kafka-s3cret"))
    }

    @Test func logsAreStructured() async throws {
        let outbox = try TestOutbox()
        let cli = try CLI.start(
            ["run"] + outbox.sourceArguments + ["--log-format", "json"])
        try await cli.waitForStderr("streaming")
        try outbox.insert(50)
        try await cli.waitForStdoutLines(50)
        #expect(cli.terminate() == 0)
        let lines = cli.stderr.split(separator: "\n")
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["msg"] is String && object?["level"] is String && object?["ts"] is String, "\(line)")
        }
        #expect(lines.count < 20, "no line per event at the default level")
    }

    static func get(_ url: String) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: url)!)
        request.timeoutInterval = 5
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as! HTTPURLResponse).statusCode, String(decoding: data, as: UTF8.self))
    }

    static func address(from cli: CLI) async throws -> String {
        try await cli.waitForStderr("serving /healthz")
        let line = try #require(cli.stderr.split(separator: "\n").first { $0.contains("serving /healthz") })
        let field = try #require(line.split(separator: " ").first { $0.hasPrefix("address=") })
        return "http://" + field.dropFirst("address=".count)
    }

    @Test func healthReadinessAndMetricsThroughARealHTTPClient() async throws {
        let outbox = try TestOutbox()
        let arguments =
            ["run"] + outbox.sourceArguments + [
                "--message-prefix", outbox.name, "--http-address", "127.0.0.1:0", "--tombstones",
            ]
        let active = try CLI.start(arguments)
        let base = try await Self.address(from: active)
        try await active.waitForStderr("streaming")
        #expect(try await Self.get(base + "/healthz").status == 200)
        #expect(try await Self.get(base + "/readyz").status == 200)
        #expect(try await Self.get(base + "/nope").status == 404)

        try outbox.insert(3, aggregate: "order")
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'k', 'Gone', NULL)"
        )
        try outbox.sql.query("DELETE FROM \(outbox.schema).outbox")
        try await active.waitForStdoutLines(4)
        try await Task.sleep(for: .milliseconds(300))
        let metrics = try await Self.get(base + "/metrics")
        #expect(metrics.status == 200)
        let text = metrics.body
        #expect(text.contains(#"outbox_relay_events_published_total{topic="outbox.event.order"} 4"#))
        #expect(text.contains("outbox_relay_events_acknowledged_total 4"))
        #expect(text.contains("outbox_relay_tombstones_total 1"))
        #expect(text.contains(#"outbox_relay_state{state="streaming"} 1"#))
        #expect(text.contains(#"outbox_relay_slot_wal_status{wal_status="reserved"} 1"#))
        #expect(text.contains("outbox_relay_commit_to_publish_latency_seconds_count 4"))
        #expect(text.contains("outbox_relay_replication_lag_bytes "))
        #expect(text.contains("outbox_relay_ready 1"))
        #expect(text.contains("outbox_relay_sink_reachable 1"))
        #expect(text.contains("process_resident_memory_bytes ") && text.contains("process_cpu_seconds_total "))

        // A second relay on the same slot is alive but not ready: it is a hot standby.
        let standby = try CLI.start(arguments)
        let standbyBase = try await Self.address(from: standby)
        try await standby.waitForStderr("hot standby")
        #expect(try await Self.get(standbyBase + "/healthz").status == 200)
        let notReady = try await Self.get(standbyBase + "/readyz")
        #expect(notReady.status == 503 && notReady.body.contains("standby"))
        #expect(standby.terminate() == 0)
        #expect(active.terminate() == 0)
        await #expect(throws: (any Error).self) { _ = try await Self.get(base + "/healthz") }
    }

    /// The Grafana dashboard and the Prometheus rules in `deploy/` name only
    /// metrics the binary exports (checked against a live `/metrics`), and the
    /// rules pass `promtool check rules` and their own `promtool test rules`;
    /// the metrics table in docs/operations.md lists exactly the exported families.
    @Test func dashboardAndAlertRulesNameOnlyExportedMetrics() async throws {
        let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../deploy")
            .standardized.path
        let rules = deploy + "/prometheus/outbox-relay-rules.yml"
        let dashboard = deploy + "/grafana/outbox-relay-dashboard.json"
        let outbox = try TestOutbox()
        let cli = try CLI.start(
            ["run"] + outbox.sourceArguments + ["--message-prefix", outbox.name, "--http-address", "127.0.0.1:0"])
        let base = try await Self.address(from: cli)
        try await cli.waitForStderr("streaming")
        try outbox.insert(2, aggregate: "order")
        try await cli.waitForStdoutLines(2)
        try await Task.sleep(for: .milliseconds(300))
        let exposition = try await Self.get(base + "/metrics").body
        #expect(cli.terminate() == 0)
        let exported = Set(
            exposition.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
                String(line.prefix { $0 != "{" && $0 != " " })
            })
        var named: Set<String> = []
        for path in [rules, dashboard] {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let pattern = try Regex(#"outbox_relay_[a-z_]+"#)
            for match in text.matches(of: pattern) { named.insert(String(text[match.range])) }
        }
        #expect(named.count >= 12, "the dashboard and rules name the relay's metrics: \(named.sorted())")
        let missing = named.filter { !exported.contains($0) }.sorted()
        #expect(missing.isEmpty, "named in deploy/ but not exported by the binary: \(missing)")
        // The metrics table in docs/operations.md documents every family the binary exports.
        let operations = try String(contentsOfFile: deploy + "/../docs/operations.md", encoding: .utf8)
        var documented: Set<String> = []
        for line in operations.split(separator: "\n") where line.hasPrefix("| `outbox_relay_") {
            for match in line.matches(of: try Regex(#"outbox_relay_[a-z_]+"#)) {
                documented.insert(String(line[match.range]))
            }
        }
        let families = Set(
            exposition.split(separator: "\n").filter { $0.hasPrefix("# TYPE outbox_relay_") }.map {
                String($0.split(separator: " ")[2])
            })
        let undocumented = families.subtracting(documented).sorted()
        #expect(
            !families.isEmpty && undocumented.isEmpty,
            "exported but missing from the metrics table in docs/operations.md: \(undocumented)")
        // …and documents nothing the binary cannot export (a renamed or removed metric): docs/metrics.md,
        // generated from the binary's own exporter with every conditional family present
        // (scripts/reference.py), lists what it can; a live /metrics must be part of it.
        let reference = try String(contentsOfFile: deploy + "/../docs/metrics.md", encoding: .utf8)
        let declared = Set(
            reference.split(separator: "\n").filter { $0.hasPrefix("| `") }.map {
                String($0.dropFirst(3).prefix { $0 != "`" })
            })
        #expect(
            families.isSubset(of: declared),
            "docs/metrics.md lacks exported families: \(families.subtracting(declared).sorted())")
        let stale = documented.filter { name in !declared.contains(name) && !exported.contains(name) }.sorted()
        #expect(stale.isEmpty, "in the metrics table in docs/operations.md but not exported by the binary: \(stale)")
        let conditional = declared.filter { $0.hasPrefix("outbox_relay_") }.subtracting(families).sorted()
        print(
            "metrics: \(families.count) families exported, \(conditional.count) only in some states (\(conditional.joined(separator: ", "))), all documented"
        )
        // promtool (Debian's prometheus package, installed by scripts/test.sh).
        let checked = try Shell.run("promtool check rules '\(rules)' 2>&1")
        #expect(checked.contains("SUCCESS"), "\(checked)")
        let tested = try Shell.run("cd '\(deploy)/prometheus' && promtool test rules outbox-relay-rules.test.yml 2>&1")
        #expect(tested.contains("SUCCESS"), "\(tested)")
    }

    @Test(.enabled(if: TestKafka.tansu != nil, "needs TANSU_BIN"))
    func sigtermStopsTheRelayFirstAndTheHTTPServerLast() async throws {
        let broker = try TansuProcess()
        defer { broker.stop() }
        let outbox = try TestOutbox()
        let cli = try CLI.start(
            ["run"] + outbox.sourceArguments + [
                "--message-prefix", outbox.name, "--http-address", "127.0.0.1:0", "--sink", "kafka", "--kafka-brokers",
                broker.address, "--shutdown-timeout-ms", "3000",
            ])
        let base = try await Self.address(from: cli)
        try await cli.waitForStderr("streaming")
        try outbox.insert(1)
        try await Task.sleep(for: .seconds(1))
        broker.freeze()  // what is sent now cannot be acknowledged: shutdown must wait its deadline
        try outbox.insert(1)
        try await Task.sleep(for: .milliseconds(500))
        let stopAt = Date()
        cli.process.terminate()
        try await Task.sleep(for: .milliseconds(800))
        #expect(cli.process.isRunning, "still draining")
        #expect(try await Self.get(base + "/healthz").status == 200, "HTTP answers while the relay drains")
        let readiness = try await Self.get(base + "/readyz")
        #expect(readiness.status == 503 && readiness.body.contains("stopping"))
        #expect(cli.wait() == 0)
        let seconds = Date().timeIntervalSince(stopAt)
        #expect(seconds >= 2.5 && seconds < 8, "waited the shutdown deadline, not longer: \(seconds)")
        #expect(cli.stderr.contains("shutdown requested"))
        await #expect(throws: (any Error).self) { _ = try await Self.get(base + "/healthz") }
    }

    /// SIGTERM while the sink is still starting — Kafka transactions
    /// initialising against a port that refuses connections, which blocks up
    /// to 30 s — ends the process at once with exit 0, having read nothing from
    /// the slot (before, the default action killed it: status 15; a sink that
    /// connects and logs before the relay runs, like Redis's durability warning,
    /// raced the same way in CI).
    @Test func aSignalWhileTheSinkStartsExitsAtOnceHavingReadNothing() async throws {
        let outbox = try TestOutbox()
        try outbox.insert(1)
        let before = try outbox.confirmedFlush
        let cli = try CLI.start(
            ["run"] + outbox.sourceArguments + [
                "--sink", "kafka", "--kafka-brokers", "127.0.0.1:\(try TCPProxy.freePort())",
                "--kafka-transactional-id", "it-\(outbox.name)",
            ])
        try await cli.waitForStderr("Kafka producer created", within: 20)
        try await Task.sleep(for: .milliseconds(300))
        let stopAt = Date()
        cli.process.terminate()
        #expect(cli.wait() == 0, "\(cli.stderr)")
        #expect(Date().timeIntervalSince(stopAt) < 5)
        #expect(cli.stderr.contains("signal received while starting; exiting before reading anything"), "\(cli.stderr)")
        #expect(!cli.stderr.contains("streaming"))
        #expect(try outbox.confirmedFlush == before)
    }

    @Test(.enabled(if: TestKafka.tansu != nil, "needs TANSU_BIN"))
    func notReadyWhileTheBrokerIsUnreachableAndReadyOnceItIsBack() async throws {
        let edgePort = try TCPProxy.freePort()
        let broker = try TansuProcess(advertisedPort: edgePort)
        defer { broker.stop() }
        let edge = TCPProxy(port: edgePort, targetPort: broker.port)  // not started: the port refuses connections
        defer { edge.stop() }
        let outbox = try TestOutbox()
        let cli = try CLI.start(
            ["run"] + outbox.sourceArguments + [
                "--message-prefix", outbox.name, "--http-address", "127.0.0.1:0", "--sink", "kafka", "--kafka-brokers",
                broker.address,
            ])
        let base = try await Self.address(from: cli)
        try await cli.waitForStderr("streaming", within: 20)
        let down = try await Self.get(base + "/readyz")
        #expect(down.status == 503 && down.body.contains("sink unreachable"), "\(down)")
        #expect(try await Self.get(base + "/healthz").status == 200)
        let metrics = try await Self.get(base + "/metrics").body
        #expect(metrics.contains("outbox_relay_ready 0") && metrics.contains("outbox_relay_sink_reachable 0"))
        try edge.start()
        let deadline = Date().addingTimeInterval(15)
        var ready = false
        while !ready && Date() < deadline {
            try await Task.sleep(for: .milliseconds(250))
            ready = try await Self.get(base + "/readyz").status == 200
        }
        #expect(ready, "ready once the broker is reachable, with no event in flight: \(cli.stderr)")
        #expect(cli.terminate() == 0)
    }

    @Test func statusIsAProbe() throws {
        let outbox = try TestOutbox()
        let healthy = try CLI.start([
            "status", "--source", TestDatabase.conninfo!, "--slot", outbox.slot, "--format", "json",
        ])
        #expect(healthy.wait() == 0)
        let json = try JSONSerialization.jsonObject(with: Data(healthy.stdout.utf8)) as? [String: String]
        #expect(json?["healthy"] == "true" && json?["wal_status"] == "reserved" && json?["active"] == "f")
        try outbox.insert(1)
        let strict = try CLI.start([
            "status", "--source", TestDatabase.conninfo!, "--slot", outbox.slot, "--max-retained-bytes", "0",
        ])
        #expect(strict.wait() == 2, "an inactive slot retaining WAL over the limit")
        #expect(strict.stdout.contains("inactive and retaining"))
        let missing = try CLI.start(["status", "--source", TestDatabase.conninfo!, "--slot", "missing_\(outbox.name)"])
        #expect(missing.wait() == 2)
        #expect(missing.stdout.contains("does not exist"))
    }

    @Test func tailPrintsEventsWithoutConfirming() async throws {
        let outbox = try TestOutbox()
        try outbox.insert(3)
        let before = try outbox.confirmedFlush
        let cli = try CLI.start(
            ["tail"] + outbox.sourceArguments + [
                "--limit", "3",
            ])
        #expect(cli.wait() == 0)
        #expect(cli.stdout.split(separator: "\n").count == 3)
        #expect(try outbox.confirmedFlush == before, "tail confirms nothing")
        // Everything is still there for the real relay.
        let again = try CLI.start(
            ["tail"] + outbox.sourceArguments + [
                "--limit", "3",
            ])
        #expect(again.wait() == 0)
        #expect(again.stdout == cli.stdout)
    }

    @Test func initAppliesTheSetupIdempotently() throws {
        let admin = try TestDatabase.connect()
        let schema = "it_init_" + UUID().uuidString.prefix(8).lowercased()
        let publication = schema + "_pub"
        defer {
            _ = try? admin.query("DROP PUBLICATION IF EXISTS \(publication)")
            _ = try? admin.query("DROP SCHEMA IF EXISTS \(schema) CASCADE")
        }
        for _ in 0..<2 {
            let cli = try CLI.start([
                "init", "--source", TestDatabase.conninfo!, "--table", "\(schema).outbox", "--publication", publication,
                "--with-polling",
            ])
            #expect(cli.wait() == 0, "\(cli.stderr)")
        }
        #expect(
            try admin.query(
                "SELECT count(*) AS n FROM pg_publication_tables WHERE pubname = '\(publication)' AND schemaname = '\(schema)'"
            )[0, "n"] == "1")
        #expect(
            try admin.query(
                "SELECT count(*) AS n FROM pg_indexes WHERE schemaname = '\(schema)' AND indexname = 'outbox_created_at_idx'"
            )[0, "n"] == "1")
    }
}
