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

    public init() {}
}
