import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// Where the MQTT broker is: `mqtt://user:password@host:port` or `mqtts://…`.
public enum MQTTEndpoint {
    public static func parse(_ url: String) -> Result<BrokerEndpoint, DestinationOptionError> {
        BrokerEndpoint.parse(url, option: "--mqtt-url", plain: ("mqtt", 1883), secure: ("mqtts", 8883))
    }

    /// Why a topic name cannot be published to: wildcards, NUL, empty, too long.
    public static func topicProblem(_ topic: String) -> String? {
        if topic.isEmpty { return "the MQTT topic is empty" }
        if topic.utf8.count > 65_535 { return "the MQTT topic is longer than 65,535 bytes" }
        if topic.contains(where: { $0 == "+" || $0 == "#" || $0 == "\0" }) {
            return "the MQTT topic \"\(topic)\" holds a wildcard (+ or #) or NUL, which a PUBLISH may not"
        }
        return nil
    }
}

/// `--sink mqtt`: its options, their checks, and its sink.
public struct MQTTOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "mqtt"
    public static let deadLetterMeaning = "an MQTT topic"

    @Option(
        help: ArgumentHelp(
            "MQTT 5 broker (with --sink mqtt); may carry user:password, never logged.",
            valueName: "mqtt[s]://user:password@host:port"))
    public var mqttUrl: String?

    @Option(
        help: ArgumentHelp(
            "The topic of each event, from {topic}, {key} and {type} (with --sink mqtt). Order holds per topic: keep a key's events on one topic.",
            valueName: "template"))
    public var mqttTopic = "{topic}"

    @Option(
        help: ArgumentHelp(
            "1: acknowledged at the broker's PUBACK; 2: at PUBCOMP (with --sink mqtt).", valueName: "1|2"))
    public var mqttQos = 1

    @Option(
        help: ArgumentHelp(
            "MQTT client id (with --sink mqtt); unique per relay process, or the broker hands one's session to the other. Default: outbox-relay- and a random suffix.",
            valueName: "id"))
    public var mqttClientId: String?

    @Option(
        help: ArgumentHelp(
            "How long the broker keeps the relay's session after a disconnect (with --sink mqtt).", valueName: "seconds"
        ))
    public var mqttSessionExpirySeconds = 300

    @Option(help: ArgumentHelp("CA certificates (PEM) for mqtts:// (with --sink mqtt).", valueName: "path"))
    public var mqttCaFile: String?

    @Option(
        help: ArgumentHelp(
            "How long an MQTT publication waits for the broker's acknowledgement before the connection is taken as lost and the sink publishes again (with --sink mqtt).",
            valueName: "ms"))
    public var mqttAckTimeoutMs = 10_000

    public init() {}

    public var givenOptions: [String] {
        (mqttUrl != nil || mqttTopic != "{topic}" || mqttClientId != nil || mqttCaFile != nil)
            ? ["--mqtt-url", "--mqtt-topic", "--mqtt-client-id", "--mqtt-ca-file"] : []
    }

    public func checkAlways() throws {
        do { _ = try DestinationTemplate(mqttTopic) } catch { throw DestinationOptionError("--mqtt-topic: \(error)") }
        if mqttQos != 1 && mqttQos != 2 {
            throw DestinationOptionError("--mqtt-qos must be 1 or 2 (QoS 0 is never acknowledged)")
        }
        if mqttAckTimeoutMs < 100 { throw DestinationOptionError("--mqtt-ack-timeout-ms must be at least 100") }
        if mqttSessionExpirySeconds < 0 {
            throw DestinationOptionError("--mqtt-session-expiry-seconds must not be negative")
        }
        if let id = mqttClientId, id.isEmpty || id.utf8.count > 65_535 {
            throw DestinationOptionError("--mqtt-client-id must not be empty")
        }
    }

    public func check(deadLetter: String?) throws {
        guard let url = mqttUrl, !url.isEmpty else { throw DestinationOptionError("--sink mqtt needs --mqtt-url") }
        if case .failure(let problem) = MQTTEndpoint.parse(url) { throw problem }
        if let deadLetter, let problem = MQTTEndpoint.topicProblem(deadLetter) {
            throw DestinationOptionError("--dlq-topic: \(problem)")
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        let endpoint = try MQTTEndpoint.parse(mqttUrl!).get()
        let clientID = mqttClientId ?? "outbox-relay-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        var config = MQTTSinkConfig(endpoint: endpoint, topic: try DestinationTemplate(mqttTopic), clientID: clientID)
        config.qos = Int32(mqttQos)
        config.sessionExpirySeconds = UInt32(mqttSessionExpirySeconds)
        config.deadLetterTopic = deadLetter
        config.caFile = mqttCaFile
        config.acknowledgementTimeoutMilliseconds = mqttAckTimeoutMs
        return try MQTTSink(config: config, logger: logger)
    }
}
