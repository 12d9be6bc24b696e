import Foundation
import Logging
import OutboxCore
import OutboxRelay
import PGOutput
import RedisSink
import Testing

/// The Redis Streams sink against a real redis-server (Debian's, started per
/// test on 127.0.0.1), read back with redis-cli.
@Suite(
    "Redis Streams sink", .serialized,
    .enabled(if: CLI.available && RedisServer.available, "needs OUTBOX_TEST_PG, a built binary and redis-server"),
    .timeLimit(.minutes(6)))
struct RedisSinkTests {
    static let outageSeconds = Int(ProcessInfo.processInfo.environment["OUTBOX_BROKER_OUTAGE_SECONDS"] ?? "") ?? 30

    static func arguments(_ outbox: TestOutbox, url: String, _ more: [String] = []) -> [String] {
        [
            "run", "--source", outbox.conninfo, "--slot", outbox.slot, "--publication", outbox.publication,
            "--table", "\(outbox.schema).outbox", "--status-interval-ms", "200", "--max-in-flight", "500",
            "--sink", "redis", "--redis-url", url, "--topic-template", "\(outbox.name).{aggregatetype}",
        ] + more
    }

    @Test func eventsBecomeStreamEntriesWithTheirFieldsInOrderPerKey() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer(["--requirepass", "s3cret-redis"])
        let cli = try CLI.start(Self.arguments(outbox, url: "redis://:s3cret-redis@127.0.0.1:\(server.port)"))
        try await cli.waitForStderr("msg=streaming", within: 20)

        let (shaped, written) = try await outbox.shapedRowsUnderLoad()
        #expect(cli.terminate() == 0)
        #expect(!cli.stderr.contains("s3cret"), "the password never reaches a log")
        #expect(!cli.stderr.contains("acknowledges from memory"), "appendfsync always: no durability warning")

        let orders = try server.entries("\(outbox.name).order")
        #expect(orders.count == 2)
        let created = try #require(orders.first)
        #expect(created.field("id") == shaped[0])
        #expect(created.json()?["total"] as? Int == 5)
        #expect(created.field("key") == "o-1")
        #expect(created.field("type") == "OrderCreated")
        #expect(created.field("tenant") == "t9")
        #expect(LSN(string: created.field("lsn") ?? "") != nil)
        #expect(created.fields.last?.name == "payload")
        let tombstone = try #require(orders.last)
        #expect(tombstone.field("id") == shaped[1])
        #expect(tombstone.field("payload") == "" && tombstone.field("tombstone") == "true")

        let events = try server.entries("\(outbox.name).crash").map {
            ($0.field("id") ?? "", $0.field("key") ?? "", $0.json()?["seq"] as? Int ?? -1)
        }
        let check = DeliveryCheck(events: events, written: written)
        print("Redis sink, 3 writers: \(check)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: false)
    }

    /// The server SIGKILLed for 30 s under load, then started again on its port
    /// and append-only file: nothing confirmed while it is away, not ready,
    /// nothing lost after (what it acknowledged was fsynced before it answered).
    @Test func redisKilledUnderLoadConfirmsNothingAndLosesNothing() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        var config = RedisSinkConfig(url: server.url, stream: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try RedisSink(config: config, logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", seconds: Self.outageSeconds,
            stop: server.kill, start: server.start)
        let check = DeliveryCheck(events: try server.deliveries("\(outbox.name).crash"), written: written)
        print("Redis SIGKILLed for \(Self.outageSeconds) s under load: \(check)")
        check.expectIntact(duplicates: true)
    }

    /// The path to the server goes silent for 60 s under load: the relay keeps
    /// answering PostgreSQL, nothing after the cut is confirmed, nothing lost after.
    @Test func blackHoledServerNeverStallsTheRelay() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        var config = RedisSinkConfig(url: "redis://127.0.0.1:\(proxy.port)", stream: try DestinationTemplate("{topic}"))
        config.acknowledgementTimeoutMilliseconds = 2_000
        let sink = try RedisSink(config: config, logger: RunningRelay.logger)
        let report = try await destinationBlackHole(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", proxy: proxy,
            seconds: NATSSinkTests.blackHoleSeconds)
        let check = DeliveryCheck(events: try server.deliveries("\(outbox.name).crash"), written: report.written)
        print("Redis black-holed for \(NATSSinkTests.blackHoleSeconds) s under load: \(report); \(check)")
        check.expectIntact(duplicates: true)
    }

    /// SIGTERM while the server is black-holed: out within the shutdown timeout plus a second.
    @Test func sigtermWhileBlackHoledExitsInTime() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        let proxy = TCPProxy(port: try TCPProxy.freePort(), targetPort: server.port)
        try proxy.start()
        defer { proxy.stop() }
        let took = try await sigtermDuringBlackHole(
            outbox, arguments: Self.arguments(outbox, url: "redis://127.0.0.1:\(proxy.port)"), proxy: proxy)
        print("Redis black-holed, SIGTERM: out after \(String(format: "%.2f", took)) s")
    }

    /// With `--redis-wait-replicas 1`, the replica stopped for 10 s under load:
    /// the primary takes the events but none is acknowledged (or confirmed)
    /// until the replica has it again.
    @Test func withWaitNothingIsConfirmedWhileTheReplicaIsAway() async throws {
        let outbox = try TestOutbox()
        let primary = try RedisServer(durable: false)
        let replica = try RedisServer(durable: false, ["--replicaof", "127.0.0.1", "\(primary.port)"])
        // The replica has done its first sync.
        let deadline = Date().addingTimeInterval(20)
        while try replica.command(["INFO", "replication"]).contains("master_link_status:up") == false
            && Date() < deadline
        {
            try await Task.sleep(for: .milliseconds(100))
        }
        var config = RedisSinkConfig(url: primary.url, stream: try DestinationTemplate("{topic}"))
        config.waitReplicas = 1
        config.waitTimeoutMilliseconds = 200
        let sink = try RedisSink(config: config, logger: RunningRelay.logger)
        let written = try await destinationOutage(
            outbox, sink: sink, topicTemplate: "\(outbox.name).{aggregatetype}", seconds: 10,
            stop: {
                replica.kill()
                // The outage starts when the primary knows its replica is gone: until
                // then a WAIT could still be answered from the replica's last ack.
                let gone = Date().addingTimeInterval(10)
                while (try? primary.command(["INFO", "replication"]))?.contains("connected_slaves:0") != true
                    && Date() < gone
                {
                    Thread.sleep(forTimeInterval: 0.05)
                }
                if (try? primary.command(["INFO", "replication"]))?.contains("connected_slaves:0") != true {
                    Issue.record("the primary still counts its replica 10 s after SIGKILL")
                }
            }, start: replica.start)
        let onPrimary = DeliveryCheck(events: try primary.deliveries("\(outbox.name).crash"), written: written)
        try await Task.sleep(for: .seconds(1))
        let onReplica = DeliveryCheck(events: try replica.deliveries("\(outbox.name).crash"), written: written)
        print("Redis replica stopped for 10 s with WAIT 1: primary \(onPrimary); replica \(onReplica)")
        onPrimary.expectIntact(duplicates: false)
        onReplica.expectIntact(duplicates: false)
    }

    /// SIGKILL in a loop under load. With a duplicate window the redeliveries
    /// are dropped by their marker; without one they reach the stream.
    @Test(arguments: [120, 0])
    func sigkillLoopLosesNothingAndTheDuplicateWindowDropsRedeliveries(windowSeconds: Int) async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        let arguments = Self.arguments(outbox, url: server.url, ["--redis-dedupe-window-s", "\(windowSeconds)"])
        let writers = ContinuousWriters(conninfo: outbox.conninfo, table: "\(outbox.schema).outbox")
        let kills = 8
        let (written, last) = try await writers.sigkillLoop(arguments, kills: kills, pauses: 300...900)
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(last.terminate() == 0)

        let check = DeliveryCheck(events: try server.deliveries("\(outbox.name).crash"), written: written)
        let markers = try server.command(["DBSIZE"])
        print("Redis crash loop, \(kills) SIGKILLs, duplicate window \(windowSeconds) s: \(check); keys \(markers)")
        #expect(written.committed.count > 100)
        check.expectIntact(duplicates: true)
        if windowSeconds > 0 { #expect(check.duplicates == 0, "redeliveries inside the window are dropped") }
    }

    /// An event whose stream key holds a string: to the dead-letter stream with the reason, or the relay stops before confirming it.
    @Test(arguments: [true, false])
    func anEventRedisRefusesGoesToTheDeadLetterStreamOrStopsTheRelay(withDLQ: Bool) async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        try server.command(["SET", "\(outbox.name).taken", "not a stream"])
        let cli = try CLI.start(
            Self.arguments(outbox, url: server.url, withDLQ ? ["--dlq-topic", "\(outbox.name)-dlq"] : []))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let before = try outbox.confirmedFlush
        try outbox.insert(aggregate: "free", key: "a")
        let lost = try outbox.insert(aggregate: "taken", key: "b")[0]
        try outbox.insert(aggregate: "free", key: "c")
        if withDLQ {
            try await outbox.waitUntilConfirmed(try outbox.currentWAL)
            #expect(cli.terminate() == 0)
            let dead = try server.entries("\(outbox.name)-dlq")
            #expect(dead.count == 1)
            #expect(dead.first?.field("id") == lost)
            #expect(dead.first?.field("dlq.original.stream") == "\(outbox.name).taken")
            #expect(dead.first?.field("dlq.error")?.hasPrefix("WRONGTYPE") == true)
            #expect(try server.entries("\(outbox.name).free").map { $0.field("key") } == ["a", "c"])
        } else {
            #expect(cli.wait() == 1)
            #expect(cli.stderr.contains("Redis refused event id=\(lost)"), "\(cli.stderr)")
            #expect(cli.stderr.contains("WRONGTYPE"))
            #expect(try outbox.confirmedFlush < (try outbox.currentWAL))
            #expect(try outbox.confirmedFlush >= before)
        }
    }

    /// Redis out of memory (maxmemory reached, noeviction): the batch is refused
    /// with OOM and held, nothing is confirmed; once memory is there it goes in.
    @Test func outOfMemoryHoldsTheEventsUntilRedisTakesThem() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        let cli = try CLI.start(Self.arguments(outbox, url: server.url))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let first = try outbox.insert(aggregate: "order", key: "a")[0]
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        try server.command(["CONFIG", "SET", "maxmemory", "1"])
        let second = try outbox.insert(aggregate: "order", key: "a")[0]
        try await cli.waitForStderr("OOM", within: 10)
        try await Task.sleep(for: .seconds(2))
        #expect(try outbox.confirmedFlush < (try outbox.currentWAL), "nothing Redis refused is confirmed")
        try server.command(["CONFIG", "SET", "maxmemory", "0"])
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(cli.terminate() == 0)
        #expect(try server.entries("\(outbox.name).order").map { $0.field("id") } == [first, second])
    }

    /// The duplicate-window script gone (SCRIPT FLUSH; a failover to a server
    /// that never loaded it): the batch is refused with NOSCRIPT, the sink
    /// reconnects, loads it again and adds the event; nothing is lost.
    @Test func aFlushedScriptIsLoadedAgain() async throws {
        let outbox = try TestOutbox()
        let server = try RedisServer()
        let cli = try CLI.start(Self.arguments(outbox, url: server.url, ["--redis-dedupe-window-s", "60"]))
        try await cli.waitForStderr("msg=streaming", within: 20)
        let first = try outbox.insert(aggregate: "order", key: "a")[0]
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(try server.command(["SCRIPT", "FLUSH"]) == "OK")
        let second = try outbox.insert(aggregate: "order", key: "a")[0]
        try await outbox.waitUntilConfirmed(try outbox.currentWAL)
        #expect(cli.terminate() == 0)
        #expect(try server.entries("\(outbox.name).order").map { $0.field("id") } == [first, second])
        #expect(cli.stderr.contains("NOSCRIPT"), "\(cli.stderr)")
    }

    /// A wrong password is a start-up error that names the cause and not the password;
    /// a server that is not durable gets a warning.
    @Test func aWrongPasswordIsAStartUpErrorAndAVolatileServerIsWarnedAbout() async throws {
        let outbox = try TestOutbox()
        let locked = try RedisServer(["--requirepass", "right"])
        let wrong = try CLI.start(Self.arguments(outbox, url: "redis://:wr0ng-pw@127.0.0.1:\(locked.port)"))
        #expect(wrong.wait() == 1)
        #expect(wrong.stderr.contains("Redis refused the credentials"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("wr0ng-pw"))

        let volatile = try RedisServer(durable: false)
        let cli = try CLI.start(Self.arguments(outbox, url: volatile.url))
        try await cli.waitForStderr("acknowledges from memory", within: 20)
        #expect(cli.terminate() == 0)
    }
}
