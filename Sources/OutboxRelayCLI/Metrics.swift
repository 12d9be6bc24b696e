import ArgumentParser
import Foundation
import OutboxCore
import OutboxRelay
import Prometheus
import Synchronization

/// The relay's metrics, exposed through swift-prometheus's registry (text
/// format 0.0.4: escaping, families, histogram layout are the library's).
///
/// Counters and gauges are copied from a `RelayStats` snapshot at each scrape:
/// the relay's thread keeps plain integers and takes no lock per event for
/// them. The two latency histograms are recorded as events are acknowledged
/// (`LatencyObserver`), since a histogram cannot be set from a snapshot.
/// Scrapes are serialized, so a reset-and-increment of a counter is never seen
/// half done.
final class MetricsExporter: LatencyObserver {
    static let latencyBuckets: [Double] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
    ]
    private static let states: [RelayStats.State] = [
        .starting, .connecting, .streaming, .standby, .reconnecting, .stopping, .stopped, .failed,
    ]
    private static let walStatuses = ["reserved", "extended", "unreserved", "lost"]

    private let registry = PrometheusCollectorRegistry()
    private let mode: String
    private let slot: String?
    private let started = Date()
    private let publishLatency: ValueHistogram
    private let commitToPublishLatency: ValueHistogram
    /// Metrics whose label values appear at run time (topics, an invalidation reason).
    private struct Dynamic {
        var topics: [String: Counter] = [:]
        var invalidation: (reason: String, gauge: Gauge)?
        var safeWALSize: Gauge?
    }
    private let scrape = Mutex(Dynamic())

    init(mode: String, slot: String?) {
        self.mode = mode
        self.slot = slot
        publishLatency = registry.makeValueHistogram(
            descriptor: Self.name(
                "outbox_relay_publish_latency_seconds",
                "From sending a transaction's first event to the sink to each event's acknowledgement."),
            buckets: Self.latencyBuckets)
        commitToPublishLatency = registry.makeValueHistogram(
            descriptor: Self.name(
                "outbox_relay_commit_to_publish_latency_seconds",
                "From the transaction's commit timestamp to each event's acknowledgement by the sink."),
            buckets: Self.latencyBuckets)
    }

    private static func name(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    func acknowledged(publishSeconds: Double, commitToAcknowledgedSeconds: Double?) {
        publishLatency.record(max(0, publishSeconds))
        if let seconds = commitToAcknowledgedSeconds { commitToPublishLatency.record(max(0, seconds)) }
    }

    /// The exposition for one scrape.
    func render(_ stats: RelayStats) -> [UInt8] {
        scrape.withLock { dynamic in
            update(from: stats, &dynamic)
            return registry.emitToBuffer()
        }
    }

    private func counter(_ name: String, _ help: String, _ value: Int, labels: [(String, String)] = []) {
        let counter = registry.makeCounter(descriptor: Self.name(name, help), labels: labels)
        counter.reset()
        counter.increment(by: Int64(max(0, value)))
    }

    private func gauge(_ name: String, _ help: String, _ value: Double, labels: [(String, String)] = []) {
        registry.makeGauge(descriptor: Self.name(name, help), labels: labels).set(to: value)
    }

    private func gauge(_ name: String, _ help: String, _ value: some BinaryInteger, labels: [(String, String)] = []) {
        gauge(name, help, Double(value), labels: labels)
    }

    private func update(from stats: RelayStats, _ dynamic: inout Dynamic) {
        let p = "outbox_relay_"
        for state in Self.states {
            gauge(
                p + "state", "1 for the current state (\(mode) mode).", state == stats.state ? 1 : 0,
                labels: [("state", state.rawValue)])
        }
        gauge(
            p + "ready", "1 when streaming and the sink is delivering (what /readyz reports).",
            stats.isReady(nowMilliseconds: Relay.nowMilliseconds()) ? 1 : 0)
        gauge(
            p + "sink_reachable", "1 when the sink's destination is reachable as far as it knows.",
            stats.sinkReachable ? 1 : 0)
        gauge(
            p + "longest_turn_milliseconds",
            "The longest the relay thread spent between two waits (a blocked destination shows here).",
            stats.longestTurnMilliseconds)
        for (topic, count) in stats.eventsByTopic {
            let counter =
                dynamic.topics[topic]
                ?? registry.makeCounter(
                    descriptor: Self.name(p + "events_published_total", "Events handed to the sink, by topic."),
                    labels: [("topic", topic)])
            dynamic.topics[topic] = counter
            counter.reset()
            counter.increment(by: Int64(count))
        }
        counter(
            p + "events_acknowledged_total", "Events (and dead-letter records) the sink acknowledged.",
            stats.eventsAcknowledged)
        counter(p + "tombstones_total", "Tombstones published (NULL payload with --tombstones).", stats.tombstones)
        counter(p + "dead_lettered_total", "Rows and events sent to the dead-letter destination.", stats.deadLettered)
        let suppressed = "Changes to the outbox table that never become events."
        counter(p + "suppressed_changes_total", suppressed, stats.suppressedDeletes, labels: [("kind", "delete")])
        counter(p + "suppressed_changes_total", suppressed, stats.suppressedUpdates, labels: [("kind", "update")])
        counter(p + "suppressed_changes_total", suppressed, stats.suppressedTruncates, labels: [("kind", "truncate")])
        counter(
            p + "transactions_total", "Transactions received (run) or batches completed (poll).", stats.transactions)
        counter(p + "ignored_messages_total", "Logical messages with another prefix.", stats.ignoredMessages)
        counter(
            p + "non_transactional_messages_total",
            "Non-transactional logical messages with the outbox prefix (never events).", stats.nonTransactionalMessages)
        counter(p + "reconnects_total", "Reconnections to PostgreSQL after a retryable failure.", stats.reconnects)
        counter(p + "status_updates_total", "Standby status updates sent to PostgreSQL.", stats.statusUpdates)
        counter(
            p + "header_members_dropped_total",
            "Members of the headers column dropped because they used a header name the relay sets itself (id, type, lsn, extra columns).",
            stats.droppedHeaderMembers)
        if mode == "poll" {
            counter(p + "polls_total", "Claim queries run.", stats.polls)
        }
        gauge(p + "in_flight_events", "Events sent and not yet acknowledged.", stats.inFlightEvents)
        gauge(p + "in_flight_bytes", "Key and value bytes of the events in flight.", stats.inFlightBytes)
        if mode == "run" {
            gauge(
                p + "confirmed_lsn", "The flush LSN confirmed to PostgreSQL, as a number.", stats.confirmedLSN.rawValue)
            gauge(p + "received_lsn", "The newest LSN received from PostgreSQL.", stats.receivedLSN.rawValue)
            gauge(
                p + "server_wal_end_lsn", "The server's WAL end as last reported by the walsender.",
                stats.serverWALEnd.rawValue)
            gauge(p + "replication_lag_bytes", "Server WAL end minus the confirmed LSN.", stats.lagBytes)
            gauge(
                p + "replication_lag_seconds",
                "Seconds since the commit of the oldest transaction not yet acknowledged (0 when caught up).",
                stats.lagSeconds(nowMicros: Int64(Date().timeIntervalSince1970 * 1_000_000)))
            let walHelp = "1 for the slot's wal_status in pg_replication_slots\(slot.map { " (slot \($0))" } ?? "")."
            for status in Self.walStatuses {
                gauge(
                    p + "slot_wal_status", walHelp, status == stats.slotWALStatus ? 1 : 0,
                    labels: [("wal_status", status)])
            }
            gauge(
                p + "slot_failover",
                "1 when the slot is a failover slot (PostgreSQL 17+), kept in step on standbys with sync_replication_slots.",
                stats.slotFailover ? 1 : 0)
            gauge(
                p + "slot_synced",
                "1 when the slot is a standby's synchronized copy of a failover slot (PostgreSQL 17+).",
                stats.slotSynced ? 1 : 0)
            if let reason = stats.slotInvalidation, dynamic.invalidation?.reason != reason {
                if let old = dynamic.invalidation { registry.unregisterGauge(old.gauge) }
                let gauge = registry.makeGauge(
                    descriptor: Self.name(
                        p + "slot_invalidated",
                        "1 with the server's reason once it invalidated the slot (PostgreSQL 16+)."),
                    labels: [("reason", reason)])
                gauge.set(to: 1)
                dynamic.invalidation = (reason, gauge)
            }
            if let safe = stats.slotSafeWALSize {
                let gauge =
                    dynamic.safeWALSize
                    ?? registry.makeGauge(
                        descriptor: Self.name(
                            p + "slot_safe_wal_size_bytes",
                            "WAL that can still be written before the slot risks invalidation (max_slot_wal_keep_size)."
                        ))
                dynamic.safeWALSize = gauge
                gauge.set(to: Double(safe))
            }
        }
        gauge(p + "uptime_seconds", "Seconds since the process started.", Date().timeIntervalSince(started))
        processMetrics()
    }

    /// The conventional `process_*` metrics (CPU seconds, resident and
    /// virtual memory, open descriptors), read from /proc/self.
    private func processMetrics() {
        var usage = rusage()
        if getrusage(RUSAGE_SELF.rawValue, &usage) == 0 {
            let cpu =
                Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(
                    usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            let counter = registry.makeCounter(
                descriptor: Self.name("process_cpu_seconds_total", "User and system CPU time spent in seconds."))
            counter.reset()
            counter.increment(by: max(0, cpu))
        }
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
            let pages = statm.split(separator: " ").compactMap {
                Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
            if pages.count >= 2 {
                gauge("process_resident_memory_bytes", "Resident memory size in bytes.", pages[1] * pageSize)
                gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", pages[0] * pageSize)
            }
        }
        if let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            gauge("process_open_fds", "Number of open file descriptors.", descriptors.count)
        }
    }
}

/// `outbox-relay metrics-reference` (hidden): every metric family the binary
/// can export, with its type, labels and help, in both modes — rendered by the
/// exporter itself from a snapshot in which every conditional family is present
/// (a topic, an invalidated slot, a WAL size limit). scripts/reference.py turns
/// it into docs/metrics.md, so that page cannot drift from the binary.
struct MetricsReference: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics-reference",
        abstract: "Print every metric family the binary exports (for docs/metrics.md).",
        shouldDisplay: false)

    func run() throws {
        var stats = RelayStats()
        stats.eventsByTopic = ["outbox.event.order": 1]
        stats.slotInvalidation = "wal_removed"
        stats.slotSafeWALSize = 1
        stats.slotWALStatus = "reserved"
        for mode in ["run", "poll"] {
            let text = String(decoding: MetricsExporter(mode: mode, slot: nil).render(stats), as: UTF8.self)
            print("# MODE \(mode)")
            print(text)
        }
    }
}
