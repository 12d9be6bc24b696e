import CRabbitMQ
import Foundation
import Glibc
import Logging
import OutboxCore

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

/// `EventSink` over RabbitMQ (AMQP 0-9-1, the C client rabbitmq-c).
///
/// - Each event is a persistent message (delivery mode 2) on the exchange,
///   routing key from the template, `message_id` = the event id, content type
///   `application/json`, the event's fields as string headers (`key`, `id`,
///   `type`, the `headers` members, extra columns, `lsn`, `tombstone`).
/// - The channel is in confirm mode: an event is acknowledged when the broker's
///   `basic.ack` covers its delivery tag (for a durable queue, after it is
///   written to disk; with quorum queues, after a majority has it).
/// - `mandatory`: a message no queue is bound for comes back (`basic.return`)
///   before its ack; it is a per-event failure, like a `basic.nack`: to the
///   dead-letter routing key when there is one, else the sink throws before it
///   is acknowledged.
/// - The broker away (connection refused or closed, heartbeats missed, no
///   confirm within the timeout, a resource alarm that blocks publishing):
///   everything unconfirmed goes back to the front of the queue in send order,
///   the sink reconnects with capped backoff and publishes it again (RabbitMQ
///   has no duplicate window: consumers deduplicate by `message_id`).
/// - One channel, publications in order: per-key order holds.
///
/// Single-threaded: rabbitmq-c runs on the relay's thread; the socket is the wake-up descriptor.
public final class RabbitMQSink: EventSink {
    public let name = "rabbitmq"
    public let config: RabbitMQSinkConfig
    private let logger: Logger

    struct Record {
        var ticket: UInt64
        var weight: Int
        var eventID: String
        var lsn: String
        var routingKey: String
        var headers: [(name: String, value: String)]
        var body: [UInt8]
        var deadLetter: Bool
        /// Set by a `basic.return`: the ack that follows is a refusal.
        var returned: String?
        var publishedAt = Date.distantPast
    }

    private var queue = PendingQueue<Record>()
    /// Published, waiting for the broker's confirm, by delivery tag (contiguous from `lowestTag`).
    private var published: [UInt64: Record] = [:]
    private var lowestTag: UInt64 = 1
    private var nextTag: UInt64 = 1
    private var ready: [Acknowledgement] = []

    private var connection: amqp_connection_state_t?
    private var blocked: String?
    private var nextAttempt = Date.distantPast
    private var backoff = ReconnectBackoff()
    private var outage: String?
    private let timer = Wakeup()
    /// Set while a basic.return's content header and body are being read.
    private var pendingReturn: (code: Int, text: String, routingKey: String)?

    public private(set) var deadLettered = 0
    public var isReachable: Bool { connection != nil && outage == nil && blocked == nil }
    public var wakeupDescriptor: Int32? {
        // The socket while connected (confirms, returns, heartbeats); the timer while waiting to reconnect.
        if let connection { return outbox_amqp_fd(connection) }
        return timer.descriptor
    }
    public var inFlight: Int { queue.count + published.count }

    public init(config: RabbitMQSinkConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        if let problem = AMQPMessage.exchangeProblem(config.exchange) {
            throw RabbitMQConfigurationError(description: "--rabbitmq-exchange: \(problem)")
        }
        if let key = config.deadLetterRoutingKey, let problem = AMQPMessage.routingKeyProblem(key) {
            throw RabbitMQConfigurationError(description: "--dlq-topic: \(problem)")
        }
        var result = outbox_amqp_result()
        if let opened = open(&result) {
            connection = opened
            logger.notice(
                "RabbitMQ connected", metadata: ["url": "\(redactedURL(config.url))", "exchange": "\(config.exchange)"])
        } else if result.permanent != 0 {
            let message = Self.text(&result.message)
            let hint = AMQPMessage.vhostHint(url: config.url, error: message).map { " (\($0))" } ?? ""
            throw RabbitMQConfigurationError(
                description: "RabbitMQ at \(redactedURL(config.url)): \(message)\(hint)")
        } else {
            outage = Self.text(&result.message)
            scheduleAttempt()
            logger.warning(
                "RabbitMQ unreachable; events wait in the relay and PostgreSQL until it is",
                metadata: ["url": "\(redactedURL(config.url))", "error": "\(outage!)"])
        }
    }

    deinit { if let connection { outbox_amqp_close(connection, 1) } }

    // MARK: EventSink

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let key = config.routingKey.render(event)
        let record = Record(
            ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn.description, routingKey: key,
            headers: event.messageHeaders, body: event.messageBody, deadLetter: false)
        if let problem = AMQPMessage.routingKeyProblem(key) ?? AMQPMessage.messageProblem(id: event.id, headers: record.headers) {
            return try failPermanently(record, problem)
        }
        queue.append(record)
        try pump()
    }

    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        guard let key = config.deadLetterRoutingKey else { return false }
        let headers: [(name: String, value: String)] = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description),
            ("dlq.reason", poison.reason), ("dlq.source", poison.source),
        ]
        queue.append(
            Record(
                ticket: ticket, weight: poison.payload?.count ?? 0, eventID: poison.id ?? "", lsn: poison.lsn.description,
                routingKey: key, headers: Self.printable(headers), body: poison.payload ?? [], deadLetter: true))
        deadLettered += 1
        try pump()
        return true
    }

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try read(waitMilliseconds: 0)
        try pump()
        if ready.isEmpty && timeoutMilliseconds > 0 && (!published.isEmpty || !queue.isEmpty) {
            if connection != nil {
                try read(waitMilliseconds: timeoutMilliseconds)
            } else {
                timer.wait(milliseconds: min(timeoutMilliseconds, max(1, Int(nextAttempt.timeIntervalSinceNow * 1000)))) { false }
            }
            try pump()
        }
        if connection == nil { timer.clear() }
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try flushByPolling(timeoutMilliseconds: timeoutMilliseconds) { !queue.isEmpty || !published.isEmpty }
    }

    public func discardUnacknowledged() -> Int {
        let dropped = queue.count + published.count
        queue.removeAll()
        // Confirms for these may still come; they are matched to nothing.
        published.removeAll()
        lowestTag = nextTag
        return dropped
    }

    // MARK: Publishing

    private func open(_ result: inout outbox_amqp_result) -> amqp_connection_state_t? {
        let opened = outbox_amqp_connect(
            config.url, config.exchange, Int32(config.heartbeatSeconds), Int32(config.connectTimeoutMilliseconds),
            config.caFile, &result)
        if opened != nil {
            nextTag = 1
            lowestTag = 1
            blocked = nil
        }
        return opened
    }

    private func pump() throws {
        if connection == nil {
            guard !queue.isEmpty || outage != nil, Date() >= nextAttempt else { return }
            reconnect()
            guard connection != nil else { return }
        }
        if let oldest = published[lowestTag],
            Date().timeIntervalSince(oldest.publishedAt) * 1000 > Double(config.acknowledgementTimeoutMilliseconds)
        {
            return lose("no publisher confirm within \(config.acknowledgementTimeoutMilliseconds) ms", clean: true)
        }
        guard blocked == nil else { return }
        while let connection, var record = queue.first {
            let status = Self.publish(connection, exchange: config.exchange, record)
            if status != AMQP_STATUS_OK.rawValue {
                return lose("publishing failed: \(String(cString: amqp_error_string2(status)))", clean: false)
            }
            queue.removeFirst()
            record.publishedAt = Date()
            published[nextTag] = record
            nextTag += 1
        }
    }

    private static func publish(_ connection: amqp_connection_state_t, exchange: String, _ record: Record) -> Int32 {
        let names = record.headers.map { strdup($0.name) }
        let values = record.headers.map { strdup($0.value) }
        defer {
            names.forEach { free($0) }
            values.forEach { free($0) }
        }
        return names.map { UnsafePointer($0) }.withUnsafeBufferPointer { namePointers in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valuePointers in
                record.body.withUnsafeBytes { body in
                    outbox_amqp_publish(
                        connection, exchange, record.routingKey, body.baseAddress, body.count, record.eventID,
                        namePointers.baseAddress, valuePointers.baseAddress, Int32(record.headers.count))
                }
            }
        }
    }

    /// Reads what the broker sent: confirms, returns, blocks, closes.
    private func read(waitMilliseconds: Int) throws {
        var wait = waitMilliseconds
        while let connection {
            var frame = outbox_amqp_frame()
            outbox_amqp_next(connection, Int32(wait), &frame)
            wait = 0
            switch Int(frame.kind) {
            case Int(OUTBOX_AMQP_NONE.rawValue):
                amqp_maybe_release_buffers(connection)
                return
            case Int(OUTBOX_AMQP_ACK.rawValue):
                try confirm(upTo: frame.delivery_tag, multiple: frame.multiple != 0, nacked: false)
            case Int(OUTBOX_AMQP_NACK.rawValue):
                try confirm(upTo: frame.delivery_tag, multiple: frame.multiple != 0, nacked: true)
            case Int(OUTBOX_AMQP_RETURN.rawValue):
                pendingReturn = (Int(frame.code), Self.text(&frame.text), Self.text(&frame.routing_key))
            case Int(OUTBOX_AMQP_HEADER.rawValue):
                if let returned = pendingReturn {
                    pendingReturn = nil
                    markReturned(messageID: Self.text(&frame.message_id), returned)
                }
            case Int(OUTBOX_AMQP_BLOCKED.rawValue):
                blocked = Self.text(&frame.text)
                logger.warning(
                    "RabbitMQ blocked publishing (a resource alarm); waiting, nothing new is confirmed meanwhile",
                    metadata: ["reason": "\(blocked!)"])
            case Int(OUTBOX_AMQP_UNBLOCKED.rawValue):
                blocked = nil
                logger.notice("RabbitMQ unblocked publishing")
            case Int(OUTBOX_AMQP_CLOSED.rawValue):
                let text = Self.text(&frame.text)
                if let limit = AMQPMessage.maxMessageSize(closeCode: Int(frame.code), text: text) {
                    try refuseOversized(limit: limit, text)
                }
                return lose("RabbitMQ closed the connection: \(frame.code) \(text)", clean: false)
            case Int(OUTBOX_AMQP_ERROR.rawValue):
                return lose("the connection to RabbitMQ failed: \(Self.text(&frame.text))", clean: false)
            default:
                continue
            }
        }
    }

    private func confirm(upTo tag: UInt64, multiple: Bool, nacked: Bool) throws {
        let first = multiple ? lowestTag : tag
        guard tag >= first else { return }
        for current in first...tag {
            guard let record = published.removeValue(forKey: current) else { continue }
            if let why = record.returned {
                try failPermanently(record, why)
            } else if nacked {
                guard case .refused(let why) = AMQPMessage.nacked(exchange: config.exchange, routingKey: record.routingKey) else {
                    continue
                }
                try failPermanently(record, why)
            } else {
                ready.append(Acknowledgement(ticket: record.ticket, weight: record.weight))
                if outage != nil {
                    outage = nil
                    logger.notice("RabbitMQ reachable again; delivering")
                }
            }
        }
        while lowestTag < nextTag && published[lowestTag] == nil { lowestTag += 1 }
    }

    /// A returned message is the oldest unconfirmed one with its id and routing key not returned yet.
    private func markReturned(messageID: String, _ returned: (code: Int, text: String, routingKey: String)) {
        var tag = lowestTag
        while tag < nextTag {
            if let record = published[tag], record.returned == nil, record.eventID == messageID,
                record.routingKey == returned.routingKey
            {
                if case .refused(let why) = AMQPMessage.returned(
                    code: returned.code, text: returned.text, exchange: config.exchange, routingKey: returned.routingKey)
                {
                    published[tag]!.returned = why
                }
                return
            }
            tag += 1
        }
    }

    /// The broker closed the channel over a message larger than its limit: that
    /// message is refused for good; the others go again.
    private func refuseOversized(limit: Int, _ text: String) throws {
        for tag in published.keys.sorted() where published[tag]!.body.count > limit {
            var record = published.removeValue(forKey: tag)!
            record.body = []
            try failPermanently(
                record, "the message is larger than RabbitMQ's max_message_size (\(limit) bytes): \(text)", omitBody: true)
        }
    }

    /// The connection is lost or cannot be trusted: close it, put everything
    /// unconfirmed back at the front of the queue in send order, try again later.
    private func lose(_ why: String, clean: Bool) {
        guard let old = connection else { return }
        connection = nil
        outbox_amqp_close(old, clean ? 1 : 0)
        let back = published.keys.sorted().map { published[$0]! }.map { record -> Record in
            var record = record
            record.returned = nil
            return record
        }
        published.removeAll()
        pendingReturn = nil
        queue.insertAtFront(back)
        scheduleAttempt()
        if outage == nil {
            logger.warning(
                "RabbitMQ unreachable; retrying, nothing new is confirmed meanwhile",
                metadata: ["error": "\(why)", "waiting": "\(queue.count)"])
        }
        outage = why
    }

    private func scheduleAttempt() {
        let delay = backoff.next()
        nextAttempt = Date().addingTimeInterval(delay)
        timer.signal(afterMilliseconds: Int(delay * 1000))
    }

    private func reconnect() {
        var result = outbox_amqp_result()
        guard let opened = open(&result) else {
            scheduleAttempt()
            let message = Self.text(&result.message)
            if outage == nil || result.permanent != 0 {
                logger.warning("RabbitMQ unreachable; retrying", metadata: ["error": "\(message)"])
            }
            outage = message
            return
        }
        connection = opened
        backoff.reset()
        logger.info("RabbitMQ connected; publishing again", metadata: ["waiting": "\(queue.count)"])
        if queue.isEmpty && outage != nil {
            outage = nil
            logger.notice("RabbitMQ reachable again")
        }
    }

    private func failPermanently(_ record: Record, _ why: String, omitBody: Bool = false) throws {
        if record.deadLetter {
            throw SinkError(
                "the dead-letter routing key \(record.routingKey) was refused too, for event id=\(record.eventID) (LSN \(record.lsn)): \(why)")
        }
        guard let key = config.deadLetterRoutingKey else {
            throw SinkError(
                "RabbitMQ refused event id=\(record.eventID) (commit LSN \(record.lsn)): \(why). Nothing from this transaction on was confirmed; fix the cause (or set --dlq-topic) and restart"
            )
        }
        var headers = record.headers
        headers += [("dlq.error", why), ("dlq.original.routing.key", record.routingKey)]
        if omitBody { headers.append(("dlq.payload.omitted", "true")) }
        queue.append(
            Record(
                ticket: record.ticket, weight: record.weight, eventID: record.eventID, lsn: record.lsn, routingKey: key,
                headers: Self.printable(headers), body: record.body, deadLetter: true))
        deadLettered += 1
        logger.warning(
            "event sent to the dead-letter routing key",
            metadata: ["id": "\(record.eventID)", "lsn": "\(record.lsn)", "routing_key": "\(record.routingKey)", "error": "\(why)"])
    }

    /// Header values without NUL (C strings), names within 255 bytes.
    static func printable(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        headers.map { (String($0.name.utf8.prefix(255)) ?? $0.name, $0.value.replacingOccurrences(of: "\0", with: "")) }
    }

    static func text<T>(_ tuple: inout T) -> String {
        withUnsafeBytes(of: &tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
