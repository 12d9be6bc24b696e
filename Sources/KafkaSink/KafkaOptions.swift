import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// `--sink kafka`: its options, their checks, and its sink.
public struct KafkaOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "kafka"
    public static let deadLetterMeaning = "a topic"

    @Option(
        help: ArgumentHelp("Kafka bootstrap servers (with --sink kafka).", valueName: "host:port,…"))
    public var kafkaBrokers: String?

    @Option(
        name: .customShort("X"),
        help: ArgumentHelp(
            "A librdkafka property, e.g. -X compression.type=zstd (repeatable; TLS and SASL too; secret values are never logged).",
            valueName: "key=value"))
    public var kafkaProperties: [String] = []

    @Option(
        help: ArgumentHelp(
            "Publish in Kafka transactions with this transactional.id (`auto` with run: outbox-relay-<database system identifier>-<slot>). A relay that starts with the same id fences this one at the brokers; events are acknowledged once their transaction commits.",
            valueName: "id"))
    public var kafkaTransactionalId: String?

    public init() {}

    public var givenOptions: [String] {
        (kafkaBrokers != nil || !kafkaProperties.isEmpty || kafkaTransactionalId != nil)
            ? ["--kafka-brokers", "-X", "--kafka-transactional-id"] : []
    }

    public func checkAlways() throws {
        if let kafkaTransactionalId, kafkaTransactionalId.isEmpty {
            throw DestinationOptionError("--kafka-transactional-id must not be empty")
        }
        for property in kafkaProperties where !property.contains("=") || property.hasPrefix("=") {
            throw DestinationOptionError("-X takes key=value, got \"\(property.split(separator: "=").first ?? "")…\"")
        }
    }

    public func check(deadLetter: String?) throws {
        if (kafkaBrokers ?? "").isEmpty { throw DestinationOptionError("--sink kafka needs --kafka-brokers") }
        if let deadLetter, let problem = OutboxRouter.topicProblem(deadLetter) {
            throw DestinationOptionError("--dlq-topic: \(problem)")
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        try makeSink(deadLetter: deadLetter, logger: logger, transactionalID: nil)
    }

    /// `transactionalID`: the resolved `--kafka-transactional-id` (`run` turns `auto` into an id).
    public func makeSink(deadLetter: String?, logger: Logger, transactionalID: String?) throws -> any EventSink {
        var kafka = KafkaSinkConfig(brokers: kafkaBrokers!)
        kafka.properties = kafkaProperties.map { property in
            let parts = property.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            return (parts[0], parts[1])
        }
        kafka.deadLetterTopic = deadLetter
        kafka.transactionalID = transactionalID ?? kafkaTransactionalId
        if kafka.transactionalID == "auto" {
            throw SinkError("--kafka-transactional-id auto is available with `run` only (it is derived from the slot)")
        }
        return try KafkaSink(config: kafka, logger: logger)
    }
}
