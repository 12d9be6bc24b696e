import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import Testing

/// What PostgreSQL saw of the relay while its destination was black-holed.
struct BlackHoleReport: CustomStringConvertible {
    var written: ContinuousWriters.Written
    /// The longest a status update was overdue at a 1 s sample (now − `reply_time`).
    var longestReplyAgeSeconds: Double
    /// The relay thread's longest turn (RelayStats.longestTurnMilliseconds) up to the end of the cut
    /// (the catch-up after it is work, not waiting: turns of up to 4,096 messages).
    var longestTurnMilliseconds: Int
    /// Walsender pids seen for the slot during the cut (one: no session ended).
    var walsenders: Set<String>

    var description: String {
        "longest status-update age \(String(format: "%.1f", longestReplyAgeSeconds)) s, longest relay-thread turn \(longestTurnMilliseconds) ms, walsenders \(walsenders.count)"
    }
}

/// A destination behind `proxy`, which goes silent (nothing forwarded, nothing
/// closed, new connections accepted and never answered) for `seconds` under
/// two writers, then heals. Checks, every second of the cut, that PostgreSQL
/// keeps getting status updates at the relay's 1 s interval, that the
/// replication session does not end, and that nothing written after the cut
/// began is confirmed; after it heals, that the relay catches up. The caller
/// checks what the destination has.
func destinationBlackHole(
    _ outbox: TestOutbox, sink: any EventSink, topicTemplate: String? = nil, proxy: TCPProxy, seconds: Int
) async throws -> BlackHoleReport {
    let running = RunningRelay(
        config: outbox.config {
            if let topicTemplate { $0.routing.topicTemplate = topicTemplate }
            $0.statusIntervalMilliseconds = 1_000
        }, sink: sink)
    try await running.waitFor("streaming") { $0.state == .streaming }
    let writers = ContinuousWriters(
        conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 10_000)
    try await running.waitFor("first deliveries") { $0.eventsAcknowledged > 10 }
    proxy.pause()
    let atCut = try outbox.currentWAL
    var longestAge = 0.0
    var walsenders = Set<String>()
    let query = """
        SELECT r.pid::text AS pid, extract(epoch FROM now() - r.reply_time)::float8::text AS age
        FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
        WHERE s.slot_name = '\(outbox.slot)'
        """
    for _ in 0..<seconds {
        try await Task.sleep(for: .seconds(1))
        let rows = try outbox.sql.query(query)
        if let pid = rows[0, "pid"], let age = rows[0, "age"].flatMap(Double.init) {
            walsenders.insert(pid)
            longestAge = max(longestAge, age)
        } else {
            walsenders.insert("none")
        }
        #expect(try outbox.confirmedFlush <= atCut, "nothing undelivered is confirmed")
    }
    #expect(running.relay.currentStats.state == .streaming, "still streaming from PostgreSQL")
    let longestTurn = running.relay.currentStats.longestTurnMilliseconds
    proxy.resume()
    try await Task.sleep(for: .seconds(2))
    let written = writers.stop()
    let end = try outbox.currentWAL
    try await running.waitFor("caught up", within: 90) { _ in try outbox.confirmedFlush >= end }
    await running.stop()
    let report = BlackHoleReport(
        written: written, longestReplyAgeSeconds: longestAge, longestTurnMilliseconds: longestTurn,
        walsenders: walsenders)
    #expect(
        report.walsenders.count == 1 && !report.walsenders.contains("none"),
        "the replication session never ended: \(report)")
    #expect(report.longestReplyAgeSeconds < 3, "status updates kept coming at the 1 s interval: \(report)")
    #expect(report.longestTurnMilliseconds < 1_000, "the relay thread never blocked: \(report)")
    return report
}

/// SIGTERM to the relay (the binary) while its destination is black-holed:
/// it must exit within `--shutdown-timeout-ms` plus one second, having
/// confirmed nothing written after the cut. Returns how long it took.
func sigtermDuringBlackHole(_ outbox: TestOutbox, arguments: [String], proxy: TCPProxy) async throws -> Double {
    let shutdownTimeout = 3_000
    let cli = try CLI.start(arguments + ["--shutdown-timeout-ms", String(shutdownTimeout)])
    try await cli.waitForStderr("msg=streaming", within: 20)
    let writers = ContinuousWriters(
        conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 10_000)
    try await Task.sleep(for: .seconds(2))
    proxy.pause()
    let atCut = try outbox.currentWAL
    try await Task.sleep(for: .seconds(4))
    let started = Date()
    let code = cli.terminate()
    let took = Date().timeIntervalSince(started)
    _ = writers.stop()
    proxy.resume()
    #expect(code == 0, "exit code \(code): \(cli.stderr.suffix(2_000))")
    #expect(took < Double(shutdownTimeout) / 1_000 + 1, "SIGTERM took \(took) s with the destination black-holed")
    #expect(try outbox.confirmedFlush <= atCut, "nothing undelivered is confirmed")
    return took
}
