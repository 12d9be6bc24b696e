import OutboxCore

/// Pure rules of the RabbitMQ sink: what an exchange, a routing key, a message
/// id and a header may be, what an event becomes, and what the broker's answers mean.
public enum AMQPMessage {
    /// AMQP 0-9-1 short strings (exchange, routing key, message id, header
    /// names) are at most 255 bytes; the C client takes them as C strings, so no NUL.
    static func shortStringProblem(_ what: String, _ text: String) -> String? {
        if text.utf8.count > 255 { return "\(what) is \(text.utf8.count) bytes; AMQP allows at most 255" }
        if text.utf8.contains(0) { return "\(what) contains a NUL character" }
        return nil
    }

    /// Why `key` cannot be a routing key, or nil.
    public static func routingKeyProblem(_ key: String) -> String? {
        shortStringProblem("the routing key \"\(key.prefix(60))\"", key)
    }

    /// Why `name` cannot be an exchange to publish to, or nil ("" is the default exchange).
    public static func exchangeProblem(_ name: String) -> String? {
        if let problem = shortStringProblem("the exchange name", name) { return problem }
        if name.hasPrefix("amq.")
            && !["amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match"].contains(name)
        {
            return "\"\(name)\" is reserved (amq.*)"
        }
        return nil
    }

    /// Why the event cannot travel as an AMQP message as it is, or nil.
    public static func messageProblem(id: String, headers: [(name: String, value: String)]) -> String? {
        if let problem = shortStringProblem("the event id (message_id)", id) { return problem }
        for header in headers {
            if header.name.isEmpty { return "a header has an empty name" }
            if let problem = shortStringProblem("header name \"\(header.name.prefix(60))\"", header.name) {
                return problem
            }
            if header.value.utf8.contains(0) { return "header \(header.name) contains a NUL character" }
        }
        return nil
    }

    /// What the broker's answer for one publication means, when it is not a plain ack.
    public enum Outcome: Equatable, Sendable {
        case stored
        /// This event cannot be stored as it is: dead-letter it or stop.
        case refused(String)
    }

    /// A publication the broker returned (`mandatory`: no queue is bound for its routing key) and then acked.
    public static func returned(code: Int, text: String, exchange: String, routingKey: String) -> Outcome {
        let name = exchange.isEmpty ? "the default exchange" : "exchange \"\(exchange)\""
        return .refused(
            "RabbitMQ returned the message as unroutable (\(code) \(text)): no queue is bound to \(name) for routing key \"\(routingKey)\"; bind one (e.g. `rabbitmqadmin declare binding source=\(exchange.isEmpty ? "…" : exchange) destination=QUEUE routing_key=\(routingKey)`)"
        )
    }

    /// A publication the broker nacked (a queue refused it: `x-overflow: reject-publish` at its limit, or an internal error).
    public static func nacked(exchange: String, routingKey: String) -> Outcome {
        .refused(
            "RabbitMQ nacked the message for routing key \"\(routingKey)\" on \(exchange.isEmpty ? "the default exchange" : "exchange \"\(exchange)\""): a queue refused it (a length limit with x-overflow reject-publish, or a queue error)"
        )
    }

    /// The broker closed the channel or connection: `code` and `text` from its close method.
    /// Returns the largest message size the broker accepts when that is why (406 "larger than configured max size N").
    public static func maxMessageSize(closeCode code: Int, text: String) -> Int? {
        guard code == 406, let range = text.range(of: "max size ") else { return nil }
        return Int(text[range.upperBound...].prefix { $0.isNumber })
    }

    /// A hint for a connection refused over the vhost: in an AMQP URI, a path of
    /// just "/" names the empty vhost, not the default one.
    public static func vhostHint(url: String, error: String) -> String? {
        guard error.contains("vhost"), let scheme = url.range(of: "://") else { return nil }
        let rest = url[scheme.upperBound...]
        guard let slash = rest.firstIndex(of: "/"), rest[slash...] == "/" else { return nil }
        return
            "the URL ends in \"/\", which names the empty vhost; for the default vhost \"/\" leave the path out or write %2f"
    }
}
