import PGOutput

/// Counters and positions of a running relay (the basis of metrics and status).
public struct RelayStats: Sendable, Equatable {
    public enum State: String, Sendable {
        /// `streaming`: reading the log (`run`) or polling the table (`poll`).
        case starting, connecting, streaming, standby, reconnecting, stopping, stopped, failed
    }

    public var state: State = .starting
    public var transactions = 0
    public var eventsPublished = 0
    public var eventsAcknowledged = 0
    public var tombstones = 0
    /// Rows and events sent to the dead-letter destination.
    public var deadLettered = 0
    /// Changes to the outbox table that never become events.
    public var suppressedDeletes = 0
    public var suppressedUpdates = 0
    public var suppressedTruncates = 0
    /// Inserts into other tables of the publication.
    public var otherTableChanges = 0
    /// Messages with another prefix, or non-transactional ones (which could be phantom events).
    public var ignoredMessages = 0
    public var nonTransactionalMessages = 0
    /// `headers` members dropped because they used a name the relay sets itself (`id`, `type`, `lsn`, …).
    public var droppedHeaderMembers = 0
    public var reconnects = 0
    public var statusUpdates = 0
    /// Polling mode: claim queries run, and those that found rows.
    public var polls = 0
    public var nonEmptyPolls = 0
    public var confirmedLSN = LSN.zero
    public var receivedLSN = LSN.zero
    public var serverWALEnd = LSN.zero
    public var inFlightEvents = 0
    public var inFlightBytes = 0

    /// Events sent to the sink, per topic.
    public var eventsByTopic: [String: Int] = [:]
    /// Commit time of the oldest transaction not fully acknowledged (Unix µs), 0 when none.
    public var oldestPendingCommitMicros: Int64 = 0
    /// Monotonic ms of the last acknowledgement, for stall detection.
    public var lastAcknowledgementAt = 0
    /// The sink's own view of its destination (Kafka: some broker reachable).
    public var sinkReachable = true
    /// The longest the relay's thread spent between two waits (one loop turn:
    /// reading, sending, the sink's calls), in milliseconds: what a destination
    /// that blocks would show here, and PostgreSQL would miss status updates for.
    public var longestTurnMilliseconds = 0
    /// From the periodic server check: the slot's `wal_status` and `safe_wal_size` (bytes).
    public var slotWALStatus: String?
    public var slotSafeWALSize: Int64?
    /// From the same check (17+): the slot is a failover slot; it is a standby's synchronized copy.
    public var slotFailover = false
    public var slotSynced = false
    /// The server's reason if it invalidated the slot (17+ `invalidation_reason`, 16 `conflicting`).
    public var slotInvalidation: String?

    public init() {}

    /// Replication lag in bytes: the server's WAL end minus what is confirmed.
    public var lagBytes: Int64 {
        serverWALEnd > confirmedLSN ? Int64(serverWALEnd.rawValue - confirmedLSN.rawValue) : 0
    }

    /// Seconds since the commit of the oldest transaction not yet acknowledged; 0 when caught up.
    public func lagSeconds(nowMicros: Int64) -> Double {
        oldestPendingCommitMicros > 0 ? max(0, Double(nowMicros - oldestPendingCommitMicros) / 1e6) : 0
    }

    /// Ready to serve its purpose: streaming, and the sink delivering (reachable,
    /// and not sitting on unacknowledged events for `stallMilliseconds`).
    public func isReady(nowMilliseconds: Int, stallMilliseconds: Int = 10_000) -> Bool {
        guard state == .streaming && sinkReachable else { return false }
        return inFlightEvents == 0 || nowMilliseconds - lastAcknowledgementAt < stallMilliseconds
    }
}

/// Told each event's latencies as the sink acknowledges it: a metrics backend
/// implements it (the CLI's Prometheus exporter). Called on the relay's thread,
/// so it must be quick and thread-safe.
public protocol LatencyObserver: Sendable {
    /// `publishSeconds`: from sending the transaction's first event to this
    /// event's acknowledgement; `commitToAcknowledgedSeconds`: from the
    /// transaction's commit timestamp to it, when the commit time is known.
    func acknowledged(publishSeconds: Double, commitToAcknowledgedSeconds: Double?)
}
