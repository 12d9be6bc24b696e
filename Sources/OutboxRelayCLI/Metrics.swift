import Foundation
import OutboxCore
import OutboxRelay
import PGOutput

/// The relay's counters in the Prometheus text exposition format (0.0.4).
enum PrometheusText {
    static func render(_ stats: RelayStats, mode: String, slot: String?, nowMicros: Int64) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            out += "# HELP outbox_relay_\(name) \(help)\n# TYPE outbox_relay_\(name) \(type)\n"
            for sample in samples { out += "outbox_relay_\(name)\(sample.labels) \(sample.value)\n" }
        }
        func single(_ name: String, _ type: String, _ help: String, _ value: some CustomStringConvertible) {
            metric(name, type, help, [("", "\(value)")])
        }
        let states: [RelayStats.State] = [.starting, .connecting, .streaming, .standby, .reconnecting, .stopping, .stopped, .failed]
        metric(
            "state", "gauge", "1 for the current state (\(mode) mode).",
            states.map { (#"{state="\#($0.rawValue)"}"#, $0 == stats.state ? "1" : "0") })
        single("ready", "gauge", "1 when streaming and the sink is delivering (what /readyz reports).", stats.isReady(nowMilliseconds: Relay.nowMilliseconds()) ? 1 : 0)
        metric(
            "events_published_total", "counter", "Events handed to the sink, by topic.",
            stats.eventsByTopic.sorted { $0.key < $1.key }.map { (#"{topic="\#(escape($0.key))"}"#, "\($0.value)") })
        single("events_acknowledged_total", "counter", "Events (and dead-letter records) the sink acknowledged.", stats.eventsAcknowledged)
        single("tombstones_total", "counter", "Tombstones published (NULL payload with --tombstones).", stats.tombstones)
        single("dead_lettered_total", "counter", "Rows and events sent to the dead-letter destination.", stats.deadLettered)
        metric(
            "suppressed_changes_total", "counter", "Changes to the outbox table that never become events.",
            [(#"{kind="delete"}"#, "\(stats.suppressedDeletes)"), (#"{kind="update"}"#, "\(stats.suppressedUpdates)"), (#"{kind="truncate"}"#, "\(stats.suppressedTruncates)")])
        single("transactions_total", "counter", "Transactions received (run) or batches completed (poll).", stats.transactions)
        single("ignored_messages_total", "counter", "Logical messages with another prefix.", stats.ignoredMessages)
        single("non_transactional_messages_total", "counter", "Non-transactional logical messages with the outbox prefix (never events).", stats.nonTransactionalMessages)
        single("reconnects_total", "counter", "Reconnections to PostgreSQL after a retryable failure.", stats.reconnects)
        single("status_updates_total", "counter", "Standby status updates sent to PostgreSQL.", stats.statusUpdates)
        if mode == "poll" {
            single("polls_total", "counter", "Claim queries run.", stats.polls)
        }
        single("in_flight_events", "gauge", "Events sent and not yet acknowledged.", stats.inFlightEvents)
        single("header_members_dropped_total", "counter", "Members of the headers column dropped because they used a header name the relay sets itself (id, type, lsn, extra columns).", stats.droppedHeaderMembers)
        single("in_flight_bytes", "gauge", "Key and value bytes of those events.", stats.inFlightBytes)
        if mode == "run" {
            single("confirmed_lsn", "gauge", "The flush LSN confirmed to PostgreSQL, as a number.", stats.confirmedLSN.rawValue)
            single("received_lsn", "gauge", "The newest LSN received from PostgreSQL.", stats.receivedLSN.rawValue)
            single("server_wal_end_lsn", "gauge", "The server's WAL end as last reported by the walsender.", stats.serverWALEnd.rawValue)
            single("replication_lag_bytes", "gauge", "Server WAL end minus the confirmed LSN.", stats.lagBytes)
            single(
                "replication_lag_seconds", "gauge", "Seconds since the commit of the oldest transaction not yet acknowledged (0 when caught up).",
                String(format: "%.3f", stats.lagSeconds(nowMicros: nowMicros)))
            let statuses = ["reserved", "extended", "unreserved", "lost"]
            metric(
                "slot_wal_status", "gauge", "1 for the slot's wal_status in pg_replication_slots\(slot.map { " (slot \($0))" } ?? "").",
                statuses.map { (#"{wal_status="\#($0)"}"#, $0 == stats.slotWALStatus ? "1" : "0") })
            single("slot_failover", "gauge", "1 when the slot is a failover slot (PostgreSQL 17+), kept in step on standbys with sync_replication_slots.", stats.slotFailover ? 1 : 0)
            single("slot_synced", "gauge", "1 when the slot is a standby's synchronized copy of a failover slot (PostgreSQL 17+).", stats.slotSynced ? 1 : 0)
            if let reason = stats.slotInvalidation {
                metric(
                    "slot_invalidated", "gauge", "1 with the server's reason once it invalidated the slot (PostgreSQL 16+).",
                    [(#"{reason="\#(reason.replacingOccurrences(of: "\"", with: "'"))"}"#, "1")])
            }
            if let safe = stats.slotSafeWALSize {
                single("slot_safe_wal_size_bytes", "gauge", "WAL that can still be written before the slot risks invalidation (max_slot_wal_keep_size).", safe)
            }
        }
        histogram("publish_latency_seconds", "From sending a transaction's first event to the sink to each event's acknowledgement.", stats.publishLatency)
        histogram("commit_to_publish_latency_seconds", "From the transaction's commit timestamp to each event's acknowledgement by the sink.", stats.commitToPublishLatency)
        return out

        func histogram(_ name: String, _ help: String, _ h: LatencyHistogram) {
            out += "# HELP outbox_relay_\(name) \(help)\n# TYPE outbox_relay_\(name) histogram\n"
            var cumulative = 0
            for (i, bound) in LatencyHistogram.bounds.enumerated() {
                cumulative += h.counts[i]
                out += "outbox_relay_\(name)_bucket{le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "outbox_relay_\(name)_bucket{le=\"+Inf\"} \(h.count)\n"
            out += "outbox_relay_\(name)_sum \(String(format: "%.6f", h.sum))\n"
            out += "outbox_relay_\(name)_count \(h.count)\n"
        }
    }

    /// The conventional `process_*` metrics (CPU seconds, resident and
    /// virtual memory, open descriptors), read from /proc/self.
    static func processMetrics() -> String {
        var out = ""
        var usage = rusage()
        if getrusage(RUSAGE_SELF.rawValue, &usage) == 0 {
            let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            out += "# HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\n"
            out += "process_cpu_seconds_total \(String(format: "%.3f", cpu))\n"
        }
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) {
            let pages = statm.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
            if pages.count >= 2 {
                out += "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n"
                out += "process_resident_memory_bytes \(pages[1] * pageSize)\n"
                out += "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n# TYPE process_virtual_memory_bytes gauge\n"
                out += "process_virtual_memory_bytes \(pages[0] * pageSize)\n"
            }
        }
        if let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            out += "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\n"
            out += "process_open_fds \(descriptors.count)\n"
        }
        return out
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
