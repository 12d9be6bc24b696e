import ArgumentParser
import Dispatch
import Foundation
import Logging
import KafkaSink
import OutboxRelay
import PGOutput
import PostgresReplication

@main
struct OutboxRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract: "Relays transactional-outbox events from PostgreSQL's log to a broker, confirming only what the broker acknowledged.",
        subcommands: [Run.self]
    )
}

/// Exit codes: 0 stopped on request; 1 a fatal relay error (named on stderr); 64 bad usage.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream outbox events from a logical replication slot to a sink.",
        discussion: """
            Every committed insert into the outbox table (and every transactional logical message with the \
            message prefix) becomes one event, in commit order. Deletes, updates and truncates of the outbox \
            table never become events. The slot is confirmed only up to what the sink acknowledged, so a \
            restart resumes right after the last acknowledged event (at-least-once).
            """
    )

    @Option(help: ArgumentHelp("libpq connection string or URI of the database (never logged). Defaults to $OUTBOX_RELAY_SOURCE.", valueName: "conninfo"))
    var source: String?

    @Option(help: "Logical replication slot (pgoutput).")
    var slot = "outbox_slot"

    @Option(help: "Publication that publishes the outbox table.")
    var publication = "outbox_pub"

    @Flag(help: "Create the slot and the publication (inserts only) if missing, on first connect only.")
    var createSlot = false

    @Option(help: ArgumentHelp("Where events go: kafka, stdout, or file:PATH (appends NDJSON; acknowledged after fsync).", valueName: "sink"))
    var sink = "stdout"

    @Option(help: ArgumentHelp("Kafka bootstrap servers (with --sink kafka).", valueName: "host:port,…"))
    var kafkaBrokers: String?

    @Option(name: .customShort("X"), help: ArgumentHelp("A librdkafka property, e.g. -X compression.type=zstd (repeatable; TLS and SASL too; secret values are never logged).", valueName: "key=value"))
    var kafkaProperties: [String] = []

    @Option(help: ArgumentHelp("Kafka topic for events that can never be delivered as they are (too large, invalid topic, unauthorized) and rows that cannot become events. Without it such an event stops the relay.", valueName: "topic"))
    var dlqTopic: String?

    @Option(help: ArgumentHelp("The outbox table.", valueName: "schema.table"))
    var table = "public.outbox"

    @Option(help: "Column holding the event id (header id).") var idColumn = "id"
    @Option(help: "Column holding the route (topic template {aggregatetype}).") var aggregateTypeColumn = "aggregatetype"
    @Option(help: "Column holding the key.") var aggregateIdColumn = "aggregateid"
    @Option(help: "Column holding the event type (header type).") var typeColumn = "type"
    @Option(help: "Column holding the payload (jsonb, json, text or bytea).") var payloadColumn = "payload"
    @Option(help: "JSON object column whose members become headers; empty for none.") var headersColumn = "headers"

    @Option(name: .customLong("header-column"), help: ArgumentHelp("Also send this column as a header (repeatable).", valueName: "column[:header]"))
    var headerColumns: [String] = []

    @Option(help: "Topic template; {aggregatetype} and {type} are replaced by the row's values.")
    var topicTemplate = "outbox.event.{aggregatetype}"

    @Flag(help: "A NULL payload becomes a tombstone (key, null value). Without it, an event with a null payload.")
    var tombstones = false

    @Option(help: "Prefix of transactional logical messages that are events; empty to ignore messages.")
    var messagePrefix = "outbox"

    @Option(help: "Most events in flight (sent, not yet acknowledged) before the relay stops reading.")
    var maxInFlight = 10_000

    @Option(help: "Most key+value bytes in flight before the relay stops reading.")
    var maxInFlightBytes = 64 << 20

    @Option(help: "Interval of standby status updates to PostgreSQL, in milliseconds.")
    var statusIntervalMs = 10_000

    @Option(help: "How long shutdown waits for the sink's acknowledgements, in milliseconds.")
    var shutdownTimeoutMs = 10_000

    @Option(help: ArgumentHelp("Stop (exit 0) once everything up to this LSN is confirmed, like pg_recvlogical --endpos.", valueName: "X/Y"))
    var endLsn: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    func validate() throws {
        if resolvedSource() == nil { throw ValidationError("--source is required (or set OUTBOX_RELAY_SOURCE)") }
        if let source = resolvedSource(), let problem = Conninfo.validate(source) { throw ValidationError("--source: \(problem)") }
        if let problem = ReplicationOptions.validateSlotName(slot) { throw ValidationError("--slot: \(problem)") }
        if publication.isEmpty { throw ValidationError("--publication must not be empty") }
        if splitTable() == nil { throw ValidationError("--table must be schema.table or table, got \"\(table)\"") }
        if sink != "stdout" && sink != "kafka" && !(sink.hasPrefix("file:") && sink.count > 5) { throw ValidationError("--sink must be kafka, stdout or file:PATH, got \"\(sink)\"") }
        if sink == "kafka" && (kafkaBrokers ?? "").isEmpty { throw ValidationError("--sink kafka needs --kafka-brokers") }
        if sink != "kafka" && (kafkaBrokers != nil || !kafkaProperties.isEmpty || dlqTopic != nil) {
            throw ValidationError("--kafka-brokers, -X and --dlq-topic apply only to --sink kafka")
        }
        for property in kafkaProperties where !property.contains("=") || property.hasPrefix("=") {
            throw ValidationError("-X takes key=value, got \"\(property.split(separator: "=").first ?? "")…\"")
        }
        if let dlqTopic, let problem = OutboxRouter.topicProblem(dlqTopic) { throw ValidationError("--dlq-topic: \(problem)") }
        if maxInFlight < 1 { throw ValidationError("--max-in-flight must be at least 1") }
        if maxInFlightBytes < 1024 { throw ValidationError("--max-in-flight-bytes must be at least 1024") }
        if statusIntervalMs < 100 { throw ValidationError("--status-interval-ms must be at least 100") }
        if let endLsn, LSN(string: endLsn) == nil { throw ValidationError("--end-lsn must be an LSN like 0/16B3748, got \"\(endLsn)\"") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical") }
        for problem in routing().validate() { throw ValidationError(problem) }
        for spec in headerColumns where spec.isEmpty || spec.hasPrefix(":") || spec.hasSuffix(":") {
            throw ValidationError("--header-column must be column or column:header, got \"\(spec)\"")
        }
    }

    func resolvedSource() -> String? { source ?? ProcessInfo.processInfo.environment["OUTBOX_RELAY_SOURCE"] }

    func splitTable() -> (schema: String, name: String)? {
        let parts = table.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1 where !parts[0].isEmpty: return ("public", parts[0])
        case 2 where !parts[0].isEmpty && !parts[1].isEmpty: return (parts[0], parts[1])
        default: return nil
        }
    }

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
            return RoutingConfig.HeaderColumn(column: parts[0], header: parts.count > 1 ? parts[1] : parts[0])
        }
        routing.topicTemplate = topicTemplate
        routing.tombstones = tombstones
        routing.messagePrefix = messagePrefix.isEmpty ? nil : messagePrefix
        return routing
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "outbox-relay")
        let source = resolvedSource()!
        var replication = ReplicationOptions(conninfo: source, slot: slot, publication: publication, table: splitTable(), createSlot: createSlot)
        replication.messages = true
        var config = RelayConfig(replication: replication, routing: routing())
        config.maxInFlightEvents = maxInFlight
        config.maxInFlightBytes = maxInFlightBytes
        config.statusIntervalMilliseconds = statusIntervalMs
        config.shutdownTimeoutMilliseconds = shutdownTimeoutMs
        config.endLSN = endLsn.flatMap { LSN(string: $0) }

        let eventSink: any EventSink
        do {
            switch sink {
            case "stdout": eventSink = NDJSONSink.stdout()
            case "kafka":
                var kafka = KafkaSinkConfig(brokers: kafkaBrokers!)
                kafka.properties = kafkaProperties.map { property in
                    let parts = property.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                    return (parts[0], parts[1])
                }
                kafka.deadLetterTopic = dlqTopic
                eventSink = try KafkaSink(config: kafka, logger: logger)
            default: eventSink = try NDJSONSink.file(path: String(sink.dropFirst(5)))
            }
        } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        let relay = Relay(config: config, sink: eventSink, logger: logger)
        signal(SIGPIPE, SIG_IGN)
        let signals = [SIGINT, SIGTERM].map { number -> DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                logger.notice("signal received; stopping", metadata: ["signal": "\(number == SIGINT ? "SIGINT" : "SIGTERM")"])
                relay.stop()
            }
            source.resume()
            return source
        }
        defer { signals.forEach { $0.cancel() } }

        logger.info("starting", metadata: ["source": "\(Conninfo.redacted(source))", "slot": "\(slot)", "publication": "\(publication)", "sink": "\(eventSink.name)"])
        do {
            try relay.run()
        } catch {
            logger.critical("relay stopped: \(error)")
            throw ExitCode(1)
        }
    }
}
