import Logging
import PGOutput
import PostgresClient

/// A slot the relay has seen, as recorded in the database itself.
public struct SlotRecord: Sendable, Equatable {
    public var slot: String
    public var systemIdentifier: String
    /// The timeline the slot was created (or first seen) on.
    public var timeline: Int
    /// Where the slot started, when the relay created it.
    public var createdLSN: LSN?
    public var createdAt: String
    /// The slot's `confirmed_flush_lsn` when a relay last connected to it: events
    /// committed after it may be missing once the slot is gone.
    public var confirmedLSN: LSN?
    public var seenAt: String
}

/// Records that a slot existed, where every later start can read it: a row in
/// `public.outbox_relay_slots` of the slot's own database. The table is
/// ordinary data, so it travels with physical replication: after a failover
/// to a standby that never had the logical slot (PostgreSQL 13–16, or 17+
/// without failover slots), the promoted server still says the slot existed.
/// A missing slot with a row here is **lost** — never a first start — and only
/// `outbox-relay recreate-slot --accept-gap` creates it again (ARCHITECTURE.md rule 9).
///
/// The relay writes the row when it creates a slot and refreshes it (with the
/// slot's confirmed position) on every connect. It uses an ordinary connection of
/// its own; a role that may not create or write the table gets a warning, and
/// loss detection is then unavailable (sql/06-slot-registry.sql grants it).
public enum SlotRegistry {
    public static let table = "public.outbox_relay_slots"

    static let ddl = """
        CREATE TABLE IF NOT EXISTS public.outbox_relay_slots (
            slot_name text NOT NULL,
            database text NOT NULL DEFAULT current_database(),
            system_identifier text NOT NULL,
            timeline int NOT NULL,
            created_lsn pg_lsn,
            created_at timestamptz NOT NULL DEFAULT now(),
            confirmed_lsn pg_lsn,
            seen_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (slot_name, database))
        """

    /// The record of `slot` in this database, or nil (none, or no table).
    public static func lookup(_ connection: PGConnection, slot: String) throws(ReplicationError) -> SlotRecord? {
        let rows: PGConnection.Rows
        do {
            rows = try connection.query(
                """
                SELECT slot_name, system_identifier, timeline, created_lsn, created_at::text AS created_at,
                       confirmed_lsn, seen_at::text AS seen_at
                FROM public.outbox_relay_slots WHERE slot_name = \(connection.literal(slot)) AND database = current_database()
                """, label: "reading \(table)")
        } catch .serverError(_, "42P01", _) {
            return nil  // no table: no slot was ever recorded here
        }
        guard rows.count == 1 else { return nil }
        return SlotRecord(
            slot: slot, systemIdentifier: rows[0, "system_identifier"] ?? "?",
            timeline: Int(rows[0, "timeline"] ?? "") ?? 0,
            createdLSN: rows[0, "created_lsn"].flatMap { LSN(string: $0) }, createdAt: rows[0, "created_at"] ?? "?",
            confirmedLSN: rows[0, "confirmed_lsn"].flatMap { LSN(string: $0) }, seenAt: rows[0, "seen_at"] ?? "?")
    }

    /// Records that `slot` exists: on creation with its start position (which
    /// resets the record), otherwise the position it was seen at.
    public static func record(
        _ connection: PGConnection, slot: String, systemIdentifier: String, timeline: Int, createdLSN: LSN?,
        confirmedLSN: LSN?
    ) throws(ReplicationError) {
        func lsn(_ value: LSN?) -> String { value.map { "'\($0)'::pg_lsn" } ?? "NULL" }
        let values =
            "\(connection.literal(slot)), \(connection.literal(systemIdentifier)), \(timeline), \(lsn(createdLSN)), \(lsn(confirmedLSN))"
        let update =
            createdLSN == nil
            ? "confirmed_lsn = EXCLUDED.confirmed_lsn, seen_at = now()"
            : "system_identifier = EXCLUDED.system_identifier, timeline = EXCLUDED.timeline, created_lsn = EXCLUDED.created_lsn, created_at = now(), confirmed_lsn = EXCLUDED.confirmed_lsn, seen_at = now()"
        let upsert = """
            INSERT INTO public.outbox_relay_slots (slot_name, system_identifier, timeline, created_lsn, confirmed_lsn)
            VALUES (\(values)) ON CONFLICT (slot_name, database) DO UPDATE SET \(update)
            """
        do {
            try connection.query(upsert, label: "recording the slot in \(table)")
        } catch .serverError(_, "42P01", _) {
            do { try connection.query(ddl, label: "creating \(table)") } catch .serverError(_, "23505", _) {
                // Created concurrently by another relay.
            } catch .serverError(_, "42P07", _) {}
            try connection.query(upsert, label: "recording the slot in \(table)")
        }
    }

    /// What to tell the operator about a slot that is gone.
    public static func lossDescription(
        _ record: SlotRecord, slot: String, systemIdentifier: String, timeline: Int
    ) -> String {
        let cause: String
        if record.systemIdentifier != systemIdentifier {
            cause =
                "the record comes from another cluster (system identifier \(record.systemIdentifier), this one is \(systemIdentifier)): the database was restored or copied"
        } else if timeline != record.timeline {
            cause =
                "the server is on timeline \(timeline), the slot was recorded on timeline \(record.timeline): a standby was promoted (failover) that never had the slot — PostgreSQL before 17 does not copy logical slots to standbys, 17+ only failover slots"
        } else {
            cause =
                "it was dropped (for example by a DBA removing an inactive slot that held WAL), or the server was restored or failed over to a standby without it"
        }
        let position = record.confirmedLSN.map { "\($0) (when a relay last connected, \(record.seenAt))" } ?? "unknown"
        return
            "replication slot \"\(slot)\" existed here (recorded \(record.createdAt), timeline \(record.timeline)) but is gone: \(cause). Events committed after its last confirmed position \(position) may never have been relayed. The relay does not create it again by itself, because a new slot starts at the current WAL position and would skip them. Recover them first (with polling's --mark-column the rows are still in the table: `outbox-relay poll --until-empty` republishes them; otherwise from the service), then accept the gap explicitly: `outbox-relay recreate-slot --slot \(slot) --accept-gap`"
    }
}
