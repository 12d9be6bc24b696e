import CProton
import Foundation
import Glibc
import Logging
import OutboxCore
import RelayIO

/// How the AMQP 1.0 sink connects and publishes.
public struct AMQP1SinkConfig: Sendable {
    public var endpoint: BrokerEndpoint
    /// The target address of the sender link (a queue, topic or exchange, as the broker names it).
    public var address: String
    /// Each message's `subject`, from `{topic}`, `{key}` and `{type}` (RabbitMQ's `/exchange/X` routes by it).
    public var subject: DestinationTemplate
    public var deadLetterAddress: String?
    public var caFile: String?
    public var acknowledgementTimeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 5_000
    /// The broker silent for this long means the connection is dead (AMQP idle timeout; Proton sends empty frames at half).
    public var idleTimeoutMilliseconds: UInt32 = 10_000

    public init(endpoint: BrokerEndpoint, address: String, subject: DestinationTemplate) {
        self.endpoint = endpoint
        self.address = address
        self.subject = subject
    }
}

/// `EventSink` over `AMQP1Transport`: a concrete class around the shared driver (see RabbitMQSink).
public final class AMQP1Sink: EventSink {
    public let driver: DeliveryDriver<AMQP1Transport>

    /// Connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: AMQP1SinkConfig, logger: Logger) throws {
        driver = try DeliveryDriver(transport: AMQP1Transport(config: config), logger: logger)
    }

    public var name: String { driver.name }
    public func send(_ event: OutboxEvent, ticket: UInt64) throws { try driver.send(event, ticket: ticket) }
    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        try driver.deadLetter(poison, ticket: ticket)
    }
    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try driver.poll(timeoutMilliseconds: timeoutMilliseconds)
    }
    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try driver.flush(timeoutMilliseconds: timeoutMilliseconds)
    }
    public func discardUnacknowledged() -> Int { driver.discardUnacknowledged() }
    public var isReachable: Bool { driver.isReachable }
    public var wakeupDescriptor: Int32? { driver.wakeupDescriptor }
    public var nextDeadline: Instant? { driver.nextDeadline }
    public var deadLettered: Int { driver.deadLettered }
}

/// AMQP 1.0 (Qpid Proton's I/O-free connection driver, over the relay's own
/// socket and loop) as a delivery transport: the protocol of Azure Service Bus,
/// ActiveMQ Artemis, Solace and RabbitMQ.
///
/// - One sender link to `address` (and one to the dead-letter address), sender
///   settle mode unsettled: every message waits for the broker's outcome.
/// - Each event is a durable message: `message-id` = the event id, `group-id` =
///   the key (Service Bus sessions keep a group's order), `subject` from the
///   template, the event's fields as string application properties, the value
///   as a data section, content type `application/json`.
/// - Outcomes: `accepted` acknowledges; `rejected` and `modified` with
///   undeliverable-here refuse that event (dead-letter address or stop);
///   `released` and other `modified` are sent again, in order, after a backoff.
/// - Sends only while the link has credit; the broker's flow control holds the rest.
public final class AMQP1Transport: DeliveryTransport {
    public let config: AMQP1SinkConfig
    public let destination = "AMQP 1.0"
    public let name = "amqp1"
    public var redactedLocation: String { config.endpoint.redacted + "/" + config.address }
    public var hasDeadLetter: Bool { config.deadLetterAddress != nil }
    public var acknowledgementTimeoutMilliseconds: Int? { config.acknowledgementTimeoutMilliseconds }

    public struct Message {
        var deadLetter: Bool
        var eventID: String
        var group: String
        var subject: String
        var properties: [(name: String, value: String)]
        var body: [UInt8]
    }

    public init(config: AMQP1SinkConfig) { self.config = config }

    // MARK: Messages

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let message = Message(
            deadLetter: false, eventID: event.id, group: event.key, subject: config.subject.render(event),
            properties: withoutNUL(event.messageHeaders), body: event.messageBody)
        return (message, nil)
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard config.deadLetterAddress != nil else { return nil }
        let properties = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description), ("dlq.reason", poison.reason),
            ("dlq.source", poison.source),
        ]
        return Message(
            deadLetter: true, eventID: poison.id ?? UUID().uuidString, group: "", subject: "",
            properties: withoutNUL(properties), body: poison.payload ?? [])
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        var dead = message
        dead.deadLetter = true
        dead.properties = withoutNUL(
            message.properties + [("dlq.error", why), ("dlq.original.address", config.address)])
        return dead
    }

    // MARK: The link

    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> AMQP1Link {
        let endpoint = config.endpoint
        let fd: Int32
        switch TCPConnect.open(
            host: endpoint.host, port: endpoint.port, timeoutMilliseconds: config.connectTimeoutMilliseconds)
        {
        case .success(let opened): fd = opened
        case .failure(let failure): throw ConnectFailure("AMQP 1.0 broker at \(endpoint.redacted): \(failure)")
        }
        guard
            let connection = outbox_amqp1_open(
                fd, "outbox-relay-\(getpid())", endpoint.host, endpoint.username, endpoint.password,
                endpoint.tls ? 1 : 0,
                config.caFile, config.address, config.deadLetterAddress, config.idleTimeoutMilliseconds)
        else {
            Glibc.close(fd)
            throw ConnectFailure("AMQP 1.0: cannot create a Proton connection")
        }
        let link = AMQP1Link(connection)
        let deadline = Instant.now() + config.connectTimeoutMilliseconds
        while connection.pointee.opened == 0 && connection.pointee.closed == 0 && Instant.now() < deadline {
            _ = pump(link, now: Instant.now())
            guard connection.pointee.opened == 0 && connection.pointee.closed == 0 else { break }
            var p = pollfd(
                fd: fd, events: Int16(POLLIN) | (outbox_amqp1_want_write(connection) != 0 ? Int16(POLLOUT) : 0),
                revents: 0)
            _ = poll(&p, 1, min(100, Instant.now().millisecondsRoundedUp(until: deadline)))
        }
        guard connection.pointee.opened != 0, connection.pointee.closed == 0 else {
            let why = link.error ?? "the broker did not attach the link within \(config.connectTimeoutMilliseconds) ms"
            let permanent = connection.pointee.permanent != 0
            close(link)
            throw ConnectFailure("AMQP 1.0 broker at \(endpoint.redacted): \(why)", permanent: permanent)
        }
        return link
    }

    public func close(_ link: AMQP1Link) {
        guard let connection = link.connection else { return }
        link.connection = nil
        outbox_amqp1_close(connection, connection.pointee.closed == 0 ? 1 : 0)
    }

    public func descriptor(of link: AMQP1Link) -> (fd: Int32, writable: Bool)? {
        guard let connection = link.connection else { return nil }
        return (connection.pointee.fd, outbox_amqp1_want_write(connection) != 0)
    }

    /// Proton's idle-timeout heartbeat: the next time the transport must tick.
    public func deadline(of link: AMQP1Link) -> Instant? { link.nextTick }

    public func canPublish(on link: AMQP1Link) -> Bool {
        guard let connection = link.connection else { return false }
        return outbox_amqp1_credit(connection, 0) > 0 && (!hasDeadLetter || outbox_amqp1_credit(connection, 1) > 0)
    }

    public func publish(_ message: Message, on link: AMQP1Link) -> PublishOutcome<UInt64> {
        guard let connection = link.connection, connection.pointee.closed == 0 else {
            return .lost(link.error ?? "the AMQP 1.0 connection is closed")
        }
        let tag = link.nextTag
        link.nextTag += 1
        let names = message.properties.map { strdup($0.name) }
        let values = message.properties.map { strdup($0.value) }
        defer { (names + values).forEach { free($0) } }
        let status = names.map { UnsafePointer($0) }.withUnsafeBufferPointer { namePointers in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valuePointers in
                message.body.withUnsafeBytes { body in
                    outbox_amqp1_send(
                        connection, message.deadLetter ? 1 : 0, tag, message.eventID, message.group, message.subject,
                        namePointers.baseAddress, valuePointers.baseAddress, Int32(message.properties.count),
                        body.baseAddress, body.count)
                }
            }
        }
        guard status == 0 else { return .refused("Proton could not encode the message (error \(status))") }
        return .sent(tag)
    }

    public func endOfTurn(on link: AMQP1Link, now: Instant) -> String? {
        guard link.connection != nil else { return nil }
        link.pending += pump(link, now: now)
        return nil
    }

    public func results(on link: AMQP1Link, now: Instant) -> [TransportResult<UInt64>] {
        guard link.connection != nil else { return [] }
        var out = link.pending
        link.pending.removeAll()
        out += pump(link, now: now)
        return out
    }

    /// Moves bytes, handles Proton's events, and turns settled outcomes into results.
    private func pump(_ link: AMQP1Link, now: Instant) -> [TransportResult<UInt64>] {
        guard let connection = link.connection else { return [] }
        var out: [TransportResult<UInt64>] = []
        var retry: [UInt64] = []
        let nowMilliseconds = Int64(now.nanoseconds / 1_000_000)
        repeat {
            let count = Int(
                outbox_amqp1_pump(connection, nowMilliseconds, &link.outcomes, Int32(link.outcomes.count)))
            for outcome in link.outcomes.prefix(count) {
                switch Int32(outcome.kind) {
                case Int32(OUTBOX_AMQP1_ACCEPTED): out.append(.delivered(outcome.tag))
                case Int32(OUTBOX_AMQP1_RELEASED): retry.append(outcome.tag)
                default:
                    var copy = outcome
                    let why = cString(fromTuple: &copy.why)
                    out.append(.refused(outcome.tag, "the AMQP 1.0 broker rejected it\(why.isEmpty ? "" : ": " + why)"))
                }
            }
        } while outbox_amqp1_has_events(connection) != 0 && connection.pointee.closed == 0
        if !retry.isEmpty { out.append(.retryLater(retry, "the AMQP 1.0 broker released \(retry.count) message(s)")) }
        let tick = outbox_amqp1_tick(connection, nowMilliseconds)
        link.nextTick = tick > 0 ? Instant.milliseconds(Int(tick)) : nil
        if connection.pointee.closed != 0 {
            out.append(.lost(link.error ?? "the AMQP 1.0 connection closed"))
        }
        return out
    }
}

/// One AMQP 1.0 connection (a Proton connection driver over a socket), used by one thread at a time.
public final class AMQP1Link {
    var connection: UnsafeMutablePointer<outbox_amqp1>?
    var nextTag: UInt64 = 1
    var nextTick: Instant?
    /// Outcomes read while writing at the end of a turn, handed over with the next results.
    var pending: [TransportResult<UInt64>] = []
    /// Where Proton's settled outcomes land, reused by every pump of this link.
    var outcomes = [outbox_amqp1_outcome](repeating: outbox_amqp1_outcome(), count: 256)

    init(_ connection: UnsafeMutablePointer<outbox_amqp1>) { self.connection = connection }

    var error: String? {
        guard let connection, connection.pointee.error.0 != 0 else { return nil }
        return cString(fromTuple: &connection.pointee.error)
    }
}
