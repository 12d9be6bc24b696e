/// `outbox-relay doctor`'s decisions: what a database must look like before a
/// relay's first run, and the fix for each thing that does not. Pure: the
/// facts are read elsewhere (PostgresReplication's `SetupProbe`), and every
/// rule here is tested fact by fact.
public enum SetupDoctor {
    /// What the relay will be asked to use (the same options as `run`).
    public struct Expectations: Sendable, Equatable {
        public var schema: String
        public var table: String
        /// Columns every event is made of; a missing one makes every row a poison row.
        public var requiredColumns: [String]
        /// Read when present (no column: events carry no JSON headers).
        public var optionalColumns: [String]
        public var slot: String
        public var publication: String

        public init(
            schema: String = "public", table: String = "outbox", requiredColumns: [String],
            optionalColumns: [String] = [],
            slot: String = "outbox_slot", publication: String = "outbox_pub"
        ) {
            self.schema = schema
            self.table = table
            self.requiredColumns = requiredColumns
            self.optionalColumns = optionalColumns
            self.slot = slot
            self.publication = publication
        }

        var qualifiedTable: String { "\(schema).\(table)" }
    }

    /// One line of the checklist.
    public struct Check: Sendable, Equatable {
        public enum Status: String, Sendable {
            case ok, warning, failure, skipped
        }
        public var name: String
        public var status: Status
        public var detail: String
        /// What to do; nil when nothing needs doing.
        public var fix: String?

        public init(_ name: String, _ status: Status, _ detail: String, fix: String? = nil) {
            self.name = name
            self.status = status
            self.detail = detail
            self.fix = fix
        }
    }

    /// Ready: nothing must be fixed (warnings allowed).
    public static func ready(_ checks: [Check]) -> Bool { !checks.contains { $0.status == .failure } }

    public static func diagnose(_ facts: SetupFacts, _ expected: Expectations) -> [Check] {
        guard let server = facts.server else {
            return [
                Check(
                    "connection", .failure, facts.connectionError ?? "cannot connect",
                    fix: connectionFix(facts.connectionError ?? ""))
            ]
        }
        var checks = [
            Check(
                "connection", .ok,
                "database \"\(server.database)\" as role \"\(server.role)\" (PostgreSQL \(server.versionText))")
        ]
        checks.append(version(server))
        checks.append(walLevel(facts))
        checks.append(slotCapacity(facts, expected))
        checks.append(walSenders(facts, expected))
        checks.append(walKeepSize(facts))
        if server.version >= 180_000 { checks.append(idleTimeout(facts)) }
        checks.append(role(facts))
        checks.append(replicationConnection(facts, expected))
        checks.append(contentsOf: table(facts, expected))
        checks.append(contentsOf: publication(facts, expected))
        checks.append(contentsOf: slot(facts, expected))
        checks.append(registry(facts, expected))
        checks.append(contentsOf: failover(facts, expected))
        return checks
    }

    // MARK: - Server

    static func connectionFix(_ message: String) -> String {
        if message.contains("pg_hba.conf") {
            return
                "allow this client in pg_hba.conf (a line `host <database> <role> <client address>/32 scram-sha-256`), then reload PostgreSQL (SELECT pg_reload_conf())"
        }
        if message.contains("password authentication failed") || message.contains("no password supplied") {
            return
                "check the role's password in the connection string (or its _FILE secret); set it with ALTER ROLE <role> PASSWORD '…'"
        }
        if message.contains("does not exist") {
            return "check the database and role names in the connection string"
        }
        return
            "check the connection string (host, port, dbname, user) and that PostgreSQL accepts connections from here"
    }

    static func version(_ server: SetupFacts.Server) -> Check {
        let major = server.version / 10_000
        if major < 14 {
            return Check(
                "server version", .failure, "PostgreSQL \(major) is not supported",
                fix:
                    "upgrade to PostgreSQL 14 or later (13's pgoutput has no logical decoding messages, and 13 is past its end of life)"
            )
        }
        if major > 18 {
            return Check("server version", .warning, "PostgreSQL \(major) is newer than the versions tested (14–18)")
        }
        return Check("server version", .ok, "PostgreSQL \(major) (14–18 are supported and tested)")
    }

    static func walLevel(_ facts: SetupFacts) -> Check {
        let level = facts.setting("wal_level") ?? "?"
        guard level == "logical" else {
            return Check(
                "wal_level", .failure, "\(level): logical decoding needs logical",
                fix:
                    "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (on a managed service: its logical replication parameter, e.g. rds.logical_replication = 1)"
            )
        }
        return Check("wal_level", .ok, "logical")
    }

    static func slotCapacity(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> Check {
        guard let limit = facts.setting("max_replication_slots").flatMap({ Int($0) }) else {
            return Check("max_replication_slots", .skipped, "not readable")
        }
        let detail = "\(facts.slotsInUse) of \(limit) slots exist"
        if facts.slot != nil { return Check("max_replication_slots", .ok, detail + ", the relay's among them") }
        if facts.slotsInUse >= limit {
            return Check(
                "max_replication_slots", .failure, detail + ": no room for the relay's slot",
                fix:
                    "ALTER SYSTEM SET max_replication_slots = \(limit + 1); then restart PostgreSQL (or drop an unused slot: SELECT pg_drop_replication_slot('<name>'))"
            )
        }
        return Check("max_replication_slots", .ok, detail + ", \(limit - facts.slotsInUse) free for the relay's slot")
    }

    static func walSenders(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> Check {
        guard let limit = facts.setting("max_wal_senders").flatMap({ Int($0) }) else {
            return Check("max_wal_senders", .skipped, "not readable")
        }
        let detail = "\(facts.walSendersInUse) of \(limit) WAL senders in use"
        if facts.walSendersInUse >= limit {
            return Check(
                "max_wal_senders", .failure, detail + ": the relay's replication connection would be refused",
                fix:
                    "ALTER SYSTEM SET max_wal_senders = \(limit + 2); then restart PostgreSQL (one per relay, its hot standby included, plus the physical standbys)"
            )
        }
        return Check("max_wal_senders", .ok, detail + " (the relay and its hot standby need one each)")
    }

    static func walKeepSize(_ facts: SetupFacts) -> Check {
        guard let value = facts.setting("max_slot_wal_keep_size") else {
            return Check("max_slot_wal_keep_size", .skipped, "not readable")
        }
        if value == "-1" {
            return Check(
                "max_slot_wal_keep_size", .warning,
                "-1 (unlimited): a slot whose relay stops keeps every WAL segment until the disk is full, which stops the database",
                fix:
                    "ALTER SYSTEM SET max_slot_wal_keep_size = '<what the disk can spare, e.g. 50GB>'; SELECT pg_reload_conf(). A slot further behind than that is lost instead: the relay stops with a clear error, and the events after its last confirmed position are recovered by hand (docs/guarantees.md, \"A lost slot\")"
            )
        }
        return Check(
            "max_slot_wal_keep_size", .ok,
            "\(value): a slot more than that behind is lost (wal_status lost); events committed after its last confirmed position must then be recovered before `outbox-relay recreate-slot --accept-gap` (docs/guarantees.md, \"A lost slot\")"
        )
    }

    static func idleTimeout(_ facts: SetupFacts) -> Check {
        let value = facts.setting("idle_replication_slot_timeout") ?? "0"
        if value != "0" {
            return Check(
                "idle_replication_slot_timeout", .warning,
                "\(value): a slot no relay has used for that long is invalidated at a checkpoint, and the events after its last confirmed position with it",
                fix:
                    "keep a relay (or its hot standby) attached at all times, or ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf()"
            )
        }
        return Check("idle_replication_slot_timeout", .ok, "0 (off): an unused slot is never invalidated for idleness")
    }

    static func role(_ facts: SetupFacts) -> Check {
        let name = facts.server?.role ?? "?"
        if facts.roleIsSuperuser {
            return Check(
                "role", .ok,
                "\"\(name)\" is a superuser (a role with only REPLICATION is enough: sql/03-relay-role.sql)")
        }
        guard facts.roleCanReplicate else {
            return Check(
                "role", .failure, "\"\(name)\" has no REPLICATION attribute: it cannot open a replication connection",
                fix:
                    "ALTER ROLE \(quoteIdentifier(name)) REPLICATION (or use the least-privilege role of sql/03-relay-role.sql)"
            )
        }
        return Check("role", .ok, "\"\(name)\" has REPLICATION")
    }

    static func replicationConnection(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> Check {
        let name = "replication connection"
        switch facts.replication {
        case nil:
            return Check(name, .skipped, "not tried")
        case .opened(let system, let timeline)?:
            return Check(
                name, .ok,
                "replication=database accepted (pg_hba.conf, REPLICATION); system \(system), timeline \(timeline)")
        case .refused(let message)?:
            let database = facts.server?.database ?? "<database>"
            let role = facts.server?.role ?? "<role>"
            let fix: String
            if message.contains("pg_hba.conf") {
                fix =
                    "add `host \(database) \(role) <relay address>/32 scram-sha-256` to pg_hba.conf and reload (SELECT pg_reload_conf()). A logical replication connection matches a line naming its database (or all), not the `replication` keyword, which is for physical standbys only"
            } else if message.contains("superuser or replication role")
                || message.contains("permission denied to start WAL sender")
            {
                fix = "ALTER ROLE \(quoteIdentifier(role)) REPLICATION"
            } else if message.contains("max_wal_senders") || message.contains("too many")
                || message.contains("remaining connection slots")
            {
                fix = "raise max_wal_senders (or max_connections) and restart PostgreSQL"
            } else {
                fix = "the relay opens this same connection; fix what the message names"
            }
            return Check(name, .failure, "refused: \(message)", fix: fix)
        }
    }

    // MARK: - The outbox table

    static func table(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> [Check] {
        let name = "outbox table"
        guard let table = facts.table else {
            return [
                Check(
                    name, .failure, "\(expected.qualifiedTable) does not exist",
                    fix:
                        "outbox-relay init --table \(expected.qualifiedTable) (sql/01-outbox-table.sql), or pass --table schema.table"
                )
            ]
        }
        var checks: [Check] = []
        let missing = expected.requiredColumns.filter { table.columns[$0] == nil }
        let generated = expected.requiredColumns.filter { table.columns[$0]?.generated == true }
        if !missing.isEmpty {
            checks.append(
                Check(
                    name, .failure,
                    "\(expected.qualifiedTable) has no column \(list(missing)): every row would be a poison row",
                    fix:
                        "add the column, or name the table's own column with --id-column, --aggregate-type-column, --aggregate-id-column, --type-column, --payload-column (sql/01-outbox-table.sql has the default layout)"
                ))
        } else if !generated.isEmpty && !table.generatedColumnsPublished {
            checks.append(
                Check(
                    name, .failure,
                    "column \(list(generated)) of \(expected.qualifiedTable) is generated: pgoutput does not send it",
                    fix: facts.server.map { $0.version >= 180_000 } == true
                        ? "ALTER PUBLICATION \(quoteIdentifier(expected.publication)) SET (publish_generated_columns = stored), or make it an ordinary column"
                        : "make it an ordinary column (PostgreSQL 18 can publish generated columns)"))
        } else {
            let absent = expected.optionalColumns.filter { table.columns[$0] == nil }
            let note = absent.isEmpty ? "" : "; no column \(list(absent)), so events carry no headers from it"
            checks.append(
                Check(
                    name, .ok,
                    "\(expected.qualifiedTable) has the event columns (\(expected.requiredColumns.joined(separator: ", ")))\(note)"
                ))
        }
        if !table.selectable && !facts.roleIsSuperuser {
            checks.append(
                Check(
                    "outbox table privilege", .warning,
                    "role \"\(facts.server?.role ?? "?")\" may not SELECT from \(expected.qualifiedTable): streaming works without it, `outbox-relay poll` does not",
                    fix:
                        "GRANT SELECT ON \(expected.qualifiedTable) TO \(quoteIdentifier(facts.server?.role ?? "<role>")) (sql/03-relay-role.sql)"
                ))
        }
        checks.append(replicaIdentity(facts, table, expected))
        return checks
    }

    /// A table published for updates or deletes must identify its rows, or the
    /// service's own UPDATE/DELETE fails; inserts need nothing.
    static func replicaIdentity(
        _ facts: SetupFacts, _ table: SetupFacts.Table, _ expected: SetupDoctor.Expectations
    ) -> Check {
        let name = "replica identity"
        let identity: String
        let identifiesRows: Bool
        switch table.replicaIdentity {
        case "d":
            (identity, identifiesRows) = (
                table.hasPrimaryKey ? "default (primary key)" : "default, but no primary key", table.hasPrimaryKey
            )
        case "f": (identity, identifiesRows) = ("full", true)
        case "i": (identity, identifiesRows) = ("index", true)
        default: (identity, identifiesRows) = ("nothing", false)
        }
        guard let publication = facts.publication, publication.update || publication.delete else {
            return Check(name, .ok, "\(identity); inserts need none, and the publication sends no updates or deletes")
        }
        let operations = [publication.update ? "UPDATE" : nil, publication.delete ? "DELETE" : nil].compactMap { $0 }
            .joined(separator: " and ")
        if !identifiesRows {
            return Check(
                name, .failure,
                "\(identity), and publication \"\(expected.publication)\" publishes \(operations.lowercased())s: the service's \(operations) on \(expected.qualifiedTable) fails (\"cannot delete from table … because it does not have a replica identity\"), insert-then-delete included",
                fix:
                    "ALTER PUBLICATION \(quoteIdentifier(expected.publication)) SET (publish = 'insert') — the relay needs nothing else — or "
                    + (table.replicaIdentity == "n"
                        ? "ALTER TABLE \(expected.qualifiedTable) REPLICA IDENTITY DEFAULT (with a primary key)"
                        : "give the table a primary key"))
        }
        if table.replicaIdentity == "f" {
            return Check(
                name, .warning,
                "full: every \(operations) writes the whole old row to WAL, which the relay then ignores",
                fix:
                    "ALTER PUBLICATION \(quoteIdentifier(expected.publication)) SET (publish = 'insert'), or ALTER TABLE \(expected.qualifiedTable) REPLICA IDENTITY DEFAULT"
            )
        }
        return Check(name, .ok, identity)
    }

    // MARK: - Publication

    static func publication(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> [Check] {
        let name = "publication"
        let quoted = quoteIdentifier(expected.publication)
        guard let publication = facts.publication else {
            return [
                Check(
                    name, .failure, "\"\(expected.publication)\" does not exist",
                    fix:
                        "CREATE PUBLICATION \(quoted) FOR TABLE \(expected.qualifiedTable) WITH (publish = 'insert') — or `outbox-relay init`, or start `run` once with --create-slot"
                )
            ]
        }
        guard publication.insert else {
            return [
                Check(
                    name, .failure,
                    "\"\(expected.publication)\" does not publish inserts: no event would ever reach the relay",
                    fix: "ALTER PUBLICATION \(quoted) SET (publish = 'insert')")
            ]
        }
        guard publication.includesTable else {
            return [
                Check(
                    name, .failure, "\"\(expected.publication)\" does not include \(expected.qualifiedTable)",
                    fix: "ALTER PUBLICATION \(quoted) ADD TABLE \(expected.qualifiedTable)")
            ]
        }
        var checks: [Check] = []
        let extra = [
            publication.update ? "update" : nil, publication.delete ? "delete" : nil,
            publication.truncate ? "truncate" : nil,
        ].compactMap { $0 }
        if extra.isEmpty {
            checks.append(
                Check(name, .ok, "\"\(expected.publication)\" publishes inserts of \(expected.qualifiedTable) only"))
        } else {
            checks.append(
                Check(
                    name, .warning,
                    "\"\(expected.publication)\" also publishes \(extra.joined(separator: ", ")): the relay never turns them into events (deletes are suppressed), but PostgreSQL decodes and sends each one",
                    fix: "ALTER PUBLICATION \(quoted) SET (publish = 'insert')"))
        }
        if publication.allTables {
            checks.append(
                Check(
                    "publication tables", .warning,
                    "FOR ALL TABLES: every table's changes are decoded and sent to the relay, which drops all but \(expected.qualifiedTable)",
                    fix:
                        "a publication of its own: CREATE PUBLICATION outbox_pub FOR TABLE \(expected.qualifiedTable) WITH (publish = 'insert'), then --publication outbox_pub"
                ))
        } else if publication.otherTables > 0 {
            checks.append(
                Check(
                    "publication tables", .warning,
                    "\(publication.otherTables) more table\(publication.otherTables == 1 ? "" : "s") besides \(expected.qualifiedTable): their changes are decoded and sent, then dropped",
                    fix: "ALTER PUBLICATION \(quoted) SET TABLE \(expected.qualifiedTable)"))
        }
        return checks
    }

    // MARK: - Slot

    static func slot(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> [Check] {
        let name = "slot"
        guard let slot = facts.slot else {
            if let record = facts.registryRecord {
                return [
                    Check(
                        name, .failure,
                        "\"\(expected.slot)\" is lost: the slot registry says it existed (recorded \(record.createdAt), timeline \(record.timeline), last confirmed \(record.confirmedLSN ?? "unknown")), and it is gone; events committed after that position may never have been relayed",
                        fix:
                            "recover those events first (docs/guarantees.md, \"A lost slot\"), then `outbox-relay recreate-slot --slot \(expected.slot) --accept-gap`"
                    )
                ]
            }
            return [
                Check(
                    name, .warning, "\"\(expected.slot)\" does not exist yet",
                    fix:
                        "start `outbox-relay run` once with --create-slot (it creates a pgoutput slot\(facts.server.map { $0.version >= 170_000 } == true ? ", a failover slot on 17+" : ""))"
                )
            ]
        }
        if slot.slotType != "logical" {
            return [
                Check(
                    name, .failure, "\"\(expected.slot)\" is a \(slot.slotType) slot",
                    fix: "use another slot name for the relay (--slot)")
            ]
        }
        if slot.plugin != "pgoutput" {
            return [
                Check(
                    name, .failure,
                    "\"\(expected.slot)\" uses output plugin \(slot.plugin ?? "?"); the relay needs pgoutput",
                    fix:
                        "use another slot name (--slot), or drop this one if nothing else reads it: SELECT pg_drop_replication_slot('\(expected.slot)')"
                )
            ]
        }
        if let database = facts.server?.database, slot.database != database {
            return [
                Check(
                    name, .failure,
                    "\"\(expected.slot)\" belongs to database \"\(slot.database ?? "?")\", not \"\(database)\"",
                    fix: "connect to \(slot.database ?? "its database") (dbname= in --source), or use another slot name"
                )
            ]
        }
        var checks: [Check] = []
        let lag = slot.lagBytes.map { ", \(bytes($0)) behind" } ?? ""
        if let reason = slot.invalidation {
            checks.append(
                Check(
                    name, .failure, "\"\(expected.slot)\" is invalidated (\(reason)): it can no longer be read",
                    fix:
                        "recover the events committed after its last confirmed position (docs/guarantees.md, \"A lost slot\"), then `outbox-relay recreate-slot --slot \(expected.slot) --accept-gap`"
                ))
        } else {
            switch slot.walStatus {
            case "lost":
                checks.append(
                    Check(
                        name, .failure, "\"\(expected.slot)\" has wal_status lost: WAL it needs was removed",
                        fix:
                            "recover the events committed after its last confirmed position (docs/guarantees.md, \"A lost slot\"), then `outbox-relay recreate-slot --slot \(expected.slot) --accept-gap`"
                    ))
            case "unreserved":
                checks.append(
                    Check(
                        name, .warning,
                        "\"\(expected.slot)\" has wal_status unreserved\(lag): past max_slot_wal_keep_size, it is lost at the next checkpoint unless a relay catches up",
                        fix: "start the relay now (or raise max_slot_wal_keep_size)"))
            default:
                let state =
                    slot.active
                    ? "in use by PID \(slot.activePID.map(String.init) ?? "?") (a relay is streaming; another one waits as its hot standby)"
                    : "not in use"
                checks.append(
                    Check(
                        name, .ok, "\"\(expected.slot)\": pgoutput, wal_status \(slot.walStatus ?? "?")\(lag), \(state)"
                    ))
            }
        }
        if let server = facts.server, server.version >= 170_000 && !server.inRecovery && !slot.failover {
            checks.append(
                Check(
                    "failover slot", .warning,
                    "\"\(expected.slot)\" is not a failover slot: standbys do not keep it, and a failover loses it",
                    fix:
                        "`outbox-relay run` makes it one at its next start (unless --no-failover-slot); standbys also need sync_replication_slots = on"
                ))
        }
        return checks
    }

    // MARK: - Slot registry

    static func registry(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> Check {
        let name = "slot registry"
        switch facts.registry {
        case .unreadable(let message):
            return Check(
                name, .warning, "cannot read public.outbox_relay_slots: \(message)",
                fix: "grant the relay role the table: sql/06-slot-registry.sql")
        case .absent(let mayCreate):
            if facts.server?.inRecovery == true {
                return Check(
                    name, .ok,
                    "public.outbox_relay_slots does not exist yet: a standby is read-only, the relay records its slot when it runs against the primary, and the record reaches this standby with the data"
                )
            }
            if mayCreate {
                return Check(
                    name, .ok,
                    "public.outbox_relay_slots does not exist yet; the relay creates it and records the slot there at its first start"
                )
            }
            return Check(
                name, .warning,
                "public.outbox_relay_slots does not exist and the role may not create it: the relay cannot record its slot, so a lost slot would look like a first start",
                fix: "outbox-relay init (sql/06-slot-registry.sql) as the database owner")
        case .present(let writable):
            var detail = "public.outbox_relay_slots"
            if let record = facts.registryRecord {
                detail +=
                    " records \"\(expected.slot)\" (since \(record.createdAt), last confirmed \(record.confirmedLSN ?? "unknown"))"
                if case .opened(let system, let timeline)? = facts.replication {
                    if record.systemIdentifier != system {
                        detail +=
                            "; recorded on another cluster (system \(record.systemIdentifier)): the database was restored or copied"
                    } else if record.timeline != timeline {
                        detail +=
                            "; recorded on timeline \(record.timeline), the server is on \(timeline): a failover happened since"
                    }
                }
            } else {
                detail += " exists; \"\(expected.slot)\" is recorded at the relay's first start"
            }
            guard writable || facts.server?.inRecovery == true else {
                return Check(
                    name, .warning, detail + ", but the role may not write it: loss detection is unavailable",
                    fix:
                        "GRANT SELECT, INSERT, UPDATE ON public.outbox_relay_slots TO \(quoteIdentifier(facts.server?.role ?? "<role>")) (sql/06-slot-registry.sql)"
                )
            }
            return Check(name, .ok, detail)
        }
    }

    // MARK: - Standbys and failover

    static func failover(_ facts: SetupFacts, _ expected: SetupDoctor.Expectations) -> [Check] {
        guard let server = facts.server else { return [] }
        let name = "failover"
        if server.inRecovery {
            guard server.version >= 160_000 else {
                return [
                    Check(
                        "standby", .failure,
                        "this is a standby of PostgreSQL \(server.version / 10_000): logical decoding on a standby needs 16 or later",
                        fix: "point the relay at the primary")
                ]
            }
            var checks: [Check] = []
            var missing: [String] = []
            if facts.setting("hot_standby_feedback") != "on" {
                missing.append(
                    "hot_standby_feedback = on (else the primary's vacuum invalidates the slot: rows_removed)")
            }
            if (facts.setting("primary_slot_name") ?? "").isEmpty {
                missing.append("primary_slot_name = '<a physical slot on the primary>'")
            }
            if server.version >= 170_000 {
                if facts.setting("sync_replication_slots") != "on" {
                    missing.append("sync_replication_slots = on (keeps the primary's failover slots here)")
                }
                if !facts.primaryConninfoNamesDatabase {
                    missing.append("dbname=<database> in primary_conninfo (slot synchronization needs it)")
                }
            }
            if missing.isEmpty {
                checks.append(
                    Check(
                        "standby", .ok,
                        "a standby set up to keep the primary's failover slots (hot_standby_feedback, primary_slot_name\(server.version >= 170_000 ? ", sync_replication_slots, dbname in primary_conninfo" : ""))"
                    ))
            } else {
                checks.append(
                    Check(
                        "standby", .warning,
                        "a standby missing what a failover setup needs: \(missing.joined(separator: "; "))",
                        fix: "set them in this standby's postgresql.conf (ALTER SYSTEM …), then SELECT pg_reload_conf()"
                    ))
            }
            if let slot = facts.slot, slot.synced {
                checks.append(
                    Check(
                        name, .ok,
                        "\"\(expected.slot)\" is a synchronized copy of the primary's failover slot: a relay started here waits as a hot standby and takes over at promotion"
                    ))
            }
            return checks
        }
        guard server.version >= 170_000, let slot = facts.slot, slot.failover, facts.physicalSlots > 0 else {
            return []
        }
        if (facts.setting("synchronized_standby_slots") ?? "").isEmpty {
            return [
                Check(
                    name, .warning,
                    "\"\(expected.slot)\" is a failover slot, but synchronized_standby_slots is empty: the relay may publish changes a standby has not received yet, which a failover to it then rolls back (phantom events)",
                    fix:
                        "ALTER SYSTEM SET synchronized_standby_slots = '<the standbys' physical slots>'; SELECT pg_reload_conf()"
                )
            ]
        }
        return [
            Check(
                name, .ok,
                "failover slot, and the primary waits for synchronized_standby_slots before sending changes to the relay"
            )
        ]
    }

    // MARK: - Text

    static func list(_ names: [String]) -> String { names.map { "\"\($0)\"" }.joined(separator: ", ") }

    static func quoteIdentifier(_ name: String) -> String {
        let plain =
            name.first.map { $0 == "_" || ($0.isLetter && $0.isLowercase) } == true
            && name.allSatisfy { $0 == "_" || $0.isNumber || ($0.isLetter && $0.isLowercase && $0.isASCII) }
        return plain ? name : "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["bytes", "kB", "MB", "GB", "TB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) bytes" : String(Int(value.rounded())) + " " + units[unit]
    }
}

/// What `SetupProbe` read from a database; the input of `SetupDoctor.diagnose`.
public struct SetupFacts: Sendable, Equatable {
    public struct Server: Sendable, Equatable {
        /// `server_version_num`, e.g. 150008.
        public var version: Int
        public var versionText: String
        public var database: String
        public var role: String
        public var inRecovery: Bool
        public init(version: Int, versionText: String, database: String, role: String, inRecovery: Bool) {
            self.version = version
            self.versionText = versionText
            self.database = database
            self.role = role
            self.inRecovery = inRecovery
        }
    }

    public struct Column: Sendable, Equatable {
        public var type: String
        public var generated: Bool
        public init(type: String, generated: Bool = false) {
            self.type = type
            self.generated = generated
        }
    }

    public struct Table: Sendable, Equatable {
        public var columns: [String: Column]
        /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
        public var replicaIdentity: Character
        public var hasPrimaryKey: Bool
        public var selectable: Bool
        /// PostgreSQL 18's `publish_generated_columns = stored` on the publication.
        public var generatedColumnsPublished: Bool
        public init(
            columns: [String: Column], replicaIdentity: Character = "d", hasPrimaryKey: Bool = true,
            selectable: Bool = true,
            generatedColumnsPublished: Bool = false
        ) {
            self.columns = columns
            self.replicaIdentity = replicaIdentity
            self.hasPrimaryKey = hasPrimaryKey
            self.selectable = selectable
            self.generatedColumnsPublished = generatedColumnsPublished
        }
    }

    public struct Publication: Sendable, Equatable {
        public var allTables: Bool
        public var insert: Bool
        public var update: Bool
        public var delete: Bool
        public var truncate: Bool
        public var includesTable: Bool
        public var otherTables: Int
        public init(
            allTables: Bool = false, insert: Bool = true, update: Bool = false, delete: Bool = false,
            truncate: Bool = false,
            includesTable: Bool = true, otherTables: Int = 0
        ) {
            self.allTables = allTables
            self.insert = insert
            self.update = update
            self.delete = delete
            self.truncate = truncate
            self.includesTable = includesTable
            self.otherTables = otherTables
        }
    }

    public struct Slot: Sendable, Equatable {
        public var slotType: String
        public var plugin: String?
        public var database: String?
        public var active: Bool
        public var activePID: Int?
        public var walStatus: String?
        public var lagBytes: Int64?
        public var invalidation: String?
        public var failover: Bool
        public var synced: Bool
        public init(
            slotType: String = "logical", plugin: String? = "pgoutput", database: String?, active: Bool = false,
            activePID: Int? = nil,
            walStatus: String? = "reserved", lagBytes: Int64? = 0, invalidation: String? = nil, failover: Bool = false,
            synced: Bool = false
        ) {
            self.slotType = slotType
            self.plugin = plugin
            self.database = database
            self.active = active
            self.activePID = activePID
            self.walStatus = walStatus
            self.lagBytes = lagBytes
            self.invalidation = invalidation
            self.failover = failover
            self.synced = synced
        }
    }

    public struct RegistryRecord: Sendable, Equatable {
        public var systemIdentifier: String
        public var timeline: Int
        public var createdAt: String
        public var confirmedLSN: String?
        public init(systemIdentifier: String, timeline: Int, createdAt: String, confirmedLSN: String?) {
            self.systemIdentifier = systemIdentifier
            self.timeline = timeline
            self.createdAt = createdAt
            self.confirmedLSN = confirmedLSN
        }
    }

    public enum Registry: Sendable, Equatable {
        /// No table; whether the role may create it in `public`.
        case absent(mayCreate: Bool)
        /// The table; whether the role may insert and update it.
        case present(writable: Bool)
        case unreadable(String)
    }

    public enum ReplicationAttempt: Sendable, Equatable {
        case opened(systemIdentifier: String, timeline: Int)
        case refused(String)
    }

    /// Nil when the ordinary connection failed (`connectionError` says why).
    public var server: Server?
    public var connectionError: String?
    /// From `pg_settings`, by name; a setting the server does not have is absent.
    public var settings: [String: String] = [:]
    public var slotsInUse = 0
    public var physicalSlots = 0
    public var walSendersInUse = 0
    public var roleIsSuperuser = false
    public var roleCanReplicate = false
    public var replication: ReplicationAttempt?
    public var table: Table?
    public var publication: Publication?
    public var slot: Slot?
    public var registry = Registry.absent(mayCreate: true)
    public var registryRecord: RegistryRecord?
    /// Whether a standby's `primary_conninfo` names a database (its value is never read: it may hold a password).
    public var primaryConninfoNamesDatabase = false

    public init(server: Server?, connectionError: String? = nil) {
        self.server = server
        self.connectionError = connectionError
    }

    public func setting(_ name: String) -> String? { settings[name] }
}
