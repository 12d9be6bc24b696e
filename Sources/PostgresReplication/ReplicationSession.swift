import Foundation
import Logging
import PGOutput
import PostgresClient

/// What to stream and how.
public struct ReplicationOptions: Sendable {
    public var conninfo: String
    public var slot: String
    public var publication: String
    /// The outbox table the publication must publish (`schema`, `name`); nil for a
    /// message-only outbox.
    public var table: (schema: String, name: String)?
    /// The outbox table's columns the events are made of: a generated one among
    /// them is named at start (pgoutput before 18 never sends generated columns).
    public var columns: [String] = []
    /// Create the slot and the publication if they are missing (first start only).
    public var createSlot: Bool
    /// pgoutput `proto_version`. The relay runs 1: transactions arrive whole at commit.
    public var protocolVersion: Int
    /// pgoutput `messages`: include logical decoding messages.
    public var messages: Bool
    /// Record the slot in `SlotRegistry` on every connect (false for a read-only `tail`).
    public var recordsSlot = true
    /// PostgreSQL 17+: create slots as failover slots (synchronized to standbys
    /// with `sync_replication_slots`), and turn existing ones into failover slots.
    public var failoverSlot = true

    public init(
        conninfo: String, slot: String, publication: String, table: (schema: String, name: String)?,
        createSlot: Bool = false, protocolVersion: Int = 1, messages: Bool = true
    ) {
        self.conninfo = conninfo
        self.slot = slot
        self.publication = publication
        self.table = table
        self.createSlot = createSlot
        self.protocolVersion = protocolVersion
        self.messages = messages
    }

    /// Slot names: lowercase letters, digits and underscores, at most 63 (NAMEDATALEN - 1).
    public static func validateSlotName(_ name: String) -> String? {
        guard !name.isEmpty, name.utf8.count <= 63,
            name.utf8.allSatisfy({ (97...122).contains($0) || (48...57).contains($0) || $0 == 95 })
        else {
            return "invalid slot name \"\(name)\": use 1–63 lowercase letters, digits and underscores"
        }
        return nil
    }
}

/// A state a slot is in, read from `pg_replication_slots`.
public struct SlotInfo: Sendable {
    /// Why the server invalidated it: 17+ `invalidation_reason`, 16 `conflicting`
    /// (a standby's recovery conflict), else `wal_status = lost`.
    public var invalidation: String?
    /// 17+: a failover slot; `synced`: a standby's copy kept by its slot sync worker.
    public var failover = false
    public var synced = false
    public var plugin: String?
    public var slotType: String
    public var database: String?
    public var active: Bool
    public var activePID: Int?
    public var walStatus: String?
    public var confirmedFlush: LSN?
}

/// One replication connection from connect to stream end: checks the slot and
/// publication, starts pgoutput, reads CopyData, and reports progress.
///
/// Used from a single thread (the relay's I/O thread), like its `PGConnection`.
public final class ReplicationSession {
    public let connection: PGConnection
    public let options: ReplicationOptions
    public let systemID: String
    public let timeline: Int
    /// The server's WAL position when we connected.
    public let serverPosition: LSN
    /// The slot's `confirmed_flush_lsn` when we connected: where streaming resumes.
    public let slotConfirmedFlush: LSN
    /// True when this session created the slot.
    public let createdSlot: Bool
    /// `PQserverVersion`, e.g. 170011; read once, and what to send is chosen from it.
    public let serverVersion: Int
    /// The server is a standby (logical decoding on a standby, 16+).
    public let inRecovery: Bool
    /// 17+: the slot is a failover slot (after this session made it one, from the next connect).
    public private(set) var slotFailover = false
    /// The walsender's `wal_sender_timeout` in ms (0: disabled), nil if it could not be read:
    /// the relay reports at least every half of it, and a stall longer than it ends the session.
    public let walSenderTimeoutMilliseconds: Int?
    private var lastSentFlush = LSN.zero
    private let logger: Logger

    /// Connects and checks everything a stream needs before it starts, so that
    /// misconfiguration fails here with a precise message rather than at the
    /// first decoded change (START_REPLICATION accepts a missing publication).
    /// `mayCreate` allows creating a missing slot/publication (only on the
    /// process's first connect: a slot that vanishes later is never recreated,
    /// which would silently skip events).
    /// `interrupt`: a descriptor that becomes readable when the relay stops, ending a connect attempt.
    public init(
        options: ReplicationOptions, mayCreate: Bool, logger: Logger, interrupt: Int32? = nil
    ) throws(ReplicationError) {
        if let problem = ReplicationOptions.validateSlotName(options.slot) {
            throw .invalidConfiguration(problem)
        }
        guard (1...4).contains(options.protocolVersion) else {
            throw .invalidConfiguration("pgoutput protocol version must be 1–4")
        }
        self.options = options
        self.logger = logger
        let connection = try PGConnection(conninfo: options.conninfo, replication: true, interrupt: interrupt)
        self.connection = connection

        let identity = try connection.query("IDENTIFY_SYSTEM")
        guard identity.count == 1, let position = identity[0, "xlogpos"].flatMap({ LSN(string: $0) })
        else {
            throw .serverError(
                command: "IDENTIFY_SYSTEM", sqlState: "XX000",
                message: "unexpected reply; is this a replication=database connection?")
        }
        systemID = identity[0, "systemid"] ?? "?"
        timeline = Int(identity[0, "timeline"] ?? "") ?? 0
        serverPosition = position
        guard identity[0, "dbname"] != nil else {
            throw .invalidConfiguration(
                "the connection is a physical replication connection; logical decoding needs a database (dbname=…)"
            )
        }

        serverVersion = connection.serverVersion
        guard serverVersion >= 140_000 else {
            throw .invalidConfiguration(
                "PostgreSQL \(serverVersion / 10_000) is not supported: the relay needs 14 or later (13's pgoutput has no logical decoding messages, and 13 is past its end of life). Nothing was created on the server"
            )
        }
        inRecovery = (try? connection.query("SELECT pg_is_in_recovery() AS r"))?[0, "r"] == "t"

        var slot = try Self.slotInfo(connection, options.slot)
        var created = false
        if slot == nil {
            // A slot that existed here before is lost, not missing: say so, never create it again.
            let registry = try PGConnection(conninfo: options.conninfo, replication: false, interrupt: interrupt)
            if let record = try SlotRegistry.lookup(registry, slot: options.slot),
                try Self.slotInfo(connection, options.slot) == nil  // not just created by a replica starting with us
            {
                throw .slotVanished(
                    slot: options.slot,
                    detail: SlotRegistry.lossDescription(
                        record, slot: options.slot, systemIdentifier: systemID, timeline: timeline))
            }
            guard options.createSlot && mayCreate else {
                throw .slotMissing(
                    slot: options.slot,
                    hint: options.createSlot
                        ? "it disappeared while the relay was running; it is not recreated automatically, because a new slot would skip every event committed in between"
                        : "for a first start, create it (start once with --create-slot, or `outbox-relay init`). If it existed before — a failover to a standby, or a DBA dropped it — events after its last position may be missing: see docs/guarantees.md, \"A lost slot\""
                )
            }
            if try Self.slotInfo(connection, options.slot) == nil,
                let point = try Self.createSlot(
                    connection, options.slot, failover: options.failoverSlot && serverVersion >= 170_000 && !inRecovery,
                    logger: logger)
            {
                created = true
                Self.record(
                    registry, options.slot, systemID, timeline, created: point, confirmed: point, logger: logger)
            }
            slot = try Self.slotInfo(connection, options.slot)
        } else if options.recordsSlot {
            if let registry = try? PGConnection(conninfo: options.conninfo, replication: false, interrupt: interrupt) {
                Self.record(
                    registry, options.slot, systemID, timeline, created: nil, confirmed: slot?.confirmedFlush,
                    logger: logger)
            }
        }
        guard let slot else {
            throw .slotMissing(slot: options.slot, hint: "it was dropped while starting")
        }
        createdSlot = created
        guard slot.slotType == "logical" else {
            throw .slotUnusable(
                slot: options.slot, reason: "it is a \(slot.slotType) slot; a logical slot is needed")
        }
        guard slot.plugin == "pgoutput" else {
            throw .slotUnusable(
                slot: options.slot,
                reason:
                    "it uses output plugin \"\(slot.plugin ?? "?")\"; the relay needs \"pgoutput\". Create a new slot with plugin pgoutput"
            )
        }
        let database = try connection.query("SELECT current_database() AS db")[0, "db"]
        guard slot.database == database else {
            throw .slotUnusable(
                slot: options.slot,
                reason:
                    "it belongs to database \"\(slot.database ?? "?")\", but the connection is to \"\(database ?? "?")\""
            )
        }
        if slot.walStatus == "lost" || slot.invalidation != nil {
            throw .slotLost(slot: options.slot, reason: slot.invalidation ?? "wal_removed")
        }
        if slot.synced && inRecovery {
            // 17+: the standby's slot sync worker keeps it; it becomes usable at promotion.
            throw .slotSynced(slot: options.slot)
        }
        if slot.active { throw .slotInUse(slot: options.slot, pid: slot.activePID) }
        if options.failoverSlot && serverVersion >= 170_000 && !inRecovery && !slot.failover && options.recordsSlot {
            do {
                try connection.query(
                    "ALTER_REPLICATION_SLOT \(connection.identifier(options.slot)) (FAILOVER true)",
                    label: "ALTER_REPLICATION_SLOT")
                logger.notice("made the slot a failover slot (PostgreSQL 17+)", metadata: ["slot": "\(options.slot)"])
            } catch {
                logger.warning(
                    "cannot make the slot a failover slot", metadata: ["slot": "\(options.slot)", "error": "\(error)"])
            }
        }
        slotFailover = slot.failover
        slotConfirmedFlush = slot.confirmedFlush ?? .zero
        // The session's own value (it may be set per role or database); pg_settings gives milliseconds.
        walSenderTimeoutMilliseconds =
            (try? connection.query(
                "SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'", label: "reading wal_sender_timeout"
            ))
            .flatMap { $0[0, "setting"] }.flatMap { Int($0) }

        try Self.checkPublication(connection, options, mayCreate: mayCreate, logger: logger)
        try Self.checkGeneratedColumns(connection, options, serverVersion: serverVersion)
    }

    /// `CREATE_REPLICATION_SLOT … LOGICAL pgoutput`; returns its consistent
    /// point, or nil when another relay created it first (theirs is used).
    public static func createSlot(
        _ connection: PGConnection, _ slot: String, failover: Bool, logger: Logger
    ) throws(ReplicationError) -> LSN? {
        // The NOEXPORT_SNAPSHOT form works on every version; FAILOVER (17+) needs the option list.
        let options = failover ? "(SNAPSHOT 'nothing', FAILOVER true)" : "NOEXPORT_SNAPSHOT"
        do {
            let reply = try connection.query(
                "CREATE_REPLICATION_SLOT \(connection.identifier(slot)) LOGICAL pgoutput \(options)",
                label: "CREATE_REPLICATION_SLOT")
            let point = reply[0, "consistent_point"].flatMap { LSN(string: $0) } ?? .zero
            logger.notice(
                "created replication slot",
                metadata: ["slot": "\(slot)", "consistent_point": "\(point)", "failover": "\(failover)"])
            return point
        } catch .serverError(_, "42710", _) {
            return nil
        }
    }

    /// Records the slot in `SlotRegistry`; a failure is a warning (loss detection is then unavailable).
    static func record(
        _ connection: PGConnection, _ slot: String, _ systemID: String, _ timeline: Int, created: LSN?, confirmed: LSN?,
        logger: Logger
    ) {
        do {
            try SlotRegistry.record(
                connection, slot: slot, systemIdentifier: systemID, timeline: timeline, createdLSN: created,
                confirmedLSN: confirmed)
        } catch {
            logger.warning(
                "cannot record the slot in \(SlotRegistry.table); if the slot is ever lost, the relay cannot tell it from a first start. Grant the relay role the table (sql/06-slot-registry.sql)",
                metadata: ["slot": "\(slot)", "error": "\(error)"])
        }
    }

    /// The version-dependent columns of `pg_replication_slots` the relay reads.
    public static func slotColumns(serverVersion: Int) -> String {
        switch serverVersion {
        case 170_000...:
            return "invalidation_reason AS invalidation, failover, synced"
        case 160_000..<170_000:
            return
                "CASE WHEN conflicting THEN 'conflicting (recovery conflict on a standby)' END AS invalidation, false AS failover, false AS synced"
        default:
            return "NULL::text AS invalidation, false AS failover, false AS synced"
        }
    }

    static func slotInfo(_ c: PGConnection, _ name: String) throws(ReplicationError) -> SlotInfo? {
        let rows = try c.query(
            "SELECT slot_type, plugin, database, active, active_pid, wal_status, confirmed_flush_lsn, \(slotColumns(serverVersion: c.serverVersion)) FROM pg_replication_slots WHERE slot_name = \(c.literal(name))",
            label: "reading pg_replication_slots")
        guard rows.count == 1 else { return nil }
        return SlotInfo(
            invalidation: rows[0, "invalidation"], failover: rows[0, "failover"] == "t",
            synced: rows[0, "synced"] == "t",
            plugin: rows[0, "plugin"], slotType: rows[0, "slot_type"] ?? "?",
            database: rows[0, "database"], active: rows[0, "active"] == "t",
            activePID: rows[0, "active_pid"].flatMap { Int($0) }, walStatus: rows[0, "wal_status"],
            confirmedFlush: rows[0, "confirmed_flush_lsn"].flatMap { LSN(string: $0) })
    }

    static func checkPublication(
        _ c: PGConnection, _ options: ReplicationOptions, mayCreate: Bool, logger: Logger
    ) throws(ReplicationError) {
        let pub = c.literal(options.publication)
        func read() throws(ReplicationError) -> PGConnection.Rows {
            let tableTest =
                options.table.map {
                    "EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname AND t.schemaname = \(c.literal($0.schema)) AND t.tablename = \(c.literal($0.name)))"
                }
                ?? "true"
            return try c.query(
                "SELECT p.pubinsert, \(tableTest) AS has_table FROM pg_publication p WHERE p.pubname = \(pub)",
                label: "reading pg_publication")
        }
        var rows = try read()
        if rows.count == 0 {
            guard options.createSlot && mayCreate, let table = options.table else {
                throw .publicationMissing(options.publication)
            }
            let qualified = "\(c.identifier(table.schema)).\(c.identifier(table.name))"
            let exists =
                try c.query("SELECT to_regclass(\(c.literal(qualified))) IS NOT NULL AS present")[
                    0, "present"] == "t"
            guard exists else {
                throw .publicationUnusable(
                    publication: options.publication,
                    reason:
                        "table \(table.schema).\(table.name) does not exist; create it first (sql/01-outbox-table.sql)"
                )
            }
            do {
                try c.query(
                    "CREATE PUBLICATION \(c.identifier(options.publication)) FOR TABLE \(qualified) WITH (publish = 'insert')",
                    label: "CREATE PUBLICATION")
                logger.notice(
                    "created publication",
                    metadata: [
                        "publication": "\(options.publication)", "table": "\(table.schema).\(table.name)",
                        "publish": "insert",
                    ])
            } catch .serverError(_, let state, _) where state == "42710" || state == "23505" {
                // Another relay created it at the same moment (duplicate object, or the catalog's unique index).
            }
            rows = try read()
        }
        guard rows.count == 1 else { throw .publicationMissing(options.publication) }
        guard rows[0, "pubinsert"] == "t" else {
            throw .publicationUnusable(
                publication: options.publication,
                reason: "it does not publish inserts (publish = 'insert' is needed)")
        }
        if let table = options.table, rows[0, "has_table"] != "t" {
            throw .publicationUnusable(
                publication: options.publication,
                reason:
                    "it does not include table \(table.schema).\(table.name): ALTER PUBLICATION \(options.publication) ADD TABLE \(table.schema).\(table.name)"
            )
        }
    }

    /// A configured column that is generated never reaches the relay (pgoutput
    /// leaves generated columns out before 18, and on 18 unless the publication
    /// says `publish_generated_columns = stored`): every row would be a poison
    /// row "has no column". Say what it really is, at start.
    static func checkGeneratedColumns(
        _ c: PGConnection, _ options: ReplicationOptions, serverVersion: Int
    ) throws(ReplicationError) {
        guard let table = options.table, !options.columns.isEmpty else { return }
        let qualified = c.literal("\(c.identifier(table.schema)).\(c.identifier(table.name))")
        let names = options.columns.map { c.literal($0) }.joined(separator: ", ")
        let published =
            serverVersion >= 180_000
            ? "(SELECT pubgencols = 's' FROM pg_publication WHERE pubname = \(c.literal(options.publication)))"
            : "false"
        let rows = try c.query(
            """
            SELECT a.attname, \(published) AS published FROM pg_attribute a
            WHERE a.attrelid = to_regclass(\(qualified)) AND a.attgenerated <> '' AND NOT a.attisdropped AND a.attname IN (\(names))
            """, label: "checking for generated columns")
        guard rows.count > 0, rows[0, "published"] != "t" else { return }
        let columns = (0..<rows.count).compactMap { rows[$0, "attname"] }.map { "\"\($0)\"" }.joined(separator: ", ")
        throw .publicationUnusable(
            publication: options.publication,
            reason: serverVersion >= 180_000
                ? "column \(columns) of \(table.schema).\(table.name) is a generated column, which the publication does not publish: ALTER PUBLICATION \(options.publication) SET (publish_generated_columns = stored), or make it an ordinary column"
                : "column \(columns) of \(table.schema).\(table.name) is a generated column: PostgreSQL \(serverVersion / 10_000) does not publish generated columns to logical replication (18 can, with publish_generated_columns = stored); make it an ordinary column"
        )
    }

    /// `START_REPLICATION SLOT … LOGICAL <lsn> (…)`. The server starts at
    /// max(`lsn`, the slot's confirmed_flush_lsn); pass the relay's own confirmed
    /// position, never the last received one.
    public func start(from lsn: LSN) throws(ReplicationError) {
        let publications = connection.literal(connection.identifier(options.publication))
        var pluginOptions = [
            "proto_version '\(options.protocolVersion)'", "publication_names \(publications)",
        ]
        if options.messages { pluginOptions.append("messages 'true'") }
        let command =
            "START_REPLICATION SLOT \(connection.identifier(options.slot)) LOGICAL \(lsn) (\(pluginOptions.joined(separator: ", ")))"
        do {
            try connection.startCopyBoth(command, label: "START_REPLICATION")
        } catch .serverError(_, "55006", let message) {
            // object_in_use: "replication slot … is active for PID n"
            let pid = message.split(separator: " ").last.flatMap { Int($0) }
            throw .slotInUse(slot: options.slot, pid: pid)
        }
        lastSentFlush = max(lastSentFlush, lsn)
    }

    /// Sends a standby status update. The flush position never moves backwards,
    /// whatever the caller passes.
    public func sendStatus(
        written: LSN, flushed: LSN, replyRequested: Bool = false
    )
        throws(ReplicationError)
    {
        let flush = max(flushed, lastSentFlush)
        let update = StandbyStatusUpdate(
            written: max(written, flush), flushed: flush, applied: flush,
            clock: PostgresTimestamp(unixMicroseconds: Self.nowMicroseconds()),
            replyRequested: replyRequested)
        try connection.sendCopyData(update.encoded)
        lastSentFlush = flush
    }

    public var lastReportedFlush: LSN { lastSentFlush }

    /// Ends the stream from our side.
    public func close() { connection.endCopy() }

    static func nowMicroseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }
}
