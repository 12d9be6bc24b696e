import ArgumentParser
import Foundation
import Logging
import OutboxRelay
import PGOutput
import PostgresReplication

@main
struct OutboxRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-relay",
        abstract:
            "Relays transactional-outbox events from PostgreSQL's log to a broker, confirming only what the broker acknowledged.",
        subcommands: [Run.self, Poll.self]
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

    @OptionGroup(title: "Database") var database: SourceOptions

    @Option(help: "Logical replication slot (pgoutput).")
    var slot = "outbox_slot"

    @Option(help: "Publication that publishes the outbox table.")
    var publication = "outbox_pub"

    @Flag(
        help: "Create the slot and the publication (inserts only) if missing, on first connect only.")
    var createSlot = false

    @OptionGroup(title: "Sink") var sinkOptions: SinkOptions
    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions

    @Option(
        help: "Most events in flight (sent, not yet acknowledged) before the relay stops reading.")
    var maxInFlight = 10_000

    @Option(help: "Most key+value bytes in flight before the relay stops reading.")
    var maxInFlightBytes = 64 << 20

    @Option(help: "Interval of standby status updates to PostgreSQL, in milliseconds.")
    var statusIntervalMs = 10_000

    @Option(help: "How long shutdown waits for the sink's acknowledgements, in milliseconds.")
    var shutdownTimeoutMs = 10_000

    @Option(
        help: ArgumentHelp(
            "Stop (exit 0) once everything up to this LSN is confirmed, like pg_recvlogical --endpos.",
            valueName: "X/Y"))
    var endLsn: String?

    @OptionGroup(title: "Logging") var logOptions: LogOptions

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
        if shutdownTimeoutMs < 0 { throw ValidationError("--shutdown-timeout-ms must not be negative") }
        if let endLsn, LSN(string: endLsn) == nil {
            throw ValidationError("--end-lsn must be an LSN like 0/16B3748, got \"\(endLsn)\"")
        }
    }

    func run() throws {
        let logger = logOptions.bootstrap()
        let source = database.resolved()!
        var replication = ReplicationOptions(
            conninfo: source, slot: slot, publication: publication, table: routingOptions.splitTable(),
            createSlot: createSlot)
        replication.messages = true
        var config = RelayConfig(replication: replication, routing: routingOptions.routing())
        config.maxInFlightEvents = maxInFlight
        config.maxInFlightBytes = maxInFlightBytes
        config.statusIntervalMilliseconds = statusIntervalMs
        config.shutdownTimeoutMilliseconds = shutdownTimeoutMs
        config.endLSN = endLsn.flatMap { LSN(string: $0) }

        let eventSink: any EventSink
        do { eventSink = try sinkOptions.makeSink(logger: logger) } catch {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
        let relay = Relay(config: config, sink: eventSink, logger: logger)
        let signals = installStopSignals(logger: logger) { relay.stop() }
        defer { signals.forEach { $0.cancel() } }

        logger.info(
            "starting",
            metadata: [
                "source": "\(Conninfo.redacted(source))", "slot": "\(slot)",
                "publication": "\(publication)", "sink": "\(eventSink.name)",
            ])
        do {
            try relay.run()
        } catch {
            logger.critical("relay stopped: \(error)")
            throw ExitCode(1)
        }
    }
}
