import Foundation
import PostgresClient
import Testing

/// `outbox-relay doctor` against real servers of the suite's version (CI: 15,
/// 14 and 18; `scripts/test.sh --all-versions`: 14–18), each database broken
/// one way at a time: exactly that line fails, with its fix, and exit 1;
/// repaired, it is ready again.
@Suite(
    "outbox-relay doctor: a database broken one way at a time", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(5)))
struct DoctorTests {
    struct Report {
        var code: Int32
        var ready: Bool
        var checks: [[String: String]]
        var output: String

        var failing: Set<String> { Set(checks.filter { $0["status"] == "failure" }.compactMap { $0["check"] }) }
        func line(_ name: String) -> [String: String] { checks.first { $0["check"] == name } ?? [:] }
    }

    static func doctor(_ arguments: [String]) async throws -> Report {
        let cli = try CLI.start(["doctor", "--format", "json"] + arguments)
        let code = await MistakeTests.exitCode(cli) ?? -1
        let object = try JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? [String: Any]
        let checks = (object?["checks"] as? [[String: Any]] ?? []).map { $0.compactMapValues { $0 as? String } }
        return Report(
            code: code, ready: object?["ready"] as? Bool ?? false, checks: checks, output: cli.stdout + cli.stderr)
    }

    /// Exactly `failing` fails (exit 1), and `check`'s fix says `fix`.
    static func expectBroken(
        _ report: Report, _ failing: Set<String>, fix: String, in check: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(report.code == 1 && !report.ready, "\(report.output)", sourceLocation: sourceLocation)
        #expect(report.failing == failing, "\(report.output)", sourceLocation: sourceLocation)
        let line = report.line(check ?? failing.first!)
        #expect(line["fix"]?.contains(fix) == true, "\(line)", sourceLocation: sourceLocation)
    }

    static func expectReady(_ report: Report, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            report.code == 0 && report.ready && report.failing.isEmpty, "\(report.output)",
            sourceLocation: sourceLocation)
    }

    @Test func theOutboxPublicationAndSlotBrokenOneWayAtATime() async throws {
        let outbox = try TestOutbox()
        let sql = outbox.sql
        let table = "\(outbox.schema).outbox"
        let arguments = outbox.sourceArguments
        Self.expectReady(try await Self.doctor(arguments))

        // The publication stops publishing inserts.
        try sql.query("ALTER PUBLICATION \(outbox.publication) SET (publish = 'update')")
        Self.expectBroken(try await Self.doctor(arguments), ["publication"], fix: "SET (publish = 'insert')")
        // It does not include the table.
        try sql.query("ALTER PUBLICATION \(outbox.publication) SET (publish = 'insert')")
        try sql.query("ALTER PUBLICATION \(outbox.publication) DROP TABLE \(table)")
        Self.expectBroken(try await Self.doctor(arguments), ["publication"], fix: "ADD TABLE \(table)")
        try sql.query("ALTER PUBLICATION \(outbox.publication) ADD TABLE \(table)")

        // It publishes deletes and the table has no replica identity: the service's own
        // insert-then-delete fails, as doctor says.
        try sql.query("ALTER PUBLICATION \(outbox.publication) SET (publish = 'insert, delete')")
        try sql.query("ALTER TABLE \(table) REPLICA IDENTITY NOTHING")
        Self.expectBroken(try await Self.doctor(arguments), ["replica identity"], fix: "SET (publish = 'insert')")
        #expect(throws: ReplicationError.self) {
            try sql.query(
                "BEGIN; INSERT INTO \(table) (aggregatetype, aggregateid, type, payload) VALUES ('a', 'k', 't', '{}'); DELETE FROM \(table); COMMIT"
            )
        }
        _ = try? sql.query("ROLLBACK")
        try sql.query("ALTER PUBLICATION \(outbox.publication) SET (publish = 'insert')")
        let relaxed = try await Self.doctor(arguments)
        Self.expectReady(relaxed)
        #expect(relaxed.line("replica identity")["status"] == "ok")

        // A column the events need is gone.
        try sql.query("ALTER TABLE \(table) RENAME COLUMN aggregateid TO aggregate_id")
        let renamed = try await Self.doctor(arguments)
        Self.expectBroken(renamed, ["outbox table"], fix: "--aggregate-id-column")
        #expect(renamed.line("outbox table")["detail"]?.contains("\"aggregateid\"") == true)
        Self.expectReady(try await Self.doctor(arguments + ["--aggregate-id-column", "aggregate_id"]))
        try sql.query("ALTER TABLE \(table) RENAME COLUMN aggregate_id TO aggregateid")

        // The table does not exist.
        Self.expectBroken(
            try await Self.doctor(Array(arguments.dropLast(2)) + ["--table", "\(outbox.schema).no_such_table"]),
            ["outbox table", "publication"],
            fix: "outbox-relay init", in: "outbox table")

        // A physical slot under the name given.
        let other = outbox.name + "_phys"
        try sql.query("SELECT pg_create_physical_replication_slot('\(other)')")
        defer { _ = try? sql.query("SELECT pg_drop_replication_slot('\(other)')") }
        Self.expectBroken(try await Self.doctor(arguments + ["--slot", other]), ["slot"], fix: "another slot name")

        // The slot is lost: the registry recorded it, and it is gone.
        let relay = try CLI.start(["run", "--sink", "file:/dev/null"] + arguments)
        try await relay.waitForStderr("msg=streaming", within: 20)
        #expect(relay.terminate() == 0)
        defer { _ = try? sql.query("DELETE FROM public.outbox_relay_slots WHERE slot_name = '\(outbox.slot)'") }
        Self.expectReady(try await Self.doctor(arguments))
        try sql.query("SELECT pg_drop_replication_slot('\(outbox.slot)')")
        let lost = try await Self.doctor(arguments)
        Self.expectBroken(lost, ["slot"], fix: "recreate-slot --slot \(outbox.slot) --accept-gap")
        #expect(lost.line("slot")["detail"]?.contains("is lost") == true, "\(lost.output)")
    }

    @Test func aRoleWithoutReplicationIsFoundByTryingTheConnection() async throws {
        let outbox = try TestOutbox()
        let role = outbox.name + "_role"
        try outbox.sql.query("CREATE ROLE \(role) LOGIN")
        defer { _ = try? outbox.sql.query("DROP OWNED BY \(role); DROP ROLE \(role)") }
        try outbox.sql.query(
            "GRANT USAGE ON SCHEMA \(outbox.schema) TO \(role); GRANT SELECT ON \(outbox.schema).outbox TO \(role)")
        let source = TestDatabase.conninfo!.replacingOccurrences(of: "user=postgres", with: "user=\(role)")
        try #require(source.contains("user=\(role)"), "the suite's connection string names user=postgres")
        var arguments = outbox.sourceArguments
        arguments[1] = source
        let report = try await Self.doctor(arguments)
        Self.expectBroken(
            report, ["role", "replication connection"], fix: "ALTER ROLE \(role) REPLICATION",
            in: "replication connection")
        #expect(report.line("slot registry")["status"] != "failure")
        try outbox.sql.query("ALTER ROLE \(role) REPLICATION")
        let fixed = try await Self.doctor(arguments)
        Self.expectReady(fixed)
        #expect(fixed.line("role")["detail"]?.contains("has REPLICATION") == true)
    }

    /// Server settings, each on a cluster of its own (the suite's version).
    @Test func serverSettingsAndPgHbaEachOnAClusterOfItsOwn() async throws {
        // wal_level below logical.
        let replica = try PrivateCluster(["wal_level = replica"])
        try await Self.initialize(replica)
        let low = try await Self.doctor(["--source", replica.conninfo])
        Self.expectBroken(low, ["wal_level"], fix: "wal_level = logical; then restart")

        // No free replication slot, then no free WAL sender.
        let small = try PrivateCluster(["max_replication_slots = 1", "max_wal_senders = 1"])
        try await Self.initialize(small)
        let admin = try small.connect()
        try admin.query("SELECT pg_create_physical_replication_slot('taken')")
        Self.expectBroken(
            try await Self.doctor(["--source", small.conninfo]), ["max_replication_slots"],
            fix: "max_replication_slots = 2")
        try admin.query("SELECT pg_drop_replication_slot('taken')")
        let holder = try PGConnection(conninfo: small.conninfo, replication: true)
        _ = try holder.query("IDENTIFY_SYSTEM")
        let busy = try await Self.doctor(["--source", small.conninfo])
        Self.expectBroken(
            busy, ["max_wal_senders", "replication connection"], fix: "max_wal_senders = 3", in: "max_wal_senders")
        withExtendedLifetime(holder) {}

        // pg_hba.conf refuses the role: found by trying, with the line to add.
        try admin.query("CREATE ROLE hba_user LOGIN REPLICATION")
        try Shell.run("sed -i '1i host all hba_user 127.0.0.1/32 reject' '\(small.directory)/data/pg_hba.conf'")
        try admin.query("SELECT pg_reload_conf()")
        let refused = try await Self.doctor([
            "--source", "host=127.0.0.1 port=\(small.port) user=hba_user dbname=postgres",
        ])
        Self.expectBroken(refused, ["connection"], fix: "pg_hba.conf")
        #expect(refused.checks.count == 1)
    }

    static func initialize(_ cluster: PrivateCluster) async throws {
        let cli = try CLI.start(["init", "--source", cluster.conninfo])
        #expect(await MistakeTests.exitCode(cli) == 0, "\(cli.stderr)")
    }
}
