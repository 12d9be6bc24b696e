import Foundation
import Glibc
import Logging
import OutboxCore
import PGOutput
import PostgresClient
import PostgresReplication
import RelayIO
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
    /// Send a status update at least this often (and at least every half of the server's `wal_sender_timeout`).
    public var statusIntervalMilliseconds = 10_000
    /// When the confirmed position moved, report it after at most this long.
    public var minStatusIntervalMilliseconds = 100
    /// Nothing received for this long ends the connection (see `StreamConfiguration`);
    /// nil: the server's `wal_sender_timeout` (60 s when that is 0); 0: never.
    public var receiveTimeoutMilliseconds: Int?
    public var initialBackoffMilliseconds = 500
    public var maxBackoffMilliseconds = 30_000

    /// The supervisor's part of it.
    public var supervisor: Supervisor.Configuration {
        var c = Supervisor.Configuration()
        c.initialBackoffMilliseconds = initialBackoffMilliseconds
        c.maxBackoffMilliseconds = maxBackoffMilliseconds
        c.standbyRetryMilliseconds = standbyRetryMilliseconds
        c.seed = UInt64.random(in: .min ... .max)
        return c
    }
    /// How often a hot standby retries a slot that another relay holds.
    public var standbyRetryMilliseconds = 2_000
    /// How often the publication is re-checked while streaming (see `PublicationWatch`); 0 never.
    public var publicationCheckMilliseconds = 5_000
    /// How long shutdown waits for the open transaction's Commit and the sink's acknowledgements.
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
        self.replication.columns = routing.requiredColumns
    }

    /// The stream machine's part of it.
    public var stream: StreamConfiguration {
        var c = StreamConfiguration(routing: routing)
        c.protocolVersion = replication.protocolVersion
        c.maxInFlightEvents = maxInFlightEvents
        c.maxInFlightBytes = maxInFlightBytes
        c.statusIntervalMilliseconds = statusIntervalMilliseconds
        c.minStatusIntervalMilliseconds = minStatusIntervalMilliseconds
        c.receiveTimeoutMilliseconds = receiveTimeoutMilliseconds
        c.shutdownTimeoutMilliseconds = shutdownTimeoutMilliseconds
        c.confirms = confirms
        c.endLSN = endLSN
        c.eventLimit = eventLimit
        return c
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
    /// The same, read from a slot: it can be skipped on purpose with `skipCommand`.
    case poisonInLog(PoisonEvent, skipCommand: String)
    case sink(String)
    /// The sink dropped what it had not delivered and can go on (`SinkError.retryable`):
    /// the session ends and its events are read again.
    case sinkInterrupted(String)
    case unexpectedMessage(String)
    /// The stream machine ended the session: a stall or a dead connection (retried),
    /// or bad input (fatal).
    case session(SessionEnd)

    public var description: String {
        switch self {
        case .replication(let e): return e.description
        case .database(.connectionLost(let m)): return "database connection lost: \(m)"
        case .database(let e): return e.description
        case .poison(let p): return SessionEnd.poison(p).description
        case .poisonInLog(let p, let skip):
            return SessionEnd.poison(p).description
                + ". Or, if that transaction must never be relayed, skip exactly it: `\(skip)` (then restart)"
        case .sink(let m): return "sink failed: \(m)"
        case .sinkInterrupted(let m): return "sink interrupted: \(m)"
        case .unexpectedMessage(let m): return m
        case .session(let end): return end.description
        }
    }
}

extension RelayError {
    /// What an ended session means to the `Supervisor`, in `run` and `poll` alike.
    public var disposition: Supervisor.Disposition {
        switch self {
        // Another relay streams the slot, or (17+) this server is a standby whose sync worker holds it.
        case .replication(.slotInUse), .replication(.slotSynced): return .standBy
        case .replication(let e), .database(let e): return e.isRetryable || e.isRetryableQueryFailure ? .retry : .fail
        case .session(let end): return end.isRetryable ? .retry : .fail
        case .sinkInterrupted: return .retry
        case .poison, .poisonInLog, .sink, .unexpectedMessage: return .fail
        }
    }
}

extension ReplicationError {
    /// Serialization failure and deadlock: the statement rolled back; doing it again is the fix.
    public var isRetryableQueryFailure: Bool {
        if case .serverError(_, let state, _) = self { return state == "40001" || state == "40P01" }
        return false
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

/// The relay: WAL in, events out in log order, confirmed LSN back.
///
/// A thin driver of `StreamMachine`, which makes every decision: this class
/// connects, reads, waits, sends and logs, and nothing else. One `poll(2)`
/// waits for the PostgreSQL socket, the sink's wake-up descriptor and a stop
/// request, up to the machine's next deadline (as `pg_recvlogical` waits up
/// to its next feedback time): no fixed naps.
///
/// `run()` blocks its calling thread for the relay's lifetime: that thread owns
/// the libpq connection and drives the sink, so no blocking C call runs on
/// Swift's cooperative pool (use `runDetached()` from async code). One thread
/// means no per-event hop and no locking on the hot path.
///
/// `@unchecked Sendable`: the pipeline's mutable state is touched only by the
/// thread inside `run()`; what other threads touch (`stop()`, `currentStats`)
/// is an `Atomic`, a `Mutex` and an eventfd.
public final class Relay: RelayService, @unchecked Sendable {
    public let config: RelayConfig
    private let sink: any EventSink
    private let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let wakeup = Wakeup()
    private let published = Mutex(RelayStats())

    private var machine: StreamMachine
    /// What the driver itself knows: state, reconnects, latency, reachability, slot health.
    private var stats = RelayStats()
    private var warnedNonTransactional = false
    /// When the last wait ended (nil before the first, and after a session ends).
    private var turnStartedAt: Instant?
    private var loggedUpdates = 0
    /// Per transaction with events in flight, in ticket order: when its first
    /// event was sent, its commit time, and how many of its events are unacknowledged.
    private var timings: [(ticket: UInt64, sentAt: UInt64, commitMicros: Int64, remaining: Int)] = []
    private var timingsHead = 0

    /// Told each event's latencies as it is acknowledged (metrics).
    private let latencyObserver: (any LatencyObserver)?

    public init(config: RelayConfig, sink: any EventSink, logger: Logger, latencyObserver: (any LatencyObserver)? = nil)
    {
        self.config = config
        self.latencyObserver = latencyObserver
        self.sink = sink
        self.logger = logger
        self.machine = StreamMachine(configuration: config.stream)
    }

    /// Asks the relay to stop: it reads on to the open transaction's Commit,
    /// waits (bounded) for the sink's acks, confirms what was acknowledged, and
    /// `run()` returns. Thread-safe; wakes the relay's wait at once.
    public func stop() {
        stopRequested.store(true, ordering: .releasing)
        wakeup.signal()
    }

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
    /// lost or dead, server restarting, slot held by another relay, a stale
    /// session after a freeze) are retried as the `Supervisor` decides (the
    /// same machine and error mapping as `poll` mode), resuming from the last
    /// *confirmed* LSN.
    public func run() throws(RelayError) {
        var mayCreate = true
        var supervisor = Supervisor(configuration: config.supervisor)
        defer { publish() }
        while true {
            switch supervisor.next(now: Instant.now(), stopRequested: stopping) {
            case .stop, .fail:
                setState(.stopped)
                return
            case .wait(let until):
                wakeup.wait(milliseconds: Int(Instant.now().millisecondsRoundedUp(until: until)), unless: { stopping })
            case .connect(let reconnect):
                do throws(RelayError) {
                    // A standby stays one while it retries: its line is logged once per standby period.
                    if !supervisor.isStandby { setState(reconnect ? .reconnecting : .connecting) }
                    let session: ReplicationSession
                    do {
                        session = try ReplicationSession(
                            options: config.replication, mayCreate: mayCreate, logger: logger,
                            interrupt: wakeup.descriptor)
                    } catch { throw .replication(error) }
                    mayCreate = false
                    try stream(session) { supervisor.sessionStreaming() }
                    supervisor.sessionFinished()
                } catch {
                    let disposition = error.disposition
                    if disposition != .fail { drainAfterDisconnect() }
                    switch supervisor.sessionEnded(disposition, now: Instant.now()) {
                    case .standingBy?:
                        logger.notice("slot in use; waiting as hot standby", metadata: ["reason": "\(error)"])
                    case .reconnecting(let wait)?:
                        logger.warning(
                            "replication interrupted; reconnecting",
                            metadata: [
                                "error": "\(error)", "retry_in_ms": "\(wait)", "resume_from": "\(machine.confirmed)",
                            ])
                    case nil:
                        break
                    }
                    stats.reconnects = supervisor.reconnects
                    switch disposition {
                    case .fail:
                        setState(.failed)
                        throw error
                    case .standBy: setState(.standby)
                    case .retry: setState(.reconnecting)
                    }
                }
            }
        }
    }

    /// One replication stream, from START_REPLICATION until stop or error.
    private func stream(_ session: ReplicationSession, streaming: () -> Void) throws(RelayError) {
        let startLSN = machine.sessionStarted(
            ServerSettings(
                slotConfirmedFlush: session.slotConfirmedFlush,
                walSenderTimeoutMilliseconds: session.walSenderTimeoutMilliseconds),
            now: Instant.now())
        resetTimings()
        turnStartedAt = nil
        do {
            try session.start(from: startLSN)
        } catch {
            machine.sessionLost()
            throw .replication(error)
        }
        setState(.streaming)
        streaming()
        logger.notice(
            "streaming",
            metadata: [
                "slot": "\(config.replication.slot)", "publication": "\(config.replication.publication)",
                "from_lsn": "\(startLSN)", "server": "\(session.connection.serverDescription)",
                "sink": "\(sink.name)",
                "wal_sender_timeout_ms": "\(session.walSenderTimeoutMilliseconds.map(String.init) ?? "unknown")",
                "status_interval_ms": "\(machine.effectiveStatusIntervalMilliseconds)",
                "receive_timeout_ms": "\(machine.effectiveReceiveTimeoutMilliseconds)",
            ])
        let watch = PublicationWatch(
            options: config.replication, intervalMilliseconds: config.publicationCheckMilliseconds, logger: logger)
        if config.publicationCheckMilliseconds > 0 { watch.start() }
        defer { watch.stop() }

        do throws(RelayError) {
            while true {
                if stopping && !machine.isStopRequested {
                    machine.stopRequested(now: Instant.now())
                    if machine.state == .finishingTransaction {
                        logger.info("stop requested inside a transaction; reading on to its commit")
                    }
                }
                let now = Instant.now()
                switch machine.next(now: now) {
                case .sendStatus(let report):
                    try send(report, session)
                    machine.statusSent(report, now: now)
                case .read(let deadline):
                    if try readBuffered(session) == 0 {
                        try wait(session, readSocket: true, until: deadline)
                    }
                    try collectAcknowledgements()
                case .waitForSink(let deadline):
                    try wait(session, readSocket: false, until: deadline)
                    try collectAcknowledgements()
                case .drain(let deadline):
                    setState(.stopping)
                    do {
                        for ack in try sink.flush(timeoutMilliseconds: max(1, deadline.milliseconds(since: now)))
                        where machine.acknowledged(ack) {
                            observeAcknowledgement(ticket: ack.ticket)
                        }
                    } catch {
                        logger.error("sink failed while draining", metadata: ["error": "\(error)"])
                        try finish(session, machine.drainAbandoned())
                        return
                    }
                case .finish(let report):
                    try finish(session, report)
                    return
                case .end(let reason):
                    throw sessionEnded(reason)
                }
                try afterTurn(watch)
            }
        } catch {
            machine.sessionLost()
            if case .sinkInterrupted(let reason) = error {
                logger.warning(
                    "sink dropped undelivered events; they are read again", metadata: ["reason": "\(reason)"])
            } else if case .session(let end) = error, end.sessionMayBeStale {
                // What this session read and the sink has not delivered may be older
                // than what another relay has published since: drop it (rule 10).
                let discarded = sink.discardUnacknowledged()
                logger.warning(
                    "session may be stale; unacknowledged events discarded, to be read again",
                    metadata: [
                        "reason": "\(end)", "discarded": "\(discarded)", "in_flight": "\(machine.inFlightEvents)",
                    ])
            } else {
                // Confirm what the sink has acknowledged (bounded), then let the caller decide.
                confirmAfterError(session)
            }
            throw error
        }
    }

    /// Hands buffered messages to the machine while it wants them (at most 4,096
    /// per turn, so acks and status updates are never starved). Returns how many.
    private func readBuffered(_ session: ReplicationSession) throws(RelayError) -> Int {
        var handled = 0
        while handled < 4096 {
            let now = Instant.now()
            guard machine.wantsMessage(now: now) else { break }
            let message: ReplicationMessage?
            do { message = try session.connection.bufferedCopyData() } catch { throw .replication(error) }
            guard let message else { break }
            handled += 1
            try carryOut(machine.received(message, now: now))
        }
        return handled
    }

    private func carryOut(_ action: StreamMachine.Action) throws(RelayError) {
        switch action {
        case .none:
            break
        case .publish(let event, let ticket):
            do { try sink.send(event, ticket: ticket) } catch { throw Self.sinkFailure(error) }
            recordSend(ticket: ticket, commitTime: event.commitTime)
        case .deadLetter(let poison, let ticket):
            let accepted: Bool
            do { accepted = try sink.deadLetter(poison, ticket: ticket) } catch { throw Self.sinkFailure(error) }
            let metadata: Logger.Metadata = [
                "id": "\(poison.id ?? "?")", "lsn": "\(poison.lsn)", "reason": "\(poison.reason)",
            ]
            if accepted {
                recordSend(ticket: ticket, commitTime: PostgresTimestamp(rawValue: 0))
                logger.warning("row sent to the dead-letter destination", metadata: metadata)
            } else {
                logger.error("cannot relay row", metadata: metadata)
            }
            try carryOut(machine.deadLetterResult(poison, accepted: accepted))
        case .end(let reason):
            throw sessionEnded(reason)
        }
    }

    /// A poison row from the log names the command that skips its transaction.
    private func sessionEnded(_ reason: SessionEnd) -> RelayError {
        guard case .poison(let poison) = reason else { return .session(reason) }
        return .poisonInLog(
            poison,
            skipCommand:
                "outbox-relay skip --slot \(config.replication.slot) --publication \(config.replication.publication) --lsn \(poison.lsn)"
        )
    }

    /// One `poll(2)` on the PostgreSQL socket (when reading), the sink's wake-up
    /// descriptor and the stop eventfd, until `deadline`.
    private func wait(_ session: ReplicationSession, readSocket: Bool, until deadline: Instant) throws(RelayError) {
        var fds: [pollfd] = [pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)]
        if let fd = sink.wakeupDescriptor { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        if readSocket {
            let socket = session.connection.socket
            guard socket >= 0 else { throw .replication(.connectionLost("socket closed")) }
            fds.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0))
        }
        // The sink's own deadline (a reconnect, an overdue acknowledgement) ends the wait too.
        let until = sink.nextDeadline.map { min($0, deadline) } ?? deadline
        let waitStart = Instant.now()
        if let turnStart = turnStartedAt {
            stats.longestTurnMilliseconds = max(stats.longestTurnMilliseconds, waitStart.milliseconds(since: turnStart))
        }
        let ready = poll(&fds, nfds_t(fds.count), waitStart.millisecondsRoundedUp(until: until))
        turnStartedAt = Instant.now()
        if ready < 0 && errno != EINTR {
            throw .replication(.connectionLost("poll: \(String(cString: strerror(errno)))"))
        }
        if fds[0].revents != 0 { wakeup.clear() }
        if readSocket, fds[fds.count - 1].revents != 0 {
            do { try session.connection.consumeInput() } catch { throw .replication(error) }
        }
    }

    /// Lets the sink deliver what it was handed (a sink may write only here, as
    /// the file sink does) and feeds its acknowledgements to the machine. The
    /// clock is read first: a freeze since the events were read ends the session
    /// instead of delivering them late.
    private func collectAcknowledgements() throws(RelayError) {
        if let stall = machine.checkBeforeDelivery(now: Instant.now()) { throw .session(stall) }
        let acks: [Acknowledgement]
        do { acks = try sink.poll(timeoutMilliseconds: 0) } catch { throw Self.sinkFailure(error) }
        for ack in acks where machine.acknowledged(ack) { observeAcknowledgement(ticket: ack.ticket) }
    }

    /// The one mapping of a sink's error, for `run` and `poll` alike: a
    /// retryable `SinkError` (the sink dropped what it had not delivered and can
    /// go on) interrupts the session; anything else stops the relay.
    public static func sinkFailure(_ error: any Error) -> RelayError {
        if let failure = error as? SinkError, failure.retryable { return .sinkInterrupted(failure.message) }
        return .sink("\(error)")
    }

    private func send(_ report: StatusReport, _ session: ReplicationSession) throws(RelayError) {
        do {
            try session.sendStatus(
                written: report.written, flushed: report.flushed, replyRequested: report.replyRequested)
        } catch { throw .replication(error) }
    }

    /// Once per loop turn: the publication watch's verdict, one-time warnings, the stats snapshot.
    private func afterTurn(_ watch: PublicationWatch) throws(RelayError) {
        let verdict = watch.verdict
        if let failure = verdict.failure { throw .replication(failure) }
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
        if let slot = verdict.slot {
            stats.slotFailover = slot.failover
            stats.slotSynced = slot.synced
            stats.slotInvalidation = slot.invalidation
        }
        if machine.stats.suppressedUpdates > loggedUpdates {
            // table.op.invalid.behavior warn or error (fatal ends the session in the machine).
            let level: Logger.Level = config.routing.updateBehavior == .error ? .error : .warning
            logger.log(
                level: level,
                "ignored UPDATEs of outbox rows: rows are inserted (and may be deleted), never updated; no event was made of them",
                metadata: [
                    "count": "\(machine.stats.suppressedUpdates - loggedUpdates)",
                    "table": "\(config.routing.schema).\(config.routing.table)",
                ])
            loggedUpdates = machine.stats.suppressedUpdates
        }
        if !warnedNonTransactional && machine.stats.nonTransactionalMessages > 0 {
            warnedNonTransactional = true
            logger.warning(
                "ignoring non-transactional logical message: it is not tied to a commit and could be a phantom event; emit it with transactional = true (sql/04-emit-message.sql)",
                metadata: ["prefix": "\(config.routing.messagePrefix ?? "")"])
        }
        publish()
    }

    /// The last status update, and the end of the stream.
    private func finish(_ session: ReplicationSession, _ report: StatusReport) throws(RelayError) {
        if machine.inFlightEvents > 0 {
            logger.warning(
                "shutdown deadline reached with events unacknowledged; they stay unconfirmed and will be redelivered",
                metadata: ["in_flight": "\(machine.inFlightEvents)"])
        }
        do {
            try session.sendStatus(written: report.written, flushed: report.flushed)
            machine.statusSent(report, now: Instant.now())
            session.close()
        } catch {
            logger.debug("final status update not sent", metadata: ["error": "\(error)"])
        }
        if let end = config.endLSN, machine.confirmed >= end {
            logger.notice("reached end LSN", metadata: ["end_lsn": "\(end)", "confirmed_lsn": "\(machine.confirmed)"])
        }
        logger.notice(
            "stopped", metadata: ["confirmed_lsn": "\(report.flushed)", "events": "\(machine.stats.eventsPublished)"])
        publish()
    }

    /// After an error that is not a stale session: wait (2 s at most) for acks
    /// of what is in flight and try to confirm them before the connection goes.
    private func confirmAfterError(_ session: ReplicationSession) {
        if machine.inFlightEvents > 0 {
            do {
                for ack in try sink.flush(timeoutMilliseconds: 2_000) where machine.acknowledged(ack) {
                    observeAcknowledgement(ticket: ack.ticket)
                }
            } catch {
                logger.error("sink failed while draining", metadata: ["error": "\(error)"])
            }
        }
        let report = machine.statusReport
        do {
            try session.sendStatus(written: report.written, flushed: report.flushed)
            session.close()
        } catch {
            logger.debug("final status update not sent", metadata: ["error": "\(error)"])
        }
        publish()
    }

    /// After losing the connection: collect what the sink acknowledges within a
    /// short bound so the next stream starts as late as safely possible.
    private func drainAfterDisconnect() {
        guard machine.inFlightEvents > 0 else { return }
        do {
            for ack in try sink.flush(timeoutMilliseconds: 5_000) { machine.acknowledged(ack) }
        } catch {
            // Unacknowledged events stay unconfirmed and are redelivered by the next stream.
            logger.warning("sink failed while draining before a reconnect", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Latency bookkeeping (measurement only; no decision depends on it)

    private func recordSend(ticket: UInt64, commitTime: PostgresTimestamp) {
        if timings.count > timingsHead, timings[timings.count - 1].ticket == ticket {
            timings[timings.count - 1].remaining += 1
        } else {
            timings.append((ticket, Instant.now().nanoseconds, commitTime.unixMicroseconds, 1))
            if timings.count == timingsHead + 1 {
                // Nothing was pending: the stall clock starts now.
                stats.oldestPendingCommitMicros = commitTime.unixMicroseconds
                stats.lastAcknowledgementAt = Self.nowMilliseconds()
            }
        }
    }

    /// Latency histograms and the oldest pending commit; tickets are increasing, so a binary search finds one.
    private func observeAcknowledgement(ticket: UInt64) {
        let now = Instant.now().nanoseconds
        stats.lastAcknowledgementAt = Int(now / 1_000_000)
        var low = timingsHead
        var high = timings.count
        while low < high {
            let mid = (low + high) / 2
            if timings[mid].ticket < ticket { low = mid + 1 } else { high = mid }
        }
        guard low < timings.count, timings[low].ticket == ticket else { return }
        timings[low].remaining -= 1
        if let latencyObserver {
            latencyObserver.acknowledged(
                publishSeconds: Double(now &- timings[low].sentAt) / 1e9,
                commitToAcknowledgedSeconds: timings[low].commitMicros > 0
                    ? Double(Self.wallClockMicros() - timings[low].commitMicros) / 1e6 : nil)
        }
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

    static func wallClockMicros() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1_000
    }

    private func setState(_ state: RelayStats.State) {
        stats.state = state
        publish()
    }

    /// The machine's counters with the driver's own fields on top, for other threads.
    private func publish() {
        var snapshot = machine.stats
        snapshot.state = stats.state
        snapshot.reconnects = stats.reconnects
        snapshot.oldestPendingCommitMicros = stats.oldestPendingCommitMicros
        snapshot.lastAcknowledgementAt = stats.lastAcknowledgementAt
        snapshot.slotWALStatus = stats.slotWALStatus
        snapshot.slotSafeWALSize = stats.slotSafeWALSize
        snapshot.slotFailover = stats.slotFailover
        snapshot.slotSynced = stats.slotSynced
        snapshot.slotInvalidation = stats.slotInvalidation
        snapshot.sinkReachable = sink.isReachable
        snapshot.longestTurnMilliseconds = stats.longestTurnMilliseconds
        published.withLock { $0 = snapshot }
    }

    /// The monotonic clock in milliseconds (the time base of `RelayStats.lastAcknowledgementAt`).
    public static func nowMilliseconds() -> Int { Int(Instant.now().nanoseconds / 1_000_000) }
}
