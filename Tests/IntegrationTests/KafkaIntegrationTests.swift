import Foundation
import KafkaSink
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import Testing

/// The broker named by `KAFKA_TEST_BROKERS` (scripts/test.sh starts tansu on
/// 127.0.0.1 and sets it, with librdkafka 2.16 on LD_LIBRARY_PATH).
enum TestKafka {
    static let brokers = ProcessInfo.processInfo.environment["KAFKA_TEST_BROKERS"]
    static let tansu = ProcessInfo.processInfo.environment["TANSU_BIN"]
    static var available: Bool { brokers != nil && TestDatabase.available }

    struct Record {
        var partition: Int
        var offset: Int
        var key: String?
        var value: String?
        var headers: [(String, String)]
        func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
    }

    /// Reads `count` records of `topic` from the beginning with kcat (assigned
    /// partitions, no consumer group), waiting at most `seconds`. Reads by count,
    /// not to the high watermark, which tansu can report wrong.
    static func read(
        _ topic: String, count: Int, brokers: String = brokers!, seconds: Int = 30
    )
        throws -> [Record]
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = [
            "-s", "KILL", "\(seconds)", "kcat", "-C", "-u", "-q", "-b", brokers, "-t", topic, "-o",
            "beginning", "-c", "\(count)", "-J",
        ]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return try data.split(separator: 10).map { line in
            let json = try JSONSerialization.jsonObject(with: Data(line)) as! [String: Any]
            let flat = json["headers"] as? [String] ?? []
            let headers = stride(from: 0, to: flat.count - 1, by: 2).map { (flat[$0], flat[$0 + 1]) }
            return Record(
                partition: json["partition"] as! Int, offset: json["offset"] as! Int,
                key: json["key"] as? String, value: json["payload"] as? String, headers: headers)
        }
    }

    static func sink(
        brokers: String = brokers!, deadLetterTopic: String? = nil,
        properties: [(key: String, value: String)] = [], transactionalID: String? = nil
    ) throws -> KafkaSink {
        var config = KafkaSinkConfig(brokers: brokers)
        config.deadLetterTopic = deadLetterTopic
        config.transactionalID = transactionalID
        config.properties = properties
        var logger = Logger(label: "test-kafka")
        logger.logLevel =
            ProcessInfo.processInfo.environment["OUTBOX_TEST_LOG"] == nil ? .critical : .debug
        return try KafkaSink(config: config, logger: logger)
    }
}

@Suite(
    "Kafka sink against a real broker", .serialized,
    .enabled(
        if: TestKafka.available && VersionIndependent.enabled,
        "set KAFKA_TEST_BROKERS and OUTBOX_TEST_PG (scripts/test.sh does); runs with the default PostgreSQL"),
    .timeLimit(.minutes(4)))
struct KafkaIntegrationTests {
    @Test func keyValueHeadersAndTombstonesExactlyAsStored() async throws {
        let outbox = try TestOutbox()
        let route = outbox.name
        let running = RunningRelay(
            config: outbox.config { $0.routing.tombstones = true }, sink: try TestKafka.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload, headers)
            VALUES ('00000000-0000-0000-0000-000000000001', '\(route)', 'agg-1', 'Created', '{"total": 1.50, "note": "größe ✓"}', '{"trace": "t-1", "n": 2}')
            """)
        try outbox.sql.query(
            "BEGIN; INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-000000000002', '\(route)', 'agg-1', 'Deleted', NULL); DELETE FROM \(outbox.schema).outbox; COMMIT"
        )
        try await running.waitFor("acknowledged") { $0.eventsAcknowledged == 2 }
        let records = try TestKafka.read("outbox.event.\(route)", count: 3, seconds: 5)
        #expect(records.count == 2)  // the delete produced nothing
        let first = try #require(records.first)
        #expect(first.key == "agg-1")
        #expect(first.value == #"{"note": "größe ✓", "total": 1.50}"#)  // jsonb's text, byte for byte
        #expect(first.headers.map(\.0) == ["id", "type", "n", "trace", "lsn"])
        #expect(
            first.header("id") == "00000000-0000-0000-0000-000000000001"
                && first.header("type") == "Created" && first.header("trace") == "t-1"
                && first.header("n") == "2")
        #expect(LSN(string: first.header("lsn") ?? "") != nil)
        let tombstone = records[1]
        #expect(
            tombstone.key == "agg-1" && tombstone.value == nil && tombstone.partition == first.partition)
        await running.stop()
    }

    /// Transactional mode: one transaction per loop turn, acknowledged (and
    /// confirmed) only once committed; a stale session aborts the open one.
    /// tansu accepts transactions without isolating or fencing them, so this
    /// checks the relay's side: every event delivered once, in order, confirmed.
    @Test func transactionalProducerDeliversAndConfirmsAfterCommit() async throws {
        let outbox = try TestOutbox()
        let route = outbox.name
        let sink = try TestKafka.sink(transactionalID: "outbox-relay-test-\(outbox.name)")
        let running = RunningRelay(config: outbox.config(), sink: sink)
        try await running.waitFor("streaming") { $0.state == .streaming }
        for _ in 0..<10 { try outbox.insert(5, aggregate: route, key: "k") }
        let end = try outbox.currentWAL
        try await running.waitFor("acknowledged") { $0.eventsAcknowledged == 50 }
        let records = try TestKafka.read("outbox.event.\(route)", count: 50, seconds: 10)
        #expect(records.count == 50)
        #expect(Set(records.compactMap { $0.header("id") }).count == 50)
        let deadline = Date().addingTimeInterval(10)
        while try outbox.confirmedFlush < end && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(try outbox.confirmedFlush >= end)
        // Nothing open: discarding (what a stale session does) has nothing to abort.
        #expect(sink.discardUnacknowledged() == 0)
        await running.stop()
    }

    /// A `headers` member named like the relay's own headers never becomes a second
    /// header of that name (consumers dedupe on `id`); `null` means no headers.
    @Test func headersColumnCannotSpoofTheEventIDAndNullMeansNone() async throws {
        let outbox = try TestOutbox()
        let route = outbox.name
        let running = RunningRelay(config: outbox.config(), sink: try TestKafka.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query(
            """
            INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES
            ('00000000-0000-0000-0000-0000000000a1', '\(route)', 'k', 'Created', '{}', '{"id": "forged", "type": "Forged", "lsn": "0/1", "trace": "t-1"}'),
            ('00000000-0000-0000-0000-0000000000a2', '\(route)', 'k', 'Created', '{}', 'null'::jsonb)
            """)
        try await running.waitFor("acknowledged") { $0.eventsAcknowledged == 2 }
        let records = try TestKafka.read("outbox.event.\(route)", count: 2, seconds: 5)
        #expect(records.count == 2)
        let spoofed = try #require(records.first)
        #expect(spoofed.headers.filter { $0.0 == "id" }.map(\.1) == ["00000000-0000-0000-0000-0000000000a1"])
        #expect(spoofed.headers.filter { $0.0 == "type" }.map(\.1) == ["Created"])
        #expect(spoofed.headers.filter { $0.0 == "lsn" }.count == 1 && spoofed.header("lsn") != "0/1")
        #expect(spoofed.header("trace") == "t-1")
        #expect(records[1].headers.map(\.0) == ["id", "type", "lsn"])
        #expect(running.relay.currentStats.droppedHeaderMembers == 3)
        await running.stop()
    }

    @Test func perKeyOrderOverTenThousandEventsFromEightWriters() async throws {
        let outbox = try TestOutbox()
        let route = outbox.name
        let running = RunningRelay(config: outbox.config(), sink: try TestKafka.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        let writers = 8
        let perWriter = 1250
        let failures = ManagedErrors()
        let schema = outbox.schema
        DispatchQueue.concurrentPerform(iterations: writers) { writer in
            do {
                let connection = try TestDatabase.connect()
                for i in 0..<perWriter {
                    // Mixed single- and multi-row transactions over 16 shared keys.
                    let rows = i % 5 == 0 ? 3 : 1
                    try connection.query(
                        """
                        INSERT INTO \(schema).outbox (aggregatetype, aggregateid, type, payload)
                        SELECT '\(route)', 'key-' || ((\(writer * perWriter + i) + g) % 16), 'W', jsonb_build_object('w', \(writer), 'i', \(i), 'g', g)
                        FROM generate_series(0, \(rows - 1)) g
                        """)
                }
            } catch {
                failures.add(error)
            }
        }
        #expect(failures.errors.isEmpty, "\(failures.errors)")
        let expected = try Int(
            outbox.sql.query("SELECT count(*) AS n FROM \(outbox.schema).outbox")[0, "n"]!)!
        #expect(expected >= 10_000)
        try await running.waitFor("all acknowledged", within: 120) { $0.eventsAcknowledged == expected }
        let records = try TestKafka.read("outbox.event.\(route)", count: expected, seconds: 60)
        #expect(records.count == expected)
        // Every event once; per key, one partition and commit LSNs never decreasing in offset order.
        #expect(Set(records.compactMap { $0.header("id") }).count == expected)
        let byKey = Dictionary(grouping: records, by: { $0.key ?? "" })
        #expect(byKey.count == 16)
        for (key, events) in byKey {
            #expect(Set(events.map(\.partition)).count == 1, "key \(key) spread over partitions")
            let lsns = events.sorted { $0.offset < $1.offset }.map { LSN(string: $0.header("lsn")!)! }
            #expect(lsns == lsns.sorted(), "key \(key) out of commit order")
        }
        await running.stop()
    }

    @Test func oversizedPayloadGoesToTheDeadLetterTopicAndIsThenConfirmed() async throws {
        let outbox = try TestOutbox()
        let dlq = outbox.name + ".dlq"
        let running = RunningRelay(
            config: outbox.config(), sink: try TestKafka.sink(deadLetterTopic: dlq))
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-0000000000b1', '\(outbox.name)', 'k', 'Big', jsonb_build_object('x', repeat('y', 1500000)))"
        )
        try outbox.insert(aggregate: outbox.name)
        let end = try outbox.currentWAL
        try await running.waitFor("both acknowledged") { $0.eventsAcknowledged == 2 }
        try await running.waitFor("slot confirmed past both") { _ in try outbox.confirmedFlush >= end }
        let dead = try #require(try TestKafka.read(dlq, count: 1).first)
        #expect(dead.header("id") == "00000000-0000-0000-0000-0000000000b1")
        #expect(dead.header("dlq.error")?.contains("too large") == true)
        #expect(dead.header("dlq.original.topic") == "outbox.event.\(outbox.name)")
        #expect(dead.value == nil && dead.header("dlq.payload.omitted") != nil)
        #expect(
            try TestKafka.read("outbox.event.\(outbox.name)", count: 1).first?.header("type") == "Created"
        )
        await running.stop()
    }

    @Test func oversizedPayloadWithoutDeadLetterTopicStopsBeforeConfirming() async throws {
        let outbox = try TestOutbox()
        let running = RunningRelay(config: outbox.config(), sink: try TestKafka.sink())
        try await running.waitFor("streaming") { $0.state == .streaming }
        let before = try outbox.currentWAL
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-0000000000b2', '\(outbox.name)', 'k', 'Big', jsonb_build_object('x', repeat('y', 1500000)))"
        )
        guard case .failure(let error)? = await running.ended() else {
            Issue.record("relay did not stop")
            return
        }
        #expect(
            "\(error)".contains("event id=00000000-0000-0000-0000-0000000000b2 (commit LSN"), "\(error)")
        #expect("\(error)".contains("too large"), "\(error)")
        #expect(try outbox.confirmedFlush <= before)
    }

    @Test func poisonRowGoesToTheDeadLetterTopicWithItsReason() async throws {
        let outbox = try TestOutbox()
        try outbox.sql.query(
            "ALTER TABLE \(outbox.schema).outbox ALTER COLUMN aggregateid DROP NOT NULL")
        let dlq = outbox.name + ".dlq"
        let running = RunningRelay(
            config: outbox.config(), sink: try TestKafka.sink(deadLetterTopic: dlq))
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.sql.query(
            "INSERT INTO \(outbox.schema).outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-0000-0000-0000000000c1', 'order', NULL, 'T', '{\"p\": 1}')"
        )
        try await running.waitFor("dead-lettered and acknowledged") {
            $0.deadLettered == 1 && $0.eventsAcknowledged == 1
        }
        let dead = try #require(try TestKafka.read(dlq, count: 1).first)
        #expect(dead.header("dlq.reason") == #"column "aggregateid" is NULL"#)
        #expect(dead.value == #"{"p": 1}"# && dead.key == "00000000-0000-0000-0000-0000000000c1")
        await running.stop()
    }

    /// The broker goes away: the relay stays connected to PostgreSQL, confirms
    /// nothing new, and delivers once the broker is back. The broker is frozen
    /// (SIGSTOP/SIGCONT) rather than restarted: tansu's memory storage forgets
    /// idempotent producer ids on restart and then answers UNKNOWN_PRODUCER_ID
    /// for ever, which a real Kafka broker (producer state in its log) does not.
    @Test(.enabled(if: TestKafka.tansu != nil, "needs TANSU_BIN"))
    func brokerOutageConfirmsNothingUntilDelivered() async throws {
        let broker = try TansuProcess()
        defer { broker.stop() }
        let outbox = try TestOutbox()
        let running = RunningRelay(
            config: outbox.config(), sink: try TestKafka.sink(brokers: broker.address))
        try await running.waitFor("streaming") { $0.state == .streaming }
        try outbox.insert(aggregate: outbox.name)
        try await running.waitFor("first delivered") { $0.eventsAcknowledged == 1 }
        broker.freeze()
        try await Task.sleep(for: .milliseconds(300))
        let beforeOutageWrites = try outbox.currentWAL
        let ids = try outbox.insert(5, aggregate: outbox.name)
        try await Task.sleep(for: .seconds(3))
        #expect(try outbox.confirmedFlush <= beforeOutageWrites)
        #expect(running.relay.currentStats.state == .streaming)  // still connected to PostgreSQL
        #expect(running.relay.currentStats.eventsAcknowledged == 1)
        broker.thaw()
        try await running.waitFor("delivered after the outage", within: 60) {
            $0.eventsAcknowledged == 6
        }
        let end = try outbox.currentWAL
        try await running.waitFor("slot advanced") { _ in try outbox.confirmedFlush >= end }
        let records = try TestKafka.read(
            "outbox.event.\(outbox.name)", count: 6, brokers: broker.address)
        #expect(Array(records.compactMap { $0.header("id") }.dropFirst()) == ids)
        await running.stop()
    }
}

/// Errors collected from concurrent writers.
final class ManagedErrors: @unchecked Sendable {
    // @unchecked Sendable: `errors` is only touched under `lock`.
    private let lock = NSLock()
    private var list: [any Error] = []
    func add(_ error: any Error) { lock.withLock { list.append(error) } }
    var errors: [any Error] { lock.withLock { list } }
}

/// A tansu broker of the test's own on a loopback port, to freeze and thaw,
/// or to put behind a `TCPProxy` (`advertisedPort`) that can be restarted.
final class TansuProcess: @unchecked Sendable {
    // @unchecked Sendable: used from one test at a time.
    let port: Int
    /// The port clients are told to use (metadata): `port`, or a proxy's.
    let advertisedPort: Int
    var address: String { "127.0.0.1:\(advertisedPort)" }
    private var process: Process?

    init(advertisedPort: Int? = nil) throws {
        port = try TCPProxy.freePort()
        self.advertisedPort = advertisedPort ?? port
        try start()
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestKafka.tansu!)
        process.arguments = [
            "broker", "--listener-url", "tcp://127.0.0.1:\(port)", "--advertised-listener-url",
            "tcp://127.0.0.1:\(advertisedPort)", "--storage-engine", "memory://tansu/",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        usleep(300_000)
    }

    func freeze() { if let process { Glibc.kill(process.processIdentifier, SIGSTOP) } }
    func thaw() { if let process { Glibc.kill(process.processIdentifier, SIGCONT) } }

    func stop() {
        thaw()
        guard let process, process.isRunning else { return }
        // tansu waits for connected clients on SIGTERM; an outage is a crash anyway.
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }
}
