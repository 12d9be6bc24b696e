import Glibc
import Logging
import OutboxCore
import PGOutput
import Synchronization

/// What a networked destination provides: a connection and the few
/// operations on it. Everything else — the queue, what is in flight, put-back
/// after a loss, acknowledgements, refusals and the dead-letter route, backoff,
/// acknowledgement deadlines — is the shared `DeliveryMachine`'s, carried out
/// by `DeliveryDriver`.
///
/// Threads: `connect` and `close` run on threads of their own (they may block
/// for a silent peer); everything else runs on the relay's thread and must not
/// block. The transport holds only immutable configuration and thread-safe
/// counters (`Sendable`); per-connection state lives in its `Link`.
public protocol DeliveryTransport: AnyObject, Sendable {
    /// What one record becomes for this destination (subject, headers, body).
    associatedtype Message
    /// How the destination names a record it answers about (a delivery tag, a message's address).
    associatedtype Token: Hashable
    /// One connection; used by one thread at a time, closed once.
    associatedtype Link: AnyObject

    /// For logs and messages: `NATS`, `RabbitMQ`, `Redis`.
    var destination: String { get }
    /// The sink's name for logs and `RelayStats`: `nats`, `rabbitmq`, `redis`.
    var name: String { get }
    /// The URL for logs, without credentials.
    var redactedLocation: String { get }
    /// Whether refused events and poison rows go to a dead-letter destination.
    var hasDeadLetter: Bool { get }
    /// How long the oldest record in flight may wait for its acknowledgement
    /// (nil: the link times its own requests, see `deadline(of:)`).
    var acknowledgementTimeoutMilliseconds: Int? { get }

    /// Connects and completes the handshake; blocking, on a connector thread.
    /// `wakeup` is to be signalled when results arrive on another thread (a C
    /// client's callbacks); a transport with a socket reports it in `descriptor(of:)`.
    func connect(wakeup: Wakeup) throws(ConnectFailure) -> Link
    /// Closes a link; may block (runs on a thread of its own).
    func close(_ link: Link)
    /// The descriptor to wait on while the link is up, and whether output is pending on it.
    func descriptor(of link: Link) -> (fd: Int32, writable: Bool)?
    /// When the link next has something timed to do (a request's answer is
    /// overdue, a question to ask again); the driver's wait ends by then.
    func deadline(of link: Link) -> Instant?

    /// The message for an event, and why it cannot be sent when it cannot (refused at once).
    func message(for event: OutboxEvent) -> (Message, problem: String?)
    /// The message for a row that could not become an event; nil without a dead-letter destination.
    func poisonMessage(_ poison: PoisonEvent) -> Message?
    /// The dead-letter message for a refused one.
    func deadLetterMessage(_ message: Message, because why: String) -> Message

    /// Whether the link takes another record now (a window or a batch that is out).
    func canPublish(on link: Link) -> Bool
    /// Whether the link takes `message` now, the front of the queue (a
    /// destination that keeps a key's order by having at most one of each key
    /// in flight holds it back). The queue waits behind it: nothing overtakes it.
    func canPublish(_ message: Message, on link: Link) -> Bool
    /// Hands one record over; never blocks.
    func publish(_ message: Message, on link: Link) -> PublishOutcome<Token>
    /// After a turn of `publish` calls: write out what is buffered (a batch). Returns why the link failed, if it did.
    func endOfTurn(on link: Link, now: Instant) -> String?
    /// What the destination answered since the last call; never blocks.
    func results(on link: Link, now: Instant) -> [TransportResult<Token>]
    /// A link whose answers are positional (one reply per command, in order)
    /// cannot outlive discarded records: it is closed when they are discarded.
    var closesOnDiscard: Bool { get }
}

extension DeliveryTransport {
    public func canPublish(on link: Link) -> Bool { true }
    public func canPublish(_ message: Message, on link: Link) -> Bool { canPublish(on: link) }
    public func deadline(of link: Link) -> Instant? { nil }
    public func endOfTurn(on link: Link, now: Instant) -> String? { nil }
    public var closesOnDiscard: Bool { false }
}

/// What handing one record over did.
public enum PublishOutcome<Token> {
    case sent(Token)
    /// This record can never be sent as it is: dead-letter it or stop.
    case refused(String)
    /// The link failed: it is closed, and what was in flight goes again.
    case lost(String)
}

/// What a destination answered.
public enum TransportResult<Token> {
    case delivered(Token)
    /// Refused for good: dead-letter it or stop.
    case refused(Token, String)
    /// Refused in a way no dead-letter destination helps with (a cluster redirection): stop.
    case fatal(Token, String)
    /// Not applied, to be sent again first (the rest of an aborted batch).
    case putBack([Token])
    /// The link is gone or cannot be trusted (a transient failure counts).
    case lost(String)
    /// Refused for now, link kept (Redis OOM): these go back in front of the
    /// queue, and nothing is sent until the backoff's delay has passed.
    case retryLater([Token], String)
    /// Nothing is to be sent until `release` (a resource alarm).
    case hold(String)
    case release
    /// A line for the log the transport wants written (a durability warning).
    case notice(Logger.Level, Logger.Message, Logger.Metadata)
}

/// Why a connection attempt failed; `permanent`: retrying cannot help (refused credentials).
public struct ConnectFailure: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var permanent: Bool
    public init(_ message: String, permanent: Bool = false) {
        self.message = message
        self.permanent = permanent
    }
    public var description: String { message }
}

/// `EventSink` for any `DeliveryTransport`: the relay-thread side of the
/// delivery machine. It never blocks: connection attempts run on a connector
/// thread and hand the link over through a `Handoff`; closes run on threads
/// of their own; deadlines (backoff, acknowledgement timeout, holds) are the
/// machine's, reported as `nextDeadline` so the relay's one `poll(2)` ends in time.
public final class DeliveryDriver<Transport: DeliveryTransport>: EventSink {
    public let transport: Transport
    public var name: String { transport.name }
    private let logger: Logger
    private var machine: DeliveryMachine<Transport.Message, Transport.Token>
    private var link: Transport.Link?
    private var generation: UInt64 = 0
    private let readiness: Readiness
    /// The attempt under way, if any.
    private var attempt: Handoff<Result<Transport.Link, ConnectFailure>>?
    private var ready: [Acknowledgement] = []

    /// Connects once on the calling thread (not the relay's: the CLI calls this
    /// from a thread of its own), so a configuration mistake fails the start.
    /// An unreachable destination is not a mistake: the relay starts and the
    /// machine retries.
    public init(transport: Transport, logger: Logger, seed: UInt64 = UInt64.random(in: .min ... .max)) throws {
        self.transport = transport
        self.logger = logger
        var c = DeliveryMachine<Transport.Message, Transport.Token>.Configuration(destination: transport.destination)
        c.hasDeadLetter = transport.hasDeadLetter
        c.acknowledgementTimeoutMilliseconds = transport.acknowledgementTimeoutMilliseconds
        c.seed = seed
        machine = DeliveryMachine(configuration: c)
        readiness = try Readiness()
        let now = Instant.now()
        do {
            let opened = try transport.connect(wakeup: readiness.wakeup)
            adopt(opened, now: now)
            logger.notice("\(transport.destination) connected", metadata: ["url": "\(transport.redactedLocation)"])
        } catch {
            if error.permanent { throw SinkError(error.message) }
            machine.connectFailed(error.message, permanent: false, now: now)
            _ = machine.takeNotices()
            logger.warning(
                "\(transport.destination) unreachable; events wait in the relay and PostgreSQL until it is",
                metadata: ["url": "\(transport.redactedLocation)", "error": "\(error.message)"])
        }
    }

    deinit {
        if let attempt, let late = attempt.abandon(), case .success(let opened) = late { closeOffThread(opened) }
        if let link { closeOffThread(link) }
    }

    // MARK: EventSink

    public var isReachable: Bool { machine.isReachable }
    public var wakeupDescriptor: Int32? { readiness.descriptor }
    public var nextDeadline: Instant? {
        let linkDeadline = link.flatMap { transport.deadline(of: $0) }
        guard let machineDeadline = machine.nextDeadline else { return linkDeadline }
        return linkDeadline.map { min($0, machineDeadline) } ?? machineDeadline
    }
    /// Accepted and not acknowledged, dead-lettered or refused.
    public var inFlight: Int { machine.unsettled }
    public var deadLettered: Int { machine.deadLettered }
    /// The link's state, for tests and logs.
    public var linkState: DeliveryMachine<Transport.Message, Transport.Token>.Link { machine.link }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let (message, problem) = transport.message(for: event)
        if let problem {
            try handle(
                machine.refuseAtOnce(
                    message, ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn,
                    key: event.key, because: problem))
        } else {
            machine.accept(
                message, ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn, key: event.key)
        }
        try pump(now: Instant.now())
    }

    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        guard let message = transport.poisonMessage(poison) else { return false }
        machine.acceptDeadLetter(
            message, ticket: ticket, weight: poison.payload?.count ?? 0, eventID: poison.id ?? "",
            lsn: poison.lsn, key: "")
        try pump(now: Instant.now())
        return true
    }

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try turn()
        if ready.isEmpty && timeoutMilliseconds > 0 && machine.unsettled > 0 {
            var wait = Int32(clamping: timeoutMilliseconds)
            if let deadline = nextDeadline { wait = min(wait, Instant.now().millisecondsRoundedUp(until: deadline)) }
            readiness.wait(timeoutMilliseconds: wait)
            try turn()
        }
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    /// Waits (up to the timeout) until everything accepted is acknowledged: on
    /// shutdown, and before a reconnect to PostgreSQL. One wait per wake-up, no slices.
    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try pollUntilSettled(timeoutMilliseconds: timeoutMilliseconds) { machine.unsettled > 0 }
    }

    public func discardUnacknowledged() -> Int {
        let dropped = machine.discardAll()
        if transport.closesOnDiscard, let link {
            closeLink(link)
            machine.linkReset()
        }
        return dropped
    }

    // MARK: The turn

    private func turn() throws {
        readiness.wakeup.clear()
        let now = Instant.now()
        try adoptAttempt(now: now)
        try collect(now: now)
        try pump(now: now)
    }

    /// Takes a finished connection attempt.
    private func adoptAttempt(now: Instant) throws {
        guard let pending = attempt, let outcome = pending.take() else { return }
        attempt = nil
        switch outcome {
        case .success(let opened):
            adopt(opened, now: now)
        case .failure(let failure):
            machine.connectFailed(failure.message, permanent: failure.permanent, now: now)
            if failure.permanent {
                logger.error(
                    "\(transport.destination) refused the connection for good",
                    metadata: ["error": "\(failure.message)"])
            } else {
                logger.debug(
                    "\(transport.destination) connection attempt failed", metadata: ["error": "\(failure.message)"])
            }
        }
        logNotices()
    }

    private func adopt(_ opened: Transport.Link, now: Instant) {
        link = opened
        generation = machine.connected(now: now)
        watchLink()
    }

    /// Feeds the transport's answers to the machine.
    private func collect(now: Instant) throws {
        guard let link else { return }
        for result in transport.results(on: link, now: now) {
            switch result {
            case .delivered(let token):
                if let ack = machine.delivered(token, generation: generation, now: now) { ready.append(ack) }
            case .refused(let token, let why):
                try handle(machine.refused(token, generation: generation, because: why, now: now))
            case .fatal(let token, let why):
                logNotices()
                let record = machine.record(for: token)
                throw SinkError(
                    "\(transport.destination) refused event id=\(record?.eventID ?? "?") (commit LSN \(record.map { "\($0.lsn)" } ?? "?")): \(why). Nothing from this transaction on was confirmed; fix the cause and restart"
                )
            case .putBack(let tokens):
                machine.putBack(tokens)
            case .lost(let why):
                lose(why, now: now)
            case .retryLater(let tokens, let why):
                machine.putBack(tokens)
                machine.holdWithBackoff(now: now, because: why)
            case .hold(let why):
                machine.hold(until: nil, because: why)
            case .release:
                machine.release()
                logger.notice("\(transport.destination) takes events again")
            case .notice(let level, let message, let metadata):
                logger.log(level: level, message, metadata: metadata)
            }
            if self.link == nil { break }
        }
        logNotices()
    }

    /// Carries out what the machine decides until it waits.
    private func pump(now: Instant) throws {
        while true {
            let canPublish = link.map { link in
                machine.front.map { transport.canPublish($0.message, on: link) } ?? transport.canPublish(on: link)
            }
            switch machine.next(now: now, canPublish: canPublish ?? false) {
            case .connect:
                startAttempt()
            case .publish(let record):
                guard let link else { return }
                switch transport.publish(record.message, on: link) {
                case .sent(let token): machine.handedOver(token: token, now: now)
                case .refused(let why): try handle(machine.refusedBeforeSending(why))
                case .lost(let why): lose(why, now: now)
                }
            case .close(_, let why):
                if let link { closeLink(link) }
                logger.debug("\(transport.destination) link closed", metadata: ["reason": "\(why)"])
            case .wait:
                if let link {
                    if let why = transport.endOfTurn(on: link, now: now) {
                        lose(why, now: now)
                        continue
                    }
                    watchLink()
                }
                logNotices()
                return
            case .fail(let error):
                logNotices()
                throw error
            }
        }
    }

    private func handle(_ refusal: DeliveryMachine<Transport.Message, Transport.Token>.Refusal) throws {
        switch refusal {
        case .deadLetter(let record, let why):
            machine.acceptDeadLetter(
                transport.deadLetterMessage(record.message, because: why), for: record, because: why)
        case .stop(let error):
            logNotices()
            throw error
        case .ignored:
            break
        }
    }

    private func lose(_ why: String, now: Instant) {
        if let link { closeLink(link) }
        machine.linkLost(why, generation: generation, now: now)
    }

    private func closeLink(_ old: Transport.Link) {
        readiness.unwatchAll()
        link = nil
        closeOffThread(old)
    }

    private func closeOffThread(_ old: Transport.Link) {
        nonisolated(unsafe) let old = old
        let transport = self.transport
        OwnThread.detach("\(transport.name)-close") { transport.close(old) }
    }

    private func watchLink() {
        guard let link, let d = transport.descriptor(of: link) else { return }
        readiness.watch(d.fd, writable: d.writable)
    }

    /// A connection attempt on a thread of its own; its end signals the readiness descriptor.
    private func startAttempt() {
        let transport = self.transport
        let wakeup = readiness.wakeup
        attempt = OwnThread.handOff(
            "\(transport.name)-connect", signal: wakeup.signal,
            unclaimed: { outcome in
                if case .success(let orphan) = outcome { transport.close(orphan) }  // the sink is gone
            }
        ) {
            do throws(ConnectFailure) {
                return .success(try transport.connect(wakeup: wakeup))
            } catch {
                return .failure(error)
            }
        }
    }

    private func logNotices() {
        let d = transport.destination
        for notice in machine.takeNotices() {
            switch notice {
            case .unreachable(let why, let waiting):
                logger.warning(
                    "\(d) unreachable; retrying, nothing new is confirmed meanwhile",
                    metadata: ["error": "\(why)", "waiting": "\(waiting)"])
            case .reconnected(let waiting):
                logger.info("\(d) connected; publishing again", metadata: ["waiting": "\(waiting)"])
            case .reachableAgain:
                logger.notice("\(d) reachable again; delivering")
            case .held(let why, let waiting):
                logger.warning(
                    "\(d) is not taking events now; retrying, nothing new is confirmed meanwhile",
                    metadata: ["reason": "\(why)", "waiting": "\(waiting)"])
            case .deadLettered(let id, let lsn, let why):
                logger.warning(
                    "event sent to the dead-letter destination",
                    metadata: ["id": "\(id)", "lsn": "\(lsn)", "error": "\(why)"])
            }
        }
    }
}
