import CRabbitMQ
import Foundation
import Glibc
import Logging
import OutboxCore
import RelayIO

/// How the RabbitMQ sink connects and publishes.
public struct RabbitMQSinkConfig: Sendable {
    /// `amqp://user:password@host:port/vhost` or `amqps://…` (the password is never logged).
    public var url: String
    /// The exchange events are published to; "" is the default exchange (routing key = queue name).
    public var exchange: String
    /// The routing key of each event; `{topic}` by default.
    public var routingKey: DestinationTemplate
    /// A routing key (on the same exchange) for events the broker refuses and rows that cannot become events.
    public var deadLetterRoutingKey: String?
    /// CA certificates for `amqps://`.
    public var caFile: String?
    /// How long a publication waits for the broker's confirm before the connection counts as lost.
    public var acknowledgementTimeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 2_000
    /// AMQP heartbeat: the broker silent for two of these means the connection is dead.
    public var heartbeatSeconds = 5

    public init(url: String, exchange: String, routingKey: DestinationTemplate) {
        self.url = url
        self.exchange = exchange
        self.routingKey = routingKey
    }
}

/// Start-up problems the relay cannot run with (bad URL, refused credentials, no such exchange): exit, not retry.
public struct RabbitMQConfigurationError: Error, CustomStringConvertible {
    public var description: String
}

/// `EventSink` over RabbitMQSink: a concrete class around the shared `DeliveryDriver`,
/// so this module gets a copy of the driver and the machine specialized for
/// `RabbitMQTransport` (through the generic driver directly, every event paid for
/// generic metadata lookups: NATS drained 10 % slower).
public final class RabbitMQSink: EventSink {
    public let driver: DeliveryDriver<RabbitMQTransport>

    /// Checks the names, then connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: RabbitMQSinkConfig, logger: Logger) throws {
        if let problem = AMQPMessage.exchangeProblem(config.exchange) {
            throw RabbitMQConfigurationError(description: "--rabbitmq-exchange: \(problem)")
        }
        if let key = config.deadLetterRoutingKey, let problem = AMQPMessage.routingKeyProblem(key) {
            throw RabbitMQConfigurationError(description: "--dlq-topic: \(problem)")
        }
        do {
            driver = try DeliveryDriver(transport: RabbitMQTransport(config: config), logger: logger)
        } catch let error as SinkError {
            throw RabbitMQConfigurationError(description: error.message)
        }
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

/// RabbitMQ (AMQP 0-9-1, the C client rabbitmq-c) as a delivery transport.
///
/// - Each event is a persistent message (delivery mode 2) on the exchange,
///   routing key from the template, `message_id` = the event id, content type
///   `application/json`, the event's fields as string headers (`key`, `id`,
///   `type`, the `headers` members, extra columns, `lsn`, `tombstone`).
/// - The channel is in confirm mode: an event is acknowledged when the broker's
///   `basic.ack` covers its delivery tag (for a durable queue, after it is
///   written to disk; with quorum queues, after a majority has it).
/// - `mandatory`: a message no queue is bound for comes back (`basic.return`)
///   before its ack; it is a per-event refusal, like a `basic.nack`: to the
///   dead-letter routing key when there is one, else the relay stops.
/// - The broker away (connection refused or closed, heartbeats missed, no
///   confirm within the timeout): a lost link — the delivery machine puts
///   everything unconfirmed back in order and connects again (RabbitMQ has no
///   duplicate window: consumers deduplicate by `message_id`). A resource
///   alarm (`connection.blocked`) holds the link until `connection.unblocked`.
/// - One channel, publications in order: per-key order holds.
public final class RabbitMQTransport: DeliveryTransport {
    public let config: RabbitMQSinkConfig
    public let destination = "RabbitMQ"
    public let name = "rabbitmq"
    public var redactedLocation: String { redactedURL(config.url) }
    public var hasDeadLetter: Bool { config.deadLetterRoutingKey != nil }
    public var acknowledgementTimeoutMilliseconds: Int? { config.acknowledgementTimeoutMilliseconds }

    public struct Message {
        var routingKey: String
        var eventID: String
        var headers: [(name: String, value: String)]
        var body: [UInt8]
    }

    public init(config: RabbitMQSinkConfig) { self.config = config }

    // MARK: Messages

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let key = config.routingKey.render(event)
        let message = Message(
            routingKey: key, eventID: event.id, headers: event.messageHeaders, body: event.messageBody)
        return (
            message,
            AMQPMessage.routingKeyProblem(key) ?? AMQPMessage.messageProblem(id: event.id, headers: message.headers)
        )
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard let key = config.deadLetterRoutingKey else { return nil }
        let headers: [(name: String, value: String)] = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description),
            ("dlq.reason", poison.reason), ("dlq.source", poison.source),
        ]
        return Message(
            routingKey: key, eventID: poison.id ?? "", headers: Self.printable(headers), body: poison.payload ?? [])
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        var headers = message.headers
        headers += [("dlq.error", why), ("dlq.original.routing.key", message.routingKey)]
        let omit = why.contains("max_message_size")
        if omit { headers.append(("dlq.payload.omitted", "true")) }
        return Message(
            routingKey: config.deadLetterRoutingKey ?? "", eventID: message.eventID, headers: Self.printable(headers),
            body: omit ? [] : message.body)
    }

    // MARK: The link

    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> RabbitLink {
        var result = outbox_amqp_result()
        let opened = outbox_amqp_connect(
            config.url, config.exchange, Int32(config.heartbeatSeconds), Int32(config.connectTimeoutMilliseconds),
            config.caFile, &result)
        guard let opened else {
            let message = Self.text(&result.message)
            if result.permanent != 0 {
                let hint = AMQPMessage.vhostHint(url: config.url, error: message).map { " (\($0))" } ?? ""
                throw ConnectFailure("RabbitMQ at \(redactedURL(config.url)): \(message)\(hint)", permanent: true)
            }
            throw ConnectFailure(message)
        }
        return RabbitLink(opened)
    }

    public func close(_ link: RabbitLink) { outbox_amqp_close(link.connection, link.broken ? 0 : 1) }

    public func descriptor(of link: RabbitLink) -> (fd: Int32, writable: Bool)? {
        (outbox_amqp_fd(link.connection), false)
    }

    public func publish(_ message: Message, on link: RabbitLink) -> PublishOutcome<UInt64> {
        let status = Self.publish(link.connection, exchange: config.exchange, message)
        if status != AMQP_STATUS_OK.rawValue {
            link.broken = true
            return .lost("publishing failed: \(String(cString: amqp_error_string2(status)))")
        }
        let tag = link.nextTag
        link.nextTag += 1
        link.published[tag] = (message.eventID, message.routingKey, message.body.count)
        return .sent(tag)
    }

    private static func publish(_ connection: amqp_connection_state_t, exchange: String, _ message: Message) -> Int32 {
        let names = message.headers.map { strdup($0.name) }
        let values = message.headers.map { strdup($0.value) }
        defer {
            names.forEach { free($0) }
            values.forEach { free($0) }
        }
        return names.map { UnsafePointer($0) }.withUnsafeBufferPointer { namePointers in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valuePointers in
                message.body.withUnsafeBytes { body in
                    outbox_amqp_publish(
                        connection, exchange, message.routingKey, body.baseAddress, body.count, message.eventID,
                        namePointers.baseAddress, valuePointers.baseAddress, Int32(message.headers.count))
                }
            }
        }
    }

    /// Reads what the broker sent (confirms, returns, blocks, closes) without waiting.
    public func results(on link: RabbitLink, now: Instant) -> [TransportResult<UInt64>] {
        var out: [TransportResult<UInt64>] = []
        while true {
            var frame = outbox_amqp_frame()
            outbox_amqp_next(link.connection, 0, &frame)
            switch Int(frame.kind) {
            case Int(OUTBOX_AMQP_NONE.rawValue):
                amqp_maybe_release_buffers(link.connection)
                return out
            case Int(OUTBOX_AMQP_ACK.rawValue):
                confirm(link, upTo: frame.delivery_tag, multiple: frame.multiple != 0, nacked: false, into: &out)
            case Int(OUTBOX_AMQP_NACK.rawValue):
                confirm(link, upTo: frame.delivery_tag, multiple: frame.multiple != 0, nacked: true, into: &out)
            case Int(OUTBOX_AMQP_RETURN.rawValue):
                link.pendingReturn = (Int(frame.code), Self.text(&frame.text), Self.text(&frame.routing_key))
            case Int(OUTBOX_AMQP_HEADER.rawValue):
                if let returned = link.pendingReturn {
                    link.pendingReturn = nil
                    markReturned(link, messageID: Self.text(&frame.message_id), returned)
                }
            case Int(OUTBOX_AMQP_BLOCKED.rawValue):
                out.append(.hold("RabbitMQ blocked publishing (a resource alarm): \(Self.text(&frame.text))"))
            case Int(OUTBOX_AMQP_UNBLOCKED.rawValue):
                out.append(.release)
            case Int(OUTBOX_AMQP_CLOSED.rawValue):
                link.broken = true
                let text = Self.text(&frame.text)
                if let limit = AMQPMessage.maxMessageSize(closeCode: Int(frame.code), text: text) {
                    // The broker closed the channel over a message larger than its limit:
                    // that one is refused for good; the others go again.
                    for (tag, sent) in link.published.sorted(by: { $0.key < $1.key }) where sent.bytes > limit {
                        out.append(
                            .refused(
                                tag, "the message is larger than RabbitMQ's max_message_size (\(limit) bytes): \(text)")
                        )
                    }
                }
                out.append(.lost("RabbitMQ closed the connection: \(frame.code) \(text)"))
                return out
            case Int(OUTBOX_AMQP_ERROR.rawValue):
                link.broken = true
                out.append(.lost("the connection to RabbitMQ failed: \(Self.text(&frame.text))"))
                return out
            default:
                continue
            }
        }
    }

    private func confirm(
        _ link: RabbitLink, upTo tag: UInt64, multiple: Bool, nacked: Bool, into out: inout [TransportResult<UInt64>]
    ) {
        let first = multiple ? link.lowestTag : tag
        guard tag >= first else { return }
        for current in first...tag {
            guard let sent = link.published.removeValue(forKey: current) else { continue }
            if let why = link.returned.removeValue(forKey: current) {
                out.append(.refused(current, why))
            } else if nacked {
                guard
                    case .refused(let why) = AMQPMessage.nacked(exchange: config.exchange, routingKey: sent.routingKey)
                else { continue }
                out.append(.refused(current, why))
            } else {
                out.append(.delivered(current))
            }
        }
        while link.lowestTag < link.nextTag && link.published[link.lowestTag] == nil { link.lowestTag += 1 }
    }

    /// A returned message is the oldest unconfirmed one with its id and routing key not returned yet.
    private func markReturned(
        _ link: RabbitLink, messageID: String, _ returned: (code: Int, text: String, routingKey: String)
    ) {
        var tag = link.lowestTag
        while tag < link.nextTag {
            if let sent = link.published[tag], link.returned[tag] == nil, sent.eventID == messageID,
                sent.routingKey == returned.routingKey
            {
                if case .refused(let why) = AMQPMessage.returned(
                    code: returned.code, text: returned.text, exchange: config.exchange, routingKey: returned.routingKey
                ) {
                    link.returned[tag] = why
                }
                return
            }
            tag += 1
        }
    }

    /// Header values without NUL (C strings), names within 255 bytes.
    static func printable(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        withoutNUL(headers).map { (String($0.name.utf8.prefix(255)) ?? $0.name, $0.value) }
    }

    static func text<T>(_ tuple: inout T) -> String { cString(fromTuple: &tuple) }
}

/// One AMQP connection with channel 1 in confirm mode, and what is published on it by delivery tag.
public final class RabbitLink {
    let connection: amqp_connection_state_t
    var nextTag: UInt64 = 1
    /// The lowest tag not confirmed yet (tags are contiguous per channel).
    var lowestTag: UInt64 = 1
    var published: [UInt64: (eventID: String, routingKey: String, bytes: Int)] = [:]
    /// Tags a `basic.return` refused; their ack that follows is a refusal.
    var returned: [UInt64: String] = [:]
    /// Set while a basic.return's content header and body are being read.
    var pendingReturn: (code: Int, text: String, routingKey: String)?
    /// The connection failed: closing it says no goodbye.
    var broken = false

    init(_ connection: amqp_connection_state_t) { self.connection = connection }
}
