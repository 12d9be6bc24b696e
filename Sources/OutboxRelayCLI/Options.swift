import ArgumentParser
import Dispatch
import Foundation
import HTTPSink
import KafkaSink
import Logging
import NATSSink
import OutboxCore
import RelayIO
import OutboxRelay
import PostgresClient
import PostgresReplication
import RabbitMQSink
import RedisSink

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

/// Where events go.
struct SinkOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Where events go: kafka, nats (JetStream), rabbitmq, redis (Streams), http (webhook POSTs), stdout, or file:PATH (appends NDJSON; acknowledged after fsync).",
            valueName: "sink"))
    var sink = "stdout"

    @Option(
        help: ArgumentHelp("Kafka bootstrap servers (with --sink kafka).", valueName: "host:port,…"))
    var kafkaBrokers: String?

    @Option(
        name: .customShort("X"),
        help: ArgumentHelp(
            "A librdkafka property, e.g. -X compression.type=zstd (repeatable; TLS and SASL too; secret values are never logged).",
            valueName: "key=value"))
    var kafkaProperties: [String] = []

    @Option(
        help: ArgumentHelp(
            "Kafka topic (NATS: subject; RabbitMQ: routing key on --rabbitmq-exchange; Redis: a stream; http: a URL) for events that can never be delivered as they are (too large, invalid topic, unauthorized, no stream, unroutable, nacked) and rows that cannot become events. Without it such an event stops the relay.",
            valueName: "topic"))
    var dlqTopic: String?

    @Option(
        help: ArgumentHelp(
            "NATS server URL(s), comma-separated (with --sink nats); may carry user:password@ or a token, never logged.",
            valueName: "nats://host:port,…"))
    var natsUrl: String?

    @Option(
        help: ArgumentHelp(
            "The subject each event is published to, from {topic}, {key} and {type} (with --sink nats). A JetStream stream must cover it.",
            valueName: "template"))
    var natsSubject = "{topic}"

    @Option(
        help: ArgumentHelp("A NATS .creds file (user JWT and NKey seed) for the connection (with --sink nats).", valueName: "path"))
    var natsCredentials: String?

    @Option(
        help: ArgumentHelp(
            "How long a NATS publication waits for JetStream's acknowledgement before the connection is taken as lost and the sink publishes again (with --sink nats).",
            valueName: "ms"))
    var natsAckTimeoutMs = 10_000

    @Option(
        help: ArgumentHelp(
            "RabbitMQ URL (with --sink rabbitmq); may carry user:password, never logged.",
            valueName: "amqp[s]://user:password@host:port/vhost"))
    var rabbitmqUrl: String?

    @Option(
        help: ArgumentHelp(
            "The exchange events are published to (with --sink rabbitmq); it must exist. \"\" (the default) is the default exchange, where the routing key names a queue.",
            valueName: "name"))
    var rabbitmqExchange = ""

    @Option(
        help: ArgumentHelp(
            "The routing key of each event, from {topic}, {key} and {type} (with --sink rabbitmq). A queue must be bound for it: an unroutable event is refused.",
            valueName: "template"))
    var rabbitmqRoutingKey = "{topic}"

    @Option(help: ArgumentHelp("CA certificates (PEM) for amqps:// (with --sink rabbitmq).", valueName: "path"))
    var rabbitmqCaFile: String?

    @Option(
        help: ArgumentHelp(
            "How long a RabbitMQ publication waits for the broker's confirm before the connection is taken as lost and the sink publishes again (with --sink rabbitmq).",
            valueName: "ms"))
    var rabbitmqAckTimeoutMs = 10_000

    @Option(
        help: ArgumentHelp(
            "Redis URL (with --sink redis); may carry user:password, never logged.",
            valueName: "redis://[user:password@]host:port[/db]"))
    var redisUrl: String?

    @Option(
        help: ArgumentHelp(
            "The stream each event is added to, from {topic}, {key} and {type} (with --sink redis).", valueName: "template"))
    var redisStream = "{topic}"

    @Option(
        help: ArgumentHelp(
            "Trim each stream to about this many entries as events are added (XADD MAXLEN ~; with --sink redis). 0: never trim.",
            valueName: "n"))
    var redisMaxlen = 0

    @Option(
        help: ArgumentHelp(
            "Drop an event whose id was added within this many seconds (a marker key per event; with --sink redis): redeliveries after a relay crash do not reach the stream. 0: off.",
            valueName: "seconds"))
    var redisDedupeWindowS = 0

    @Option(
        help: ArgumentHelp(
            "Acknowledge an event only once this many replicas have it (WAIT; with --sink redis).", valueName: "n"))
    var redisWaitReplicas = 0

    @Option(help: ArgumentHelp("How long one WAIT waits for the replicas (with --sink redis).", valueName: "ms"))
    var redisWaitTimeoutMs = 1_000

    @Option(
        help: ArgumentHelp(
            "How long a batch waits for Redis's answer before the connection is taken as lost and the sink sends it again (with --sink redis).",
            valueName: "ms"))
    var redisAckTimeoutMs = 10_000

    @Option(help: ArgumentHelp("The URL each event is POSTed to as JSON (with --sink http).", valueName: "http[s]://…"))
    var webhookUrl: String?

    @Option(
        help: ArgumentHelp(
            "A file holding the key for X-Outbox-Signature-256 (HMAC-SHA256 of the body; with --sink http). Never logged.",
            valueName: "path"))
    var webhookSecretFile: String?

    @Option(
        help: ArgumentHelp(
            "An extra request header, e.g. \"Authorization: Bearer …\" (repeatable; with --sink http). Values are never logged.",
            valueName: "Name: value"))
    var webhookHeader: [String] = []

    @Option(help: ArgumentHelp("Requests in flight at once, across keys; one per key at a time (with --sink http).", valueName: "n"))
    var webhookConcurrency = 16

    @Option(help: ArgumentHelp("Timeout of one request (with --sink http).", valueName: "ms"))
    var webhookTimeoutMs = 10_000

    @Option(help: ArgumentHelp("CA certificates (PEM) for https:// (with --sink http).", valueName: "path"))
    var webhookCaFile: String?

    @Option(
        help: ArgumentHelp(
            "Publish in Kafka transactions with this transactional.id (`auto` with run: outbox-relay-<database system identifier>-<slot>). A relay that starts with the same id fences this one at the brokers; events are acknowledged once their transaction commits.",
            valueName: "id"))
    var kafkaTransactionalId: String?

    func validate() throws {
        if !["stdout", "kafka", "nats", "rabbitmq", "redis", "http"].contains(sink) && !(sink.hasPrefix("file:") && sink.count > 5) {
            throw ValidationError("--sink must be kafka, nats, rabbitmq, redis, http, stdout or file:PATH, got \"\(sink)\"")
        }
        if sink == "redis" {
            guard let url = redisUrl, !url.isEmpty else { throw ValidationError("--sink redis needs --redis-url") }
            do { _ = try RedisEndpoint.parse(url) } catch { throw ValidationError("\(error)") }
            if let dlqTopic, dlqTopic.isEmpty { throw ValidationError("--dlq-topic must not be empty") }
        } else if redisUrl != nil || redisStream != "{topic}" || redisMaxlen != 0 || redisDedupeWindowS != 0 || redisWaitReplicas != 0 {
            throw ValidationError(
                "--redis-url, --redis-stream, --redis-maxlen, --redis-dedupe-window-s and --redis-wait-replicas apply only to --sink redis")
        }
        do { _ = try DestinationTemplate(redisStream) } catch { throw ValidationError("--redis-stream: \(error)") }
        if redisMaxlen < 0 { throw ValidationError("--redis-maxlen must be 0 or more") }
        if redisDedupeWindowS < 0 { throw ValidationError("--redis-dedupe-window-s must be 0 or more") }
        if redisWaitReplicas < 0 { throw ValidationError("--redis-wait-replicas must be 0 or more") }
        if redisWaitTimeoutMs < 10 { throw ValidationError("--redis-wait-timeout-ms must be at least 10") }
        if redisAckTimeoutMs < 100 { throw ValidationError("--redis-ack-timeout-ms must be at least 100") }
        if sink == "http" {
            guard let url = webhookUrl, url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ValidationError("--sink http needs --webhook-url http://… or https://…")
            }
            if let dlqTopic, !(dlqTopic.hasPrefix("http://") || dlqTopic.hasPrefix("https://")) {
                throw ValidationError("--dlq-topic with --sink http is a URL (http:// or https://)")
            }
        } else if webhookUrl != nil || webhookSecretFile != nil || !webhookHeader.isEmpty || webhookCaFile != nil {
            throw ValidationError("--webhook-url, --webhook-secret-file, --webhook-header and --webhook-ca-file apply only to --sink http")
        }
        for header in webhookHeader {
            let parts = header.split(separator: ":", maxSplits: 1)
            if parts.count != 2 || parts[0].isEmpty || parts[0].contains(" ") || header.contains("\n") || header.contains("\r") {
                throw ValidationError("--webhook-header takes \"Name: value\", got \"\(parts.first ?? "")…\"")
            }
        }
        if !(1...1024).contains(webhookConcurrency) { throw ValidationError("--webhook-concurrency must be 1 to 1024") }
        if webhookTimeoutMs < 100 { throw ValidationError("--webhook-timeout-ms must be at least 100") }
        if sink == "kafka" && (kafkaBrokers ?? "").isEmpty {
            throw ValidationError("--sink kafka needs --kafka-brokers")
        }
        if sink != "kafka" && (kafkaBrokers != nil || !kafkaProperties.isEmpty || kafkaTransactionalId != nil) {
            throw ValidationError("--kafka-brokers, -X and --kafka-transactional-id apply only to --sink kafka")
        }
        if !["kafka", "nats", "rabbitmq", "redis", "http"].contains(sink) && dlqTopic != nil {
            throw ValidationError("--dlq-topic applies only to --sink kafka, nats, rabbitmq, redis and http")
        }
        if sink == "rabbitmq" && (rabbitmqUrl ?? "").isEmpty {
            throw ValidationError("--sink rabbitmq needs --rabbitmq-url")
        }
        if sink != "rabbitmq" && (rabbitmqUrl != nil || rabbitmqExchange != "" || rabbitmqRoutingKey != "{topic}" || rabbitmqCaFile != nil) {
            throw ValidationError("--rabbitmq-url, --rabbitmq-exchange, --rabbitmq-routing-key and --rabbitmq-ca-file apply only to --sink rabbitmq")
        }
        do { _ = try DestinationTemplate(rabbitmqRoutingKey) } catch { throw ValidationError("--rabbitmq-routing-key: \(error)") }
        if rabbitmqAckTimeoutMs < 100 { throw ValidationError("--rabbitmq-ack-timeout-ms must be at least 100") }
        if let problem = AMQPMessage.exchangeProblem(rabbitmqExchange) {
            throw ValidationError("--rabbitmq-exchange: \(problem)")
        }
        if sink == "rabbitmq", let dlqTopic, let problem = AMQPMessage.routingKeyProblem(dlqTopic) {
            throw ValidationError("--dlq-topic: \(problem)")
        }
        if sink == "nats" && (natsUrl ?? "").isEmpty {
            throw ValidationError("--sink nats needs --nats-url")
        }
        if sink != "nats" && (natsUrl != nil || natsCredentials != nil || natsSubject != "{topic}") {
            throw ValidationError("--nats-url, --nats-subject and --nats-credentials apply only to --sink nats")
        }
        do { _ = try DestinationTemplate(natsSubject) } catch { throw ValidationError("--nats-subject: \(error)") }
        if natsAckTimeoutMs < 100 { throw ValidationError("--nats-ack-timeout-ms must be at least 100") }
        if let kafkaTransactionalId, kafkaTransactionalId.isEmpty {
            throw ValidationError("--kafka-transactional-id must not be empty")
        }
        for property in kafkaProperties where !property.contains("=") || property.hasPrefix("=") {
            throw ValidationError(
                "-X takes key=value, got \"\(property.split(separator: "=").first ?? "")…\"")
        }
        if sink == "kafka", let dlqTopic, let problem = OutboxRouter.topicProblem(dlqTopic) {
            throw ValidationError("--dlq-topic: \(problem)")
        }
        if sink == "nats", let dlqTopic, let problem = NATSMessage.subjectProblem(dlqTopic) {
            throw ValidationError("--dlq-topic: the NATS subject \(problem)")
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
        case "kafka":
            var kafka = KafkaSinkConfig(brokers: kafkaBrokers!)
            kafka.properties = kafkaProperties.map { property in
                let parts = property.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    .map(String.init)
                return (parts[0], parts[1])
            }
            kafka.deadLetterTopic = dlqTopic
            kafka.transactionalID = transactionalID ?? kafkaTransactionalId
            if kafka.transactionalID == "auto" {
                throw SinkError("--kafka-transactional-id auto is available with `run` only (it is derived from the slot)")
            }
            return try KafkaSink(config: kafka, logger: logger)
        case "nats":
            var nats = NATSSinkConfig(url: natsUrl!, subject: try DestinationTemplate(natsSubject))
            nats.deadLetterSubject = dlqTopic
            nats.credentialsFile = natsCredentials
            nats.acknowledgementTimeoutMilliseconds = natsAckTimeoutMs
            return try NATSSink(config: nats, logger: logger)
        case "rabbitmq":
            var rabbit = RabbitMQSinkConfig(
                url: rabbitmqUrl!, exchange: rabbitmqExchange, routingKey: try DestinationTemplate(rabbitmqRoutingKey))
            rabbit.deadLetterRoutingKey = dlqTopic
            rabbit.caFile = rabbitmqCaFile
            rabbit.acknowledgementTimeoutMilliseconds = rabbitmqAckTimeoutMs
            return try RabbitMQSink(config: rabbit, logger: logger)
        case "redis":
            var redis = RedisSinkConfig(url: redisUrl!, stream: try DestinationTemplate(redisStream))
            redis.deadLetterStream = dlqTopic
            redis.maxLength = redisMaxlen
            redis.dedupeWindowSeconds = redisDedupeWindowS
            redis.waitReplicas = redisWaitReplicas
            redis.waitTimeoutMilliseconds = redisWaitTimeoutMs
            redis.acknowledgementTimeoutMilliseconds = redisAckTimeoutMs
            return try RedisSink(config: redis, logger: logger)
        case "http":
            var http = HTTPSinkConfig(url: webhookUrl!)
            http.deadLetterURL = dlqTopic
            http.headers = webhookHeader
            http.concurrency = webhookConcurrency
            http.timeoutMilliseconds = webhookTimeoutMs
            http.caFile = webhookCaFile
            if let file = webhookSecretFile {
                guard let key = FileManager.default.contents(atPath: file), !key.isEmpty else {
                    throw SinkError("--webhook-secret-file \(file) cannot be read or is empty")
                }
                // A trailing newline (echo secret > file) is not part of the key.
                var bytes = [UInt8](key)
                while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
                http.signingKey = bytes
            }
            return try HTTPSink(config: http, logger: logger)
        default: return try NDJSONSink.file(path: String(sink.dropFirst(5)))
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

    @Option(help: "Topic template; {aggregatetype} and {type} are replaced by the row's values (unused when --route-topic-regex or --route-topic-replacement is set).")
    var topicTemplate = "outbox.event.{aggregatetype}"

    @Option(help: ArgumentHelp("Debezium's route.topic.regex, applied to the routing column's value (Java syntax; default (?<routedByValue>.*)).", valueName: "regex"))
    var routeTopicRegex: String?

    @Option(
        help: ArgumentHelp(
            "Debezium's route.topic.replacement: $n and ${name} name the regex's groups (default outbox.event.${routedByValue}). Set either to route as Debezium does instead of --topic-template.",
            valueName: "replacement"))
    var routeTopicReplacement: String?

    @Option(
        help: ArgumentHelp(
            "What a NULL payload becomes: tombstone (a record with a null value, as Debezium) or json-null (the 4-byte value null).", valueName: "tombstone|json-null"))
    var nullPayload = "tombstone"

    @Flag(help: ArgumentHelp("Accepted for compatibility: NULL payloads are tombstones by default (--null-payload).", visibility: .hidden))
    var tombstones = false

    @Flag(help: "An empty or blank payload is a tombstone too (Debezium's route.tombstone.on.empty.payload).")
    var tombstoneOnEmptyPayload = false

    @Option(help: ArgumentHelp("string (Kafka Connect's StringConverter: the payload as stored) or json (JsonConverter with schemas.enable=false).", valueName: "string|json"))
    var valueEncoding = "string"

    @Flag(help: "With --value-encoding json, write a JSON payload as JSON rather than as a string holding it (Debezium's table.expand.json.payload).")
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
                "--table must be schema.table or table, either part double-quoted when it holds dots, capitals or quotes (\"Sales\".\"Outbox\"), got \"\(table)\"")
        }
        for spec in headerColumns where spec.isEmpty || spec.hasPrefix(":") || spec.hasSuffix(":") {
            throw ValidationError("--header-column must be column or column:header, got \"\(spec)\"")
        }
        if !["tombstone", "json-null"].contains(nullPayload) { throw ValidationError("--null-payload must be tombstone or json-null, got \"\(nullPayload)\"") }
        if RoutingConfig.ValueEncoding(rawValue: valueEncoding) == nil { throw ValidationError("--value-encoding must be string or json, got \"\(valueEncoding)\"") }
        if !["ignore", "optional_bytes"].contains(jsonPayloadNullBehavior) {
            throw ValidationError("--json-payload-null-behavior must be ignore or optional_bytes, got \"\(jsonPayloadNullBehavior)\"")
        }
        if RoutingConfig.InvalidOperation(rawValue: updateBehavior) == nil { throw ValidationError("--update-behavior must be warn, error or fatal, got \"\(updateBehavior)\"") }
        for spec in additionalFields {
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
            guard (2...3).contains(parts.count), !parts.contains(where: \.isEmpty) else {
                throw ValidationError("--additional-field must be column:header, column:envelope or either with :alias, got \"\(spec)\"")
            }
            if parts[1] == "partition" {
                throw ValidationError("--additional-field \"\(spec)\": partition placement is not supported (the key chooses the partition; the relay never sets one)")
            }
            guard parts[1] == "header" || parts[1] == "envelope" else {
                throw ValidationError("--additional-field \"\(spec)\": the placement must be header or envelope, got \"\(parts[1])\"")
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
            if parts[1] == "envelope" { routing.envelopeColumns.append(field) } else { routing.headerColumns.append(field) }
        }
        routing.topicTemplate = topicTemplate
        if routeTopicRegex != nil || routeTopicReplacement != nil {
            routing.topicRoute = TopicRoute(
                regex: routeTopicRegex ?? TopicRoute.debeziumDefault.regex, replacement: routeTopicReplacement ?? TopicRoute.debeziumDefault.replacement)
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
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical") }
        if StructuredLogHandler.Format(rawValue: logFormat) == nil { throw ValidationError("--log-format must be logfmt, json or text") }
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
    @Option(help: ArgumentHelp("Serve /healthz, /readyz and /metrics on this address (off unless set; e.g. 127.0.0.1:9187, or 0.0.0.0:9187 in a pod).", valueName: "host:port"))
    var httpAddress: String?

    typealias Address = (host: String, port: Int)

    func validate() throws {
        if let httpAddress, Self.split(httpAddress) == nil { throw ValidationError("--http-address must be host:port with a port from 0 to 65535, got \"\(httpAddress)\"") }
    }

    /// The validated address, if the endpoints are on.
    var address: Address? { httpAddress.flatMap(Self.split) }

    static func split(_ value: String) -> Address? {
        guard let colon = value.lastIndex(of: ":") else { return nil }
        var host = String(value[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(value[value.index(after: colon)...]), (0...65535).contains(port) else { return nil }
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
