import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// Where the AMQP 1.0 broker is: `amqp://user:password@host:port` or `amqps://…`.
public enum AMQP1Endpoint {
    public static func parse(_ url: String) -> Result<BrokerEndpoint, DestinationOptionError> {
        BrokerEndpoint.parse(url, option: "--amqp1-url", plain: ("amqp", 5672), secure: ("amqps", 5671))
    }
}

/// `--sink amqp1`: its options, their checks, and its sink.
public struct AMQP1Options: ParsableArguments, DestinationOptions {
    public static let sinkName = "amqp1"
    public static let deadLetterMeaning = "an AMQP 1.0 target address"

    @Option(
        help: ArgumentHelp(
            "AMQP 1.0 broker (with --sink amqp1): Azure Service Bus, ActiveMQ Artemis, Solace, RabbitMQ; may carry user:password (SASL PLAIN), never logged.",
            valueName: "amqp[s]://user:password@host:port"))
    public var amqp1Url: String?

    @Option(
        help: ArgumentHelp(
            "The target address events are sent to (with --sink amqp1): a queue or topic (Service Bus, Artemis), or RabbitMQ's /exchange/NAME.",
            valueName: "address"))
    public var amqp1Address: String?

    @Option(
        help: ArgumentHelp(
            "Each message's subject, from {topic}, {key} and {type} (with --sink amqp1); RabbitMQ routes /exchange/NAME messages by it.",
            valueName: "template"))
    public var amqp1Subject = "{topic}"

    @Option(help: ArgumentHelp("CA certificates (PEM) for amqps:// (with --sink amqp1).", valueName: "path"))
    public var amqp1CaFile: String?

    @Option(
        help: ArgumentHelp(
            "How long an AMQP 1.0 message waits for the broker's outcome before the connection is taken as lost and the sink sends again (with --sink amqp1).",
            valueName: "ms"))
    public var amqp1AckTimeoutMs = 10_000

    public init() {}

    public var givenOptions: [String] {
        (amqp1Url != nil || amqp1Address != nil || amqp1Subject != "{topic}" || amqp1CaFile != nil)
            ? ["--amqp1-url", "--amqp1-address", "--amqp1-subject", "--amqp1-ca-file"] : []
    }

    public func checkAlways() throws {
        do { _ = try DestinationTemplate(amqp1Subject) } catch {
            throw DestinationOptionError("--amqp1-subject: \(error)")
        }
        if amqp1AckTimeoutMs < 100 { throw DestinationOptionError("--amqp1-ack-timeout-ms must be at least 100") }
    }

    public func check(deadLetter: String?) throws {
        guard let url = amqp1Url, !url.isEmpty else { throw DestinationOptionError("--sink amqp1 needs --amqp1-url") }
        if case .failure(let problem) = AMQP1Endpoint.parse(url) { throw problem }
        if (amqp1Address ?? "").isEmpty { throw DestinationOptionError("--sink amqp1 needs --amqp1-address") }
        if deadLetter == "" { throw DestinationOptionError("--dlq-topic: an empty AMQP 1.0 address") }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        var config = AMQP1SinkConfig(
            endpoint: try AMQP1Endpoint.parse(amqp1Url!).get(), address: amqp1Address!,
            subject: try DestinationTemplate(amqp1Subject))
        config.deadLetterAddress = deadLetter
        config.caFile = amqp1CaFile
        config.acknowledgementTimeoutMilliseconds = amqp1AckTimeoutMs
        return try AMQP1Sink(config: config, logger: logger)
    }
}
