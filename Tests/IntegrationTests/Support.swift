import Foundation
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import PostgresReplication
import RelayIO
import Synchronization
import Testing

/// Integration tests run against the PostgreSQL named by `OUTBOX_TEST_PG`
/// (a libpq connection string; `scripts/test.sh` starts one with
/// `wal_level=logical` on 127.0.0.1 and sets it). Without it they are skipped,
/// and `scripts/test.sh` refuses to run without it.
enum TestDatabase {
    static let conninfo = ProcessInfo.processInfo.environment["OUTBOX_TEST_PG"]
    static var available: Bool { conninfo != nil }
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static func connect() throws -> PGConnection {
        try PGConnection(conninfo: conninfo!, replication: false)
    }
}

/// One test's own outbox: a schema holding the table from `sql/01-outbox-table.sql`,
/// a publication (inserts only) and a slot, all uniquely named and dropped at the end.
final class TestOutbox {
    let name: String
    let schema: String
    let slot: String
    let publication: String
    let sql: PGConnection

    let conninfo: String

    /// Where the binary reads this outbox from: `--source`, `--slot`, `--publication`, `--table`.
    var sourceArguments: [String] {
        ["--source", conninfo, "--slot", slot, "--publication", publication, "--table", "\(schema).outbox"]
    }

    init(publish: String = "insert", createSlot: Bool = true, conninfo: String = TestDatabase.conninfo!) throws {
        self.conninfo = conninfo
        name = "it_" + UUID().uuidString.prefix(8).lowercased()
        schema = name
        slot = name + "_slot"
        publication = name + "_pub"
        sql = try PGConnection(conninfo: conninfo, replication: false)
        let ddl = try String(
            contentsOf: TestDatabase.repository.appendingPathComponent("sql/01-outbox-table.sql"),
            encoding: .utf8
        )
        .replacingOccurrences(of: "public.outbox", with: "\(schema).outbox")
        try sql.query("CREATE SCHEMA \(schema)")
        try sql.query(ddl)
        try sql.query("CREATE TABLE \(schema).other (id int PRIMARY KEY, v text)")
        try sql.query(
            "CREATE PUBLICATION \(publication) FOR TABLE \(schema).outbox WITH (publish = '\(publish)')")
        if createSlot {
            try sql.query("SELECT pg_create_logical_replication_slot('\(slot)', 'pgoutput')")
        }
    }

    deinit {
        _ = try? sql.query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '\(slot)' AND NOT active"
        )
        _ = try? sql.query("DROP PUBLICATION IF EXISTS \(publication)")
        _ = try? sql.query("DROP SCHEMA IF EXISTS \(schema) CASCADE")
    }

    var options: ReplicationOptions {
        ReplicationOptions(
            conninfo: conninfo, slot: slot, publication: publication,
            table: (schema, "outbox"))
    }

    func config(_ adjust: (inout RelayConfig) -> Void = { _ in }) -> RelayConfig {
        var routing = RoutingConfig()
        routing.schema = schema
        // Logical messages reach every slot of the database: a prefix of its own
        // keeps other tests' messages out of this test's relay.
        routing.messagePrefix = name
        var config = RelayConfig(replication: options, routing: routing)
        config.minStatusIntervalMilliseconds = 20
        config.initialBackoffMilliseconds = 100
        config.standbyRetryMilliseconds = 200
        adjust(&config)
        return config
    }

    /// Inserts `count` events in one transaction; returns their ids in order.
    @discardableResult
    func insert(
        _ count: Int = 1, aggregate: String = "order", key: String = "k", payload: String = #"{"n": 1}"#
    ) throws -> [String] {
        let rows = try sql.query(
            """
            INSERT INTO \(schema).outbox (aggregatetype, aggregateid, type, payload)
            SELECT \(sql.literal(aggregate)), \(sql.literal(key)), 'Created', \(sql.literal(payload))::jsonb FROM generate_series(1, \(count))
            RETURNING id
            """)
        return rows.values.map { $0[0]! }
    }

    var confirmedFlush: LSN {
        get throws {
            LSN(
                string: try sql.query(
                    "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '\(slot)'")[
                        0, "confirmed_flush_lsn"] ?? "")!
        }
    }

    var currentWAL: LSN {
        get throws { LSN(string: try sql.query("SELECT pg_current_wal_lsn() AS l")[0, "l"]!)! }
    }

    /// Waits until the slot is confirmed up to `end`; records an issue (not a hang) when it is not within `seconds`.
    func waitUntilConfirmed(_ end: LSN, within seconds: Double = 90) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try confirmedFlush < end {
            guard Date() < deadline else {
                Issue.record("slot not confirmed up to \(end): at \(try confirmedFlush)")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// What does not depend on the PostgreSQL version — the destination suites
/// (Kafka outage and sink, NATS, RabbitMQ, Redis, HTTP; their servers come
/// from the test script's environment) and tests of the binary's own parsing
/// that never reach a server — runs with the default version only:
/// scripts/test.sh sets OUTBOX_TEST_SINKS_ENABLED=0 for the others.
enum VersionIndependent {
    static var enabled: Bool { ProcessInfo.processInfo.environment["OUTBOX_TEST_SINKS_ENABLED"] != "0" }
}

/// Runs a relay on its own thread for the duration of a test.
final class RunningRelay: Sendable {
    let relay: any RelayService
    let task: Task<Result<Void, any Error>, Never>

    static var logger: Logger {
        var logger = Logger(label: "test-relay")
        logger.logLevel =
            ProcessInfo.processInfo.environment["OUTBOX_TEST_LOG"] == nil ? .critical : .debug
        return logger
    }

    convenience init(config: RelayConfig, sink: any EventSink) {
        self.init(Relay(config: config, sink: sink, logger: Self.logger))
    }

    init(_ relay: any RelayService) {
        self.relay = relay
        task = Task.detached {
            do {
                try await relay.runDetached()
                return .success(())
            } catch { return .failure(error) }
        }
    }

    /// Stops the relay and returns how it ended.
    @discardableResult
    func stop() async -> Result<Void, any Error> {
        relay.stop()
        return await task.value
    }

    /// Waits for the relay to end on its own (a fatal error).
    func ended(within seconds: Double = 10) async -> Result<Void, any Error>? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let state = relay.currentStats.state
            if state == .failed || state == .stopped { return await task.value }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    func waitFor(
        _ what: String, within seconds: Double = 20, _ condition: (RelayStats) throws -> Bool
    ) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition(relay.currentStats) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("timed out waiting for \(what); stats: \(relay.currentStats)")
        throw CancellationError()
    }
}

/// Reads back the NDJSON file sink.
struct SinkFile {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent(
        "outbox-relay-it-\(UUID()).ndjson"
    ).path

    func sink() throws -> NDJSONSink { try NDJSONSink.file(path: path) }

    var events: [[String: Any]] {
        get throws {
            guard let data = FileManager.default.contents(atPath: path) else { return [] }
            return try data.split(separator: 10).map {
                try JSONSerialization.jsonObject(with: Data($0)) as! [String: Any]
            }
        }
    }

    func waitForEvents(_ count: Int, within seconds: Double = 30) async throws -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let events = try self.events
            if events.count >= count { return events }
            try await Task.sleep(for: .milliseconds(20))
        }
        let events = try self.events
        Issue.record("expected \(count) events, got \(events.count)")
        return events
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A sink that holds every acknowledgement until the test releases it: lets a
/// test observe what the relay confirms while the destination has not
/// acknowledged, and what it does at its in-flight bound.
final class GatedSink: EventSink, @unchecked Sendable {
    // @unchecked Sendable: all state is behind `state`'s lock.
    let name = "gated"
    private let state = Mutex<(sent: [OutboxEvent], held: [Acknowledgement], open: Bool)>(
        ([], [], false))

    private let wakeup = Wakeup()
    var wakeupDescriptor: Int32? { wakeup.descriptor }

    var sentCount: Int { state.withLock { $0.sent.count } }
    var sentIDs: [String] { state.withLock { $0.sent.map(\.id) } }
    var sentEvents: [OutboxEvent] { state.withLock { $0.sent } }
    func release() {
        state.withLock { $0.open = true }
        wakeup.signal()
    }

    func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let open = state.withLock {
            $0.sent.append(event)
            $0.held.append(Acknowledgement(ticket: ticket, weight: event.weight))
            return $0.open
        }
        if open { wakeup.signal() }
    }

    func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        wakeup.clear()
        return state.withLock { s in
            guard s.open else { return [] }
            defer { s.held.removeAll() }
            return s.held
        }
    }

    func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        let acks = try poll(timeoutMilliseconds: 0)
        if acks.isEmpty && state.withLock({ !$0.open }) {
            usleep(UInt32(min(timeoutMilliseconds, 50)) * 1000)
        }
        return acks
    }
}

/// Acknowledges every event at once and runs `onFirstSend` when the first
/// event arrives: a hook to act in the middle of a transaction.
final class HookSink: EventSink, @unchecked Sendable {
    // @unchecked Sendable: all state is behind `state`'s lock; the hook is Sendable.
    let name = "hook"
    private let state = Mutex<(sent: [OutboxEvent], held: [Acknowledgement], hooked: Bool)>(([], [], false))
    let onFirstSend: @Sendable () -> Void

    init(onFirstSend: @escaping @Sendable () -> Void) { self.onFirstSend = onFirstSend }

    var sentEvents: [OutboxEvent] { state.withLock { $0.sent } }

    func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let first = state.withLock { s -> Bool in
            s.sent.append(event)
            s.held.append(Acknowledgement(ticket: ticket, weight: event.weight))
            defer { s.hooked = true }
            return !s.hooked
        }
        if first { onFirstSend() }
    }

    func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        state.withLock { s in
            defer { s.held.removeAll() }
            return s.held
        }
    }

    func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] { try poll(timeoutMilliseconds: 0) }
}
