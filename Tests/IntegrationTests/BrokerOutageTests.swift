import Foundation
import OutboxCore
import OutboxRelay
import PGOutput
import Testing

/// The broker goes away under load for `OUTBOX_BROKER_OUTAGE_SECONDS` (30 by
/// default): the relay keeps its slot and its PostgreSQL connection, confirms
/// nothing that was not delivered, and catches up when the broker is back.
@Suite(
    "broker outage under load", .serialized,
    .enabled(
        if: TestKafka.available && TestKafka.tansu != nil && VersionIndependent.enabled,
        "needs KAFKA_TEST_BROKERS, TANSU_BIN and OUTBOX_TEST_PG; runs with the default PostgreSQL"),
    .timeLimit(.minutes(6)))
struct BrokerOutageTests {
    static let outageSeconds = Int(ProcessInfo.processInfo.environment["OUTBOX_BROKER_OUTAGE_SECONDS"] ?? "") ?? 30

    /// `frozen`: the broker process stopped (SIGSTOP), its connections hanging.
    /// `restarted`: every connection reset and the port refusing connections
    /// for the outage, then open again (see `TCPProxy` for why the restart is
    /// made at the broker's network edge), so clients must reconnect.
    @Test(arguments: ["frozen", "restarted"])
    func brokerDownUnderLoadConfirmsNothingNewAndCatchesUp(kind: String) async throws {
        let outbox = try TestOutbox()
        let edgePort = kind == "restarted" ? try TCPProxy.freePort() : nil
        let broker = try TansuProcess(advertisedPort: edgePort)
        defer { broker.stop() }
        let edge = edgePort.map { TCPProxy(port: $0, targetPort: broker.port) }
        try edge?.start()
        defer { edge?.stop() }
        let topic = "\(outbox.name).crash"
        let running = RunningRelay(
            config: outbox.config { $0.routing.topicTemplate = "\(outbox.name).{aggregatetype}" },
            sink: try TestKafka.sink(brokers: broker.address, properties: [("reconnect.backoff.max.ms", "1000")]))
        try await running.waitFor("streaming") { $0.state == .streaming }
        let writers = ContinuousWriters(
            conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 20_000)
        try await running.waitFor("first deliveries") { $0.eventsAcknowledged > 10 }

        if let edge { edge.stop() } else { broker.freeze() }
        try await Task.sleep(for: .milliseconds(500))
        let atOutage = try outbox.currentWAL
        let acknowledgedAtOutage = running.relay.currentStats.eventsAcknowledged
        for _ in 0..<Self.outageSeconds {
            try await Task.sleep(for: .seconds(1))
            #expect(try outbox.confirmedFlush <= atOutage, "nothing undelivered is confirmed")
        }
        let stats = running.relay.currentStats
        #expect(stats.state == .streaming, "still streaming from PostgreSQL during the outage")
        #expect(stats.eventsAcknowledged == acknowledgedAtOutage)
        #expect(
            try outbox.sql.query("SELECT active FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[
                0, "active"] == "t", "the slot is kept")

        if let edge { try edge.start() } else { broker.thaw() }
        try await Task.sleep(for: .seconds(2))
        let written = writers.stop()
        let end = try outbox.currentWAL
        try await running.waitFor("caught up", within: 120) { _ in try outbox.confirmedFlush >= end }
        await running.stop()

        let records = try TestKafka.read(topic, count: written.committed.count, brokers: broker.address, seconds: 30)
        let events = records.map { record in
            let payload = record.value.flatMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            return (id: record.header("id") ?? "", key: record.key ?? "", seq: payload?["seq"] as? Int ?? -1)
        }
        let check = DeliveryCheck(events: events, written: written)
        print("broker \(kind) for \(Self.outageSeconds) s under load: \(check)")
        #expect(check.lost.count == 0, "lost, e.g.: \(check.lost.prefix(5))")
        #expect(check.phantoms.count == 0)
        #expect(check.orderViolations.count == 0, "\(check.orderViolations.prefix(5))")
    }

    /// The path to the broker goes silent (nothing forwarded, nothing closed)
    /// for `OUTBOX_KAFKA_BLACKHOLE_SECONDS` (30 by default: shorter than a
    /// transactional producer's 60 s `transaction.timeout.ms`) under load, with
    /// and without `--kafka-transactional-id`: the relay thread keeps answering
    /// PostgreSQL (a commit waits on a thread of its own), confirms nothing
    /// past the cut, and delivers everything after it heals.
    @Test(arguments: ["idempotent", "transactional"])
    func blackHoledBrokerNeverStallsTheRelay(mode: String) async throws {
        let outbox = try TestOutbox()
        let edgePort = try TCPProxy.freePort()
        let broker = try TansuProcess(advertisedPort: edgePort)
        defer { broker.stop() }
        let edge = TCPProxy(port: edgePort, targetPort: broker.port)
        try edge.start()
        defer { edge.stop() }
        let seconds = Int(ProcessInfo.processInfo.environment["OUTBOX_KAFKA_BLACKHOLE_SECONDS"] ?? "") ?? 30
        let sink = try TestKafka.sink(
            brokers: broker.address, properties: [("reconnect.backoff.max.ms", "1000")],
            transactionalID: mode == "transactional" ? "outbox-relay-test-\(outbox.name)" : nil)
        let report = try await destinationBlackHole(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", proxy: edge, seconds: seconds)
        let records = try TestKafka.read(
            "\(outbox.name).crash", count: report.written.committed.count, brokers: broker.address, seconds: 30)
        let events = records.map { record in
            let payload = record.value.flatMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            return (id: record.header("id") ?? "", key: record.key ?? "", seq: payload?["seq"] as? Int ?? -1)
        }
        let check = DeliveryCheck(events: events, written: report.written)
        print("Kafka (\(mode)) black-holed for \(seconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }
}
