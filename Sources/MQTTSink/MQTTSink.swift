import CMosquitto
import Foundation
import Glibc
import Logging
import OutboxCore
import RelayIO

/// How the MQTT sink connects and publishes.
public struct MQTTSinkConfig: Sendable {
    public var endpoint: BrokerEndpoint
    /// The topic of each event, from `{topic}`, `{key}` and `{type}`.
    public var topic: DestinationTemplate
    /// 1: acknowledged at PUBACK; 2: at PUBCOMP (exactly once to the broker).
    public var qos: Int32 = 1
    /// Unique per relay process: a second client with the same id would take the session over.
    public var clientID: String
    /// Clean start off, and the broker keeps the session this long after a disconnect.
    public var sessionExpirySeconds: UInt32 = 300
    public var deadLetterTopic: String?
    public var caFile: String?
    public var acknowledgementTimeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 2_000
    public var keepaliveSeconds: Int32 = 10

    public init(endpoint: BrokerEndpoint, topic: DestinationTemplate, clientID: String) {
        self.endpoint = endpoint
        self.topic = topic
        self.clientID = clientID
    }
}

/// `EventSink` over `MQTTTransport`: a concrete class around the shared driver (see RabbitMQSink).
public final class MQTTSink: EventSink {
    public let driver: DeliveryDriver<MQTTTransport>

    /// Connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: MQTTSinkConfig, logger: Logger) throws {
        driver = try DeliveryDriver(transport: MQTTTransport(config: config), logger: logger)
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

/// MQTT 5 (libmosquitto, driven by the relay's own loop: no client thread) as a delivery transport.
///
/// - Each event is a PUBLISH at QoS 1 (or 2), not retained, on the topic from the
///   template; the body is the event's value; the event's fields (`key`, `id`,
///   `type`, the `headers` members, extra columns, `lsn`) are user properties;
///   content type `application/json`.
/// - Acknowledged at the broker's PUBACK (QoS 2: PUBCOMP). A reason code of
///   0x80 or more (not authorized, topic name invalid, quota exceeded, payload
///   format invalid, …) refuses that event: to the dead-letter topic, or the
///   relay stops. 0x10 (no matching subscribers) is a success — MQTT keeps no
///   message nobody subscribed to — and is logged once per topic and connection.
/// - One session (clean start off, a session expiry), one connection: PUBLISH
///   packets leave in order, and the broker forwards a publisher's messages on a
///   topic in that order, so events of one key stay in order on their topic.
/// - A lost link (closed, keepalive missed, no PUBACK within the timeout): the
///   delivery machine publishes everything unacknowledged again, in order
///   (consumers deduplicate by the `id` user property).
public final class MQTTTransport: DeliveryTransport {
    public let config: MQTTSinkConfig
    public let destination = "MQTT"
    public let name = "mqtt"
    public var redactedLocation: String { config.endpoint.redacted }
    public var hasDeadLetter: Bool { config.deadLetterTopic != nil }
    public var acknowledgementTimeoutMilliseconds: Int? { config.acknowledgementTimeoutMilliseconds }

    public struct Message {
        var topic: String
        var eventID: String
        var properties: [(name: String, value: String)]
        var body: [UInt8]
    }

    private static let initialized: Bool = mosquitto_lib_init() == MOSQ_ERR_SUCCESS.rawValue

    public init(config: MQTTSinkConfig) {
        self.config = config
        _ = Self.initialized
    }

    // MARK: Messages

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let topic = config.topic.render(event)
        let message = Message(
            topic: topic, eventID: event.id, properties: withoutNUL(event.messageHeaders), body: event.messageBody)
        return (message, MQTTEndpoint.topicProblem(topic))
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard let topic = config.deadLetterTopic else { return nil }
        let properties = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description), ("dlq.reason", poison.reason),
            ("dlq.source", poison.source),
        ]
        return Message(
            topic: topic, eventID: poison.id ?? "", properties: withoutNUL(properties), body: poison.payload ?? [])
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        let oversized = why.contains("maximum packet size")
        let properties =
            message.properties + [("dlq.error", why), ("dlq.original.topic", message.topic)]
            + (oversized ? [("dlq.payload.omitted", "true")] : [])
        return Message(
            topic: config.deadLetterTopic ?? "", eventID: message.eventID, properties: withoutNUL(properties),
            body: oversized ? [] : message.body)
    }

    // MARK: The link

    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> MQTTLink {
        let endpoint = config.endpoint
        // libmosquitto's own connect waits as long as the kernel does: try the path first, with a deadline.
        switch TCPConnect.open(
            host: endpoint.host, port: endpoint.port, timeoutMilliseconds: config.connectTimeoutMilliseconds)
        {
        case .success(let probe): Glibc.close(probe)
        case .failure(let failure): throw ConnectFailure("MQTT broker at \(endpoint.redacted): \(failure)")
        }
        let link = MQTTLink()
        guard let client = mosquitto_new(config.clientID, false, Unmanaged.passUnretained(link).toOpaque()) else {
            throw ConnectFailure("cannot create an MQTT client: \(String(cString: strerror(errno)))")
        }
        link.client = client
        _ = mosquitto_int_option(client, MOSQ_OPT_PROTOCOL_VERSION, Int32(MQTT_PROTOCOL_V5))
        mosquitto_connect_v5_callback_set(client) { _, object, reason, _, _ in MQTTLink.of(object).connack = reason }
        mosquitto_publish_v5_callback_set(client) { _, object, mid, reason, _ in
            MQTTLink.of(object).answered(mid, reason)
        }
        mosquitto_disconnect_v5_callback_set(client) { _, object, reason, _ in MQTTLink.of(object).disconnected(reason)
        }
        if let user = endpoint.username { _ = mosquitto_username_pw_set(client, user, endpoint.password) }
        if endpoint.tls,
            mosquitto_tls_set(client, config.caFile, config.caFile == nil ? "/etc/ssl/certs" : nil, nil, nil, nil) != 0
        {
            close(link)
            throw ConnectFailure(
                "MQTT: cannot use the CA certificates \(config.caFile ?? "/etc/ssl/certs")", permanent: true)
        }
        var properties: OpaquePointer?
        _ = mosquitto_property_add_int32(
            &properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), config.sessionExpirySeconds)
        let opened = mosquitto_connect_bind_v5(
            client, endpoint.host, Int32(endpoint.port), config.keepaliveSeconds, nil, properties)
        mosquitto_property_free_all(&properties)
        guard opened == MOSQ_ERR_SUCCESS.rawValue else {
            let why = opened == MOSQ_ERR_ERRNO.rawValue ? String(cString: strerror(errno)) : Self.error(opened)
            close(link)
            throw ConnectFailure("MQTT broker at \(endpoint.redacted): \(why)")
        }
        let fd = mosquitto_socket(client)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let deadline = Instant.now() + config.connectTimeoutMilliseconds
        while link.connack == nil && !link.broken && Instant.now() < deadline {
            var p = pollfd(
                fd: fd, events: Int16(POLLIN) | (mosquitto_want_write(client) ? Int16(POLLOUT) : 0), revents: 0)
            guard poll(&p, 1, Instant.now().millisecondsRoundedUp(until: deadline)) >= 0 else { continue }
            if p.revents & Int16(POLLOUT) != 0 { _ = mosquitto_loop_write(client, 1) }
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { _ = mosquitto_loop_read(client, 1) }
        }
        link.results.removeAll()
        guard let reason = link.connack else {
            close(link)
            throw ConnectFailure(
                "MQTT broker at \(endpoint.redacted): no CONNACK within \(config.connectTimeoutMilliseconds) ms")
        }
        guard reason == 0 else {
            close(link)
            // Bad client id, user name or password, not authorized, bad authentication method: no retry helps.
            let permanent = [0x85, 0x86, 0x87, 0x8C].contains(reason)
            throw ConnectFailure(
                "MQTT broker at \(endpoint.redacted) refused the connection: \(String(cString: mosquitto_reason_string(reason))) (0x\(String(reason, radix: 16)))",
                permanent: permanent)
        }
        link.lastMisc = Instant.now()
        return link
    }

    public func close(_ link: MQTTLink) {
        guard let client = link.client else { return }
        if !link.broken { _ = mosquitto_disconnect(client) }
        mosquitto_destroy(client)
        link.client = nil
    }

    public func descriptor(of link: MQTTLink) -> (fd: Int32, writable: Bool)? {
        guard let client = link.client else { return nil }
        return (mosquitto_socket(client), mosquitto_want_write(client))
    }

    /// Keepalive pings are due from libmosquitto's loop_misc, called once a second.
    public func deadline(of link: MQTTLink) -> Instant? { link.lastMisc + 1_000 }

    /// Message ids are 16 bits: never more in flight than can be told apart.
    public func canPublish(on link: MQTTLink) -> Bool { link.sent.count < 60_000 }

    public func publish(_ message: Message, on link: MQTTLink) -> PublishOutcome<Int32> {
        guard let client = link.client else { return .lost("the MQTT connection is closed") }
        var properties: OpaquePointer?
        defer { mosquitto_property_free_all(&properties) }
        for property in message.properties {
            let added = mosquitto_property_add_string_pair(
                &properties, Int32(MQTT_PROP_USER_PROPERTY.rawValue), property.name, property.value)
            if added != MOSQ_ERR_SUCCESS.rawValue {
                return .refused("user property \(property.name): \(Self.error(added))")
            }
        }
        _ = mosquitto_property_add_string(&properties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), "application/json")
        var mid: Int32 = 0
        let status = message.body.withUnsafeBytes { body in
            mosquitto_publish_v5(
                client, &mid, message.topic, Int32(body.count), body.baseAddress, config.qos, false, properties)
        }
        switch status {
        case MOSQ_ERR_SUCCESS.rawValue:
            link.sent[mid] = message.topic
            return .sent(mid)
        case MOSQ_ERR_OVERSIZE_PACKET.rawValue, MOSQ_ERR_PAYLOAD_SIZE.rawValue:
            return .refused("the message (\(message.body.count) bytes) is larger than the broker's maximum packet size")
        case MOSQ_ERR_INVAL.rawValue, MOSQ_ERR_MALFORMED_UTF8.rawValue, MOSQ_ERR_QOS_NOT_SUPPORTED.rawValue:
            return .refused("the broker cannot take it: \(Self.error(status))")
        default:
            link.broken = true
            return .lost("publishing failed: \(Self.error(status))")
        }
    }

    public func endOfTurn(on link: MQTTLink, now: Instant) -> String? {
        guard let client = link.client, mosquitto_want_write(client) else { return nil }
        let status = mosquitto_loop_write(client, 1)
        return status == MOSQ_ERR_SUCCESS.rawValue ? nil : "writing to the MQTT broker failed: \(Self.error(status))"
    }

    /// Reads what the broker sent (PUBACKs, PUBRECs, PUBCOMPs, DISCONNECT) and keeps the session alive; never waits.
    public func results(on link: MQTTLink, now: Instant) -> [TransportResult<Int32>] {
        guard let client = link.client else { return [] }
        var status = MOSQ_ERR_SUCCESS.rawValue
        if mosquitto_want_write(client) { status = mosquitto_loop_write(client, 1) }
        if status == MOSQ_ERR_SUCCESS.rawValue { status = mosquitto_loop_read(client, 1) }
        if status == MOSQ_ERR_SUCCESS.rawValue, now >= link.lastMisc + 1_000 {
            link.lastMisc = now
            status = mosquitto_loop_misc(client)
        }
        if status != MOSQ_ERR_SUCCESS.rawValue && !link.broken {
            link.broken = true
            link.results.append(.lost("the connection to the MQTT broker failed: \(Self.error(status))"))
        }
        defer { link.results.removeAll(keepingCapacity: true) }
        return link.results
    }

    static func error(_ code: Int32) -> String { String(cString: mosquitto_strerror(code)) }
}

/// One MQTT connection (a libmosquitto client, used by one thread at a time) and what is in flight on it.
public final class MQTTLink {
    var client: OpaquePointer?
    var connack: Int32?
    /// Topics by message id, until the broker answers.
    var sent: [Int32: String] = [:]
    var results: [TransportResult<Int32>] = []
    var noSubscriberTopics: Set<String> = []
    var lastMisc = Instant.now()
    /// The connection failed: closing it says no goodbye.
    var broken = false

    static func of(_ object: UnsafeMutableRawPointer?) -> MQTTLink {
        Unmanaged.fromOpaque(object!).takeUnretainedValue()
    }

    func answered(_ mid: Int32, _ reason: Int32) {
        guard let topic = sent.removeValue(forKey: mid) else { return }
        if reason >= 0x80 {
            let why = String(cString: mosquitto_reason_string(reason))
            results.append(.refused(mid, "the MQTT broker refused it: \(why) (0x\(String(reason, radix: 16)))"))
            return
        }
        if reason == Int32(MQTT_RC_NO_MATCHING_SUBSCRIBERS.rawValue), noSubscriberTopics.insert(topic).inserted {
            results.append(
                .notice(
                    .warning,
                    "no MQTT subscriber for a topic: the broker acknowledged the event and kept it for nobody",
                    ["topic": "\(topic)"]))
        }
        results.append(.delivered(mid))
    }

    func disconnected(_ reason: Int32) {
        guard !broken else { return }
        broken = true
        results.append(
            .lost("the MQTT broker closed the connection (\(String(cString: mosquitto_reason_string(reason)))"))
    }
}
