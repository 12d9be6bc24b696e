import PGOutput

/// What can go wrong with the replication connection, each with a message an
/// operator can act on and a defined outcome: `isRetryable` errors make the
/// relay reconnect with backoff; the others stop it before anything more is
/// confirmed, because retrying could not help or could skip events.
public enum ReplicationError: Error, Sendable, CustomStringConvertible {
    /// Could not connect for a reason that may pass (server down or starting, too many connections, a timeout).
    case connectionFailed(String)
    /// The server or libpq refused the connection for a reason no retry can fix
    /// (wrong password, no such database or role, no REPLICATION privilege, TLS
    /// verification, an invalid option): `fix` says what to change.
    case connectionRejected(String, fix: String)
    /// The connection dropped or the server ended the stream.
    case connectionLost(String)
    /// Another process streams from the slot; this relay waits as a hot standby.
    case slotInUse(slot: String, pid: Int?)
    /// The slot does not exist and `--create-slot` was not given (or it vanished while we ran).
    case slotMissing(slot: String, hint: String)
    /// The slot is missing but was recorded as existing (`SlotRegistry`): dropped,
    /// or a failover to a server that never had it. Never recreated silently.
    case slotVanished(slot: String, detail: String)
    /// The server invalidated the slot (`reason`: `wal_removed`, `idle_timeout`,
    /// `rows_removed`, …): events after its position are gone from the log.
    case slotLost(slot: String, reason: String)
    /// 17+ standby: the slot is synchronized from the primary; usable after promotion.
    case slotSynced(slot: String)
    /// The slot uses another output plugin, is physical, or belongs to another database.
    case slotUnusable(slot: String, reason: String)
    case publicationMissing(String)
    case publicationUnusable(publication: String, reason: String)
    /// The server rejected a command; `sqlState` says why.
    case serverError(command: String, sqlState: String, message: String)
    /// The stream carried bytes we could not decode.
    case undecodable(DecodeError)
    /// Invalid configuration (e.g. a slot name PostgreSQL would reject).
    case invalidConfiguration(String)

    public var isRetryable: Bool {
        switch self {
        case .connectionFailed, .connectionLost, .slotInUse, .slotSynced: return true
        case .serverError(_, let state, _):
            // Class 08 connection exceptions, 53 insufficient resources, 57P admin shutdown/cannot connect now.
            return state.hasPrefix("08") || state.hasPrefix("53") || state.hasPrefix("57P")
        default: return false
        }
    }

    /// Classifies a failed connection attempt by libpq's message (a connection
    /// failure has no SQLSTATE in libpq's API): the permanent ones, which no retry
    /// can fix, become `connectionRejected` with what to change.
    public static func connecting(_ message: String) -> ReplicationError {
        func any(_ needles: String...) -> Bool { needles.contains { message.contains($0) } }
        let transient = any(
            "the database system is starting up", "the database system is shutting down", "too many", "timeout expired",
            "Connection refused", "server closed the connection unexpectedly", "in recovery mode", "abandoned",
            "could not translate host name")
        if transient { return .connectionFailed(message) }
        let fix: String? =
            if any(
                "password authentication failed", "password is required", "no password supplied",
                "SASL authentication failed")
            {
                "Fix the password (SQLSTATE 28P01); it comes from the connection string, OUTBOX_RELAY_SOURCE_FILE or ~/.pgpass"
            } else if any("database \"") && any("does not exist") {
                "Create the database or fix dbname (SQLSTATE 3D000)"
            } else if any("role \"") && any("does not exist") {
                "Create the role or fix user (SQLSTATE 28000)"
            } else if any("no pg_hba.conf entry") {
                "Allow this client in pg_hba.conf with a line naming the database (or all) and the role, then reload; a logical replication connection matches such a line, not the `replication` keyword, which is for physical standbys (SQLSTATE 28000)"
            } else if any("must be superuser or replication role", "permission denied to start WAL sender") {
                "Give the role REPLICATION: ALTER ROLE … REPLICATION, see sql/03-relay-role.sql (SQLSTATE 42501)"
            } else if any("certificate verify failed", "certificate", "server does not support SSL", "SSL error") {
                "Fix the TLS settings: sslmode, sslrootcert, the server's certificate"
            } else if any(
                "invalid connection option", "invalid sslmode", "invalid integer value", "invalid port",
                "invalid value for parameter")
            {
                "Fix the connection string's options"
            } else {
                nil
            }
        if let fix { return .connectionRejected(message, fix: fix) }
        return .connectionFailed(message)
    }

    /// An invalidation reason in words, with the setting behind it.
    public static func explain(invalidation reason: String) -> String {
        switch reason {
        case "wal_removed": return "wal_removed: PostgreSQL removed WAL it still needed, max_slot_wal_keep_size"
        case "idle_timeout": return "idle_timeout: inactive longer than idle_replication_slot_timeout"
        case "rows_removed":
            return
                "rows_removed: a standby's recovery conflict, the primary removed rows it needed (hot_standby_feedback off?)"
        case "wal_level_insufficient": return "wal_level_insufficient: the primary's wal_level is below logical"
        default: return reason
        }
    }

    public var description: String {
        switch self {
        case .connectionFailed(let m): return "cannot connect to PostgreSQL: \(m)"
        case .connectionRejected(let m, let fix): return "PostgreSQL rejected the connection: \(m). \(fix)"
        case .connectionLost(let m): return "replication connection lost: \(m)"
        case .slotInUse(let slot, let pid):
            return
                "replication slot \"\(slot)\" is in use by another process\(pid.map { " (PID \($0))" } ?? ""); waiting as a hot standby"
        case .slotMissing(let slot, let hint):
            return "replication slot \"\(slot)\" does not exist: \(hint)"
        case .slotVanished(_, let detail): return detail
        case .slotLost(let slot, let reason):
            return
                "replication slot \"\(slot)\" is invalidated (\(Self.explain(invalidation: reason))): events after its confirmed position are gone from the log. Recover them from the outbox table or the service, then drop the slot and create it again deliberately (`outbox-relay recreate-slot --accept-gap` after the drop)"
        case .slotSynced(let slot):
            return
                "replication slot \"\(slot)\" is a failover slot synchronized from the primary (this server is a standby); waiting as a hot standby until this server is promoted"
        case .slotUnusable(let slot, let reason):
            return "replication slot \"\(slot)\" cannot be used: \(reason)"
        case .publicationMissing(let p):
            return
                "publication \"\(p)\" does not exist: create it (sql/02-publication.sql) or start with --create-slot"
        case .publicationUnusable(let p, let reason):
            return "publication \"\(p)\" cannot be used: \(reason)"
        case .serverError(let command, let state, let message):
            return "\(command) failed (SQLSTATE \(state)): \(message)"
        case .undecodable(let error): return "undecodable replication message: \(error)"
        case .invalidConfiguration(let m): return m
        }
    }
}
