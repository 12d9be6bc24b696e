import Logging
import PGOutput

/// Re-checks, while the relay streams, that the publication still publishes
/// inserts of the outbox table.
///
/// pgoutput filters changes with the catalog as it was at each change's
/// position: after `ALTER PUBLICATION … DROP TABLE outbox` (or `SET (publish =
/// 'delete')`) inserts simply stop arriving, with no error on the stream, and
/// nothing the relay could confirm would tell the difference from a quiet
/// outbox. This watch turns that into a fatal, named error. It runs one query
/// on an ordinary (non-replication) connection of its own, since a connection
/// in COPY BOTH mode cannot run SQL; a failure of that connection is not fatal
/// (the next check reconnects).
public final class PublicationWatch {
    let options: ReplicationOptions
    let logger: Logger
    private var connection: PGConnection?

    public init(options: ReplicationOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// The slot as the server sees it, read by the same check.
    public struct SlotStatus: Sendable, Equatable {
        /// `reserved`, `extended`, `unreserved` or `lost`.
        public var walStatus: String?
        /// Bytes of WAL that can still be written before the slot is in danger of being invalidated (`max_slot_wal_keep_size`); nil when unlimited.
        public var safeWALSize: Int64?
    }

    /// Throws `.publicationUnusable` / `.publicationMissing` when the table left
    /// the publication; other failures are logged and ignored until the next
    /// check (then the result is nil).
    public func check() throws(ReplicationError) -> SlotStatus? {
        do {
            if connection == nil {
                connection = try PGConnection(conninfo: options.conninfo, replication: false, applicationName: "outbox-relay-watch")
            }
            if options.table != nil {
                try ReplicationSession.checkPublication(connection!, options, mayCreate: false, logger: logger)
            }
            let rows = try connection!.query(
                "SELECT wal_status, safe_wal_size FROM pg_replication_slots WHERE slot_name = \(connection!.literal(options.slot))", label: "reading the slot's status")
            guard rows.count == 1 else { return nil }
            return SlotStatus(walStatus: rows[0, "wal_status"], safeWALSize: rows[0, "safe_wal_size"].flatMap { Int64($0) })
        } catch .publicationUnusable(let publication, let reason) {
            throw .publicationUnusable(
                publication: publication,
                reason:
                    "\(reason). It was altered while the relay ran: inserts committed after the change are not in the replication stream (pgoutput filters them), so they cannot be relayed from the log; after adding the table back, republish rows written since the change from the table itself"
            )
        } catch .publicationMissing(let publication) {
            throw .publicationMissing(publication)
        } catch {
            logger.debug("publication check skipped", metadata: ["error": "\(error)"])
            connection = nil
            return nil
        }
    }
}
