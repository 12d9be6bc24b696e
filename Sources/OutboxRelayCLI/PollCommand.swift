import ArgumentParser
import Foundation
import KafkaSink
import Logging
import OutboxCore
import OutboxRelay
import PollingRelay
import PostgresClient
import PostgresReplication

/// Exit codes as for `run`: 0 stopped on request (or drained with --until-empty); 1 fatal; 64 usage.
struct Poll: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Poll the outbox table instead of tailing the log (fallback where logical replication is not allowed).",
        discussion: """
            Each poll claims up to --batch-size committed rows with SELECT … FOR UPDATE SKIP LOCKED, \
            publishes them, and deletes them (or sets --mark-column) in the same transaction only after the \
            sink acknowledged every one. Several pollers may run at once. Delivery is at-least-once. Order is \
            --order-by order, not commit order: a transaction that commits late can publish after rows \
            written after it, and with several pollers one aggregate's events can interleave.

            """ + configurationHelp
    )

    @OptionGroup(title: "Database") var database: SourceOptions
    @OptionGroup(title: "Sink") var sinkOptions: SinkOptions
    @OptionGroup(title: "Routing") var routingOptions: RoutingOptions

    @Option(help: "Most rows claimed and published per poll.")
    var batchSize = 500

    @Option(help: "Milliseconds between polls when the last poll found fewer than --batch-size rows.")
    var intervalMs = 1_000

    @Option(
        help: ArgumentHelp(
            "Claim rows in this column's order; empty for table order.", valueName: "column"))
    var orderBy = "created_at"

    @Option(
        help: ArgumentHelp(
            "Set this timestamp column to now() on published rows instead of deleting them, and claim only rows where it is NULL.",
            valueName: "column"))
    var markColumn: String?

    @Option(
        help: ArgumentHelp(
            "LISTEN on this channel and poll at once on a NOTIFY (install the trigger in sql/05-polling.sql); the interval stays as a safety net.",
            valueName: "channel"))
    var notifyChannel: String?

    @Flag(help: "Exit 0 after the first poll that finds no row (drain a backlog).")
    var untilEmpty = false

    @Option(
        help:
            "How long shutdown waits for the sink to acknowledge the claimed batch, in milliseconds; then the batch is rolled back and published again later."
    )
    var shutdownTimeoutMs = 10_000

    @Option(
        help:
            "No answer to a query for this long means the connection is dead (a silent network cut): the batch rolls back and the poller reconnects; 0 waits as long as the kernel does."
    )
    var receiveTimeoutMs = 60_000

    @OptionGroup(title: "Logging") var logOptions: LogOptions
    @OptionGroup(title: "Health and metrics") var httpOptions: HTTPOptions

    func config() -> PollingConfig {
        var config = PollingConfig(
            conninfo: database.resolved() ?? "", routing: routingOptions.routing())
        config.batchSize = batchSize
        config.intervalMilliseconds = intervalMs
        config.orderBy = orderBy.isEmpty ? nil : orderBy
        config.markColumn = markColumn
        config.notifyChannel = notifyChannel
        config.stopWhenEmpty = untilEmpty
        config.shutdownTimeoutMilliseconds = shutdownTimeoutMs
        config.receiveTimeoutMilliseconds = receiveTimeoutMs
        return config
    }

    func validate() throws {
        for problem in config().validate() { throw ValidationError(problem) }
        if shutdownTimeoutMs < 0 { throw ValidationError("--shutdown-timeout-ms must not be negative") }
        if receiveTimeoutMs < 0 { throw ValidationError("--receive-timeout-ms must not be negative") }
    }

    func run() async throws {
        let logger = logOptions.bootstrap()
        let signals = StartupSignals(logger: logger)
        let config = config()
        let eventSink: any EventSink
        do { eventSink = try await sinkOptions.connectSink(logger: logger) } catch {
            logger.critical("\(error)")
            throw ExitCode(error is KafkaConfigurationError ? 64 : 1)
        }
        let relay = PollingRelay(config: config, sink: eventSink, logger: logger)
        logger.info(
            "starting",
            metadata: ["source": "\(Conninfo.redacted(config.conninfo))", "mode": "poll", "sink": "\(eventSink.name)"])
        do {
            try await runServices(
                relay: relay, metrics: MetricsExporter(mode: "poll", slot: nil), http: httpOptions.address,
                signals: signals, logger: logger)
        } catch {
            logger.critical("relay stopped: \(error)")
            throw ExitCode(1)
        }
    }
}
