import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication
import Synchronization
import Testing

@Suite(
    "relay against PostgreSQL 15", .serialized,
    .enabled(if: TestDatabase.available, "set OUTBOX_TEST_PG (scripts/test.sh does)"),
    .timeLimit(.minutes(3)))
struct RelayIntegrationTests {
    @Test func insertsBecomeEventsInCommitOrderAndNothingElseDoes() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }

        // Two writers interleaved: B commits before A, so B's event comes first.
        let a = try TestDatabase.connect()
        let b = try TestDatabase.connect()
        try a.query("BEGIN")
        try a.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-00000000000a', 'order', '1', 'A', '{}')"
        )
        try b.query("BEGIN")
        try b.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-00000000000b', 'order', '1', 'B', '{}')"
        )
        try b.query("COMMIT")
        try a.query("COMMIT")
        // Rolled back: never an event.
        try a.query("BEGIN")
        try a.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '1', 'RolledBack', '{}')"
        )
        try a.query("ROLLBACK")
        // Insert-then-delete in one transaction: the insert is the event, the delete is not.
        try a.query("BEGIN")
        try a.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-00000000000c', 'order', '1', 'C', '{\"k\": [1]}')"
        )
        try a.query("DELETE FROM \(outbox.schema).outbox")
        try a.query("COMMIT")
        try a.query("UPDATE \(outbox.schema).outbox SET type = 'x'")
        try a.query("INSERT INTO \(outbox.schema).other VALUES (1, 'not an event')")
        // A table-less outbox event (sql/04-emit-message.sql).
        try a.query(
            try String(
                contentsOf: TestDatabase.repository.appendingPathComponent("sql/04-emit-message.sql"),
                encoding: .utf8))
        try a.query(
            "SELECT outbox_emit('invoice', '9', 'Issued', '{\"total\": 5}', '{\"trace\": \"t1\"}', '00000000-0000-0000-0000-00000000000d', '\(outbox.name)')"
        )

        let events = try await file.waitForEvents(4)
        try await Task.sleep(for: .milliseconds(300))
        let final = try file.events
        #expect(final.count == 4)
        #expect(final.map { $0["type"] as? String } == ["B", "A", "C", "Issued"])
        #expect(events[2]["payload"] as? [String: [Int]] == ["k": [1]])
        #expect(events[3]["topic"] as? String == "outbox.event.invoice")
        #expect((events[3]["headers"] as? [String: String])?["trace"] == "t1")
        let lsns = final.compactMap { ($0["lsn"] as? String).flatMap { LSN(string: $0) } }
        #expect(lsns.count == 4 && lsns == lsns.sorted())
        #expect(try await running.stop().get() == ())
    }

    @Test func unicodeToastedAndNullValues() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config { $0.routing.tombstones = true }, sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.insert(payload: #"{"text": "größe ✓ 😀 \\n tab\t", "quote": "a\"b"}"#)
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'big', 'Big', jsonb_build_object('blob', repeat('x', 1500000)))"
        )
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload, headers) VALUES ('order', 'gone', 'Deleted', NULL, NULL)"
        )
        let events = try await file.waitForEvents(3)
        #expect((events[0]["payload"] as? [String: String])?["text"] == "größe ✓ 😀 \\n tab\t")
        #expect((events[0]["payload"] as? [String: String])?["quote"] == "a\"b")
        #expect(((events[1]["payload"] as? [String: String])?["blob"])?.count == 1_500_000)
        #expect(
            events[2]["payload"] is NSNull && events[2]["tombstone"] as? Bool == true
                && events[2]["key"] as? String == "gone")
        await running.stop()
    }

    @Test func alterTableMidStreamIsFollowed() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config {
                $0.routing.headerColumns = [.init(column: "tenant", header: "tenant")]
            }, sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query("ALTER TABLE \(outbox.schema).outbox ADD COLUMN tenant text")
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload, tenant) VALUES ('order', '1', 'WithTenant', '{}', 'acme')"
        )
        try outbox.sql.query("ALTER TABLE \(outbox.schema).outbox DROP COLUMN created_at")
        try outbox.insert()
        let events = try await file.waitForEvents(2)
        #expect((events[0]["headers"] as? [String: String])?["tenant"] == "acme")
        #expect(events[1]["type"] as? String == "Created")
        await running.stop()
    }

    @Test func restartResumesAfterTheConfirmedPositionWithNothingLost() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        var written: [String] = []
        var first = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await first.waitFor("streaming") { $0.state == .streaming }
        for _ in 0..<5 { written += try outbox.insert(20) }
        _ = try await file.waitForEvents(100)
        #expect(try await first.stop().get() == ())
        // Written while no relay runs.
        for _ in 0..<5 { written += try outbox.insert(20) }
        first = RunningRelay(config: outbox.config(), sink: try file.sink())
        let events = try await file.waitForEvents(200)
        try await Task.sleep(for: .milliseconds(300))
        // A clean stop confirmed everything: no duplicates, nothing lost, same order.
        #expect(try file.events.map { $0["id"] as! String } == written)
        #expect(events.count == 200)
        await first.stop()
    }

    @Test func slotIsConfirmedOnlyAfterTheSinkAcknowledged() async throws {
        let outbox = try TestOutbox()
        let sink = GatedSink()
        let running = RunningRelay(config: outbox.config(), sink: sink)
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.insert(3)
        let afterInsert = try outbox.currentWAL
        try await running.waitFor("events sent") { _ in sink.sentCount == 3 }
        // PostgreSQL skips a transaction on restart if its commit LSN is below
        // confirmed_flush_lsn (decode.c, SnapBuildXactNeedsSkip): the slot must
        // stay at or before the unacknowledged transaction's commit LSN. (It may
        // pass WAL written before the transaction: other tests write to this
        // database, and an idle relay confirms keepalive positions.)
        let commitLSN = try #require(sink.sentEvents.first?.lsn)
        // Writes elsewhere produce keepalives; still nothing may pass the unacknowledged transaction.
        for i in 0..<20 {
            try outbox.sql.query("INSERT INTO \(outbox.schema).other VALUES (\(i), 'x')")
        }
        try await Task.sleep(for: .milliseconds(700))
        #expect(try outbox.confirmedFlush <= commitLSN)
        #expect(running.relay.currentStats.eventsAcknowledged == 0)
        sink.release()
        try await running.waitFor("confirmation") { _ in try outbox.confirmedFlush >= afterInsert }
        #expect(running.relay.currentStats.eventsAcknowledged == 3)
        await running.stop()
    }

    @Test func stopInsideATransactionReadsOnToItsCommitAndConfirmsIt() async throws {
        let outbox = try TestOutbox()
        let box = Mutex<Relay?>(nil)
        let sink = HookSink { box.withLock { $0?.stop() } }
        let relay = Relay(config: outbox.config(), sink: sink, logger: RunningRelay.logger)
        box.withLock { $0 = relay }
        let running = RunningRelay(relay)
        try await running.waitFor("streaming") { $0.state == .streaming }
        // One transaction of more messages than the relay handles per loop turn
        // (4,096), so the stop, which arrives with its first event, is seen
        // before its Commit is read.
        try outbox.insert(5_000)
        guard case .success? = await running.ended(within: 15) else {
            Issue.record("the relay did not stop cleanly")
            return
        }
        let events = sink.sentEvents
        #expect(events.count == 5_000, "the whole transaction, not the part read before the stop was seen")
        let commitLSN = try #require(events.first?.lsn)
        // Confirmed past the commit: a restart does not resend the transaction.
        #expect(try outbox.confirmedFlush > commitLSN)
    }

    @Test func backpressureStopsReadingAtTheInFlightBound() async throws {
        let outbox = try TestOutbox()
        let sink = GatedSink()
        let running = RunningRelay(config: outbox.config { $0.maxInFlightEvents = 10 }, sink: sink)
        try await running.waitFor("streaming") { $0.state == .streaming }
        for _ in 0..<10 { try outbox.insert(5) }
        try await running.waitFor("bound reached") { _ in sink.sentCount >= 10 }
        try await Task.sleep(for: .milliseconds(500))
        #expect(sink.sentCount == 10)
        #expect(running.relay.currentStats.inFlightEvents == 10)
        sink.release()
        try await running.waitFor("all events") { _ in sink.sentCount == 50 }
        await running.stop()
    }

    @Test func idleOutboxOnABusyDatabaseRetainsNoWAL() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        for i in 0..<200 {
            try outbox.sql.query("INSERT INTO \(outbox.schema).other VALUES (\(i), repeat('w', 500))")
        }
        let target = try outbox.currentWAL
        try await running.waitFor("slot to follow the WAL") { _ in try outbox.confirmedFlush >= target }
        #expect(try file.events.isEmpty)
        await running.stop()
    }

    /// An idle stream outlives wal_sender_timeout (10 s in scripts/test.sh) and
    /// twice the receive timeout (the same 10 s): status updates go out every half
    /// of wal_sender_timeout whatever --status-interval-ms says, and the pings
    /// sent after half the receive timeout of silence get keepalives back, so
    /// neither side takes the quiet connection for a dead one.
    @Test func anIdleConnectionOutlivesBothTimeouts() async throws {
        let outbox = try TestOutbox()
        let timeout = try outbox.sql.query("SHOW wal_sender_timeout")[0, "wal_sender_timeout"] ?? ""
        try #require(
            timeout == "10s", "the test server should run with wal_sender_timeout = 10s, has \(timeout)")
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config { $0.statusIntervalMilliseconds = 60_000 }, sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try await Task.sleep(for: .seconds(22))
        #expect(running.relay.currentStats.reconnects == 0)
        #expect(running.relay.currentStats.state == .streaming)
        #expect(running.relay.currentStats.statusUpdates > 0)
        let ids = try outbox.insert()
        #expect(try await file.waitForEvents(1).map { $0["id"] as! String } == ids)
        await running.stop()
    }

    @Test func secondRelayWaitsAsHotStandbyAndTakesOver() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let primary = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await primary.waitFor("primary streaming") { $0.state == .streaming }
        let standby = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await standby.waitFor("standby waiting") { $0.state == .standby }
        let ids = try outbox.insert(10)
        _ = try await file.waitForEvents(10)
        await primary.stop()
        try await standby.waitFor("standby took over", within: 10) { $0.state == .streaming }
        let more = try outbox.insert(10)
        _ = try await file.waitForEvents(20)
        #expect(try file.events.map { $0["id"] as! String } == ids + more)
        await standby.stop()
    }
}

@Suite(
    "clear errors for misconfiguration", .serialized,
    .enabled(if: TestDatabase.available, "set OUTBOX_TEST_PG"), .timeLimit(.minutes(1)))
struct ConfigurationErrorTests {
    func failure(_ config: RelayConfig) async -> String {
        let running = RunningRelay(config: config, sink: GatedSink())
        guard let result = await running.ended(within: 10) else {
            await running.stop()
            return "relay did not stop on its own"
        }
        guard case .failure(let error) = result else { return "relay ended without an error" }
        return "\(error)"
    }

    @Test func slotWithAnotherPlugin() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query(
            "SELECT pg_create_logical_replication_slot('\(outbox.slot)', 'test_decoding')")
        let message = await failure(outbox.config())
        #expect(
            message.contains(#"uses output plugin "test_decoding"; the relay needs "pgoutput""#),
            "\(message)")
    }

    @Test func missingSlotIsNotCreatedWithoutTheFlag() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let message = await failure(outbox.config())
        #expect(message.contains("replication slot \"\(outbox.slot)\" does not exist"), "\(message)")
        #expect(
            try outbox.sql.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")
                .count == 0)
    }

    @Test func createSlotCreatesSlotAndPublication() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query("DROP PUBLICATION \(outbox.publication)")
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config { $0.replication.createSlot = true }, sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        let pub = try outbox.sql.query(
            "SELECT pubinsert, pubdelete, pubupdate FROM pg_publication WHERE pubname = '\(outbox.publication)'"
        )
        #expect(pub[0, "pubinsert"] == "t" && pub[0, "pubdelete"] == "f" && pub[0, "pubupdate"] == "f")
        try outbox.insert()
        _ = try await file.waitForEvents(1)
        await running.stop()
    }

    @Test func missingPublication() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query("DROP PUBLICATION \(outbox.publication)")
        let message = await failure(outbox.config())
        #expect(message.contains("publication \"\(outbox.publication)\" does not exist"), "\(message)")
    }

    @Test func publicationWithoutTheTable() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query(
            "ALTER PUBLICATION \(outbox.publication) DROP TABLE \(outbox.schema).outbox")
        let message = await failure(outbox.config())
        #expect(message.contains("does not include table \(outbox.schema).outbox"), "\(message)")
    }

    @Test func publicationPublishingDeletesStillYieldsOnlyInserts() async throws {
        let outbox = try TestOutbox(publish: "insert, update, delete, truncate")
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query("ALTER TABLE \(outbox.schema).outbox REPLICA IDENTITY FULL")
        try outbox.insert(2)
        try outbox.sql.query("UPDATE \(outbox.schema).outbox SET type = 'u'")
        try outbox.sql.query("DELETE FROM \(outbox.schema).outbox")
        try outbox.insert(1)
        try outbox.sql.query("TRUNCATE \(outbox.schema).outbox")
        try await running.waitFor("suppressed changes counted") { $0.suppressedTruncates == 1 }
        let stats = running.relay.currentStats
        #expect(
            stats.suppressedDeletes == 2 && stats.suppressedUpdates == 2 && stats.eventsPublished == 3)
        #expect(try file.events.count == 3)
        await running.stop()
    }

    @Test func badConninfoAndUnreachableServer() async throws {
        var config = try TestOutbox().config()
        config.replication.conninfo = "host=127.0.0.1 port=1 connect_timeout=2 password=hunter2"
        config.maxBackoffMilliseconds = 200
        let running = RunningRelay(config: config, sink: GatedSink())
        try await running.waitFor("reconnect attempts") { $0.reconnects >= 2 }
        #expect(running.relay.currentStats.state == .reconnecting)
        await running.stop()
        // Unparsable strings are rejected at once, described without quoting them: what
        // looks like an unknown option may be the tail of a password with a space in it.
        config.replication.conninfo = "host=127.0.0.1 password=hunter2 bogus_option=1"
        let message = await failure(config)
        #expect(
            message.contains("invalid PostgreSQL connection string")
                && message.contains("names an option libpq does not know"),
            "\(message)")
        #expect(!message.contains("hunter2") && !message.contains("bogus_option"))
        #expect(
            Conninfo.redacted("host=db port=5 user=u password=hunter2 dbname=app")
                == "user=u dbname=app host=db port=5")
    }

    @Test func poisonRowStopsTheRelayBeforeItsTransactionIsConfirmed() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query(
            "ALTER TABLE \(outbox.schema).outbox ALTER COLUMN aggregatetype DROP NOT NULL")
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(config: outbox.config(), sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.insert()
        _ = try await file.waitForEvents(1)
        try await running.waitFor("first event confirmed") { $0.eventsAcknowledged == 1 }
        try await Task.sleep(for: .milliseconds(200))
        let beforePoison = try outbox.currentWAL
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-0000000000ff', NULL, 'k', 'T', '{}')"
        )
        let result = await running.ended()
        guard case .failure(let error)? = result else {
            Issue.record("relay did not fail: \(String(describing: result))")
            return
        }
        #expect(
            "\(error)".contains(#"row id="00000000-0000-0000-0000-0000000000ff""#)
                && "\(error)".contains(#"column "aggregatetype" is NULL"#), "\(error)")
        #expect(try outbox.confirmedFlush <= beforePoison)
        #expect(try outbox.confirmedFlush > .zero)
    }
}
