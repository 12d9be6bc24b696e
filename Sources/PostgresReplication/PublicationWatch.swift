import Foundation
import Logging
import PGOutput
import PostgresClient
import Synchronization

/// Re-checks, while the relay streams, that the publication still publishes
/// inserts of the outbox table, and reads the slot's `wal_status`.
///
/// pgoutput filters changes with the catalog as it was at each change's
/// position: after `ALTER PUBLICATION … DROP TABLE outbox` (or `SET (publish =
/// 'delete')`) inserts simply stop arriving, with no error on the stream, and
/// nothing the relay could confirm would tell the difference from a quiet
/// outbox. This watch turns that into a fatal, named error.
///
/// It runs on a thread of its own with an ordinary (non-replication)
/// connection — a connection in COPY BOTH mode cannot run SQL, and a check
/// (two round trips, or a reconnect bounded by `connect_timeout`) must never
/// stall the replication stream. The relay reads the latest verdict, a lock
/// and a copy, once per loop. A failure of the watch's own connection is not
/// fatal: it is logged at debug level and the next check reconnects.
///
/// `@unchecked Sendable`: `options` and `logger` are immutable; the verdict is
/// behind a `Mutex` and the run flag is an `Atomic`; the connection lives only
/// on the watch's thread.
public final class PublicationWatch: @unchecked Sendable {
    let options: ReplicationOptions
    let logger: Logger
    let intervalMilliseconds: Int
    private let latest = Mutex<(slot: SlotStatus?, failure: ReplicationError?)>((nil, nil))
    private let running = Atomic<Bool>(false)

    /// The slot as the server sees it, read by the same check.
    public struct SlotStatus: Sendable, Equatable {
        /// `reserved`, `extended`, `unreserved` or `lost`.
        public var walStatus: String?
        /// Bytes of WAL that can still be written before the slot is in danger of being invalidated (`max_slot_wal_keep_size`); nil when unlimited.
        public var safeWALSize: Int64?
        /// 17+: a failover slot, and whether this copy is a standby's synchronized one.
        public var failover = false
        public var synced = false
        /// Why the server invalidated it (17+ `invalidation_reason`, 16 `conflicting`), nil while valid.
        public var invalidation: String?
    }

    public init(options: ReplicationOptions, intervalMilliseconds: Int, logger: Logger) {
        self.options = options
        self.intervalMilliseconds = intervalMilliseconds
        self.logger = logger
    }

    /// The slot's status from the latest successful check, and the failure
    /// once a check found the publication unusable (the relay stops with it).
    public var verdict: (slot: SlotStatus?, failure: ReplicationError?) { latest.withLock { $0 } }

    /// Checks at once, then every `intervalMilliseconds`, until `stop()`.
    public func start() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Thread { [self] in
            var connection: PGConnection?
            while running.load(ordering: .acquiring) {
                let result = check(&connection)
                latest.withLock {
                    if case .failure(let error) = result { $0.failure = error }
                    if case .success(let slot?) = result { $0.slot = slot }
                }
                if case .failure = result { break }
                var waited = 0
                while waited < intervalMilliseconds && running.load(ordering: .acquiring) {
                    usleep(50_000)
                    waited += 50
                }
            }
        }.start()
    }

    /// Ends the checks (the thread finishes its current one and exits).
    public func stop() { running.store(false, ordering: .releasing) }

    /// One check: `.failure` only when the publication is unusable; other
    /// problems (the watch's connection) give `.success(nil)` and a reconnect next time.
    func check(_ connection: inout PGConnection?) -> Result<SlotStatus?, ReplicationError> {
        do {
            if connection == nil {
                connection = try PGConnection(
                    conninfo: options.conninfo, replication: false, applicationName: "outbox-relay-watch")
            }
            let c = connection!
            if options.table != nil {
                try ReplicationSession.checkPublication(c, options, mayCreate: false, logger: logger)
            }
            let rows = try c.query(
                "SELECT wal_status, safe_wal_size, \(ReplicationSession.slotColumns(serverVersion: c.serverVersion)) FROM pg_replication_slots WHERE slot_name = \(c.literal(options.slot))",
                label: "reading the slot's status")
            guard rows.count == 1 else { return .success(nil) }
            return .success(
                SlotStatus(
                    walStatus: rows[0, "wal_status"], safeWALSize: rows[0, "safe_wal_size"].flatMap { Int64($0) },
                    failover: rows[0, "failover"] == "t", synced: rows[0, "synced"] == "t",
                    invalidation: rows[0, "invalidation"]))
        } catch .publicationUnusable(let publication, let reason) {
            return .failure(
                .publicationUnusable(
                    publication: publication,
                    reason:
                        "\(reason). It was altered while the relay ran: inserts committed after the change are not in the replication stream (pgoutput filters them), so they cannot be relayed from the log; after adding the table back, republish rows written since the change from the table itself"
                ))
        } catch .publicationMissing(let publication) {
            return .failure(.publicationMissing(publication))
        } catch {
            logger.debug("publication check skipped", metadata: ["error": "\(error)"])
            connection = nil
            return .success(nil)
        }
    }
}
