import Foundation
import OutboxCore
import PostgresClient
import Testing

/// Ordinary mistakes, through the real binary: a permanent error exits with
/// the documented code and one line naming what to fix (an orchestrator sees
/// a failing container); a transient one keeps retrying; a malformed
/// connection string never shows its password, whichever source it came from.
@Suite(
    "mistakes: errors that end, secrets that never leak", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(5)))
struct MistakeTests {
    static let secret = "Sekr3tQuux"

    /// Waits (30 s at most) for the process to exit; nil if it is still running.
    static func exitCode(_ cli: CLI, within seconds: Double = 30) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while cli.process.isRunning && Date() < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        return cli.process.isRunning ? nil : cli.wait()
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func malformedConnectionStringsNeverShowThePassword() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mistakes-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let cases = [
            "host=127.0.0.1 dbname=postgres password=\(Self.secret) tail\(Self.secret)",  // unquoted space
            "host=127.0.0.1 password='\(Self.secret)",  // unclosed quote
            "postgresql://relay:pa@\(Self.secret)@127.0.0.1/postgres",  // @ not percent-encoded
            "postgresql://relay:\(Self.secret)%zz@127.0.0.1/postgres",  // bad % escape
            "postgresql://relay:\(Self.secret)@[::1/postgres",  // unclosed [
        ]
        for (index, source) in cases.enumerated() {
            let file = directory.appendingPathComponent("source-\(index)").path
            try source.write(toFile: file, atomically: true, encoding: .utf8)
            let config = directory.appendingPathComponent("config-\(index)").path
            try "source = \(source)\n".write(toFile: config, atomically: true, encoding: .utf8)
            let ways: [(String, [String], [String: String])] = [
                ("flag", ["--source", source], [:]), ("env", [], ["OUTBOX_RELAY_SOURCE": source]),
                ("_FILE", [], ["OUTBOX_RELAY_SOURCE_FILE": file]), ("config file", ["--config", config], [:]),
            ]
            for command in ["run", "status"] {
                for (way, arguments, environment) in ways {
                    let cli = try CLI.start([command, "--log-level", "trace"] + arguments, environment: environment)
                    let code = await Self.exitCode(cli)
                    let output = cli.stdout + cli.stderr
                    #expect(
                        code == 64,
                        "\(command) with a malformed source (case \(index), \(way)) exited \(code.map(String.init) ?? "not at all"): \(output)"
                    )
                    #expect(
                        !output.contains(Self.secret) && !output.contains("Sekr3t"),
                        "case \(index) via \(way) leaked the password: \(output)")
                    #expect(output.contains("--source") || output.contains("source"), "the message names the option")
                }
            }
        }
    }

    @Test func permanentConnectionErrorsExitOneNamingTheFix() async throws {
        let base = "host=127.0.0.1 port=\(LivenessTests.port)"
        let admin = try TestDatabase.connect()
        let role = "it_norepl_" + UUID().uuidString.prefix(6).lowercased()
        try admin.query("CREATE ROLE \(role) LOGIN")
        defer { _ = try? admin.query("DROP ROLE \(role)") }
        let cases: [(String, [String], String)] = [
            ("no database", ["run", "--source", "\(base) user=postgres dbname=no_such_db_\(role)"], "3D000"),
            ("no role", ["run", "--source", "\(base) user=no_such_role_\(role) dbname=postgres"], "28000"),
            ("no REPLICATION", ["run", "--source", "\(base) user=\(role) dbname=postgres"], "REPLICATION"),
            ("no database, poll", ["poll", "--source", "\(base) user=postgres dbname=no_such_db_\(role)"], "3D000"),
            (
                "bad option value", ["run", "--source", "\(base) user=postgres dbname=postgres sslmode=sometimes"],
                "options"
            ),
        ]
        for (name, arguments, fix) in cases {
            let started = Date()
            let cli = try CLI.start(arguments)
            let code = await Self.exitCode(cli)
            #expect(
                code == 1,
                "\(name) exited \(code.map(String.init) ?? "not at all") after \(Date().timeIntervalSince(started)) s: \(cli.stderr)"
            )
            #expect(
                cli.stderr.contains("rejected the connection") && cli.stderr.contains(fix), "\(name): \(cli.stderr)")
        }
    }

    @Test func wrongPasswordExitsOneAndTransientErrorsKeepRetrying() async throws {
        // A server that asks for passwords: the wrong one is permanent.
        let cluster = try PrivateCluster()
        let admin = try cluster.connect()
        try admin.query("CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'right-one'")
        try Shell.run(
            "sed -i '1i host all pw_user 127.0.0.1/32 scram-sha-256\\nhost replication pw_user 127.0.0.1/32 scram-sha-256' '\(cluster.directory)/data/pg_hba.conf'"
        )
        try admin.query("SELECT pg_reload_conf()")
        let wrong = try CLI.start([
            "run", "--source",
            "host=127.0.0.1 port=\(cluster.port) user=pw_user password=\(Self.secret) dbname=postgres",
        ])
        #expect(await Self.exitCode(wrong) == 1)
        #expect(wrong.stderr.contains("28P01") && !wrong.stderr.contains(Self.secret), "\(wrong.stderr)")

        // Nothing listening yet: retried; once the server is there, it streams.
        let port = try TCPProxy.freePort()
        let early = try CLI.start([
            "run", "--source", "host=127.0.0.1 port=\(port) user=postgres dbname=postgres", "--slot", "it_late_slot",
            "--publication", "it_late_pub", "--create-slot", "--table", "public.outbox",
        ])
        defer { _ = early.terminate() }
        try await Task.sleep(for: .seconds(2))
        #expect(early.process.isRunning && early.stderr.contains("reconnecting"))
        // The server comes up with its outbox table already there (a missing table is a
        // permanent error, rightly): set up on another port, then reachable on this one.
        let late = try PrivateCluster()
        try late.connect().query(
            try String(
                contentsOf: TestDatabase.repository.appendingPathComponent("sql/01-outbox-table.sql"), encoding: .utf8))
        let proxy = TCPProxy(port: port, targetPort: late.port)
        try proxy.start()
        defer { proxy.stop() }
        try await early.waitForStderr("msg=streaming", within: 40)
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func invalidKafkaPropertyIsAUsageError() async throws {
        let cli = try CLI.start([
            "run", "--source", TestDatabase.conninfo!, "--sink", "kafka", "--kafka-brokers", "127.0.0.1:1", "-X",
            "linger.ms=soon",
        ])
        #expect(await Self.exitCode(cli) == 64)
        #expect(cli.stderr.contains("linger.ms"))
    }

    @Test(.enabled(if: VersionIndependent.enabled, "parsing only: runs with the default PostgreSQL"))
    func configFilesAcceptBOMAndCRLFAndRefuseRepeatsAndControlCharacters() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("config-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func write(_ name: String, _ bytes: [UInt8]) throws -> String {
            let path = directory.appendingPathComponent(name).path
            FileManager.default.createFile(atPath: path, contents: Data(bytes))
            return path
        }
        let source = "source = \(TestDatabase.conninfo!)"
        let windows = try write(
            "windows.conf",
            [0xEF, 0xBB, 0xBF] + Array("\(source)\r\nslot = from_windows_file\r\nformat = json\r\n".utf8))
        let ok = try CLI.start(["status", "--config", windows])
        _ = await Self.exitCode(ok)
        #expect(
            ok.stdout.contains("from_windows_file") && ok.stdout.hasPrefix("{"),
            "BOM and CRLF accepted: \(ok.stdout) \(ok.stderr)")

        let repeated = try write("repeated.conf", Array("\(source)\nslot = a\n# later\nslot = b\n".utf8))
        let twice = try CLI.start(["status", "--config", repeated])
        #expect(await Self.exitCode(twice) == 64)
        #expect(twice.stderr.contains("lines 2 and 4 both set \"slot\""), "\(twice.stderr)")

        let nul = try write("nul.conf", Array("\(source)\nslot = a".utf8) + [0] + Array("b\n".utf8))
        let control = try CLI.start(["status", "--config", nul])
        #expect(await Self.exitCode(control) == 64)
        #expect(control.stderr.contains("line 2: the value contains a control character"), "\(control.stderr)")
    }

    /// A poison transaction stops the relay, whose error names the command that
    /// skips exactly it; the command refuses any other LSN.
    @Test func skipMovesPastExactlyThePoisonTransaction() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let arguments = SlotLossTests.runArguments(outbox, file: file)
        let relay = try CLI.start(arguments)
        try await relay.waitForStderr("msg=streaming")
        let good = try outbox.insert(1)
        let poisonID = try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload, headers) VALUES ('order', 'k', 'Bad', '{}', '[1]') RETURNING id::text"
        )[0, "id"]!
        let after = try outbox.insert(1)
        #expect(await Self.exitCode(relay) == 1)
        let pattern = try Regex(#"outbox-relay skip --slot \S+ --publication \S+ --lsn ([0-9A-F]+/[0-9A-F]+)"#)
        let match = try #require(
            relay.stderr.firstMatch(of: pattern), "the error names the skip command: \(relay.stderr)")
        let lsn = String(match.output[1].substring ?? "")

        let source = [
            "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication, "--table",
            "\(outbox.schema).outbox",
        ]
        let wrong = try CLI.start(["skip", "--lsn", "0/1"] + source)
        #expect(await Self.exitCode(wrong) == 1)
        #expect(wrong.stderr.contains("commits at \(lsn), not 0/1; nothing skipped"), "\(wrong.stderr)")
        let skip = try CLI.start(["skip", "--lsn", lsn] + source)
        #expect(await Self.exitCode(skip) == 0, "\(skip.stderr)")
        #expect(
            skip.stderr.contains("skipped one transaction on purpose") && skip.stderr.contains(poisonID),
            "\(skip.stderr)")

        let resumed = try CLI.start(arguments)
        defer { _ = resumed.terminate() }
        let ids = try await file.waitForEvents(2).compactMap { $0["id"] as? String }
        #expect(ids == good + after, "the good events, the poison one never")
        try await Task.sleep(for: .milliseconds(500))
        #expect(!(try crashEvents(fromFile: file.path).map(\.id).contains(poisonID)))
    }

    @Test func aStandbyLogsOncePerStandbyPeriod() async throws {
        let outbox = try TestOutbox()
        let files = [SinkFile(), SinkFile()]
        defer { files.forEach { $0.remove() } }
        let active = try CLI.start(SlotLossTests.runArguments(outbox, file: files[0]))
        try await active.waitForStderr("msg=streaming")
        let standby = try CLI.start(SlotLossTests.runArguments(outbox, file: files[1]))
        defer { _ = standby.terminate() }
        try await standby.waitForStderr("hot standby")
        try await Task.sleep(for: .seconds(5))  // two more retries at the default 2 s
        #expect(standby.stderr.components(separatedBy: "waiting as hot standby").count - 1 == 1, "\(standby.stderr)")
        #expect(active.terminate() == 0)
        try await standby.waitForStderr("msg=streaming", within: 10)
    }

    @Test func aGeneratedColumnIsNamedAsSuch() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query(
            "ALTER TABLE \(outbox.schema).outbox DROP COLUMN type, ADD COLUMN type text GENERATED ALWAYS AS ('Fixed') STORED"
        )
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(SlotLossTests.runArguments(outbox, file: file))
        #expect(await Self.exitCode(relay) == 1)
        // logfmt escapes the quotes around the column name.
        #expect(
            relay.stderr.contains(#"column \"type\" of \#(outbox.schema).outbox is a generated column"#),
            "\(relay.stderr)")
        #expect(!relay.stderr.contains("has no column"))
    }
}
