import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication
import Testing

/// Rows that cannot become events: each goes to the dead-letter topic with its
/// reason, or stops the relay naming the row id and commit LSN — never skipped.
@Suite(
    "poison rows", .serialized,
    .enabled(if: TestKafka.available, "set KAFKA_TEST_BROKERS and OUTBOX_TEST_PG (scripts/test.sh does)"),
    .timeLimit(.minutes(3)))
struct PoisonTests {
    @Test func everyKindOfPoisonRowIsDeadLetteredWithItsReason() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query(
            "ALTER TABLE \(outbox.schema).outbox ALTER COLUMN aggregateid DROP NOT NULL, ALTER COLUMN headers TYPE text"
        )
        let dlq = outbox.name + ".dlq"
        let running = RunningRelay(
            config: outbox.config { $0.routing.topicTemplate = "\(outbox.name).{aggregatetype}" },
            sink: try TestKafka.sink(deadLetterTopic: dlq))
        try await running.waitFor("streaming") { $0.state == .streaming }
        let rows: [(id: String, aggregate: String, key: String?, headers: String?)] = [
            ("00000000-0000-0000-0000-000000000001", "ok", "k", nil),
            ("00000000-0000-0000-0000-000000000002", "ok", nil, nil),  // NULL key
            ("00000000-0000-0000-0000-000000000003", "ok", "k", "not json"),  // headers not a JSON object
            ("00000000-0000-0000-0000-000000000004", "ok", "k", "[1, 2]"),  // headers a JSON array
            ("00000000-0000-0000-0000-000000000005", "bad topic!", "k", nil),  // not a valid topic name
            ("00000000-0000-0000-0000-000000000006", "ok", "k", #"{"trace": "t"}"#),
        ]
        for row in rows {
            try outbox.sql.query(
                "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES ('\(row.id)', '\(row.aggregate)', \(row.key.map { "'\($0)'" } ?? "NULL"), 'T', '{}', \(row.headers.map { outbox.sql.literal($0) } ?? "NULL"))"
            )
        }
        try await running.waitFor("all handled") { $0.deadLettered == 4 && $0.eventsAcknowledged == 6 }
        let end = try outbox.currentWAL
        try await running.waitFor("confirmed past the poison rows") { _ in try outbox.confirmedFlush >= end }
        let dead = try TestKafka.read(dlq, count: 4)
        let reasons = Dictionary(uniqueKeysWithValues: dead.map { ($0.key ?? "", $0.header("dlq.reason") ?? "") })
        #expect(reasons["00000000-0000-0000-0000-000000000002"] == #"column "aggregateid" is NULL"#)
        #expect(
            reasons["00000000-0000-0000-0000-000000000003"]?.contains(#"column "headers" is not a JSON object"#) == true
        )
        #expect(
            reasons["00000000-0000-0000-0000-000000000004"]?.contains(
                #"column "headers" must be a JSON object or null, not an array"#) == true)
        #expect(reasons["00000000-0000-0000-0000-000000000005"]?.contains("is not a valid topic name") == true)
        let good = try TestKafka.read("\(outbox.name).ok", count: 2)
        #expect(good.compactMap { $0.header("id") } == [rows[0].id, rows[5].id])
        await running.stop()
    }

    @Test func configuredColumnTheTableLacksIsNamed() async throws {
        let outbox = try TestOutbox()
        let file = SinkFile()
        defer { file.remove() }
        let running = RunningRelay(
            config: outbox.config { $0.routing.headerColumns = [.init(column: "tenant", header: "tenant")] },
            sink: try file.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        let id = try #require(try outbox.insert(1).first)
        guard case .failure(let error)? = await running.ended() else {
            Issue.record("the relay did not stop")
            return
        }
        #expect(
            "\(error)".contains(#"has no column "tenant""#) && "\(error)".contains(id)
                && "\(error)".contains("committed at LSN"))
        #expect(try file.events.isEmpty)
    }

    /// A SQL_ASCII database stores any bytes in text columns; the relay only
    /// publishes UTF-8, so such a row is poison, with and without a DLQ.
    @Test func invalidUTF8FromASQLASCIIDatabase() async throws {
        let admin = try TestDatabase.connect()
        let database = "it_ascii_" + UUID().uuidString.prefix(8).lowercased()
        try admin.query(
            "CREATE DATABASE \(database) TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
        defer {
            _ = try? admin.query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '\(database)' AND NOT active"
            )
            _ = try? admin.query("DROP DATABASE IF EXISTS \(database) WITH (FORCE)")
        }
        let dlq = database + ".dlq"
        do {
            let outbox = try TestOutbox(conninfo: TestDatabase.conninfo! + " dbname=\(database)")
            let file = SinkFile()
            defer { file.remove() }
            try outbox.sql.query(
                "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-0000000000f1', 'order', E'caf\\xe9', 'T', '{}')"
            )
            let stopping = RunningRelay(config: outbox.config(), sink: try file.sink())
            guard case .failure(let error)? = await stopping.ended() else {
                Issue.record("the relay did not stop on invalid UTF-8")
                return
            }
            let text = "\(error)"
            #expect(
                text.contains(#"column "aggregateid" is not valid UTF-8"#)
                    && text.contains("00000000-0000-0000-0000-0000000000f1") && text.contains("committed at LSN"))
            #expect(try file.events.isEmpty)

            let dead = RunningRelay(config: outbox.config(), sink: try TestKafka.sink(deadLetterTopic: dlq))
            try await dead.waitFor("dead-lettered") { $0.deadLettered == 1 && $0.eventsAcknowledged == 1 }
            let record = try #require(try TestKafka.read(dlq, count: 1).first)
            #expect(record.header("dlq.reason") == #"column "aggregateid" is not valid UTF-8"#)
            await dead.stop()
        }
    }
}
