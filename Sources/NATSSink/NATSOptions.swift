import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// `--sink nats`: its options, their checks, and its sink.
public struct NATSOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "nats"
    public static let deadLetterMeaning = "a subject"

    @Option(
        help: ArgumentHelp(
            "NATS server URL(s), comma-separated (with --sink nats); may carry user:password@ or a token, never logged.",
            valueName: "nats://host:port,…"))
    public var natsUrl: String?

    @Option(
        help: ArgumentHelp(
            "The subject each event is published to, from {topic}, {key} and {type} (with --sink nats). A JetStream stream must cover it.",
            valueName: "template"))
    public var natsSubject = "{topic}"

    @Option(
        help: ArgumentHelp(
            "A NATS .creds file (user JWT and NKey seed) for the connection (with --sink nats).", valueName: "path"))
    public var natsCredentials: String?

    @Option(
        help: ArgumentHelp(
            "How long a NATS publication waits for JetStream's acknowledgement before the connection is taken as lost and the sink publishes again (with --sink nats).",
            valueName: "ms"))
    public var natsAckTimeoutMs = 10_000

    public init() {}

    public var givenOptions: [String] {
        (natsUrl != nil || natsCredentials != nil || natsSubject != "{topic}")
            ? ["--nats-url", "--nats-subject", "--nats-credentials"] : []
    }

    public func checkAlways() throws {
        do { _ = try DestinationTemplate(natsSubject) } catch {
            throw DestinationOptionError("--nats-subject: \(error)")
        }
        if natsAckTimeoutMs < 100 { throw DestinationOptionError("--nats-ack-timeout-ms must be at least 100") }
    }

    public func check(deadLetter: String?) throws {
        if (natsUrl ?? "").isEmpty { throw DestinationOptionError("--sink nats needs --nats-url") }
        if let deadLetter, let problem = NATSMessage.subjectProblem(deadLetter) {
            throw DestinationOptionError("--dlq-topic: the NATS subject \(problem)")
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        var nats = NATSSinkConfig(url: natsUrl!, subject: try DestinationTemplate(natsSubject))
        nats.deadLetterSubject = deadLetter
        nats.credentialsFile = natsCredentials
        nats.acknowledgementTimeoutMilliseconds = natsAckTimeoutMs
        return try NATSSink(config: nats, logger: logger)
    }
}
