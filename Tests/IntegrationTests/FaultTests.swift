import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication
import Testing

/// The faults that happen in production, against the real binary where a
/// process must die: nothing committed is lost, nothing rolled back appears.
/// `OUTBOX_CRASH_KILLS` (default 20) and `OUTBOX_LARGE_ROWS` (default 100,000)
/// scale the crash loop and the large transaction; scripts/faults.sh runs the
/// long versions.
@Suite(
    "faults: crashes, restarts, lost slots", .serialized,
    .enabled(
        if: CLI.available,
        "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(20)))
struct FaultTests {
    static let environment = ProcessInfo.processInfo.environment
    static let kills = Int(environment["OUTBOX_CRASH_KILLS"] ?? "") ?? 20
    static let largeRows = Int(environment["OUTBOX_LARGE_ROWS"] ?? "") ?? 100_000
    static let largePayloadMB = Int(environment["OUTBOX_LARGE_PAYLOAD_MB"] ?? "") ?? 20
    static let maxInFlight = 500

    static func relayArguments(_ outbox: TestOutbox, sink: [String]) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication, "--table",
            "\(outbox.schema).outbox",
            "--message-prefix", outbox.name, "--max-in-flight", "\(maxInFlight)", "--status-interval-ms", "200",
        ] + sink
    }

    // MARK: 1. Crash anywhere

    @Test(arguments: ["file", "kafka"])
    func sigkillLoopUnderLoadLosesNothing(sink: String) async throws {
        guard sink == "file" || TestKafka.available else { return }
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let topicPrefix = outbox.name
        let sinkArguments =
            sink == "file"
            ? ["--sink", "file:\(file.path)"]
            : [
                "--sink", "kafka", "--kafka-brokers", TestKafka.brokers!, "--topic-template",
                "\(topicPrefix).{aggregatetype}",
            ]
        let arguments = Self.relayArguments(outbox, sink: sinkArguments)
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let (written, last) = try await writers.sigkillLoop(arguments, kills: Self.kills, pauses: 100...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(last.terminate() == 0)

        let events: [(id: String, key: String, seq: Int)]
        if sink == "file" {
            events = try crashEvents(fromFile: file.path)
        } else {
            let records = try TestKafka.read(
                "\(topicPrefix).crash", count: written.committed.count + Self.kills * Self.maxInFlight * 4, seconds: 15)
            events = records.map { record in
                let payload = record.value.flatMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
                return (record.header("id") ?? "", record.key ?? "", payload?["seq"] as? Int ?? -1)
            }
        }
        let check = DeliveryCheck(events: events, written: written)
        print("crash loop (\(sink) sink): \(Self.kills) SIGKILLs; \(check)")
        #expect(written.committed.count > 100)
        #expect(written.errors.count == 0, "\(written.errors.prefix(3))")
        #expect(check.lost.count == 0, "lost, e.g.: \(check.lost.prefix(5))")
        #expect(check.phantoms.count == 0)
        #expect(check.orderViolations.count == 0, "\(check.orderViolations.prefix(5))")
        // Each kill can redeliver at most what was in flight, plus what was acknowledged but not yet reported.
        #expect(check.duplicates <= Self.kills * Self.maxInFlight * 2)
    }

    // MARK: 8. Graceful shutdown

    @Test func sigtermUnderLoadConfirmsWhatWasAcknowledgedAndRestartsWithoutDuplicates() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let arguments = Self.relayArguments(
            outbox, sink: ["--sink", "file:\(file.path)", "--shutdown-timeout-ms", "3000"])
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let first = try CLI.start(arguments)
        try await first.waitForStderr("streaming")
        try await Task.sleep(for: .seconds(1))
        let stopAt = Date()
        #expect(first.terminate() == 0)
        let stopSeconds = Date().timeIntervalSince(stopAt)
        #expect(stopSeconds < 5)
        let before = try crashEvents(fromFile: file.path)
        let lastLSN = try #require(try file.events.last.flatMap { ($0["lsn"] as? String).flatMap { LSN(string: $0) } })
        #expect(try outbox.confirmedFlush > lastLSN, "the last acknowledged transaction is confirmed")

        let second = try CLI.start(arguments)
        try await second.waitForStderr("streaming")
        try await Task.sleep(for: .milliseconds(500))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(second.terminate() == 0)
        let check = DeliveryCheck(events: try crashEvents(fromFile: file.path), written: written)
        print(
            "graceful shutdown: stopped in \(String(format: "%.2f", stopSeconds)) s with \(before.count) events delivered; \(check)"
        )
        #expect(check.lost.count == 0 && check.phantoms.count == 0)
        #expect(check.duplicates == 0, "a graceful stop confirms everything it delivered")
    }

    // MARK: 3. Database restarts

    @Test func databaseRestartsUnderLoadAreRetriedAndLoseNothing() async throws {
        let cluster = try PrivateCluster()
        let outbox = try TestOutbox(conninfo: cluster.conninfo)
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(Self.relayArguments(outbox, sink: ["--sink", "file:\(file.path)"]))
        try await relay.waitForStderr("streaming")
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        for mode in ["fast", "immediate"] {
            try await Task.sleep(for: .seconds(1))
            try cluster.restart(mode: mode)
        }
        try await Task.sleep(for: .seconds(2))
        let written = writers.stop()
        let sql = try cluster.connect()
        let end = LSN(string: try sql.query("SELECT pg_current_wal_lsn() AS l")[0, "l"]!)!
        let deadline = Date().addingTimeInterval(90)
        while LSN(
            string: try sql.query(
                "SELECT confirmed_flush_lsn AS l FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[0, "l"]
                ?? "0/0")! < end
            && Date() < deadline
        {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(relay.process.isRunning, "the relay survives restarts: \(relay.stderr)")
        #expect(relay.terminate() == 0)
        let check = DeliveryCheck(events: try crashEvents(fromFile: file.path), written: written)
        print("database restarts (fast, immediate): \(check); uncertain commits \(written.uncertain.count)")
        #expect(check.lost.count == 0, "lost, e.g.: \(check.lost.prefix(5))")
        #expect(check.phantoms.count == 0)
        #expect(check.orderViolations.count == 0)
        #expect(relay.stderr.contains("reconnecting"))
    }

    // MARK: 3. Slot dropped, slot invalidated, publication altered

    @Test func slotDroppedWhileRunningIsFatalAndNeverRecreated() async throws {
        let outbox = try TestOutbox()
        let running = RunningRelay(config: outbox.config { $0.replication.createSlot = true }, sink: GatedSink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        var dropped = false
        for _ in 0..<100 where !dropped {
            _ = try? outbox.sql.query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)' AND active_pid IS NOT NULL"
            )
            dropped = (try? outbox.sql.query("SELECT pg_drop_replication_slot('\(outbox.slot)')")) != nil
            if !dropped { try await Task.sleep(for: .milliseconds(10)) }
        }
        try #require(dropped)
        guard case .failure(let error)? = await running.ended(within: 20) else {
            Issue.record("the relay did not stop after its slot was dropped")
            return
        }
        #expect(
            "\(error)".contains("replication slot \"\(outbox.slot)\" existed here") && "\(error)".contains("is gone"))
        #expect(
            try outbox.sql.query("SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[
                0, "n"] == "0", "no silent new slot")
    }

    @Test func slotInvalidatedByMaxSlotWalKeepSizeIsFatal() async throws {
        let cluster = try PrivateCluster(["max_slot_wal_keep_size = 1MB"])
        let outbox = try TestOutbox(conninfo: cluster.conninfo)
        try outbox.insert(3)
        for _ in 0..<4 {
            try outbox.insert(1, payload: "{\"pad\": \"\(String(repeating: "x", count: 4000))\"}")
            try outbox.sql.query("SELECT pg_switch_wal()")
        }
        try outbox.sql.query("CHECKPOINT")
        let status = try outbox.sql.query(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[0, "wal_status"]
        try #require(status == "lost", "the slot was not invalidated (wal_status \(status ?? "nil"))")
        let cli = try CLI.start(Self.relayArguments(outbox, sink: ["--sink", "stdout", "--create-slot"]))
        #expect(cli.wait() == 1)
        #expect(
            cli.stderr.contains(
                "is invalidated (wal_removed: PostgreSQL removed WAL it still needed, max_slot_wal_keep_size)"))
        #expect(cli.stdout.isEmpty)
        #expect(
            try outbox.sql.query("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[
                0, "wal_status"] == "lost", "not replaced")
    }

    @Test func publicationAlteredToDropTheTableIsAClearError() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config { $0.publicationCheckMilliseconds = 200 }, sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.insert(1)
        _ = try await file.waitForEvents(1)
        try outbox.sql.query("ALTER PUBLICATION \(outbox.publication) DROP TABLE \(outbox.schema).outbox")
        try outbox.insert(1)
        guard case .failure(let error)? = await running.ended(within: 10) else {
            Issue.record("no error after the table left the publication")
            return
        }
        let text = "\(error)"
        #expect(
            text.contains("does not include table \(outbox.schema).outbox")
                && text.contains("altered while the relay ran"))
    }

    // MARK: 4. Hot standby

    @Test func hotStandbyTakesOverWhenTheActiveRelayIsKilled() async throws {
        let outbox = try TestOutbox()
        let files = [SinkFile(), SinkFile()]
        defer { files.forEach { $0.remove() } }
        let active = try CLI.start(Self.relayArguments(outbox, sink: ["--sink", "file:\(files[0].path)"]))
        try await active.waitForStderr("streaming")
        let standby = try CLI.start(Self.relayArguments(outbox, sink: ["--sink", "file:\(files[1].path)"]))
        try await standby.waitForStderr("hot standby")
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        try await Task.sleep(for: .seconds(1))
        active.kill9()
        let killedAt = Date()
        try await standby.waitForStderr("streaming", within: 15)
        let takeover = Date().timeIntervalSince(killedAt)
        try await Task.sleep(for: .milliseconds(500))
        let written = writers.stop()
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(standby.terminate() == 0)
        let events = try crashEvents(fromFile: files[0].path) + crashEvents(fromFile: files[1].path)
        let check = DeliveryCheck(events: events, written: written)
        print("hot standby: took over \(String(format: "%.1f", takeover)) s after SIGKILL; \(check)")
        #expect(takeover < 5)
        #expect(check.lost.count == 0 && check.phantoms.count == 0)
    }

    // MARK: 7. Large transactions

    @Test func largeTransactionsAreRelayedWithBoundedMemory() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload)
            SELECT 'big', (i % 100)::text, 'Bulk', jsonb_build_object('i', i, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx')
            FROM generate_series(1, \(Self.largeRows)) AS i
            """)
        // A transaction of LARGE_PAYLOAD_MB megabytes of payload, one MiB per row.
        try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload)
            SELECT 'big', 'mb', 'Blob', jsonb_build_object('blob', repeat(md5(i::text), 32768)) FROM generate_series(1, \(Self.largePayloadMB)) AS i
            """)
        let end = try outbox.currentWAL
        let started = Date()
        let cli = try CLI.start(
            Self.relayArguments(outbox, sink: ["--sink", "file:\(file.path)", "--end-lsn", "\(end)"]))
        var peak = 0.0
        while cli.process.isRunning {
            peak = max(peak, cli.peakRSSMiB)
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(cli.wait() == 0, "\(cli.stderr)")
        let seconds = Date().timeIntervalSince(started)
        var lines = 0
        if let data = FileManager.default.contents(atPath: file.path) {
            lines = data.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
        }
        print(
            "large transactions: \(Self.largeRows) rows in one transaction and \(Self.largePayloadMB) MiB of payload in another, relayed in \(String(format: "%.1f", seconds)) s; peak RSS \(String(format: "%.0f", peak)) MiB"
        )
        #expect(lines == Self.largeRows + Self.largePayloadMB)
        // The in-flight bound (64 MiB of payload by default) plus the runtime, not the transaction's size.
        #expect(peak < 200)
    }
}
