import PGOutput

/// A point on the driver's monotonic clock, in nanoseconds. The machine never
/// reads a clock: every input carries the time it happened.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
    public static func milliseconds(_ ms: Int) -> Instant { Instant(nanoseconds: UInt64(max(0, ms)) * 1_000_000) }
    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }
    public static func + (a: Instant, ms: Int) -> Instant {
        Instant(nanoseconds: a.nanoseconds &+ UInt64(max(0, ms)) * 1_000_000)
    }
    /// Whole milliseconds from `earlier` to `self` (0 when `earlier` is later).
    public func milliseconds(since earlier: Instant) -> Int {
        nanoseconds > earlier.nanoseconds ? Int((nanoseconds - earlier.nanoseconds) / 1_000_000) : 0
    }
    public var description: String { "\(nanoseconds / 1_000_000) ms" }

    /// Milliseconds from `self` to `deadline`, rounded up (so a wait never ends just
    /// before its deadline and spins), as a `poll(2)` timeout; 0 when it has passed.
    public func millisecondsRoundedUp(until deadline: Instant) -> Int32 {
        guard deadline.nanoseconds > nanoseconds else { return 0 }
        return Int32(clamping: (deadline.nanoseconds - nanoseconds + 999_999) / 1_000_000)
    }
}

/// How a replication stream is driven: bounds, intervals and deadlines.
public struct StreamConfiguration: Sendable {
    public var routing: RoutingConfig
    /// pgoutput `proto_version`. The relay runs 1: transactions arrive whole, after their commit.
    public var protocolVersion = 1
    /// Bound on events handed to the sink and not yet acknowledged; at the bound
    /// the relay stops reading and WAL waits in PostgreSQL, not in our heap.
    public var maxInFlightEvents = 10_000
    /// Bound on their key + value bytes.
    public var maxInFlightBytes = 64 << 20
    /// Send a status update at least this often (capped at half the server's `wal_sender_timeout`).
    public var statusIntervalMilliseconds = 10_000
    /// When the confirmed position moved, report it after at most this long.
    public var minStatusIntervalMilliseconds = 100
    /// Nothing received for this long means the connection is dead (like
    /// PostgreSQL's `wal_receiver_timeout`). nil: the server's
    /// `wal_sender_timeout`, or 60 s when that is 0 or unknown. 0: never.
    public var receiveTimeoutMilliseconds: Int?
    /// How long a stop waits: first for the open transaction's Commit, then for the sink's acks.
    public var shutdownTimeoutMilliseconds = 10_000
    /// False for a read-only look (`outbox-relay tail`): status updates report the
    /// slot's own position, so nothing is consumed, and a stop does not wait for a Commit.
    public var confirms = true
    /// Stop once everything up to this LSN is confirmed (like pg_recvlogical's `--endpos`).
    public var endLSN: LSN?
    /// Stop after this many events (`tail --limit`).
    public var eventLimit: Int?

    public init(routing: RoutingConfig) { self.routing = routing }
}

/// What the driver learned when a session started.
public struct ServerSettings: Sendable, Equatable {
    /// The slot's `confirmed_flush_lsn`: the server resumes at max(this, what we ask).
    public var slotConfirmedFlush: LSN
    /// The walsender's `wal_sender_timeout` in ms (0: disabled); nil if it could not be read.
    public var walSenderTimeoutMilliseconds: Int?

    public init(slotConfirmedFlush: LSN, walSenderTimeoutMilliseconds: Int?) {
        self.slotConfirmedFlush = slotConfirmedFlush
        self.walSenderTimeoutMilliseconds = walSenderTimeoutMilliseconds
    }
}

/// A standby status update to send (the driver adds the clock).
public struct StatusReport: Sendable, Hashable {
    /// The newest WAL position received.
    public var written: LSN
    /// What may be forgotten: the confirmed position (ARCHITECTURE.md, rules 3 and 4).
    public var flushed: LSN
    /// Asks the server for an immediate keepalive: a ping while nothing arrives.
    public var replyRequested: Bool

    public init(written: LSN, flushed: LSN, replyRequested: Bool) {
        self.written = written
        self.flushed = flushed
        self.replyRequested = replyRequested
    }
}

/// Why a session ended on the machine's word.
public enum SessionEnd: Error, Sendable, Equatable, CustomStringConvertible {
    /// The process was frozen (SIGSTOP, a paused VM or container) longer than the
    /// server waits for a reply: the server may have ended the session and another
    /// relay may be streaming the slot. Nothing read in this session may be
    /// published any more; reconnect (and stand by if the slot is taken).
    case stalled(milliseconds: Int, limitMilliseconds: Int)
    /// Nothing arrived for the receive timeout, not even an answer to a ping:
    /// the connection is dead (a silent network cut). Reconnect.
    case receiveTimeout(milliseconds: Int)
    /// The stream broke the protocol's rules (an Insert outside Begin/Commit, …).
    case protocolViolation(String)
    /// The stream carried a message that could not be decoded.
    case undecodable(DecodeError)
    /// A row that cannot become an event, and no dead-letter destination.
    case poison(PoisonEvent)

    /// The session's unacknowledged events must not be published: they may be
    /// older than what another relay has published since (ARCHITECTURE.md, rule 10).
    public var sessionMayBeStale: Bool {
        switch self {
        case .stalled, .receiveTimeout: return true
        default: return false
        }
    }

    /// A new session may succeed where this one ended.
    public var isRetryable: Bool { sessionMayBeStale }

    public var description: String {
        switch self {
        case .stalled(let ms, let limit):
            return
                "the relay was frozen for \(ms) ms, longer than the server waits for it (wal_sender_timeout, \(limit) ms): the session may have been taken over, so nothing read in it is published"
        case .receiveTimeout(let ms):
            return
                "nothing received from PostgreSQL for \(ms) ms, not even an answer to a ping: the connection is dead (network cut?)"
        case .protocolViolation(let m): return "replication protocol violation: \(m)"
        case .undecodable(let e): return "undecodable replication message: \(e)"
        case .poison(let p):
            return p.description
                + ". Fix or remove the row (its transaction is not confirmed; the relay resumes before it), or configure a dead-letter destination"
        }
    }
}

/// The replication stream's decisions, as a pure state machine (ARCHITECTURE.md, rule 11):
/// what to read, what to publish, what to confirm, when to report, when to give up.
///
/// No I/O, no clock, no logging: the driver (`Relay`) feeds it inputs —
/// a message received, an acknowledgement, a status update sent, a stop
/// request, the time — and carries out the actions it returns. The same
/// machine runs under the tests (input by input), the fuzzer and `DecoderBench`.
///
/// States: `connecting` (no session) → `streamingIdle` ⇄ `inTransaction`;
/// a stop moves to `finishingTransaction` (inside a transaction: read on to its
/// Commit, bounded by the shutdown timeout) and then `draining` (read nothing,
/// wait for the sink's acks, bounded), and `finish` ends in `stopped`. A
/// session ends (`SessionEnd`) on a stall, a receive timeout or bad input; the
/// driver reconnects and calls `sessionStarted` again, or fails.
///
/// Liveness rules, both ways:
/// - a status update at least every `statusInterval`, capped at half the
///   server's `wal_sender_timeout`, also while backpressured (the walsender
///   counts any message from us as a reply), and at once when a keepalive asks;
/// - nothing received for half the receive timeout: a status update that asks
///   for a reply (a ping, as PostgreSQL's walreceiver does); nothing for the
///   whole timeout: `SessionEnd.receiveTimeout`;
/// - more time since our last status update than the server waits
///   (`wal_sender_timeout`) — only possible if the process was frozen —
///   ends the session as `stalled` before anything else is published.
public struct StreamMachine: Sendable {
    /// The observable state (for tests, logs and metrics).
    public enum State: Sendable, Equatable {
        case connecting, streamingIdle, inTransaction, finishingTransaction, draining, stopped
    }

    /// What to do next, from `next(now:)`.
    public enum Step: Sendable, Equatable {
        /// Send this status update, then call `statusSent(_:now:)`.
        case sendStatus(StatusReport)
        /// Read what is buffered (`wantsMessage` says when to pause); when nothing
        /// is, wait for the socket or the sink until this deadline.
        case read(until: Instant)
        /// At the in-flight bound: read nothing, wait for the sink's acks until this deadline.
        case waitForSink(until: Instant)
        /// Stopping: let the sink deliver, feeding its acks, until this deadline.
        case drain(until: Instant)
        /// Stopped: send this last status update and end the stream.
        case finish(StatusReport)
        /// The session is over; see `SessionEnd`.
        case end(SessionEnd)
    }

    /// What to do with a received message.
    public enum Action: Sendable {
        case none
        /// Hand the event to the sink under this ticket.
        case publish(OutboxEvent, ticket: UInt64)
        /// Offer the row to the sink's dead-letter destination, then call `deadLetterResult`.
        case deadLetter(PoisonEvent, ticket: UInt64)
        case end(SessionEnd)
    }

    public let configuration: StreamConfiguration
    /// Counters and positions; the driver adds its own (state, latency, reachability).
    public var stats: RelayStats {
        var snapshot = counters
        snapshot.droppedHeaderMembers = router.droppedHeaderMembers
        if recentTopicCount > 0 { snapshot.eventsByTopic[recentTopic, default: 0] += recentTopicCount }
        snapshot.confirmedLSN = reportedFlush
        snapshot.inFlightEvents = inFlightEvents
        snapshot.inFlightBytes = inFlightBytes
        return snapshot
    }
    private var counters = RelayStats()
    private var recentTopic = ""
    private var recentTopicCount = 0

    private mutating func flushRecentTopic() {
        if recentTopicCount > 0 { counters.eventsByTopic[recentTopic, default: 0] += recentTopicCount }
        recentTopicCount = 0
    }

    private enum Phase: Equatable {
        case connecting
        case streaming
        case finishing(deadline: Instant)
        case draining(deadline: Instant)
        case stopped
    }

    private struct Transaction {
        var finalLSN: LSN
        var commitTime: PostgresTimestamp
    }

    private var phase = Phase.connecting
    private var stopWanted = false
    private var tracker: AckTracker?
    private var decoder: PGOutputDecoder
    private var router: OutboxRouter
    private var transaction: Transaction?
    private var slotConfirmed = LSN.zero
    private var lastSentFlush = LSN.zero
    // Liveness, per session.
    private var lastStatusAt = Instant(nanoseconds: 0)
    private var lastReceivedAt = Instant(nanoseconds: 0)
    private var pingSent = false
    private var replyDue = false
    private var statusInterval = 10_000
    private var receiveTimeout = 0
    private var stallLimit = 0

    public init(configuration: StreamConfiguration) {
        self.configuration = configuration
        decoder = PGOutputDecoder(protocolVersion: configuration.protocolVersion)
        router = OutboxRouter(config: configuration.routing)
    }

    // MARK: Observation

    public var state: State {
        switch phase {
        case .connecting: return .connecting
        case .streaming: return transaction == nil ? .streamingIdle : .inTransaction
        case .finishing: return .finishingTransaction
        case .draining: return .draining
        case .stopped: return .stopped
        }
    }

    /// The acknowledged position (what a status update reports when the relay confirms).
    public var confirmed: LSN { tracker?.confirmed ?? slotConfirmed }
    public var inFlightEvents: Int { tracker?.inFlightEvents ?? 0 }
    public var inFlightBytes: Int { tracker?.inFlightBytes ?? 0 }
    public var isStopRequested: Bool { stopWanted }
    /// The effective intervals of this session, for the driver's log line.
    public var effectiveStatusIntervalMilliseconds: Int { statusInterval }
    public var effectiveReceiveTimeoutMilliseconds: Int { receiveTimeout }
    public var stallLimitMilliseconds: Int { stallLimit }

    /// The status update to send now if one had to be sent (after a session
    /// broke, for a last attempt to confirm what was acknowledged).
    public var statusReport: StatusReport { report(ping: false) }

    // MARK: Inputs

    /// A session connected. Returns the LSN to start streaming from: the
    /// relay's own confirmed position, or the slot's if that is later. What
    /// was in flight in an earlier session is forgotten (the server resends
    /// everything after the confirmed position; late acks are ignored).
    public mutating func sessionStarted(_ settings: ServerSettings, now: Instant) -> LSN {
        if tracker == nil {
            tracker = AckTracker(confirmed: settings.slotConfirmedFlush)
        } else {
            tracker!.reset()
        }
        slotConfirmed = settings.slotConfirmedFlush
        decoder.reset()
        router.reset()
        transaction = nil
        let serverTimeout = settings.walSenderTimeoutMilliseconds ?? 60_000
        statusInterval = configuration.statusIntervalMilliseconds
        if serverTimeout > 0 { statusInterval = max(1, min(statusInterval, serverTimeout / 2)) }
        receiveTimeout = configuration.receiveTimeoutMilliseconds ?? (serverTimeout > 0 ? serverTimeout : 60_000)
        stallLimit = serverTimeout
        lastStatusAt = now
        lastReceivedAt = now
        pingSent = false
        replyDue = false
        let start = max(tracker!.confirmed, settings.slotConfirmedFlush)
        lastSentFlush = max(lastSentFlush, start)
        phase = stopWanted ? .draining(deadline: now) : .streaming
        return start
    }

    /// Stopping, and the sink failed while delivering what was in flight: give
    /// up waiting. Returns the last status update (nothing unacknowledged in it).
    public mutating func drainAbandoned() -> StatusReport {
        phase = .stopped
        return report(ping: false)
    }

    /// The session ended for a reason the driver saw (connection lost, sink failure).
    public mutating func sessionLost() {
        if phase != .stopped { phase = stopWanted ? .stopped : .connecting }
        transaction = nil
    }

    /// A stop was requested (SIGTERM, `--end-lsn`, `--limit`).
    public mutating func stopRequested(now: Instant) {
        stopWanted = true
        switch phase {
        case .connecting: phase = .stopped
        case .streaming:
            if transaction != nil && configuration.confirms {
                phase = .finishing(deadline: now + configuration.shutdownTimeoutMilliseconds)
            } else {
                phase = .draining(deadline: now + configuration.shutdownTimeoutMilliseconds)
            }
        case .finishing, .draining, .stopped: break
        }
    }

    /// Whether to read another buffered message now. False at the in-flight
    /// bound, when a status update is due, and when stopping outside a transaction.
    public func wantsMessage(now: Instant) -> Bool {
        guard let tracker else { return false }
        switch phase {
        case .streaming:
            break
        case .finishing(let deadline):
            guard transaction != nil, now < deadline else { return false }
        default:
            return false
        }
        return tracker.inFlightEvents < configuration.maxInFlightEvents
            && tracker.inFlightBytes < configuration.maxInFlightBytes
            && !replyDue && now.milliseconds(since: lastStatusAt) < statusInterval
    }

    /// One message from the server.
    public mutating func received(_ message: ReplicationMessage, now: Instant) -> Action {
        switch phase {
        case .connecting, .stopped: return .end(.protocolViolation("a message arrived outside a session"))
        default: break
        }
        if let stall = stalled(now: now) { return end(stall) }
        lastReceivedAt = now
        pingSent = false
        switch message {
        case .keepalive(let walEnd, _, let replyRequested):
            counters.serverWALEnd = max(counters.serverWALEnd, walEnd)
            tracker!.serverWALEnd(walEnd)
            if transaction == nil { counters.receivedLSN = max(counters.receivedLSN, walEnd) }
            if replyRequested { replyDue = true }
            return .none
        case .xLogData(let walStart, let walEnd, _, let payload):
            counters.receivedLSN = max(counters.receivedLSN, walStart)
            counters.serverWALEnd = max(counters.serverWALEnd, walEnd)
            let decoded: PGOutputMessage
            do { decoded = try decoder.decode(payload) } catch { return end(.undecodable(error)) }
            return handle(decoded, at: walStart, now: now)
        }
    }

    /// The sink's answer to a `deadLetter` action: accepted (in flight like an
    /// event), or refused because it has no dead-letter destination (the relay stops).
    public mutating func deadLetterResult(_ poison: PoisonEvent, accepted: Bool) -> Action {
        guard accepted else { return end(.poison(poison)) }
        guard transaction != nil else { return end(.protocolViolation("dead letter outside a transaction")) }
        tracker!.sent(weight: poison.payload?.count ?? 0)
        counters.deadLettered += 1
        return .none
    }

    /// Called just before the sink hands what it was given to the destination
    /// (the driver's `poll`). A freeze that began after the events were read —
    /// a SIGSTOP inside the loop turn — shows here: the session ends as `stalled`
    /// and nothing read before the freeze is delivered after it (rule 10). Nil: go on.
    public mutating func checkBeforeDelivery(now: Instant) -> SessionEnd? {
        guard phase != .connecting, phase != .stopped, let stall = stalled(now: now) else { return nil }
        return endSession(stall)
    }

    /// The sink acknowledged one event. False for an ack of an earlier session (ignored).
    @discardableResult
    public mutating func acknowledged(_ ack: Acknowledgement) -> Bool {
        guard tracker != nil, tracker!.acknowledge(ticket: ack.ticket, weight: ack.weight) else { return false }
        counters.eventsAcknowledged += 1
        return true
    }

    /// A status update went out.
    public mutating func statusSent(_ report: StatusReport, now: Instant) {
        lastStatusAt = now
        lastSentFlush = max(lastSentFlush, report.flushed)
        replyDue = false
        if report.replyRequested { pingSent = true }
        counters.statusUpdates += 1
    }

    /// What to do now. Called once per turn of the driver's loop.
    public mutating func next(now: Instant) -> Step {
        switch phase {
        case .connecting, .stopped:
            return .end(.protocolViolation("no session"))
        default: break
        }
        if let stall = stalled(now: now) { return .end(endSession(stall)) }
        if let end = configuration.endLSN, configuration.confirms, confirmed >= end, !stopWanted {
            stopRequested(now: now)
        }
        if case .finishing(let deadline) = phase, transaction == nil || now >= deadline {
            phase = .draining(deadline: deadline)
        }
        if case .draining(let deadline) = phase {
            if inFlightEvents == 0 || now >= deadline {
                phase = .stopped
                return .finish(report(ping: false))
            }
        }
        let backpressured = !(phase == .streaming || isFinishing) || atBound
        if backpressured {
            // Not reading: the receive clock starts again when reading resumes.
            lastReceivedAt = now
            pingSent = false
        } else if receiveTimeout > 0, now.milliseconds(since: lastReceivedAt) >= receiveTimeout {
            return .end(endSession(.receiveTimeout(milliseconds: now.milliseconds(since: lastReceivedAt))))
        }
        let sinceStatus = now.milliseconds(since: lastStatusAt)
        let flushMoved = reportedFlush > lastSentFlush
        let pingDue =
            !backpressured && receiveTimeout > 0 && !pingSent
            && now.milliseconds(since: lastReceivedAt) >= receiveTimeout / 2
        if replyDue || pingDue || sinceStatus >= statusInterval
            || (flushMoved && sinceStatus >= configuration.minStatusIntervalMilliseconds)
        {
            return .sendStatus(report(ping: pingDue))
        }
        // The next moment something is due.
        var deadline = lastStatusAt + statusInterval
        if flushMoved { deadline = min(deadline, lastStatusAt + configuration.minStatusIntervalMilliseconds) }
        if !backpressured && receiveTimeout > 0 {
            deadline = min(deadline, lastReceivedAt + (pingSent ? receiveTimeout : receiveTimeout / 2))
        }
        switch phase {
        case .finishing(let d), .draining(let d): deadline = min(deadline, d)
        default: break
        }
        if case .draining = phase { return .drain(until: deadline) }
        return backpressured ? .waitForSink(until: deadline) : .read(until: deadline)
    }

    // MARK: Internals

    private var isFinishing: Bool {
        if case .finishing = phase { return true }
        return false
    }

    private var atBound: Bool {
        inFlightEvents >= configuration.maxInFlightEvents || inFlightBytes >= configuration.maxInFlightBytes
    }

    /// The flush position to report: what the sink acknowledged, or for a
    /// read-only look the slot's own position.
    private var reportedFlush: LSN { configuration.confirms ? confirmed : slotConfirmed }

    private func report(ping: Bool) -> StatusReport {
        let flush = max(reportedFlush, lastSentFlush)
        return StatusReport(written: max(counters.receivedLSN, flush), flushed: flush, replyRequested: ping)
    }

    private func stalled(now: Instant) -> SessionEnd? {
        guard stallLimit > 0, tracker != nil else { return nil }
        let silent = now.milliseconds(since: lastStatusAt)
        return silent > stallLimit ? .stalled(milliseconds: silent, limitMilliseconds: stallLimit) : nil
    }

    private mutating func end(_ reason: SessionEnd) -> Action {
        .end(endSession(reason))
    }

    private mutating func endSession(_ reason: SessionEnd) -> SessionEnd {
        phase = reason.isRetryable && !stopWanted ? .connecting : .stopped
        transaction = nil
        return reason
    }

    private mutating func handle(_ message: PGOutputMessage, at lsn: LSN, now: Instant) -> Action {
        switch message {
        case .begin(let begin):
            guard transaction == nil else { return end(.protocolViolation("Begin inside a transaction at \(lsn)")) }
            _ = tracker!.begin()
            transaction = Transaction(finalLSN: begin.finalLSN, commitTime: begin.commitTimestamp)
            counters.transactions += 1
            return .none
        case .commit(let commit):
            guard transaction != nil else { return end(.protocolViolation("Commit outside a transaction at \(lsn)")) }
            tracker!.commit(endLSN: commit.endLSN)
            transaction = nil
            if case .finishing(let deadline) = phase { phase = .draining(deadline: deadline) }
            return .none
        case .relation(let relation):
            router.relationChanged(relation)
            return .none
        case .insert(let insert):
            guard let open = transaction else {
                return end(.protocolViolation("Insert outside a transaction at \(lsn)"))
            }
            guard let routed = router.route(insert, lsn: open.finalLSN, commitTime: open.commitTime) else {
                counters.otherTableChanges += 1
                return .none
            }
            return emit(routed, now: now)
        case .message(let message):
            guard message.isTransactional else {
                if message.prefix == configuration.routing.messagePrefix {
                    counters.nonTransactionalMessages += 1
                } else {
                    counters.ignoredMessages += 1
                }
                return .none
            }
            guard let open = transaction else {
                return end(.protocolViolation("transactional message outside a transaction at \(lsn)"))
            }
            guard let routed = router.route(message, lsn: open.finalLSN, commitTime: open.commitTime) else {
                counters.ignoredMessages += 1
                return .none
            }
            return emit(routed, now: now)
        case .update(let update):
            guard transaction != nil else { return end(.protocolViolation("Update outside a transaction at \(lsn)")) }
            guard router.isOutbox(update.relationOID) else {
                counters.otherTableChanges += 1
                return .none
            }
            counters.suppressedUpdates += 1
            if configuration.routing.updateBehavior == .fatal, let open = transaction {
                return end(
                    .poison(
                        PoisonEvent(
                            id: nil, source: "\(configuration.routing.schema).\(configuration.routing.table)",
                            lsn: open.finalLSN,
                            reason:
                                "an UPDATE of an outbox row (rows are inserted, never updated; table.op.invalid.behavior=fatal)"
                        )))
            }
            return .none
        case .delete(let delete):
            guard transaction != nil else { return end(.protocolViolation("Delete outside a transaction at \(lsn)")) }
            if router.isOutbox(delete.relationOID) {
                counters.suppressedDeletes += 1
            } else {
                counters.otherTableChanges += 1
            }
            return .none
        case .truncate(let truncate):
            guard transaction != nil else { return end(.protocolViolation("Truncate outside a transaction at \(lsn)")) }
            if truncate.relationOIDs.contains(where: router.isOutbox) {
                counters.suppressedTruncates += 1
            } else {
                counters.otherTableChanges += 1
            }
            return .none
        case .origin, .type:
            return .none
        case .streamStart, .streamStop, .streamCommit, .streamAbort, .streamPrepare, .beginPrepare, .prepare,
            .commitPrepared, .rollbackPrepared:
            return end(
                .protocolViolation(
                    "unexpected \(message.type) message at \(lsn): the relay streams with protocol version 1, without streaming or two-phase"
                ))
        }
    }

    private mutating func emit(_ routed: Result<OutboxEvent, PoisonEvent>, now: Instant) -> Action {
        let ticket = tracker!.openTicketValue
        switch routed {
        case .success(let event):
            tracker!.sent(weight: event.weight)
            counters.eventsPublished += 1
            // Per-topic counts: consecutive events mostly share a topic; a string
            // comparison is cheaper than hashing it into the dictionary each time.
            if event.topic == recentTopic {
                recentTopicCount += 1
            } else {
                flushRecentTopic()
                recentTopic = event.topic
                recentTopicCount = 1
            }
            if event.tombstone { counters.tombstones += 1 }
            if let limit = configuration.eventLimit, counters.eventsPublished >= limit, !stopWanted {
                stopRequested(now: now)
            }
            return .publish(event, ticket: ticket)
        case .failure(let poison):
            return .deadLetter(poison, ticket: ticket)
        }
    }
}
