import ArgumentParser
import Foundation
import OutboxCore
import PostgresClient
import PostgresReplication

/// `outbox-relay doctor`: checks a database before the first run. It reads
/// (`SetupProbe`), `SetupDoctor` decides, this prints. Exit codes: 0 ready
/// (warnings allowed), 1 something must be fixed, 64 bad usage.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Check a database before the relay's first run: print a checklist, each problem with its fix; exit 1 when something must be fixed.",
        discussion: """
            Checks wal_level, free replication slots and WAL senders, max_slot_wal_keep_size, \
            idle_replication_slot_timeout (18), the role's REPLICATION attribute, a replication connection (by \
            opening one, as the relay does: pg_hba.conf), the outbox table's columns and replica identity, the \
            publication, the slot (plugin, database, WAL status, lag, failover flag on 17+), the slot registry, \
            and on a standby what a failover setup needs. Changes nothing. Takes the same options as `run` (and \
            the same config file and environment), so it checks what the relay will use.

            Exit codes: 0 ready (warnings allowed), 1 something must be fixed, 64 invalid options.
            """)

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot.")
    var slot = "outbox_slot"

    @Option(help: "Publication that publishes the outbox table.")
    var publication = "outbox_pub"

    @Option(help: "text or json.")
    var format = "text"

    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        if format != "text" && format != "json" { throw ValidationError("--format must be text or json") }
    }

    func run() throws {
        let routing = routingOptions.routing()
        var required = routing.requiredColumns
        var optional: [String] = []
        if let headers = routing.headersColumn {
            required.removeAll { $0 == headers }
            optional.append(headers)
        }
        let expected = SetupDoctor.Expectations(
            schema: routing.schema, table: routing.table, requiredColumns: required, optionalColumns: optional,
            slot: slot,
            publication: publication)
        let facts = SetupProbe.read(conninfo: database.resolved()!, expected)
        let checks = SetupDoctor.diagnose(facts, expected)
        let ready = SetupDoctor.ready(checks)
        if format == "json" {
            print(Self.json(checks, ready: ready))
        } else {
            print(Self.text(checks, ready: ready))
        }
        if !ready { throw ExitCode(1) }
    }

    static func text(_ checks: [SetupDoctor.Check], ready: Bool) -> String {
        let width = checks.map(\.name.count).max() ?? 0
        var lines: [String] = []
        for check in checks {
            let mark =
                switch check.status {
                case .ok: "ok  "
                case .warning: "warn"
                case .failure: "FIX "
                case .skipped: "skip"
                }
            lines.append(
                "\(mark)  \(check.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(check.detail)")
            if let fix = check.fix { lines.append(String(repeating: " ", count: width + 8) + "→ " + fix) }
        }
        let failures = checks.filter { $0.status == .failure }.count
        let warnings = checks.filter { $0.status == .warning }.count
        lines.append("")
        lines.append(
            ready
                ? "ready\(warnings > 0 ? " (\(warnings) warning\(warnings == 1 ? "" : "s"))" : "")"
                : "not ready: \(failures) to fix\(warnings > 0 ? ", \(warnings) warning\(warnings == 1 ? "" : "s")" : "")"
        )
        return lines.joined(separator: "\n")
    }

    static func json(_ checks: [SetupDoctor.Check], ready: Bool) -> String {
        func string(_ value: String) -> String { StructuredLogHandler.jsonString(value) }
        let items = checks.map { check in
            var members = [
                "\"check\":\(string(check.name))", "\"status\":\(string(check.status.rawValue))",
                "\"detail\":\(string(check.detail))",
            ]
            if let fix = check.fix { members.append("\"fix\":\(string(fix))") }
            return "{" + members.joined(separator: ",") + "}"
        }
        return "{\"ready\":\(ready),\"checks\":[" + items.joined(separator: ",") + "]}"
    }
}

/// Reads the facts `SetupDoctor` judges, over one ordinary connection and one
/// replication connection (opened as the relay opens it, then closed). Reads
/// only: nothing is created or changed. A query that fails leaves its fact at
/// the value that makes the check say so, never a guess that it is fine.
enum SetupProbe {
    static func read(conninfo: String, _ expected: SetupDoctor.Expectations) -> SetupFacts {
        let c: PGConnection
        do {
            c = try PGConnection(conninfo: conninfo, replication: false, applicationName: "outbox-relay-doctor")
        } catch {
            return SetupFacts(server: nil, connectionError: "\(error)")
        }
        c.queryTimeoutMilliseconds = 15_000
        var facts = SetupFacts(server: nil)
        do {
            let who = try c.query(
                """
                SELECT current_setting('server_version') AS version, current_database() AS db, current_user AS role,
                       pg_is_in_recovery() AS standby, r.rolsuper, r.rolreplication
                FROM pg_roles r WHERE r.rolname = current_user
                """, label: "reading the server and role")
            facts.server = SetupFacts.Server(
                version: c.serverVersion, versionText: who[0, "version"] ?? "?", database: who[0, "db"] ?? "?",
                role: who[0, "role"] ?? "?", inRecovery: who[0, "standby"] == "t")
            facts.roleIsSuperuser = who[0, "rolsuper"] == "t"
            facts.roleCanReplicate = facts.roleIsSuperuser || who[0, "rolreplication"] == "t"
        } catch {
            return SetupFacts(server: nil, connectionError: "\(error)")
        }
        let names = [
            "wal_level", "max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size",
            "idle_replication_slot_timeout",
            "hot_standby_feedback", "primary_slot_name", "sync_replication_slots", "synchronized_standby_slots",
        ]
        if let rows = try? c.query(
            "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN (\(names.map { c.literal($0) }.joined(separator: ", ")))",
            label: "reading settings")
        {
            for row in 0..<rows.count {
                if let name = rows[row, "name"], let value = rows[row, "value"] { facts.settings[name] = value }
            }
        }
        facts.primaryConninfoNamesDatabase =
            (try? c.query(
                "SELECT position('dbname' in setting) > 0 AS named FROM pg_settings WHERE name = 'primary_conninfo'"))?[
                0, "named"] == "t"
        if let counts = try? c.query(
            """
            SELECT (SELECT count(*) FROM pg_replication_slots) AS slots,
                   (SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical') AS physical,
                   (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender') AS senders
            """)
        {
            facts.slotsInUse = Int(counts[0, "slots"] ?? "") ?? 0
            facts.physicalSlots = Int(counts[0, "physical"] ?? "") ?? 0
            facts.walSendersInUse = Int(counts[0, "senders"] ?? "") ?? 0
        }
        readReplication(conninfo, into: &facts)
        readTable(c, expected, into: &facts)
        readPublication(c, expected, into: &facts)
        readSlot(c, expected, into: &facts)
        readRegistry(c, expected, into: &facts)
        return facts
    }

    /// Opens the connection the relay opens (`replication=database`): what
    /// pg_hba.conf, the REPLICATION attribute and max_wal_senders say to it.
    static func readReplication(_ conninfo: String, into facts: inout SetupFacts) {
        do {
            let replication = try PGConnection(
                conninfo: conninfo, replication: true, applicationName: "outbox-relay-doctor")
            let identity = try replication.query("IDENTIFY_SYSTEM")
            facts.replication = .opened(
                systemIdentifier: identity[0, "systemid"] ?? "?", timeline: Int(identity[0, "timeline"] ?? "") ?? 0)
        } catch {
            facts.replication = .refused("\(error)")
        }
    }

    static func qualified(_ c: PGConnection, _ expected: SetupDoctor.Expectations) -> String {
        c.literal("\(c.identifier(expected.schema)).\(c.identifier(expected.table))")
    }

    static func readTable(_ c: PGConnection, _ expected: SetupDoctor.Expectations, into facts: inout SetupFacts) {
        guard
            let rows = try? c.query(
                """
                SELECT c.oid, c.relreplident, has_table_privilege(c.oid, 'SELECT') AS selectable,
                       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk
                FROM pg_class c WHERE c.oid = to_regclass(\(qualified(c, expected)))
                """, label: "reading the outbox table"),
            rows.count == 1, let oid = rows[0, "oid"]
        else { return }
        var table = SetupFacts.Table(
            columns: [:], replicaIdentity: rows[0, "relreplident"]?.first ?? "d", hasPrimaryKey: rows[0, "pk"] == "t",
            selectable: rows[0, "selectable"] == "t")
        if let columns = try? c.query(
            "SELECT attname, format_type(atttypid, atttypmod) AS type, attgenerated <> '' AS generated FROM pg_attribute WHERE attrelid = \(oid) AND attnum > 0 AND NOT attisdropped",
            label: "reading the outbox table's columns")
        {
            for row in 0..<columns.count {
                if let name = columns[row, "attname"] {
                    table.columns[name] = SetupFacts.Column(
                        type: columns[row, "type"] ?? "?", generated: columns[row, "generated"] == "t")
                }
            }
        }
        if c.serverVersion >= 180_000 {
            table.generatedColumnsPublished =
                (try? c.query(
                    "SELECT pubgencols = 's' AS published FROM pg_publication WHERE pubname = \(c.literal(expected.publication))"
                ))?[0, "published"]
                == "t"
        }
        facts.table = table
    }

    static func readPublication(_ c: PGConnection, _ expected: SetupDoctor.Expectations, into facts: inout SetupFacts) {
        let this = "t.schemaname = \(c.literal(expected.schema)) AND t.tablename = \(c.literal(expected.table))"
        guard
            let rows = try? c.query(
                """
                SELECT p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
                       EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname AND \(this)) AS has_table,
                       (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname AND NOT (\(this))) AS others
                FROM pg_publication p WHERE p.pubname = \(c.literal(expected.publication))
                """, label: "reading the publication"),
            rows.count == 1
        else { return }
        facts.publication = SetupFacts.Publication(
            allTables: rows[0, "puballtables"] == "t", insert: rows[0, "pubinsert"] == "t",
            update: rows[0, "pubupdate"] == "t",
            delete: rows[0, "pubdelete"] == "t", truncate: rows[0, "pubtruncate"] == "t",
            includesTable: rows[0, "has_table"] == "t",
            otherTables: Int(rows[0, "others"] ?? "") ?? 0)
    }

    static func readSlot(_ c: PGConnection, _ expected: SetupDoctor.Expectations, into facts: inout SetupFacts) {
        let current = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
        guard
            let rows = try? c.query(
                """
                SELECT slot_type, plugin, database, active, active_pid, wal_status,
                       pg_wal_lsn_diff(\(current), confirmed_flush_lsn)::bigint AS lag_bytes,
                       \(ReplicationSession.slotColumns(serverVersion: c.serverVersion))
                FROM pg_replication_slots WHERE slot_name = \(c.literal(expected.slot))
                """, label: "reading the slot"),
            rows.count == 1
        else { return }
        facts.slot = SetupFacts.Slot(
            slotType: rows[0, "slot_type"] ?? "?", plugin: rows[0, "plugin"], database: rows[0, "database"],
            active: rows[0, "active"] == "t",
            activePID: rows[0, "active_pid"].flatMap { Int($0) }, walStatus: rows[0, "wal_status"],
            lagBytes: rows[0, "lag_bytes"].flatMap { Int64($0) }, invalidation: rows[0, "invalidation"],
            failover: rows[0, "failover"] == "t",
            synced: rows[0, "synced"] == "t")
    }

    static func readRegistry(_ c: PGConnection, _ expected: SetupDoctor.Expectations, into facts: inout SetupFacts) {
        let table = c.literal(SlotRegistry.table)
        do {
            let rows = try c.query(
                """
                SELECT to_regclass(\(table)) IS NOT NULL AS present, has_schema_privilege('public', 'CREATE') AS may_create,
                       CASE WHEN to_regclass(\(table)) IS NOT NULL
                            THEN has_table_privilege(\(table), 'INSERT') AND has_table_privilege(\(table), 'UPDATE') END AS writable
                """, label: "reading the slot registry")
            guard rows[0, "present"] == "t" else {
                facts.registry = .absent(mayCreate: rows[0, "may_create"] == "t")
                return
            }
            facts.registry = .present(writable: rows[0, "writable"] == "t")
            if let record = try SlotRegistry.lookup(c, slot: expected.slot) {
                facts.registryRecord = SetupFacts.RegistryRecord(
                    systemIdentifier: record.systemIdentifier, timeline: record.timeline, createdAt: record.createdAt,
                    confirmedLSN: record.confirmedLSN.map { "\($0)" })
            }
        } catch {
            facts.registry = .unreadable("\(error)")
        }
    }
}
