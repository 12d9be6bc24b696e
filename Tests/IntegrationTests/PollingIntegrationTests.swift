import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import PollingRelay
import PostgresClient
import PostgresReplication
import Testing

@Suite(
    "polling relay against PostgreSQL 15", .serialized,
    .enabled(if: TestDatabase.available, "set OUTBOX_TEST_PG (scripts/test.sh does)"),
    .timeLimit(.minutes(3)))
struct PollingIntegrationTests {
    static func config(
        _ outbox: TestOutbox, _ adjust: (inout PollingConfig) -> Void = { _ in }
    )
        -> PollingConfig
    {
        var routing = RoutingConfig()
        routing.schema = outbox.schema
        var config = PollingConfig(conninfo: TestDatabase.conninfo!, routing: routing)
        config.intervalMilliseconds = 20
        config.initialBackoffMilliseconds = 100
        adjust(&config)
        return config
    }

    static func start(_ config: PollingConfig, sink: any EventSink) -> RunningRelay {
        RunningRelay(PollingRelay(config: config, sink: sink, logger: RunningRelay.logger))
    }

    func rowCount(_ outbox: TestOutbox, _ condition: String = "true") throws -> Int {
        Int(
            try outbox.sql.query("SELECT count(*) AS n FROM \(outbox.schema).outbox WHERE \(condition)")[
                0, "n"]!)!
    }

    @Test func rowsAreDeletedOnlyAfterTheSinkAcknowledged() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let sink = GatedSink()
        let running = Self.start(Self.config(outbox), sink: sink)
        let ids = try outbox.insert(3)
        try await running.waitFor("three events sent") { $0.eventsPublished == 3 }
        try await Task.sleep(for: .milliseconds(200))
        #expect(try rowCount(outbox) == 3, "claimed rows stay until acknowledged")
        #expect(sink.sentIDs == ids)
        sink.release()
        try await running.waitFor("acknowledged") { $0.eventsAcknowledged == 3 && $0.transactions == 1 }
        #expect(try rowCount(outbox) == 0)
        #expect(try await running.stop().get() == ())
        #expect(sink.sentCount == 3, "nothing published twice")
    }

    @Test func eventsMatchWhatTheLogTailingRelayProduces() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let file = SinkFile()
        defer { file.remove() }
        let running = Self.start(
            Self.config(outbox) { $0.routing.tombstones = true }, sink: try file.sink())
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES ('00000000-0000-0000-0000-000000000001', 'order', '42', 'Created', '{\"total\": 5, \"n\": \"ü\"}', '{\"trace\": \"t1\"}')"
        )
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '42', 'Deleted', NULL)"
        )
        let events = try await file.waitForEvents(2)
        // Uncommitted and rolled-back rows are invisible to the claim. The open
        // transaction is held without suspending the test: an open transaction
        // makes slot creation in other suites wait, and those waits must not
        // occupy the cooperative threads this test would resume on.
        let writer = try TestDatabase.connect()
        try writer.query("BEGIN")
        try writer.query(
            "INSERT INTO \(outbox.schema).outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '42', 'Open', '{}')"
        )
        usleep(300_000)
        #expect(try file.events.count == 2)
        try writer.query("ROLLBACK")
        usleep(200_000)
        #expect(try file.events.count == 2)
        #expect(events[0]["id"] as? String == "00000000-0000-0000-0000-000000000001")
        #expect(
            events[0]["topic"] as? String == "outbox.event.order" && events[0]["key"] as? String == "42")
        let payload = events[0]["payload"] as? [String: Any]
        #expect(payload?["n"] as? String == "ü" && payload?["total"] as? Int == 5)
        #expect((events[0]["headers"] as? [String: String])?["trace"] == "t1")
        #expect(events[0]["lsn"] is NSNull, "polled events have no LSN")
        #expect(events[1]["tombstone"] as? Bool == true)
        #expect(try await running.stop().get() == ())
        #expect(try rowCount(outbox) == 0)
    }

    @Test func twoPollersShareTheTableAndPublishEveryRowOnce() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let files = [SinkFile(), SinkFile()]
        defer { files.forEach { $0.remove() } }
        let pollers = try files.map {
            Self.start(
                Self.config(outbox) {
                    $0.batchSize = 25
                    $0.intervalMilliseconds = 5
                }, sink: try $0.sink())
        }
        var written: [String] = []
        for round in 0..<60 {
            written += try outbox.insert(1 + round % 7, key: "k\(round % 5)")
            if round % 10 == 0 { try await Task.sleep(for: .milliseconds(10)) }
        }
        let deadline = Date().addingTimeInterval(30)
        var published: [String] = []
        while Date() < deadline {
            published = try files.flatMap { try $0.events.map { $0["id"] as! String } }
            if published.count >= written.count { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(200))
        published = try files.flatMap { try $0.events.map { $0["id"] as! String } }
        for poller in pollers { #expect(try await poller.stop().get() == ()) }
        #expect(published.count == written.count, "no row published twice")
        #expect(Set(published) == Set(written))
        #expect(try rowCount(outbox) == 0)
    }

    @Test func markColumnKeepsRowsAndTheNotifyWakerSkipsTheInterval() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query("ALTER TABLE \(outbox.schema).outbox ADD COLUMN published_at timestamptz")
        let setup = try String(
            contentsOf: TestDatabase.repository.appendingPathComponent("sql/05-polling.sql"),
            encoding: .utf8
        )
        .replacingOccurrences(of: "public.outbox", with: "\(outbox.schema).outbox")
        .replacingOccurrences(of: "public.outbox_notify", with: "\(outbox.schema).outbox_notify")
        .replacingOccurrences(of: "'outbox_relay'", with: "'\(outbox.name)'")
        try outbox.sql.query(setup)
        let file = SinkFile()
        defer { file.remove() }
        // A one-minute interval: only the notification can explain a prompt event.
        let running = Self.start(
            Self.config(outbox) {
                $0.markColumn = "published_at"
                $0.notifyChannel = outbox.name
                $0.intervalMilliseconds = 60_000
            }, sink: try file.sink())
        try await running.waitFor("polling") { $0.state == .streaming && $0.polls >= 1 }
        let first = try outbox.insert(2)
        _ = try await file.waitForEvents(2, within: 10)
        let second = try outbox.insert(1)
        let events = try await file.waitForEvents(3, within: 10)
        #expect(events.map { $0["id"] as? String } == first + second)
        try await running.waitFor("marked") { $0.transactions == 2 }
        #expect(try rowCount(outbox, "published_at IS NOT NULL") == 3, "marked, not deleted")
        #expect(try await running.stop().get() == ())
        #expect(try file.events.count == 3, "marked rows are not claimed again")
    }

    @Test func poisonRowStopsThePollerAndStaysInTheTable() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let file = SinkFile()
        defer { file.remove() }
        try outbox.insert(1)
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES ('00000000-0000-0000-0000-0000000000ee', 'order', 'k', 'Bad', '{}', '[1, 2]')"
        )
        let running = Self.start(Self.config(outbox), sink: try file.sink())
        guard case .failure(let error)? = await running.ended() else {
            Issue.record("the poller did not stop on a poison row")
            return
        }
        let text = "\(error)"
        #expect(
            text.contains("00000000-0000-0000-0000-0000000000ee") && text.contains("headers")
                && text.contains("must be a JSON object or null, not an array"), "\(text)")
        #expect(try rowCount(outbox) == 2, "the batch rolled back: nothing deleted")
    }

    @Test func shutdownWithoutAcknowledgementLeavesTheRowsForTheNextPoller() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let sink = GatedSink()
        let running = Self.start(
            Self.config(outbox) { $0.shutdownTimeoutMilliseconds = 300 }, sink: sink)
        try outbox.insert(2)
        try await running.waitFor("sent") { $0.eventsPublished == 2 }
        let started = Date()
        _ = await running.stop()
        #expect(Date().timeIntervalSince(started) < 3)
        #expect(try rowCount(outbox) == 2)
    }

    @Test func missingTableAndColumnAreClearFatalErrors() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let noTable = Self.start(Self.config(outbox) { $0.routing.table = "nope" }, sink: GatedSink())
        guard case .failure(let tableError)? = await noTable.ended() else {
            Issue.record("no error for a missing table")
            return
        }
        #expect("\(tableError)".contains("42P01") && "\(tableError)".contains("--table"))
        let noColumn = Self.start(Self.config(outbox) { $0.orderBy = "seq" }, sink: GatedSink())
        guard case .failure(let columnError)? = await noColumn.ended() else {
            Issue.record("no error for a missing column")
            return
        }
        #expect(
            "\(columnError)".contains("\"seq\" does not exist") && "\(columnError)".contains("--order-by")
        )
    }
}
