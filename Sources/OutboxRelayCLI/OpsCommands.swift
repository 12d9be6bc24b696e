import ArgumentParser
import Foundation
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication

/// `outbox-relay status`: the slot's health, as a probe for cron or alerting.
/// Exit codes: 0 healthy; 2 the slot is missing, lost, or inactive and over a
/// limit; 1 cannot ask (connection failed); 64 bad usage.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the replication slot's position, lag and WAL retention; exit 2 when it needs attention.",
        discussion: """
            Unhealthy (exit 2): the slot does not exist; its wal_status is lost; or it is inactive (no relay \
            attached) and either retains more than --max-retained-bytes of WAL or, on PostgreSQL 17 and later, \
            has been inactive longer than --max-inactive-seconds.
            """
    )

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot.")
    var slot = "outbox_slot"

    @Option(help: "Inactive longer than this is unhealthy (PostgreSQL 17+, which records when a slot became inactive).")
    var maxInactiveSeconds = 300

    @Option(help: "An inactive slot retaining more WAL than this is unhealthy.")
    var maxRetainedBytes: Int64 = 1 << 30

    @Option(help: "text or json.")
    var format = "text"

    @OptionGroup(title: "Logging") var logOptions: LogOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        if format != "text" && format != "json" { throw ValidationError("--format must be text or json") }
        if maxInactiveSeconds < 0 || maxRetainedBytes < 0 {
            throw ValidationError("--max-inactive-seconds and --max-retained-bytes must not be negative")
        }
    }

    func run() throws {
        let connection: PGConnection
        do {
            connection = try PGConnection(
                conninfo: database.resolved()!, replication: false, applicationName: "outbox-relay-status")
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let version = connection.serverVersion
        let hasInactiveSince = version >= 170_000
        // On a standby (logical decoding there needs 16+) the WAL position is the replayed one.
        let current = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
        let sql = """
            SELECT s.slot_name, s.plugin, s.slot_type, s.database, s.active, s.active_pid, s.confirmed_flush_lsn, s.restart_lsn,
                   s.wal_status, s.safe_wal_size, \(current) AS current_lsn, pg_is_in_recovery() AS standby,
                   pg_wal_lsn_diff(\(current), s.confirmed_flush_lsn) AS lag_bytes,
                   pg_wal_lsn_diff(\(current), s.restart_lsn) AS retained_bytes,
                   \(hasInactiveSince ? "extract(epoch FROM now() - s.inactive_since)::bigint" : "NULL::bigint") AS inactive_seconds,
                   \(ReplicationSession.slotColumns(serverVersion: version))
            FROM pg_replication_slots s WHERE s.slot_name = \(connection.literal(slot))
            """
        let rows: PGConnection.Rows
        do { rows = try connection.query(sql, label: "reading pg_replication_slots") } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            throw ExitCode(1)
        }
        var fields: [(String, String)] = [("slot", slot)]
        var problems: [String] = []
        if rows.count == 0 {
            problems.append("slot \"\(slot)\" does not exist")
        } else {
            for column in rows.columns where column != "slot_name" { fields.append((column, rows[0, column] ?? "")) }
            let active = rows[0, "active"] == "t"
            let retained = Int64(rows[0, "retained_bytes"] ?? "") ?? 0
            if let reason = rows[0, "invalidation"] {
                problems.append("invalidated: \(ReplicationError.explain(invalidation: reason))")
            } else if rows[0, "wal_status"] == "lost" {
                problems.append("wal_status is lost: WAL the slot needs was removed")
            }
            if !active {
                if retained > maxRetainedBytes {
                    problems.append("inactive and retaining \(retained) bytes of WAL (limit \(maxRetainedBytes))")
                }
                if let seconds = rows[0, "inactive_seconds"].flatMap({ Int($0) }), seconds > maxInactiveSeconds {
                    problems.append("inactive for \(seconds) s (limit \(maxInactiveSeconds))")
                }
            }
        }
        fields.append(("healthy", problems.isEmpty ? "true" : "false"))
        if !problems.isEmpty { fields.append(("problems", problems.joined(separator: "; "))) }
        if format == "json" {
            let members = fields.map {
                "\(StructuredLogHandler.jsonString($0.0)):\(StructuredLogHandler.jsonString($0.1))"
            }
            print("{" + members.joined(separator: ",") + "}")
        } else {
            let width = fields.map(\.0.count).max() ?? 0
            for (key, value) in fields {
                print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value)
            }
        }
        if !problems.isEmpty { throw ExitCode(2) }
    }
}

/// `outbox-relay recreate-slot --accept-gap`: the explicit, logged act that
/// creates a lost slot again (ARCHITECTURE.md rule 9). Exit codes: 0 created
/// (or it exists); 1 cannot; 64 bad usage, or --accept-gap missing.
struct RecreateSlot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recreate-slot",
        abstract:
            "Create a lost replication slot again, accepting that events committed while it was gone are not relayed.",
        discussion: """
            A slot that existed (recorded in public.outbox_relay_slots) and is gone — dropped, or a failover to a \
            server that never had it — is never created again by `run`. Recover the events committed since its last \
            position first (docs/guarantees.md, "A lost slot"), then run this with --accept-gap. The gap it accepts is \
            logged. It creates the slot at the current WAL position.
            """)

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "The logical replication slot to create again.")
    var slot = "outbox_slot"

    @Flag(help: "Confirm that events committed since the lost slot's last position are not relayed by the new slot.")
    var acceptGap = false

    @Flag(help: "On PostgreSQL 17+, create an ordinary slot instead of a failover slot.")
    var noFailoverSlot = false

    @OptionGroup(title: "Logging") var logOptions: LogOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        guard acceptGap else {
            throw ValidationError(
                "recreate-slot starts a new slot at the current WAL position: events committed since the lost slot's last position are skipped. Recover them first, then pass --accept-gap"
            )
        }
    }

    func run() throws {
        let logger = logOptions.bootstrap()
        let source = database.resolved()!
        do {
            let replication = try PGConnection(
                conninfo: source, replication: true, applicationName: "outbox-relay-recreate-slot")
            let identity = try replication.query("IDENTIFY_SYSTEM")
            let system = identity[0, "systemid"] ?? "?"
            let timeline = Int(identity[0, "timeline"] ?? "") ?? 0
            let exists =
                try replication.query(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = \(replication.literal(slot))"
                ).count == 1
            if exists {
                logger.notice("the slot exists; nothing to do", metadata: ["slot": "\(slot)"])
                return
            }
            let registry = try PGConnection(
                conninfo: source, replication: false, applicationName: "outbox-relay-recreate-slot")
            let record = try SlotRegistry.lookup(registry, slot: slot)
            let failover = replication.serverVersion >= 170_000 && !noFailoverSlot
            guard let point = try ReplicationSession.createSlot(replication, slot, failover: failover, logger: logger)
            else {
                logger.notice(
                    "another process created the slot meanwhile; nothing to do", metadata: ["slot": "\(slot)"])
                return
            }
            try SlotRegistry.record(
                registry, slot: slot, systemIdentifier: system, timeline: timeline, createdLSN: point,
                confirmedLSN: point)
            logger.warning(
                "recreated a lost replication slot: events committed in the gap are not relayed by it",
                metadata: [
                    "slot": "\(slot)",
                    "gap_from": "\(record?.confirmedLSN.map { "\($0)" } ?? "unknown (no record)")",
                    "gap_to": "\(point)", "lost_slot_recorded": "\(record?.createdAt ?? "never")",
                ])
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
    }
}

/// `outbox-relay skip`: moves a slot past exactly one transaction on purpose, as
/// PostgreSQL's `ALTER SUBSCRIPTION … SKIP (lsn = …)` does: the one whose commit
/// LSN a poison-row error named, and only if it is the next one in the slot.
/// Exit codes: 0 skipped; 1 refused (not the next transaction, slot in use, …); 64 bad usage.
struct Skip: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Skip exactly one transaction of a slot — the one whose commit LSN the relay's poison-row error named — dropping its events on purpose.",
        discussion: """
            Refuses when the next transaction waiting in the slot does not commit at --lsn (so a typo or a \
            stale LSN skips nothing), or when a relay holds the slot. Logs the commit and end LSN and every \
            event it drops. Stop the relay first; start it again afterwards.
            """)

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot (not in use).")
    var slot = "outbox_slot"

    @Option(help: "Publication the relay streams.")
    var publication = "outbox_pub"

    @Option(
        help: ArgumentHelp("Commit LSN of the transaction to skip, as the relay's error printed it.", valueName: "X/Y"))
    var lsn: String

    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions
    @OptionGroup(title: "Logging") var logOptions: LogOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        if LSN(string: lsn) == nil { throw ValidationError("--lsn must be an LSN like 0/16B3748, got \"\(lsn)\"") }
    }

    func run() throws {
        let logger = logOptions.bootstrap()
        let target = LSN(string: lsn)!
        do {
            let connection = try PGConnection(
                conninfo: database.resolved()!, replication: false, applicationName: "outbox-relay-skip")
            let state = try connection.query(
                "SELECT active FROM pg_replication_slots WHERE slot_name = \(connection.literal(slot))")
            guard state.count == 1 else { throw SkipRefused("slot \"\(slot)\" does not exist") }
            guard state[0, "active"] != "t" else {
                throw SkipRefused("slot \"\(slot)\" is in use: stop the relay first")
            }
            // The next transaction only (upto_nchanges 1 still returns it whole), without consuming it.
            let rows = try connection.query(
                """
                SELECT data FROM pg_logical_slot_peek_binary_changes(\(connection.literal(slot)), NULL, 1,
                    'proto_version', '1', 'publication_names', \(connection.literal(connection.identifier(publication))), 'messages', 'true')
                """, label: "reading the slot's next transaction")
            var decoder = PGOutputDecoder()
            var router = OutboxRouter(config: routingOptions.routing())
            var commitLSN: LSN?
            var endLSN: LSN?
            var dropped: [String] = []
            for index in 0..<rows.count {
                guard let hex = rows[index, "data"], let bytes = OutboxRouter.decodeByteaHex(Array(hex.utf8)[...])
                else { continue }
                switch try decoder.decode(bytes) {
                case .begin(let begin): commitLSN = begin.finalLSN
                case .relation(let relation): router.relationChanged(relation)
                case .insert(let insert):
                    switch router.route(insert, lsn: commitLSN ?? .zero, commitTime: PostgresTimestamp(rawValue: 0)) {
                    case .success(let event)?: dropped.append("id=\(event.id) type=\(event.type)")
                    case .failure(let poison)?: dropped.append("id=\(poison.id ?? "?") (poison: \(poison.reason))")
                    case nil: break
                    }
                case .message(let message) where message.isTransactional:
                    switch router.route(message, lsn: commitLSN ?? .zero, commitTime: PostgresTimestamp(rawValue: 0)) {
                    case .success(let event)?: dropped.append("message id=\(event.id) type=\(event.type)")
                    case .failure(let poison)?: dropped.append("message (poison: \(poison.reason))")
                    case nil: break
                    }
                case .commit(let commit): endLSN = commit.endLSN
                default: break
                }
                if endLSN != nil { break }
            }
            guard let commitLSN, let endLSN else {
                throw SkipRefused("slot \"\(slot)\" has no complete transaction waiting; nothing skipped")
            }
            guard commitLSN == target else {
                throw SkipRefused(
                    "the next transaction in slot \"\(slot)\" commits at \(commitLSN), not \(target); nothing skipped (it may have been skipped or relayed already)"
                )
            }
            try connection.query(
                "SELECT pg_replication_slot_advance(\(connection.literal(slot)), '\(endLSN)'::pg_lsn)",
                label: "advancing the slot")
            logger.warning(
                "skipped one transaction on purpose: its events are not relayed",
                metadata: [
                    "slot": "\(slot)", "commit_lsn": "\(commitLSN)", "end_lsn": "\(endLSN)",
                    "events": "\(dropped.count)",
                    "dropped": "\(dropped.prefix(50).joined(separator: "; "))\(dropped.count > 50 ? "; …" : "")",
                ])
        } catch let refused as SkipRefused {
            logger.critical("\(refused.message)")
            throw ExitCode(1)
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
    }

    struct SkipRefused: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }
}

/// `outbox-relay tail`: decoded events from a slot, printed as NDJSON, without
/// confirming anything (the slot's position does not move).
struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the events waiting in a slot (and new ones as they commit) without confirming anything.",
        discussion:
            "A debugging aid: the slot's confirmed position stays where it was. Stop with Ctrl-C, or with --limit."
    )

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot (pgoutput); must not be in use.")
    var slot = "outbox_slot"

    @Option(help: "Publication that publishes the outbox table.")
    var publication = "outbox_pub"

    @Option(help: "Stop after this many events.")
    var limit: Int?

    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions
    @OptionGroup(title: "Logging") var logOptions: LogOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
    }

    func run() async throws {
        let logger = logOptions.bootstrap()
        let signals = StartupSignals(logger: logger)
        var config = RelayConfig(
            replication: {
                var options = ReplicationOptions(
                    conninfo: database.resolved()!, slot: slot, publication: publication,
                    table: routingOptions.splitTable(), createSlot: false)
                options.recordsSlot = false  // a read-only look writes nothing
                return options
            }(),
            routing: routingOptions.routing())
        config.confirms = false
        config.eventLimit = limit
        config.publicationCheckMilliseconds = 0
        let relay = Relay(config: config, sink: NDJSONSink.stdout(), logger: logger)
        do {
            try await runServices(relay: relay, metrics: nil, http: nil, signals: signals, logger: logger)
        } catch {
            logger.critical("tail stopped: \(error)")
            throw ExitCode(1)
        }
    }
}

/// `outbox-relay init`: applies the SQL setup in sql/ (idempotent).
struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the outbox table, the publication and the message helper (sql/*.sql); safe to run again.",
        discussion: """
            Applies sql/01-outbox-table.sql, 02-publication.sql, 04-emit-message.sql and 06-slot-registry.sql; with --with-role also \
            03-relay-role.sql (needs CREATEROLE), with --with-polling also 05-polling.sql. The files are looked \
            up in --sql-dir, $OUTBOX_RELAY_SQL_DIR, next to the binary (../share/outbox-relay/sql) and in the \
            source tree.
            """
    )

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: ArgumentHelp("The outbox table to create.", valueName: "schema.table"))
    var table = "public.outbox"

    @Option(help: "The publication to create.")
    var publication = "outbox_pub"

    @Flag(help: "Also create the outbox_relay role (sql/03-relay-role.sql).")
    var withRole = false

    @Flag(help: "Also the index and NOTIFY trigger for outbox-relay poll (sql/05-polling.sql).")
    var withPolling = false

    @Option(help: "Directory holding the sql/ files.")
    var sqlDir: String?

    @OptionGroup(title: "Logging") var logOptions: LogOptions

    func validate() throws {
        let parts = table.split(separator: ".")
        if parts.count != 2 || parts.contains(where: { $0.isEmpty }) {
            throw ValidationError("--table must be schema.table, got \"\(table)\"")
        }
        if publication.isEmpty { throw ValidationError("--publication must not be empty") }
    }

    func directory() -> String? {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        let candidates =
            [sqlDir, ProcessInfo.processInfo.environment["OUTBOX_RELAY_SQL_DIR"]].compactMap { $0 } + [
                binary.appendingPathComponent("../share/outbox-relay/sql").path,
                binary.appendingPathComponent("../../sql").path,
                binary.appendingPathComponent("../../../sql").path, "/usr/share/outbox-relay/sql",
            ]
        return candidates.first { FileManager.default.fileExists(atPath: $0 + "/01-outbox-table.sql") }
    }

    func run() throws {
        let logger = logOptions.bootstrap()
        guard let directory = directory() else {
            logger.critical("cannot find the sql/ files; pass --sql-dir")
            throw ExitCode(1)
        }
        var files = ["01-outbox-table.sql", "02-publication.sql"]
        if withRole { files.append("03-relay-role.sql") }
        files.append("04-emit-message.sql")
        files.append("06-slot-registry.sql")
        if withPolling { files.append("05-polling.sql") }
        let connection: PGConnection
        do {
            connection = try PGConnection(
                conninfo: database.resolved()!, replication: false, applicationName: "outbox-relay-init")
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        let schema = String(table.split(separator: ".")[0])
        for file in files {
            guard let data = FileManager.default.contents(atPath: directory + "/" + file) else {
                logger.critical("cannot read \(directory)/\(file)")
                throw ExitCode(1)
            }
            let sql = String(decoding: data, as: UTF8.self)
                .replacing(#/public\.outbox\b/#, with: table)
                .replacingOccurrences(of: "outbox_pub", with: publication)
                .replacingOccurrences(of: "SCHEMA public", with: "SCHEMA \(schema)")
            do {
                if schema != "public" {
                    try connection.query("CREATE SCHEMA IF NOT EXISTS \(connection.identifier(schema))")
                }
                try connection.query(sql, label: file)
                logger.notice("applied", metadata: ["file": "\(file)"])
            } catch {
                logger.critical("\(file) failed: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
