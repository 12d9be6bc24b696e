import ArgumentParser
import Foundation
import KafkaSink
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication

/// How every command's options can be set besides flags (shown by `--help`).
let configurationHelp = """
    Every option can also be set as an environment variable OUTBOX_RELAY_<OPTION> (--kafka-brokers: \
    OUTBOX_RELAY_KAFKA_BROKERS; -X: OUTBOX_RELAY_KAFKA_PROPERTY, one per line), read from a file named by \
    OUTBOX_RELAY_<OPTION>_FILE (for secrets: OUTBOX_RELAY_SOURCE_FILE, OUTBOX_RELAY_KAFKA_PROPERTIES_FILE), or \
    written as `option = value` in a config file given with --config PATH (or OUTBOX_RELAY_CONFIG). The command \
    line wins over the environment, which wins over the config file. Values are never logged.
    """

@main
struct OutboxRelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract:
            "Relays transactional-outbox events from PostgreSQL's log to a broker, confirming only what the broker acknowledged.",
        discussion: configurationHelp,
        subcommands: [
            Run.self, Poll.self, Doctor.self, Status.self, Tail.self, Init.self, RecreateSlot.self, Skip.self,
            MetricsReference.self,
        ]
    )

    /// Merges environment and config file into the arguments, then parses and runs.
    static func main() async {
        let sources: ConfigurationSources
        do {
            sources = try ConfigurationSources(
                arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment,
                catalog: ConfigurationSources.Catalog(of: OutboxRelayCommand.self))
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            Foundation.exit(64)
        }
        do {
            var command = try parseAsRoot(sources.arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .validationFailure, !sources.origins.isEmpty {
                let message = Self.message(for: error)
                let note = sources.originNote(for: message)
                if !note.isEmpty {
                    FileHandle.standardError.write(Data("Error: \(message)\(note)\n".utf8))
                    Foundation.exit(code.rawValue)
                }
            }
            exit(withError: error)
        }
    }
}

/// Exit codes: 0 stopped on request; 1 a fatal relay error (named on stderr); 64 bad usage.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream outbox events from a logical replication slot to a sink.",
        discussion: """
            Every committed insert into the outbox table (and every transactional logical message with the \
            message prefix) becomes one event, in commit order. Deletes, updates and truncates of the outbox \
            table never become events. The slot is confirmed only up to what the sink acknowledged, so a \
            restart resumes right after the last acknowledged event (at-least-once).

            Exit codes: 0 stopped on request (or --end-lsn reached), 1 a fatal error (named on stderr), \
            64 invalid options.

            """ + configurationHelp
    )

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot (pgoutput).")
    var slot = "outbox_slot"

    @Option(help: "Publication that publishes the outbox table.")
    var publication = "outbox_pub"

    @Flag(
        help: "Create the slot and the publication (inserts only) if missing, on first connect only.")
    var createSlot = false

    @Flag(
        help:
            "On PostgreSQL 17+, keep the slot an ordinary slot: by default it is created as (or turned into) a failover slot, which standbys with sync_replication_slots keep in step."
    )
    var noFailoverSlot = false

    @OptionGroup(title: "Sink") var sinkOptions: SinkOptions
    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions

    @Option(
        help: "Most events in flight (sent, not yet acknowledged) before the relay stops reading.")
    var maxInFlight = 10_000

    @Option(help: "Most key+value bytes in flight before the relay stops reading.")
    var maxInFlightBytes = 64 << 20

    @Option(
        help:
            "Interval of standby status updates to PostgreSQL, in milliseconds; never longer than half the server's wal_sender_timeout."
    )
    var statusIntervalMs = 10_000

    @Option(
        help: ArgumentHelp(
            "Nothing received from PostgreSQL for this long (a ping goes out at half of it) means the connection is dead: reconnect. Default: the server's wal_sender_timeout (60000 when that is 0); 0 never.",
            valueName: "ms"))
    var receiveTimeoutMs: Int?

    @Option(help: "How long shutdown waits for the sink's acknowledgements, in milliseconds.")
    var shutdownTimeoutMs = 10_000

    @Option(
        help: ArgumentHelp(
            "Stop (exit 0) once everything up to this LSN is confirmed, like pg_recvlogical --endpos.",
            valueName: "X/Y"))
    var endLsn: String?

    @OptionGroup(title: "Logging") var logOptions: LogOptions
    @OptionGroup(title: "Health and metrics") var httpOptions: HTTPOptions

    func validate() throws {
        if let problem = ReplicationOptions.validateSlotName(slot) {
            throw ValidationError("--slot: \(problem)")
        }
        if publication.isEmpty { throw ValidationError("--publication must not be empty") }
        if maxInFlight < 1 { throw ValidationError("--max-in-flight must be at least 1") }
        if maxInFlightBytes < 1024 {
            throw ValidationError("--max-in-flight-bytes must be at least 1024")
        }
        if statusIntervalMs < 100 { throw ValidationError("--status-interval-ms must be at least 100") }
        if let receiveTimeoutMs, receiveTimeoutMs < 0 || (receiveTimeoutMs > 0 && receiveTimeoutMs < 1_000) {
            throw ValidationError("--receive-timeout-ms must be 0 (never) or at least 1000")
        }
        if shutdownTimeoutMs < 0 { throw ValidationError("--shutdown-timeout-ms must not be negative") }
        if let endLsn, LSN(string: endLsn) == nil {
            throw ValidationError("--end-lsn must be an LSN like 0/16B3748, got \"\(endLsn)\"")
        }
    }

    func run() async throws {
        let logger = logOptions.bootstrap()
        let signals = StartupSignals(logger: logger)
        let source = database.resolved()!
        var replication = ReplicationOptions(
            conninfo: source, slot: slot, publication: publication, table: routingOptions.splitTable(),
            createSlot: createSlot)
        replication.messages = true
        replication.failoverSlot = !noFailoverSlot
        var config = RelayConfig(replication: replication, routing: routingOptions.routing())
        config.maxInFlightEvents = maxInFlight
        config.maxInFlightBytes = maxInFlightBytes
        config.statusIntervalMilliseconds = statusIntervalMs
        config.receiveTimeoutMilliseconds = receiveTimeoutMs
        config.shutdownTimeoutMilliseconds = shutdownTimeoutMs
        config.endLSN = endLsn.flatMap { LSN(string: $0) }

        let eventSink: any EventSink
        do {
            var transactionalID: String?
            if sinkOptions.kafkaTransactionalId == "auto" {
                // The system identifier survives a failover to a physical standby, so the
                // relay on a promoted server fences the one that may still run on the old.
                let connection = try PGConnection(conninfo: source, replication: true)
                let system = try connection.query("IDENTIFY_SYSTEM")[0, "systemid"] ?? "unknown"
                transactionalID = "outbox-relay-\(system)-\(slot)"
            }
            eventSink = try await sinkOptions.connectSink(logger: logger, transactionalID: transactionalID)
        } catch {
            logger.critical("\(error)")
            throw ExitCode(error is KafkaConfigurationError ? 64 : 1)
        }
        let metrics = MetricsExporter(mode: "run", slot: slot)
        let relay = Relay(config: config, sink: eventSink, logger: logger, latencyObserver: metrics)
        logger.info(
            "starting",
            metadata: [
                "source": "\(Conninfo.redacted(source))", "slot": "\(slot)", "publication": "\(publication)",
                "sink": "\(eventSink.name)",
            ])
        do {
            try await runServices(
                relay: relay, metrics: metrics, http: httpOptions.address, signals: signals, logger: logger)
        } catch {
            logger.critical("relay stopped: \(error)")
            throw ExitCode(1)
        }
    }
}
