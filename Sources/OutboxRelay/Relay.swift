import Foundation
import Glibc
import Logging
import OutboxCore
import PGOutput
import PostgresClient
import PostgresReplication
import Synchronization

/// Everything the relay needs to run.
public struct RelayConfig: Sendable {
    public var replication: ReplicationOptions
    public var routing: RoutingConfig
    /// Bound on events handed to the sink and not yet acknowledged; at the bound
    /// the relay stops reading and WAL waits in PostgreSQL, not in our heap.
    public var maxInFlightEvents = 10_000
    /// Bound on their key + value bytes.
    public var maxInFlightBytes = 64 << 20
    /// Send a status update at least this often (also the keepalive to the walsender).
    public var statusIntervalMilliseconds = 10_000
    /// When the confirmed position moved, report it after at most this long.
    public var minStatusIntervalMilliseconds = 100
    public var initialBackoffMilliseconds = 500
    public var maxBackoffMilliseconds = 30_000
    /// How often a hot standby retries a slot that another relay holds.
    public var standbyRetryMilliseconds = 2_000
    /// How often the publication is re-checked while streaming (see `PublicationWatch`); 0 never.
    public var publicationCheckMilliseconds = 5_000
    /// How long shutdown waits for the sink to acknowledge what is in flight.
    public var shutdownTimeoutMilliseconds = 10_000
    /// Stop once everything up to this LSN is confirmed (like pg_recvlogical's
    /// `--endpos`): for draining a backlog, benchmarks and tests.
    public var endLSN: LSN?
    /// False for a read-only look at the slot (`outbox-relay tail`): status
    /// updates keep reporting the slot's own confirmed position, so nothing is consumed.
    public var confirms = true
    /// Stop after this many events (`tail --limit`).
    public var eventLimit: Int?

    public init(replication: ReplicationOptions, routing: RoutingConfig) {
        self.replication = replication
        self.routing = routing
    }
}

/// Why the relay stopped on its own. Each case names what to fix; nothing
/// after the failing event was confirmed, so a restart after the fix loses nothing.
public enum RelayError: Error, Sendable, CustomStringConvertible {
    case replication(ReplicationError)
    /// Polling mode: the database connection or a query failed.
    case database(ReplicationError)
    /// A row or message that cannot become an event, with no dead-letter destination.
    case poison(PoisonEvent)
    case sink(String)
    case unexpectedMessage(String)

    public var description: String {
        switch self {
        case .replication(let e): return e.description
        case .database(.connectionLost(let m)): return "database connection lost: \(m)"
        case .database(let e): return e.description
        case .poison(let p):
            return p.description
                + ". Fix or remove the row (its transaction is not confirmed; the relay resumes before it), or configure a dead-letter destination"
        case .sink(let m): return "sink failed: \(m)"
        case .unexpectedMessage(let m): return m
        }
    }
}

/// What the executable needs of a relay, whichever mode: log tailing (`Relay`)
/// or polling (`PollingRelay`).
public protocol RelayService: AnyObject, Sendable {
    /// Asks it to stop gracefully; thread-safe.
    func stop()
    /// A snapshot of its counters, from any thread.
    var currentStats: RelayStats { get }
    /// Runs it on a thread of its own until it stops.
    func runDetached() async throws
}

/// The relay pipeline: WAL in, events out in log order, confirmed LSN back.
///
/// `run()` blocks its calling thread for the relay's lifetime: that thread owns
/// the libpq connection and drives the sink, so no blocking C call runs on
/// Swift's cooperative pool (use `runDetached()` from async code). One thread
/// means no per-event hop and no locking on the hot path.
///
/// `@unchecked Sendable`: the pipeline's mutable state is touched only by the
/// thread inside `run()`; what other threads touch (`stop()`, `stats`) is an
/// `Atomic` and a `Mutex`.
public final class Relay: RelayService, @unchecked Sendable {
    public let config: RelayConfig
    private let sink: any EventSink
    private let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let published = Mutex(RelayStats())

    private var stats = RelayStats()
    private var router: OutboxRouter
    private var tracker: AckTracker?
    private var warnedNonTransactional = false
    /// Per transaction with events in flight, in ticket order: when its first
    /// event was sent, its commit time, and how many of its events are unacknowledged.
    private var timings: [(ticket: UInt64, sentAt: UInt64, commitMicros: Int64, remaining: Int)] = []
    private var timingsHead = 0

    public init(config: RelayConfig, sink: any EventSink, logger: Logger) {
        self.config = config
        self.sink = sink
        self.logger = logger
        self.router = OutboxRouter(config: config.routing)
    }

    /// Asks the relay to stop: it stops reading, waits (bounded) for the sink's
    /// acks, confirms what was acknowledged, and `run()` returns. Thread-safe.
    public func stop() { stopRequested.store(true, ordering: .releasing) }

    private var stopping: Bool { stopRequested.load(ordering: .acquiring) }

    /// A snapshot of the counters, from any thread.
    public var currentStats: RelayStats { published.withLock { $0 } }

    /// Runs `run()` on a dedicated thread and awaits it.
    public func runDetached() async throws {
        try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread { [self] in
                do {
                    try run()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.start()
        }
    }

    /// Runs until `stop()` or a fatal error. Retryable failures (connection
    /// lost, server restarting, slot held by another relay) are retried with
    /// capped exponential backoff, resuming from the last *confirmed* LSN.
    public func run() throws(RelayError) {
        var mayCreate = true
        var backoff = config.initialBackoffMilliseconds
        defer { publish() }
        while !stopping {
            let attemptStart = Self.nowMilliseconds()
            do throws(RelayError) {
                setState(tracker == nil ? .connecting : .reconnecting)
                let session: ReplicationSession
                do {
                    session = try ReplicationSession(
                        options: config.replication, mayCreate: mayCreate, logger: logger)
                } catch { throw .replication(error) }
                mayCreate = false
                try stream(session)
                setState(.stopped)
                return
            } catch .replication(let error) where error.isRetryable {
                drainAfterDisconnect()
                let wait: Int
                if case .slotInUse = error {
                    // One line when this relay becomes a standby, not one per retry.
                    if stats.state != .standby {
                        logger.notice("slot in use; waiting as hot standby", metadata: ["reason": "\(error)"])
                    }
                    setState(.standby)
                    wait = config.standbyRetryMilliseconds
                } else {
                    if Self.nowMilliseconds() - attemptStart > 10_000 {
                        backoff = config.initialBackoffMilliseconds
                    }
                    wait = Int(Double(backoff) * Double.random(in: 0.5...1.0))
                    logger.warning(
                        "replication interrupted; reconnecting",
                        metadata: [
                            "error": "\(error)", "retry_in_ms": "\(wait)",
                            "resume_from": "\(tracker?.confirmed ?? .zero)",
                        ])
                    backoff = min(backoff * 2, config.maxBackoffMilliseconds)
                    setState(.reconnecting)
                }
                stats.reconnects += 1
                sleepUnlessStopped(milliseconds: wait)
            } catch {
                setState(.failed)
                throw error
            }
        }
        setState(.stopped)
    }

    /// One replication stream, from START_REPLICATION until stop or error.
    private func stream(_ session: ReplicationSession) throws(RelayError) {
        if tracker == nil {
            tracker = AckTracker(confirmed: session.slotConfirmedFlush)
        } else {
            tracker!.reset()
        }
        resetTimings()
        router.reset()
        var decoder = PGOutputDecoder(protocolVersion: config.replication.protocolVersion)
        let startLSN = max(tracker!.confirmed, session.slotConfirmedFlush)
        do {
            try session.start(from: startLSN)
        } catch {
            throw .replication(error)
        }
        setState(.streaming)
        logger.notice(
            "streaming",
            metadata: [
                "slot": "\(config.replication.slot)", "publication": "\(config.replication.publication)",
                "from_lsn": "\(startLSN)", "server": "\(session.connection.serverDescription)",
                "sink": "\(sink.name)",
            ])

        var transactionLSN = LSN.zero
        var transactionTime = PostgresTimestamp(rawValue: 0)
        var lastStatusAt = Self.nowMilliseconds()
        let watch = PublicationWatch(
            options: config.replication, intervalMilliseconds: config.publicationCheckMilliseconds, logger: logger)
        if config.publicationCheckMilliseconds > 0 { watch.start() }
        defer { watch.stop() }

        func sendStatus(force: Bool) throws(RelayError) {
            let flush = reportedFlush(session)
            let now = Self.nowMilliseconds()
            let elapsed = now - lastStatusAt
            guard
                force
                    || (flush > session.lastReportedFlush && elapsed >= config.minStatusIntervalMilliseconds)
                    || elapsed >= config.statusIntervalMilliseconds
            else { return }
            do { try session.sendStatus(written: stats.receivedLSN, flushed: flush) } catch {
                throw .replication(error)
            }
            lastStatusAt = now
            stats.statusUpdates += 1
        }

        func applyAcks(_ acks: [Acknowledgement]) {
            guard !acks.isEmpty else { return }
            let now = Self.monotonicNanos()
            let wallMicros = Self.wallClockMicros()
            for ack in acks where tracker!.acknowledge(ticket: ack.ticket, weight: ack.weight) {
                stats.eventsAcknowledged += 1
                observeAcknowledgement(ticket: ack.ticket, now: now, wallMicros: wallMicros)
            }
            stats.lastAcknowledgementAt = Int(now / 1_000_000)
        }

        func handle(_ message: ReplicationMessage) throws(RelayError) {
            switch message {
            case .keepalive(let walEnd, _, let replyRequested):
                stats.serverWALEnd = max(stats.serverWALEnd, walEnd)
                tracker!.serverWALEnd(walEnd)
                if !tracker!.isInTransaction { stats.receivedLSN = max(stats.receivedLSN, walEnd) }
                if replyRequested { try sendStatus(force: true) }
            case .xLogData(let walStart, let walEnd, _, let payload):
                stats.receivedLSN = max(stats.receivedLSN, walStart)
                stats.serverWALEnd = max(stats.serverWALEnd, walEnd)
                let decoded: PGOutputMessage
                do { decoded = try decoder.decode(payload) } catch {
                    throw .replication(.undecodable(error))
                }
                switch decoded {
                case .begin(let begin):
                    guard !tracker!.isInTransaction else {
                        throw .unexpectedMessage("Begin inside a transaction at \(walStart)")
                    }
                    _ = tracker!.begin()
                    transactionLSN = begin.finalLSN
                    transactionTime = begin.commitTimestamp
                    stats.transactions += 1
                case .commit(let commit):
                    guard tracker!.isInTransaction else {
                        throw .unexpectedMessage("Commit outside a transaction at \(walStart)")
                    }
                    tracker!.commit(endLSN: commit.endLSN)
                case .relation(let relation):
                    router.relationChanged(relation)
                case .insert(let insert):
                    guard let routed = router.route(insert, lsn: transactionLSN, commitTime: transactionTime)
                    else {
                        stats.otherTableChanges += 1
                        return
                    }
                    try emit(routed)
                case .message(let message):
                    if !message.isTransactional {
                        if message.prefix == config.routing.messagePrefix {
                            stats.nonTransactionalMessages += 1
                            if !warnedNonTransactional {
                                warnedNonTransactional = true
                                logger.warning(
                                    "ignoring non-transactional logical message: it is not tied to a commit and could be a phantom event; emit it with transactional = true (sql/04-emit-message.sql)",
                                    metadata: ["prefix": "\(message.prefix)", "lsn": "\(message.lsn)"])
                            }
                        } else {
                            stats.ignoredMessages += 1
                        }
                        return
                    }
                    guard tracker!.isInTransaction else {
                        throw .unexpectedMessage("transactional message outside a transaction at \(walStart)")
                    }
                    guard let routed = router.route(message, lsn: transactionLSN, commitTime: transactionTime)
                    else {
                        stats.ignoredMessages += 1
                        return
                    }
                    try emit(routed)
                case .update(let update):
                    if router.isOutbox(update.relationOID) {
                        stats.suppressedUpdates += 1
                    } else {
                        stats.otherTableChanges += 1
                    }
                case .delete(let delete):
                    if router.isOutbox(delete.relationOID) {
                        stats.suppressedDeletes += 1
                    } else {
                        stats.otherTableChanges += 1
                    }
                case .truncate(let truncate):
                    if truncate.relationOIDs.contains(where: router.isOutbox) {
                        stats.suppressedTruncates += 1
                    } else {
                        stats.otherTableChanges += 1
                    }
                case .origin, .type:
                    break
                case .streamStart, .streamStop, .streamCommit, .streamAbort, .streamPrepare, .beginPrepare,
                    .prepare, .commitPrepared, .rollbackPrepared:
                    throw .unexpectedMessage(
                        "unexpected \(decoded.type) message at \(walStart): the relay streams with protocol version 1, without streaming or two-phase"
                    )
                }
            }
        }

        func emit(_ routed: Result<OutboxEvent, PoisonEvent>) throws(RelayError) {
            switch routed {
            case .success(let event):
                do { try sink.send(event, ticket: currentTicket()) } catch { throw .sink("\(error)") }
                tracker!.sent(weight: event.weight)
                stats.eventsPublished += 1
                stats.eventsByTopic[event.topic, default: 0] += 1
                if let limit = config.eventLimit, stats.eventsPublished >= limit { stop() }
                recordSend(ticket: currentTicket(), commitTime: transactionTime)
                if event.tombstone { stats.tombstones += 1 }
            case .failure(let poison):
                let deadLettered: Bool
                do { deadLettered = try sink.deadLetter(poison, ticket: currentTicket()) } catch {
                    throw .sink("\(error)")
                }
                if deadLettered {
                    tracker!.sent(weight: poison.payload?.count ?? 0)
                    recordSend(ticket: currentTicket(), commitTime: transactionTime)
                    stats.deadLettered += 1
                    logger.warning(
                        "row sent to the dead-letter destination",
                        metadata: [
                            "id": "\(poison.id ?? "?")", "lsn": "\(poison.lsn)", "reason": "\(poison.reason)",
                        ])
                    return
                }
                logger.error(
                    "cannot relay row",
                    metadata: [
                        "id": "\(poison.id ?? "?")", "lsn": "\(poison.lsn)", "reason": "\(poison.reason)",
                    ])
                throw .poison(poison)
            }
        }

        // A stop requested in the middle of a transaction first reads on to
        // its Commit (bounded by the shutdown timeout): events already
        // delivered from it could not be confirmed otherwise, and a graceful
        // stop would leave duplicates. `tail` confirms nothing and stops at once.
        var finishingBy: Int?
        func mayStop() -> Bool {
            guard stopping else { return false }
            guard config.confirms, tracker!.isInTransaction else { return true }
            let now = Self.nowMilliseconds()
            if finishingBy == nil {
                finishingBy = now + config.shutdownTimeoutMilliseconds
                logger.info("stop requested inside a transaction; reading on to its commit")
            }
            return now >= finishingBy!
        }
        do throws(RelayError) {
            while !mayStop() {
                var handled = 0
                let backpressured = atBound()
                if !backpressured {
                    reading: while handled < 4096 && !atBound() && !(stopping && !tracker!.isInTransaction) {
                        let read: PGConnection.CopyRead
                        do { read = try session.read(timeoutMilliseconds: 0) } catch {
                            throw RelayError.replication(error)
                        }
                        switch read {
                        case .timedOut: break reading
                        case .message(let message):
                            try handle(message)
                            handled += 1
                        }
                    }
                }
                let acks: [Acknowledgement]
                do { acks = try sink.poll(timeoutMilliseconds: backpressured ? 20 : 0) } catch {
                    throw RelayError.sink("\(error)")
                }
                applyAcks(acks)
                try sendStatus(force: false)
                let verdict = watch.verdict
                if let failure = verdict.failure { throw RelayError.replication(failure) }
                if let slot = verdict.slot, slot.walStatus != stats.slotWALStatus || slot.safeWALSize != stats.slotSafeWALSize {
                    if slot.walStatus != stats.slotWALStatus && slot.walStatus != "reserved" {
                        logger.warning(
                            "slot wal_status changed",
                            metadata: [
                                "wal_status": "\(slot.walStatus ?? "?")",
                                "safe_wal_size": "\(slot.safeWALSize.map(String.init) ?? "unlimited")",
                            ])
                    }
                    stats.slotWALStatus = slot.walStatus
                    stats.slotSafeWALSize = slot.safeWALSize
                }
                publish()
                if let end = config.endLSN, tracker!.confirmed >= end {
                    logger.notice(
                        "reached end LSN",
                        metadata: ["end_lsn": "\(end)", "confirmed_lsn": "\(tracker!.confirmed)"])
                    stop()
                }
                if handled == 0 && !backpressured && !(stopping && !tracker!.isInTransaction) {
                    // Idle: wait on the socket, briefly when acks are still due.
                    let untilStatus = max(
                        1, config.statusIntervalMilliseconds - (Self.nowMilliseconds() - lastStatusAt))
                    let wait = Int32(min(untilStatus, tracker!.inFlightEvents > 0 ? 5 : 100))
                    let read: PGConnection.CopyRead
                    do { read = try session.read(timeoutMilliseconds: wait) } catch {
                        throw RelayError.replication(error)
                    }
                    if case .message(let message) = read { try handle(message) }
                }
            }
        } catch {
            // Fatal or retryable: confirm what the sink has acknowledged, then let the caller decide.
            finish(session, timeoutMilliseconds: 2_000)
            throw error
        }
        setState(.stopping)
        let left = finishingBy.map { $0 - Self.nowMilliseconds() } ?? config.shutdownTimeoutMilliseconds
        finish(session, timeoutMilliseconds: max(0, left))
        logger.notice(
            "stopped",
            metadata: [
                "confirmed_lsn": "\(reportedFlush(session))", "events": "\(stats.eventsPublished)",
            ])
    }

    private func recordSend(ticket: UInt64, commitTime: PostgresTimestamp) {
        if timings.count > timingsHead, timings[timings.count - 1].ticket == ticket {
            timings[timings.count - 1].remaining += 1
        } else {
            timings.append((ticket, Self.monotonicNanos(), commitTime.unixMicroseconds, 1))
            if timings.count == timingsHead + 1 {
                // Nothing was pending: the stall clock starts now.
                stats.oldestPendingCommitMicros = commitTime.unixMicroseconds
                stats.lastAcknowledgementAt = Self.nowMilliseconds()
            }
        }
    }

    /// Latency histograms and the oldest pending commit; tickets are increasing, so a binary search finds one.
    private func observeAcknowledgement(ticket: UInt64, now: UInt64, wallMicros: Int64) {
        var low = timingsHead
        var high = timings.count
        while low < high {
            let mid = (low + high) / 2
            if timings[mid].ticket < ticket { low = mid + 1 } else { high = mid }
        }
        guard low < timings.count, timings[low].ticket == ticket else { return }
        timings[low].remaining -= 1
        stats.publishLatency.observe(seconds: Double(now &- timings[low].sentAt) / 1e9)
        stats.commitToPublishLatency.observe(seconds: Double(wallMicros - timings[low].commitMicros) / 1e6)
        while timingsHead < timings.count && timings[timingsHead].remaining <= 0 { timingsHead += 1 }
        if timingsHead > 1024 && timingsHead * 2 > timings.count {
            timings.removeFirst(timingsHead)
            timingsHead = 0
        }
        stats.oldestPendingCommitMicros = timingsHead < timings.count ? timings[timingsHead].commitMicros : 0
    }

    private func resetTimings() {
        timings.removeAll(keepingCapacity: true)
        timingsHead = 0
        stats.oldestPendingCommitMicros = 0
    }

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func wallClockMicros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1_000
    }

    /// The flush LSN to report: what the sink acknowledged, or, when the relay
    /// must not consume anything (`tail`), the slot's own position as it was.
    private func reportedFlush(_ session: ReplicationSession) -> LSN {
        config.confirms ? tracker!.confirmed : session.slotConfirmedFlush
    }

    /// The ticket of the open transaction (the tracker issued it at Begin).
    private func currentTicket() -> UInt64 { tracker!.openTicketValue }

    private func atBound() -> Bool {
        guard let tracker else { return false }
        return tracker.inFlightEvents >= config.maxInFlightEvents
            || tracker.inFlightBytes >= config.maxInFlightBytes
    }

    /// Waits (bounded) for acks of what is in flight, confirms the acknowledged
    /// prefix, and ends the stream. Errors here are logged, not thrown: the
    /// stream is ending anyway and nothing unacknowledged is ever confirmed.
    private func finish(_ session: ReplicationSession, timeoutMilliseconds: Int) {
        let deadline = Self.nowMilliseconds() + timeoutMilliseconds
        do {
            while tracker!.inFlightEvents > 0 {
                let left = deadline - Self.nowMilliseconds()
                if left <= 0 {
                    logger.warning(
                        "shutdown deadline reached with events unacknowledged; they stay unconfirmed and will be redelivered",
                        metadata: ["in_flight": "\(tracker!.inFlightEvents)"])
                    break
                }
                for ack in try sink.flush(timeoutMilliseconds: left)
                where tracker!.acknowledge(ticket: ack.ticket, weight: ack.weight) {
                    stats.eventsAcknowledged += 1
                }
            }
        } catch {
            logger.error("sink failed while draining", metadata: ["error": "\(error)"])
        }
        do {
            try session.sendStatus(written: stats.receivedLSN, flushed: reportedFlush(session))
            stats.statusUpdates += 1
            session.close()
        } catch {
            logger.debug("final status update not sent", metadata: ["error": "\(error)"])
        }
        publish()
    }

    /// After losing the connection: collect what the sink acknowledges within a
    /// short bound so the next stream starts as late as safely possible.
    private func drainAfterDisconnect() {
        guard var tracker, tracker.inFlightEvents > 0 else { return }
        do {
            for ack in try sink.flush(timeoutMilliseconds: 5_000) {
                tracker.acknowledge(ticket: ack.ticket, weight: ack.weight)
            }
        } catch {
            // Unacknowledged events stay unconfirmed and are redelivered by the next stream.
            logger.warning(
                "sink failed while draining before a reconnect", metadata: ["error": "\(error)"])
        }
        self.tracker = tracker
    }

    private func setState(_ state: RelayStats.State) {
        stats.state = state
        publish()
    }

    private func publish() {
        if let tracker {
            stats.confirmedLSN = tracker.confirmed
            stats.inFlightEvents = tracker.inFlightEvents
            stats.inFlightBytes = tracker.inFlightBytes
        }
        stats.sinkReachable = sink.isReachable
        let snapshot = stats
        published.withLock { $0 = snapshot }
    }

    private func sleepUnlessStopped(milliseconds: Int) {
        var left = milliseconds
        while left > 0 && !stopping {
            let step = min(left, 100)
            usleep(UInt32(step) * 1000)
            left -= step
        }
    }

    /// CLOCK_MONOTONIC in milliseconds.
    public static func nowMilliseconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }
}
