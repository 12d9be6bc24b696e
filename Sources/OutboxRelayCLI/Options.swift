import AMQP1Sink
import AWSSink
import ArgumentParser
import Dispatch
import Foundation
import HTTPSink
import KafkaSink
import Logging
import MQTTSink
import NATSSink
import OutboxCore
import OutboxRelay
import PostgresClient
import PostgresReplication
import RabbitMQSink
import RedisSink
import RelayIO

/// The database connection, shared by every command.
struct SourceOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "libpq connection string or URI of the database (never logged). Defaults to $OUTBOX_RELAY_SOURCE.",
            valueName: "conninfo"))
    var source: String?

    func validate() throws {
        guard let source = resolved() else {
            throw ValidationError("--source is required (or set OUTBOX_RELAY_SOURCE)")
        }
        if let problem = Conninfo.validate(source) { throw ValidationError("--source: \(problem)") }
    }

    func resolved() -> String? {
        source ?? ProcessInfo.processInfo.environment["OUTBOX_RELAY_SOURCE"]
    }
}

/// Where events go: `--sink`, `--dlq-topic`, and each destination's own
/// options, which its module exports (`DestinationOptions`). Adding a
/// destination is its module, its line in Package.swift, and its line here.
struct SinkOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Where events go: kafka, nats (JetStream), rabbitmq, redis (Streams), http (webhook POSTs), mqtt (MQTT 5), amqp1 (AMQP 1.0), sqs (AWS SQS), sns (AWS SNS), stdout, or file:PATH (appends NDJSON; acknowledged after fsync).",
            valueName: "sink"))
    var sink = "stdout"

    @Option(
        help: ArgumentHelp(
            "Kafka topic (NATS: subject; RabbitMQ: routing key on --rabbitmq-exchange; Redis: a stream; http: a URL; MQTT: a topic; AMQP 1.0: a target address; SQS: a queue URL; SNS: a topic ARN) for events that can never be delivered as they are (too large, invalid topic, unauthorized, no stream, unroutable, nacked) and rows that cannot become events. Without it such an event stops the relay.",
            valueName: "topic"))
    var dlqTopic: String?

    // The destinations: one line each.
    @OptionGroup var kafka: KafkaOptions
    @OptionGroup var nats: NATSOptions
    @OptionGroup var rabbitmq: RabbitMQOptions
    @OptionGroup var mqtt: MQTTOptions
    @OptionGroup var amqp1: AMQP1Options
    @OptionGroup var aws: AWSOptions
    @OptionGroup var redis: RedisOptions
    @OptionGroup var http: WebhookOptions

    var destinations: [any DestinationOptions] { [kafka, nats, rabbitmq, redis, http, mqtt, amqp1] + aws.destinations }

    /// The destination `--sink` names, if it is one (not stdout or a file).
    var destination: (any DestinationOptions)? { destinations.first { type(of: $0).sinkName == sink } }

    /// `--kafka-transactional-id`, which `run` resolves (`auto`).
    var kafkaTransactionalId: String? { kafka.kafkaTransactionalId }

    func validate() throws {
        let names = destinations.map { type(of: $0).sinkName }
        if !names.contains(sink) && !["stdout"].contains(sink) && !(sink.hasPrefix("file:") && sink.count > 5) {
            throw ValidationError(
                "--sink must be \(names.joined(separator: ", ")), stdout or file:PATH, got \"\(sink)\"")
        }
        do {
            for other in destinations {
                try other.checkAlways()
                let given = other.givenOptions
                if type(of: other).sinkName != sink && !given.isEmpty {
                    let list =
                        given.count == 1 ? given[0] : given.dropLast().joined(separator: ", ") + " and " + given.last!
                    throw ValidationError("\(list) apply only to --sink \(type(of: other).sinkName)")
                }
            }
            if let destination {
                try destination.check(deadLetter: dlqTopic)
            } else if dlqTopic != nil {
                throw ValidationError("--dlq-topic applies only to --sink \(names.joined(separator: ", "))")
            }
        } catch let error as DestinationOptionError {
            throw ValidationError(error.description)
        }
    }

    /// `makeSink` on a thread of its own: a sink connects when it is made (C
    /// clients, handshakes, `init_transactions`), which must not block Swift's cooperative pool.
    func connectSink(logger: Logger, transactionalID: String? = nil) async throws -> any EventSink {
        let options = self
        return try await OwnThread.run("sink-connect") {
            HandedOver(try options.makeSink(logger: logger, transactionalID: transactionalID))
        }.sink
    }

    /// `transactionalID`: the resolved `--kafka-transactional-id` (the caller turns `auto` into an id).
    func makeSink(logger: Logger, transactionalID: String? = nil) throws -> any EventSink {
        switch sink {
        case "stdout": return NDJSONSink.stdout()
        case KafkaOptions.sinkName:
            return try kafka.makeSink(deadLetter: dlqTopic, logger: logger, transactionalID: transactionalID)
        default:
            if let destination { return try destination.makeSink(deadLetter: dlqTopic, logger: logger) }
            return try NDJSONSink.file(path: String(sink.dropFirst(5)))
        }
    }
}

/// How rows become events: the same for log tailing and polling.
struct RoutingOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The outbox table.", valueName: "schema.table"))
    var table = "public.outbox"

    @Option(help: "Column holding the event id (header id).") var idColumn = "id"
    @Option(
        name: [.customLong("aggregate-type-column"), .customLong("route-by-field")],
        help: "Column holding the route (topic template {aggregatetype}, ${routedByValue}); Debezium's route.by.field.")
    var aggregateTypeColumn = "aggregatetype"
    @Option(
        name: [.customLong("aggregate-id-column"), .customLong("key-column")],
        help: "Column holding the key; Debezium's table.field.event.key.")
    var aggregateIdColumn = "aggregateid"
    @Option(help: "Column holding the event type (header type).") var typeColumn = "type"
    @Option(help: "Column holding the payload (jsonb, json, text or bytea).") var payloadColumn =
        "payload"
    @Option(help: "JSON object column whose members become headers; empty for none.")
    var headersColumn = "headers"

    @Option(
        name: .customLong("header-column"),
        help: ArgumentHelp(
            "Also send this column as a header (repeatable).", valueName: "column[:header]"))
    var headerColumns: [String] = []

    @Option(
        help:
            "Topic template; {aggregatetype} and {type} are replaced by the row's values (unused when --route-topic-regex or --route-topic-replacement is set)."
    )
    var topicTemplate = "outbox.event.{aggregatetype}"

    @Option(
        help: ArgumentHelp(
            "Debezium's route.topic.regex, applied to the routing column's value (Java syntax; default (?<routedByValue>.*)).",
            valueName: "regex"))
    var routeTopicRegex: String?

    @Option(
        help: ArgumentHelp(
            "Debezium's route.topic.replacement: $n and ${name} name the regex's groups (default outbox.event.${routedByValue}). Set either to route as Debezium does instead of --topic-template.",
            valueName: "replacement"))
    var routeTopicReplacement: String?

    @Option(
        help: ArgumentHelp(
            "What a NULL payload becomes: tombstone (a record with a null value, as Debezium) or json-null (the 4-byte value null).",
            valueName: "tombstone|json-null"))
    var nullPayload = "tombstone"

    @Flag(
        help: ArgumentHelp(
            "Accepted for compatibility: NULL payloads are tombstones by default (--null-payload).", visibility: .hidden
        ))
    var tombstones = false

    @Flag(help: "An empty or blank payload is a tombstone too (Debezium's route.tombstone.on.empty.payload).")
    var tombstoneOnEmptyPayload = false

    @Option(
        help: ArgumentHelp(
            "string (Kafka Connect's StringConverter: the payload as stored) or json (JsonConverter with schemas.enable=false).",
            valueName: "string|json"))
    var valueEncoding = "string"

    @Flag(
        help:
            "With --value-encoding json, write a JSON payload as JSON rather than as a string holding it (Debezium's table.expand.json.payload)."
    )
    var expandJsonPayload = false

    @Option(
        help: ArgumentHelp(
            "ignore (members whose value is null are left out of an expanded payload) or optional_bytes (kept); Debezium's table.json.payload.null.behavior.",
            valueName: "ignore|optional_bytes"))
    var jsonPayloadNullBehavior = "ignore"

    @Option(
        name: .customLong("additional-field"),
        help: ArgumentHelp(
            "Debezium's table.fields.additional.placement, one entry each (repeatable): a column as a header or an envelope field (--value-encoding json), under its name or an alias.",
            valueName: "column:header|envelope[:alias]"))
    var additionalFields: [String] = []

    @Option(
        help: ArgumentHelp(
            "What an UPDATE of an outbox row does: warn, error (logged, no event) or fatal (the relay stops before its transaction is confirmed); Debezium's table.op.invalid.behavior.",
            valueName: "warn|error|fatal"))
    var updateBehavior = "warn"

    @Option(
        help:
            "Prefix of transactional logical messages that are events; empty to ignore messages (log tailing only)."
    )
    var messagePrefix = "outbox"

    func validate() throws {
        if splitTable() == nil {
            throw ValidationError(
                "--table must be schema.table or table, either part double-quoted when it holds dots, capitals or quotes (\"Sales\".\"Outbox\"), got \"\(table)\""
            )
        }
        for spec in headerColumns where spec.isEmpty || spec.hasPrefix(":") || spec.hasSuffix(":") {
            throw ValidationError("--header-column must be column or column:header, got \"\(spec)\"")
        }
        if !["tombstone", "json-null"].contains(nullPayload) {
            throw ValidationError("--null-payload must be tombstone or json-null, got \"\(nullPayload)\"")
        }
        if RoutingConfig.ValueEncoding(rawValue: valueEncoding) == nil {
            throw ValidationError("--value-encoding must be string or json, got \"\(valueEncoding)\"")
        }
        if !["ignore", "optional_bytes"].contains(jsonPayloadNullBehavior) {
            throw ValidationError(
                "--json-payload-null-behavior must be ignore or optional_bytes, got \"\(jsonPayloadNullBehavior)\"")
        }
        if RoutingConfig.InvalidOperation(rawValue: updateBehavior) == nil {
            throw ValidationError("--update-behavior must be warn, error or fatal, got \"\(updateBehavior)\"")
        }
        for spec in additionalFields {
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
            guard (2...3).contains(parts.count), !parts.contains(where: \.isEmpty) else {
                throw ValidationError(
                    "--additional-field must be column:header, column:envelope or either with :alias, got \"\(spec)\"")
            }
            if parts[1] == "partition" {
                throw ValidationError(
                    "--additional-field \"\(spec)\": partition placement is not supported (the key chooses the partition; the relay never sets one)"
                )
            }
            guard parts[1] == "header" || parts[1] == "envelope" else {
                throw ValidationError(
                    "--additional-field \"\(spec)\": the placement must be header or envelope, got \"\(parts[1])\"")
            }
        }
        for problem in routing().validate() { throw ValidationError(problem) }
    }

    func splitTable() -> (schema: String, name: String)? { parseQualifiedTableName(table) }

    func routing() -> RoutingConfig {
        var routing = RoutingConfig()
        if let table = splitTable() { (routing.schema, routing.table) = table }
        routing.idColumn = idColumn
        routing.aggregateTypeColumn = aggregateTypeColumn
        routing.aggregateIDColumn = aggregateIdColumn
        routing.typeColumn = typeColumn
        routing.payloadColumn = payloadColumn
        routing.headersColumn = headersColumn.isEmpty ? nil : headersColumn
        routing.headerColumns = headerColumns.map { spec in
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            return RoutingConfig.HeaderColumn(
                column: parts[0], header: parts.count > 1 ? parts[1] : parts[0])
        }
        for spec in additionalFields {
            let parts = spec.split(separator: ":").map(String.init)
            guard parts.count >= 2 else { continue }
            let field = RoutingConfig.HeaderColumn(column: parts[0], header: parts.count > 2 ? parts[2] : parts[0])
            if parts[1] == "envelope" {
                routing.envelopeColumns.append(field)
            } else {
                routing.headerColumns.append(field)
            }
        }
        routing.topicTemplate = topicTemplate
        if routeTopicRegex != nil || routeTopicReplacement != nil {
            routing.topicRoute = TopicRoute(
                regex: routeTopicRegex ?? TopicRoute.debeziumDefault.regex,
                replacement: routeTopicReplacement ?? TopicRoute.debeziumDefault.replacement)
        }
        routing.tombstones = nullPayload != "json-null"
        routing.tombstoneOnEmptyPayload = tombstoneOnEmptyPayload
        routing.valueEncoding = RoutingConfig.ValueEncoding(rawValue: valueEncoding) ?? .string
        routing.expandJSONPayload = expandJsonPayload
        routing.keepNullMembers = jsonPayloadNullBehavior == "optional_bytes"
        routing.updateBehavior = RoutingConfig.InvalidOperation(rawValue: updateBehavior) ?? .warn
        routing.messagePrefix = messagePrefix.isEmpty ? nil : messagePrefix
        return routing
    }
}

struct LogOptions: ParsableArguments {
    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    @Option(help: "logfmt, json or text: one line per record on stderr.")
    var logFormat = "logfmt"

    func validate() throws {
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        if StructuredLogHandler.Format(rawValue: logFormat) == nil {
            throw ValidationError("--log-format must be logfmt, json or text")
        }
    }

    func bootstrap() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = StructuredLogHandler.Format(rawValue: logFormat) ?? .logfmt
        LoggingSystem.bootstrap { label in StructuredLogHandler(label: label, format: format, level: level) }
        return Logger(label: "outbox-relay")
    }
}

/// The health and metrics endpoints.
struct HTTPOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Serve /healthz, /readyz and /metrics on this address (off unless set; e.g. 127.0.0.1:9187, or 0.0.0.0:9187 in a pod).",
            valueName: "host:port"))
    var httpAddress: String?

    typealias Address = (host: String, port: Int)

    func validate() throws {
        if let httpAddress, Self.split(httpAddress) == nil {
            throw ValidationError(
                "--http-address must be host:port with a port from 0 to 65535, got \"\(httpAddress)\"")
        }
    }

    /// The validated address, if the endpoints are on.
    var address: Address? { httpAddress.flatMap(Self.split) }

    static func split(_ value: String) -> Address? {
        guard let colon = value.lastIndex(of: ":") else { return nil }
        var host = String(value[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(value[value.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        return (host, port)
    }
}

/// A sink made on the connecting thread, handed to the relay's: `@unchecked
/// Sendable` because the making thread lets go of it when it returns, so one
/// thread at a time uses it.
struct HandedOver: @unchecked Sendable {
    let sink: any EventSink
    init(_ sink: any EventSink) { self.sink = sink }
}
