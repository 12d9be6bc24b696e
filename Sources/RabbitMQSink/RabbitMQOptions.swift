import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// `--sink rabbitmq`: its options, their checks, and its sink.
public struct RabbitMQOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "rabbitmq"
    public static let deadLetterMeaning = "a routing key on --rabbitmq-exchange"

    @Option(
        help: ArgumentHelp(
            "RabbitMQ URL (with --sink rabbitmq); may carry user:password, never logged.",
            valueName: "amqp[s]://user:password@host:port/vhost"))
    public var rabbitmqUrl: String?

    @Option(
        help: ArgumentHelp(
            "The exchange events are published to (with --sink rabbitmq); it must exist. \"\" (the default) is the default exchange, where the routing key names a queue.",
            valueName: "name"))
    public var rabbitmqExchange = ""

    @Option(
        help: ArgumentHelp(
            "The routing key of each event, from {topic}, {key} and {type} (with --sink rabbitmq). A queue must be bound for it: an unroutable event is refused.",
            valueName: "template"))
    public var rabbitmqRoutingKey = "{topic}"

    @Option(help: ArgumentHelp("CA certificates (PEM) for amqps:// (with --sink rabbitmq).", valueName: "path"))
    public var rabbitmqCaFile: String?

    @Option(
        help: ArgumentHelp(
            "How long a RabbitMQ publication waits for the broker's confirm before the connection is taken as lost and the sink publishes again (with --sink rabbitmq).",
            valueName: "ms"))
    public var rabbitmqAckTimeoutMs = 10_000

    public init() {}

    public var givenOptions: [String] {
        (rabbitmqUrl != nil || rabbitmqExchange != "" || rabbitmqRoutingKey != "{topic}" || rabbitmqCaFile != nil)
            ? ["--rabbitmq-url", "--rabbitmq-exchange", "--rabbitmq-routing-key", "--rabbitmq-ca-file"] : []
    }

    public func checkAlways() throws {
        do { _ = try DestinationTemplate(rabbitmqRoutingKey) } catch {
            throw DestinationOptionError("--rabbitmq-routing-key: \(error)")
        }
        if rabbitmqAckTimeoutMs < 100 { throw DestinationOptionError("--rabbitmq-ack-timeout-ms must be at least 100") }
        if let problem = AMQPMessage.exchangeProblem(rabbitmqExchange) {
            throw DestinationOptionError("--rabbitmq-exchange: \(problem)")
        }
    }

    public func check(deadLetter: String?) throws {
        if (rabbitmqUrl ?? "").isEmpty { throw DestinationOptionError("--sink rabbitmq needs --rabbitmq-url") }
        if let deadLetter, let problem = AMQPMessage.routingKeyProblem(deadLetter) {
            throw DestinationOptionError("--dlq-topic: \(problem)")
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        var rabbit = RabbitMQSinkConfig(
            url: rabbitmqUrl!, exchange: rabbitmqExchange, routingKey: try DestinationTemplate(rabbitmqRoutingKey))
        rabbit.deadLetterRoutingKey = deadLetter
        rabbit.caFile = rabbitmqCaFile
        rabbit.acknowledgementTimeoutMilliseconds = rabbitmqAckTimeoutMs
        return try RabbitMQSink(config: rabbit, logger: logger)
    }
}
