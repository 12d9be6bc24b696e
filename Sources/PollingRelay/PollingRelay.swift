import Foundation
import Glibc
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication
import RelayIO
import Synchronization

/// Everything the polling relay needs.
public struct PollingConfig: Sendable {
    /// libpq connection string of the database (an ordinary connection, not replication).
    public var conninfo: String
    /// The same routing as the log-tailing relay: table, columns, topic template, tombstones.
    public var routing: RoutingConfig
    /// Most rows claimed (and in flight) per poll.
    public var batchSize = 500
    /// Time between polls when the last poll found fewer than `batchSize` rows.
    public var intervalMilliseconds = 1_000
    /// Claim order: a column (or expression) of the outbox table; nil for none (heap order).
    public var orderBy: String? = "created_at"
    /// Mark published rows by setting this timestamp column instead of deleting
    /// them (and claim only rows where it is NULL); nil deletes them.
    public var markColumn: String?
    /// LISTEN on this channel: a NOTIFY (see sql/05-polling.sql) wakes the poller at once.
    public var notifyChannel: String?
    /// How long shutdown waits for the sink to acknowledge a claimed batch.
    public var shutdownTimeoutMilliseconds = 10_000
    public var initialBackoffMilliseconds = 500
    public var maxBackoffMilliseconds = 30_000
    /// No answer to a query for this long means the connection is dead (a silent
    /// network cut): the batch rolls back and the poller reconnects. 0: wait as long as libpq does.
    public var receiveTimeoutMilliseconds = 60_000
    /// Stop (successfully) after the first poll that finds no row: for draining a backlog.
    public var stopWhenEmpty = false

    public init(conninfo: String, routing: RoutingConfig) {
        self.conninfo = conninfo
        self.routing = routing
    }

    /// Problems with the configuration, each naming the option.
    public func validate() -> [String] {
        var problems: [String] = []
        if batchSize < 1 || batchSize > 100_000 {
            problems.append("--batch-size must be between 1 and 100000")
        }
        if intervalMilliseconds < 1 { problems.append("--interval-ms must be at least 1") }
        if let channel = notifyChannel, channel.isEmpty || channel.utf8.count > 63 {
            problems.append("--notify-channel must be 1–63 bytes")
        }
        if let column = markColumn, column.isEmpty {
            problems.append("--mark-column must not be empty")
        }
        return problems
    }
}

/// The polling relay: the baseline that log tailing is measured against, and
/// the fallback where logical replication is not allowed.
///
/// Each poll, in one transaction:
/// 1. `SELECT … FOR UPDATE SKIP LOCKED` claims up to `batchSize` committed rows
///    (rows another poller holds are skipped, so pollers may run side by side);
/// 2. every row goes through the same `OutboxRouter` as the log-tailing relay
///    and is sent to the sink (a row that cannot become an event goes to the
///    dead-letter destination, or stops the relay);
/// 3. only when the sink acknowledged every event of the batch are the rows
///    deleted (or marked), and the transaction commits.
///
/// If anything fails before COMMIT the transaction rolls back: the rows stay
/// and are claimed again, so delivery is at-least-once. Order is claim order
/// (`orderBy`), which is not commit order, and two pollers interleave rows of
/// one aggregate: see the README.
///
/// Like `Relay`, `run()` blocks its thread, which owns the libpq connection and drives the sink.
public final class PollingRelay: RelayService, @unchecked Sendable {
    public let config: PollingConfig
    private let sink: any EventSink
    private let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let published = Mutex(RelayStats())
    private var stats = RelayStats()
    private var router: OutboxRouter
    private var columnNames: [String] = []
    private var nextTicket: UInt64 = 1

    public init(config: PollingConfig, sink: any EventSink, logger: Logger) {
        self.config = config
        self.sink = sink
        self.logger = logger
        self.router = OutboxRouter(config: config.routing)
    }

    /// Asks the relay to stop after the batch in flight (bounded by the shutdown timeout). Thread-safe.
    public func stop() {
        stopRequested.store(true, ordering: .releasing)
        wakeup.signal()
    }
    private var stopping: Bool { stopRequested.load(ordering: .acquiring) }
    /// Ends a wait (and bounds a running query) at once when `stop()` is called.
    private let wakeup = Wakeup()

    /// A snapshot of the counters, from any thread.
    public var currentStats: RelayStats { published.withLock { $0 } }

    /// Runs `run()` on a dedicated thread and awaits it.
    public func runDetached() async throws {
        try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<Void, any Error>) in
            Thread { [self] in
                do {
                    try run()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }.start()
        }
    }

    /// Polls until `stop()` (or, with `stopWhenEmpty`, an empty poll) or a fatal
    /// error. A lost connection or a server restarting is retried with capped
    /// exponential backoff; a missing table or column, or missing privileges, is fatal.
    public func run() throws(RelayError) {
        var supervisor = Supervisor(configuration: supervisorConfiguration)
        defer { publish() }
        while true {
            switch supervisor.next(now: Instant.now(), stopRequested: stopping) {
            case .stop, .fail:
                setState(.stopped)
                return
            case .wait(let until):
                sleepUnlessStopped(milliseconds: Int(Instant.now().millisecondsRoundedUp(until: until)))
            case .connect(let reconnect):
                do throws(RelayError) {
                    setState(reconnect ? .reconnecting : .connecting)
                    let connection: PGConnection
                    do {
                        connection = try PGConnection(
                            conninfo: config.conninfo, replication: false, applicationName: "outbox-relay-poll",
                            interrupt: wakeup.descriptor)
                    } catch { throw .database(error) }
                    if config.receiveTimeoutMilliseconds > 0 {
                        connection.queryTimeoutMilliseconds = config.receiveTimeoutMilliseconds
                    }
                    connection.interruptDescriptor = wakeup.descriptor
                    try prepare(connection)
                    supervisor.sessionStreaming()
                    try pollLoop(connection)
                    supervisor.sessionFinished()
                } catch {
                    // The same mapping as `run`: a retryable sink error (an aborted Kafka
                    // transaction) is retried here too, not fatal.
                    let disposition = error.disposition
                    if case .reconnecting(let wait)? = supervisor.sessionEnded(disposition, now: Instant.now()) {
                        logger.warning(
                            "database unavailable; reconnecting",
                            metadata: ["error": "\(error)", "retry_in_ms": "\(wait)"])
                    }
                    stats.reconnects = supervisor.reconnects
                    if disposition == .fail {
                        setState(.failed)
                        throw error
                    }
                }
            }
        }
    }

    private var supervisorConfiguration: Supervisor.Configuration {
        var c = Supervisor.Configuration()
        c.initialBackoffMilliseconds = config.initialBackoffMilliseconds
        c.maxBackoffMilliseconds = config.maxBackoffMilliseconds
        c.healthyAfterMilliseconds = 0  // a connection that got past its checks is healthy
        c.seed = UInt64.random(in: .min ... .max)
        return c
    }

    static func isRetryable(_ error: ReplicationError) -> Bool {
        RelayError.database(error).disposition == .retry
    }

    private var qualifiedTable = ""
    private var claimSQL = ""

    /// Builds the statements and checks, before the first claim, that the table,
    /// the columns and the privileges are there, so a mistake fails at start.
    private func prepare(_ connection: PGConnection) throws(RelayError) {
        let routing = config.routing
        qualifiedTable =
            connection.identifier(routing.schema) + "." + connection.identifier(routing.table)
        let pending = config.markColumn.map { " WHERE " + connection.identifier($0) + " IS NULL" } ?? ""
        let order = config.orderBy.map { " ORDER BY " + connection.identifier($0) } ?? ""
        // ctid is a system column, so it cannot clash with the table's columns; it is always last.
        let select =
            "SELECT t.*, t.ctid FROM \(qualifiedTable) t\(pending)\(order) LIMIT \(config.batchSize) FOR UPDATE SKIP LOCKED"
        claimSQL = "BEGIN; " + select
        do {
            _ = try connection.queryTuples(
                "BEGIN; " + select.replacingOccurrences(of: "LIMIT \(config.batchSize)", with: "LIMIT 0")
                    + "; ROLLBACK", label: "checking the outbox table")
            // The claim's FOR UPDATE needs UPDATE (it passed above); completing needs DELETE, or UPDATE of the mark column.
            if config.markColumn == nil {
                let rows = try connection.query(
                    "SELECT has_table_privilege(\(connection.literal(qualifiedTable)), 'DELETE') AS ok",
                    label: "checking privileges")
                if rows[0, "ok"] != "t" {
                    throw RelayError.database(
                        .serverError(
                            command: "checking privileges", sqlState: "42501",
                            message:
                                "the role may not DELETE rows of \(qualifiedTable) (\(Self.privilegeHint(config, qualifiedTable)))"
                        ))
                }
            }
            if let channel = config.notifyChannel {
                try connection.query("LISTEN " + connection.identifier(channel), label: "LISTEN")
            }
        } catch let error as RelayError {
            throw error
        } catch let error as ReplicationError {
            throw .database(Self.explain(error, config: config, table: qualifiedTable))
        } catch {
            throw .database(.connectionLost("\(error)"))
        }
        logger.info(
            "polling",
            metadata: [
                "server": "\(connection.serverDescription)", "table": "\(qualifiedTable)",
                "batch_size": "\(config.batchSize)", "interval_ms": "\(config.intervalMilliseconds)",
                "notify_channel": "\(config.notifyChannel ?? "-")",
                "completion": "\(config.markColumn.map { "mark \($0)" } ?? "delete")",
                "sink": "\(sink.name)",
            ])
        setState(.streaming)
    }

    static func privilegeHint(_ config: PollingConfig, _ table: String) -> String {
        config.markColumn == nil
            ? "the poller needs SELECT, UPDATE (for its FOR UPDATE row locks) and DELETE on \(table)"
            : "the poller needs SELECT and UPDATE on \(table)"
    }

    /// Turns the server's words for a wrong table or column into what to change.
    static func explain(
        _ error: ReplicationError, config: PollingConfig, table: String
    )
        -> ReplicationError
    {
        guard case .serverError(let command, let state, let message) = error else { return error }
        switch state {
        case "42P01":
            return .serverError(
                command: command, sqlState: state,
                message: "\(message) (the outbox table; set --table or run sql/01-outbox-table.sql)")
        case "42703":
            return .serverError(
                command: command, sqlState: state,
                message: "\(message) (check --order-by and --mark-column against \(table))")
        case "42501":
            return .serverError(
                command: command, sqlState: state, message: "\(message) (\(privilegeHint(config, table)))")
        default: return error
        }
    }

    private func pollLoop(_ connection: PGConnection) throws(RelayError) {
        while !stopping {
            let claimed = try pollOnce(connection)
            if claimed == 0 && config.stopWhenEmpty { return }
            if claimed < config.batchSize { try waitForWork(connection) }
        }
    }

    /// One claim–publish–complete cycle. Returns the number of rows claimed.
    private func pollOnce(_ connection: PGConnection) throws(RelayError) -> Int {
        let result: PGConnection.TupleRows
        do { result = try connection.queryTuples(claimSQL, label: "claiming outbox rows") } catch {
            rollback(connection)
            throw .database(Self.explain(error, config: config, table: qualifiedTable))
        }
        stats.polls += 1
        if result.rows.isEmpty {
            do { try connection.query("COMMIT") } catch { throw .database(error) }
            publish()
            return 0
        }
        stats.nonEmptyPolls += 1
        let names = result.columns.dropLast().map(\.name)
        if names != columnNames {
            columnNames = names
            router.relationChanged(
                Relation(
                    oid: 1, namespace: config.routing.schema, name: config.routing.table,
                    columns: result.columns.dropLast().map {
                        Relation.Column(name: $0.name, typeOID: $0.typeOID)
                    }))
        }
        let now = PostgresTimestamp(unixMicroseconds: Int64(Date().timeIntervalSince1970 * 1_000_000))
        var pending: [UInt64: Int] = [:]
        var ctids: [String] = []
        ctids.reserveCapacity(result.rows.count)
        do throws(RelayError) {
            for row in result.rows {
                let ctid = row.string(at: row.count - 1) ?? ""
                ctids.append(ctid)
                let tuple = TupleData(storage: row.storage, columns: Array(row.columns.dropLast()))
                guard
                    let routed = router.route(
                        Insert(relationOID: 1, newTuple: tuple), lsn: .zero, commitTime: now)
                else { continue }
                let ticket = nextTicket
                nextTicket += 1
                switch routed {
                case .success(let event):
                    do { try sink.send(event, ticket: ticket) } catch { throw Relay.sinkFailure(error) }
                    pending[ticket] = event.weight
                    stats.eventsPublished += 1
                    if event.tombstone { stats.tombstones += 1 }
                case .failure(var poison):
                    poison.source = "\(qualifiedTable) (ctid \(ctid))"
                    let taken: Bool
                    do { taken = try sink.deadLetter(poison, ticket: ticket) } catch {
                        throw Relay.sinkFailure(error)
                    }
                    guard taken else { throw RelayError.poison(poison) }
                    logger.warning(
                        "row sent to the dead-letter destination",
                        metadata: ["id": "\(poison.id ?? "?")", "reason": "\(poison.reason)"])
                    pending[ticket] = poison.payload?.count ?? 0
                    stats.deadLettered += 1
                }
            }
            stats.inFlightEvents = pending.count
            stats.inFlightBytes = pending.values.reduce(0, +)
            publish()
            try awaitAcks(&pending)
        } catch {
            rollback(connection)
            stats.inFlightEvents = 0
            stats.inFlightBytes = 0
            throw error
        }
        let list = ctids.map { "\"\($0)\"" }.joined(separator: ",")
        let complete =
            config.markColumn.map { "UPDATE \(qualifiedTable) SET \(connection.identifier($0)) = now()" }
            ?? "DELETE FROM \(qualifiedTable)"
        do {
            try connection.query(
                "\(complete) WHERE ctid = ANY('{\(list)}'::tid[]); COMMIT",
                label: "completing the claimed batch")
        } catch {
            // Not committed: the rows stay and are published again (at-least-once).
            rollback(connection)
            throw .database(Self.explain(error, config: config, table: qualifiedTable))
        }
        stats.transactions += 1
        publish()
        return result.rows.count
    }

    /// Waits until the sink acknowledged every ticket of the batch. On stop it
    /// waits at most the shutdown timeout, then gives the batch up (rolled back, so
    /// its rows are published again later).
    private func awaitAcks(_ pending: inout [UInt64: Int]) throws(RelayError) {
        var deadline: Int?
        while !pending.isEmpty {
            if stopping {
                let now = Relay.nowMilliseconds()
                if deadline == nil { deadline = now + config.shutdownTimeoutMilliseconds }
                if let deadline, now >= deadline {
                    logger.warning(
                        "shutdown deadline reached with events unacknowledged; their rows stay in the table and will be published again",
                        metadata: ["in_flight": "\(pending.count)"])
                    throw RelayError.sink("stopped before the sink acknowledged the batch")
                }
            }
            let acks: [Acknowledgement]
            // A sink without a wake-up descriptor waits in its own poll.
            do { acks = try sink.poll(timeoutMilliseconds: sink.wakeupDescriptor == nil ? 50 : 0) } catch {
                throw Relay.sinkFailure(error)
            }
            for ack in acks where pending.removeValue(forKey: ack.ticket) != nil {
                stats.eventsAcknowledged += 1
            }
            stats.inFlightEvents = pending.count
            if pending.isEmpty { break }
            if let descriptor = sink.wakeupDescriptor { waitForAcknowledgements(on: descriptor, until: deadline) }
        }
        stats.inFlightBytes = 0
    }

    /// One wait for the sink's next answer: `poll(2)` on its wake-up
    /// descriptor (and the stop pipe, until stopping), until the sink's next
    /// deadline or the shutdown deadline; at most a second, a bound on a sink
    /// that fails to signal, not a slice.
    private func waitForAcknowledgements(on descriptor: Int32, until shutdownDeadline: Int?) {
        var wait = 1_000
        if let next = sink.nextDeadline { wait = min(wait, Int(Instant.now().millisecondsRoundedUp(until: next))) }
        if let shutdownDeadline { wait = min(wait, max(0, shutdownDeadline - Relay.nowMilliseconds())) }
        var fds = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)]
        // Once stopping, the stop pipe stays readable: only the sink and the deadline end the wait.
        if !stopping { fds.append(pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), Int32(clamping: max(0, wait)))
    }

    private func rollback(_ connection: PGConnection) {
        _ = try? connection.query("ROLLBACK")
    }

    /// Waits until the next poll is due, a notification arrives, or stop: one
    /// `poll(2)` on the stop pipe, the LISTEN connection and the sink's wake-up descriptor.
    private func waitForWork(_ connection: PGConnection) throws(RelayError) {
        let deadline = Instant.now() + config.intervalMilliseconds
        while !stopping {
            if config.notifyChannel != nil {
                do {
                    if try !connection.waitForNotifications(timeoutMilliseconds: 0).isEmpty { return }
                } catch { throw .database(error) }
            }
            let left = Instant.now().millisecondsRoundedUp(until: deadline)
            if left <= 0 { return }
            // The sink's own deadline (a reconnect, an overdue acknowledgement) ends the wait too.
            let sinkLeft = sink.nextDeadline.map { Instant.now().millisecondsRoundedUp(until: $0) } ?? left
            var fds = [pollfd(fd: wakeup.descriptor, events: Int16(POLLIN), revents: 0)]
            if config.notifyChannel != nil {
                fds.append(pollfd(fd: connection.socket, events: Int16(POLLIN), revents: 0))
            }
            if let fd = sink.wakeupDescriptor { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            _ = poll(&fds, nfds_t(fds.count), max(min(left, sinkLeft), sinkLeft == 0 ? 1 : 0))
            // Keep the sink's own events (logs, errors) moving while idle.
            do { _ = try sink.poll(timeoutMilliseconds: 0) } catch { throw Relay.sinkFailure(error) }
        }
    }

    private func setState(_ state: RelayStats.State) {
        if stats.state != state && (state == .streaming || state == .stopped) {
            logger.debug("state", metadata: ["state": "\(state.rawValue)"])
        }
        stats.state = state
        publish()
    }

    private func publish() {
        stats.sinkReachable = sink.isReachable
        stats.droppedHeaderMembers = router.droppedHeaderMembers
        let snapshot = stats
        published.withLock { $0 = snapshot }
    }

    private func sleepUnlessStopped(milliseconds: Int) {
        wakeup.wait(milliseconds: milliseconds, unless: { stopping })
    }
}
