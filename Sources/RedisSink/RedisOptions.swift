import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// `--sink redis`: its options, their checks, and its sink.
public struct RedisOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "redis"
    public static let deadLetterMeaning = "a stream"

    @Option(
        help: ArgumentHelp(
            "Redis URL (with --sink redis); may carry user:password, never logged.",
            valueName: "redis://[user:password@]host:port[/db]"))
    public var redisUrl: String?

    @Option(
        help: ArgumentHelp(
            "The stream each event is added to, from {topic}, {key} and {type} (with --sink redis).",
            valueName: "template"))
    public var redisStream = "{topic}"

    @Option(
        help: ArgumentHelp(
            "Trim each stream to about this many entries as events are added (XADD MAXLEN ~; with --sink redis). 0: never trim.",
            valueName: "n"))
    public var redisMaxlen = 0

    @Option(
        help: ArgumentHelp(
            "Drop an event whose id was added within this many seconds (a marker key per event; with --sink redis): redeliveries after a relay crash do not reach the stream. 0: off.",
            valueName: "seconds"))
    public var redisDedupeWindowS = 0

    @Option(
        help: ArgumentHelp(
            "Acknowledge an event only once this many replicas have it (WAIT; with --sink redis).", valueName: "n"))
    public var redisWaitReplicas = 0

    @Option(help: ArgumentHelp("How long one WAIT waits for the replicas (with --sink redis).", valueName: "ms"))
    public var redisWaitTimeoutMs = 1_000

    @Option(
        help: ArgumentHelp(
            "How long a batch waits for Redis's answer before the connection is taken as lost and the sink sends it again (with --sink redis).",
            valueName: "ms"))
    public var redisAckTimeoutMs = 10_000

    public init() {}

    public var givenOptions: [String] {
        (redisUrl != nil || redisStream != "{topic}" || redisMaxlen != 0 || redisDedupeWindowS != 0
            || redisWaitReplicas != 0)
            ? ["--redis-url", "--redis-stream", "--redis-maxlen", "--redis-dedupe-window-s", "--redis-wait-replicas"]
            : []
    }

    public func checkAlways() throws {
        do { _ = try DestinationTemplate(redisStream) } catch {
            throw DestinationOptionError("--redis-stream: \(error)")
        }
        if redisMaxlen < 0 { throw DestinationOptionError("--redis-maxlen must be 0 or more") }
        if redisDedupeWindowS < 0 { throw DestinationOptionError("--redis-dedupe-window-s must be 0 or more") }
        if redisWaitReplicas < 0 { throw DestinationOptionError("--redis-wait-replicas must be 0 or more") }
        if redisWaitTimeoutMs < 10 { throw DestinationOptionError("--redis-wait-timeout-ms must be at least 10") }
        if redisAckTimeoutMs < 100 { throw DestinationOptionError("--redis-ack-timeout-ms must be at least 100") }
    }

    public func check(deadLetter: String?) throws {
        guard let url = redisUrl, !url.isEmpty else { throw DestinationOptionError("--sink redis needs --redis-url") }
        do { _ = try RedisEndpoint.parse(url) } catch { throw DestinationOptionError("\(error)") }
        if let deadLetter, deadLetter.isEmpty { throw DestinationOptionError("--dlq-topic must not be empty") }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        var redis = RedisSinkConfig(url: redisUrl!, stream: try DestinationTemplate(redisStream))
        redis.deadLetterStream = deadLetter
        redis.maxLength = redisMaxlen
        redis.dedupeWindowSeconds = redisDedupeWindowS
        redis.waitReplicas = redisWaitReplicas
        redis.waitTimeoutMilliseconds = redisWaitTimeoutMs
        redis.acknowledgementTimeoutMilliseconds = redisAckTimeoutMs
        return try RedisSink(config: redis, logger: logger)
    }
}
