import Foundation
import OutboxCore
import PGOutput
import PostgresClient
import Testing

/// A slot that existed is never created again silently (ARCHITECTURE.md rule
/// 9): not after a DBA dropped it while the relay was down, not after a
/// failover to a standby that never had it, whatever `--create-slot` says.
@Suite(
    "lost slots are never recreated silently", .serialized,
    .enabled(if: CLI.available, "needs OUTBOX_TEST_PG and a built binary"), .timeLimit(.minutes(10)))
struct SlotLossTests {
    static func runArguments(_ outbox: TestOutbox, conninfo: String? = nil, file: SinkFile) -> [String] {
        [
            "run", "--source", conninfo ?? outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--message-prefix", outbox.name, "--sink", "file:\(file.path)",
            "--create-slot",
        ]
    }

    static func slotCount(_ outbox: TestOutbox, _ connection: PGConnection? = nil) throws -> Int {
        Int(
            try (connection ?? outbox.sql).query(
                "SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name = '\(outbox.slot)'")[0, "n"] ?? "")
            ?? -1
    }

    @Test func slotDroppedWhileTheRelayIsDownIsLostNotRecreated() async throws {
        let outbox = try TestOutbox(createSlot: false)
        let file = SinkFile()
        defer { file.remove() }
        let arguments = Self.runArguments(outbox, file: file)
        let first = try CLI.start(arguments)
        try await first.waitForStderr("streaming")
        try outbox.insert(2)
        _ = try await file.waitForEvents(2)
        #expect(first.terminate() == 0)

        // A DBA removes the "inactive slot holding WAL" during a deploy; the service keeps writing.
        try outbox.sql.query("SELECT pg_drop_replication_slot('\(outbox.slot)')")
        try outbox.insert(4)
        let restarted = try CLI.start(arguments)  // the same command, --create-slot included
        #expect(restarted.wait() == 1)
        #expect(restarted.stderr.contains("existed here") && restarted.stderr.contains("it was dropped"))
        #expect(restarted.stderr.contains("recreate-slot --slot \(outbox.slot) --accept-gap"))
        #expect(try Self.slotCount(outbox) == 0, "no silent new slot")

        let refused = try CLI.start(["recreate-slot", "--source", outbox.conninfo, "--slot", outbox.slot])
        #expect(refused.wait() == 64)
        #expect(refused.stderr.contains("--accept-gap"))
        let accepted = try CLI.start([
            "recreate-slot", "--source", outbox.conninfo, "--slot", outbox.slot, "--accept-gap",
        ])
        #expect(accepted.wait() == 0)
        #expect(accepted.stderr.contains("recreated a lost replication slot") && accepted.stderr.contains("gap_from="))
        #expect(try Self.slotCount(outbox) == 1)

        let resumed = try CLI.start(arguments)
        defer { _ = resumed.terminate() }
        try await resumed.waitForStderr("streaming")
        let after = try outbox.insert(1)
        let events = try await file.waitForEvents(3)
        #expect(events.last?["id"] as? String == after.first)
        print(
            "slot dropped while down: restart with --create-slot exited 1 naming the loss; 4 events in the gap were reported, not skipped silently; recreate-slot --accept-gap logged the gap"
        )
    }

    @Test func failoverToAStandbyWithoutTheSlotIsReportedAsALoss() async throws {
        let primary = try PrivateCluster()
        let outbox = try TestOutbox(createSlot: false, conninfo: primary.conninfo)
        let standby = try primary.makeStandby()
        let file = SinkFile()
        defer { file.remove() }
        let relay = try CLI.start(Self.runArguments(outbox, file: file))
        try await relay.waitForStderr("streaming")
        try outbox.insert(3)
        _ = try await file.waitForEvents(3)
        #expect(relay.terminate() == 0)
        try outbox.insert(7)  // committed after the relay's last confirmed position
        // Let the standby replay everything, then the primary dies and the standby is promoted.
        let end = try outbox.currentWAL
        try await standby.waitForReplay(upTo: end)
        try primary.kill()
        try standby.promote()

        let afterFailover = try CLI.start(Self.runArguments(outbox, conninfo: standby.conninfo, file: file))
        #expect(afterFailover.wait() == 1)
        #expect(
            afterFailover.stderr.contains("existed here") && afterFailover.stderr.contains("failover"),
            "\(afterFailover.stderr)")
        let promoted = try PGConnection(conninfo: standby.conninfo, replication: false)
        #expect(try Self.slotCount(outbox, promoted) == 0, "no silent new slot on the promoted server")
        print(
            "failover (PostgreSQL \(try promoted.query("SHOW server_version")[0, "server_version"] ?? "?")): the promoted standby has no slot; the relay exits 1 naming the failover instead of skipping the 7 events committed after its last confirmed position"
        )
    }

    @Test func twoReplicasStartingTogetherBothEndUpStreamingOrStandingBy() async throws {
        let outbox = try TestOutbox(createSlot: false)
        try outbox.sql.query("DROP PUBLICATION \(outbox.publication)")
        let files = [SinkFile(), SinkFile()]
        defer { files.forEach { $0.remove() } }
        let replicas = try files.map { try CLI.start(Self.runArguments(outbox, file: $0)) }
        defer { replicas.forEach { _ = $0.terminate() } }
        let deadline = Date().addingTimeInterval(20)
        func settled(_ cli: CLI) -> Bool { cli.stderr.contains("msg=streaming") || cli.stderr.contains("hot standby") }
        while Date() < deadline && !replicas.allSatisfy(settled) { try await Task.sleep(for: .milliseconds(100)) }
        for cli in replicas {
            #expect(cli.process.isRunning, "a replica exited: \(cli.stderr)")
        }
        #expect(replicas.filter { $0.stderr.contains("msg=streaming") }.count == 1)
        #expect(replicas.filter { $0.stderr.contains("hot standby") }.count == 1)
        try outbox.insert(2)
        let streaming = replicas.firstIndex { $0.stderr.contains("msg=streaming") } ?? 0
        #expect(
            try await files[streaming].waitForEvents(2).count == 2,
            "streaming replica: \(replicas[streaming].stderr)\nthe other: \(replicas[1 - streaming].stderr)")
    }
}
