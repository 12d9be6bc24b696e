import Foundation
import PGOutput
import TestFixtures
import Testing

@testable import OutboxCore

/// Feeds the captured `v1-router` stream (tables in schema `loose`) through
/// the relay's own stream machine, and collects what each change becomes
/// (poison rows are accepted by a dead-letter destination, so the stream goes on).
private func routeFixture(
    _ configure: (inout RoutingConfig) -> Void = { _ in }
) throws -> (
    events: [OutboxEvent], poison: [PoisonEvent], outboxChanges: Int
) {
    var config = RoutingConfig()
    config.schema = "loose"
    configure(&config)
    var machine = StreamMachine(configuration: StreamConfiguration(routing: config))
    let now = Instant.milliseconds(1)
    _ = machine.sessionStarted(ServerSettings(slotConfirmedFlush: .zero, walSenderTimeoutMilliseconds: 0), now: now)
    var events: [OutboxEvent] = []
    var poison: [PoisonEvent] = []
    for bytes in try Fixture.messages("v1-router") {
        let message = ReplicationMessage.xLogData(
            walStart: LSN(1), walEnd: LSN(1), sendTime: PostgresTimestamp(rawValue: 0), payload: bytes)
        switch machine.received(message, now: now) {
        case .publish(let event, _): events.append(event)
        case .deadLetter(let row, _):
            poison.append(row)
            _ = machine.deadLetterResult(row, accepted: true)
        case .end(let reason): throw reason
        case .none: break
        }
    }
    return (events, poison, machine.stats.suppressedUpdates + machine.stats.suppressedDeletes)
}

@Suite("outbox router on rows captured from PostgreSQL 15")
struct RouterTests {
    @Test func debeziumCompatibleDefaults() throws {
        let (events, _, _) = try routeFixture()
        let r1 = try #require(events.first { $0.id == "r1" })
        #expect(r1.topic == "outbox.event.order")
        #expect(r1.key == "1")
        #expect(r1.type == "Created")
        #expect(String(decoding: r1.payload ?? [], as: UTF8.self) == #"{"x": 1}"#)
        #expect(r1.payloadFormat == .json)
        // jsonb stores object keys ordered by length, then bytes.
        #expect(r1.headers.map(\.name) == ["id", "type", "h", "esc", "num", "obj"])
        let headers = Dictionary(uniqueKeysWithValues: r1.headers.map { ($0.name, $0.value) })
        #expect(headers["id"] == "r1" && headers["type"] == "Created" && headers["h"] == "v")
        #expect(headers["num"] == "3" && headers["obj"] == #"{"a": [1]}"#)
        #expect(headers["esc"] == "a\"bé")
        #expect(!r1.tombstone)
        #expect(r1.lsn > .zero)
    }

    @Test func poisonRowsNameRowAndReason() throws {
        let (_, poison, _) = try routeFixture()
        let reasons = Dictionary(uniqueKeysWithValues: poison.compactMap { p in p.id.map { ($0, p) } })
        #expect(reasons["r2"]?.reason == #"column "aggregateid" is NULL"#)
        #expect(reasons["r3"]?.reason == #"column "headers" must be a JSON object or null, not an array"#)
        #expect(
            reasons["r4"]?.reason.contains(#"topic "outbox.event.bad topic/x" is not a valid topic name"#)
                == true)
        let r2 = try #require(reasons["r2"])
        #expect(r2.description.contains(#"row id="r2""#) && r2.description.contains("at LSN \(r2.lsn)"))
        // Messages: invalid JSON and a missing member.
        #expect(poison.contains { $0.id == nil && $0.reason.hasPrefix("content is not a JSON object") })
        #expect(reasons["m3"]?.reason == #"member "aggregateid" is missing"#)
    }

    @Test func nullPayloadIsATombstoneUnlessJSONNullIsAsked() throws {
        // Debezium's EventRouter under StringConverter: a NULL payload is a record with a null value.
        let tomb = try #require(try routeFixture().events.first { $0.id == "r5" })
        #expect(tomb.payload == nil && tomb.tombstone && tomb.key == "1")
        let plain = try #require(try routeFixture { $0.tombstones = false }.events.first { $0.id == "r5" })
        #expect(plain.payload == nil && !plain.tombstone)
    }

    @Test func debeziumOptionsOnCapturedRows() throws {
        // route.topic.regex / replacement, Java syntax, whole-value match; no match: the value itself.
        let routed = try routeFixture {
            $0.topicRoute = TopicRoute(regex: "(?<kind>ord)(er)", replacement: "${kind}s\\.$2")
        }.events
        #expect(routed.first { $0.id == "r1" }?.topic == "ords.er")
        #expect(
            try routeFixture { $0.topicRoute = .debeziumDefault }.events.first { $0.id == "r1" }?.topic
                == "outbox.event.order")
        // JsonConverter (schemas.enable=false): the payload as a JSON string, or expanded.
        let json = try routeFixture { $0.valueEncoding = .json }.events
        #expect(
            json.first { $0.id == "r1" }.map { String(decoding: $0.payload ?? [], as: UTF8.self) } == #""{\"x\": 1}""#)
        let text = try routeFixture {
            $0.table = "text_outbox"
            $0.headersColumn = nil
            $0.valueEncoding = .json
            $0.expandJSONPayload = true  // not JSON: stays a string, as Debezium after its warning
        }.events
        #expect(
            text.first { $0.id == "t1" }.map { String(decoding: $0.payload ?? [], as: UTF8.self) }
                == #""plain \"text\"""#)
        let bytes = try routeFixture {
            $0.table = "bytes_outbox"
            $0.headersColumn = nil
            $0.valueEncoding = .json
        }.events
        #expect(bytes.first { $0.id == "b1" }.map { String(decoding: $0.payload ?? [], as: UTF8.self) } == #""AP8Q""#)
        let expanded = try routeFixture {
            $0.valueEncoding = .json
            $0.expandJSONPayload = true
            $0.envelopeColumns = [.init(column: "tenant", header: "org"), .init(column: "type", header: "type")]
        }.events
        let r1 = try #require(expanded.first { $0.id == "r1" })
        #expect(
            String(decoding: r1.payload ?? [], as: UTF8.self) == #"{"payload":{"x":1},"org":"acme","type":"Created"}"#)
        // In the envelope a NULL payload is {"payload":null,…}, not a tombstone (as Debezium).
        let r5 = try #require(expanded.first { $0.id == "r5" })
        #expect(
            !r5.tombstone
                && String(decoding: r5.payload ?? [], as: UTF8.self) == #"{"payload":null,"org":null,"type":"Deleted"}"#
        )
        // Messages: members are already JSON; null members dropped from the expanded payload.
        let m1 = try #require(expanded.first { $0.id == "m1" })
        #expect(
            String(decoding: m1.payload ?? [], as: UTF8.self) == #"{"payload":[1,{}],"org":"acme","type":"Issued"}"#)
        // route.tombstone.on.empty.payload: blank payloads too.
        #expect(
            try routeFixture { $0.tombstoneOnEmptyPayload = true }.events.first { $0.id == "r5" }?.tombstone == true)
    }

    @Test func updatesEndTheSessionWhenFatal() throws {
        #expect(throws: SessionEnd.self) { try routeFixture { $0.updateBehavior = .fatal } }
        #expect(try routeFixture().outboxChanges > 0)
    }

    @Test func updatesAndDeletesOfTheOutboxAreNotEvents() throws {
        let (events, _, suppressed) = try routeFixture()
        #expect(suppressed == 1 + 5)  // one UPDATE, five DELETEd rows (REPLICA IDENTITY FULL)
        #expect(Set(events.map(\.id)) == ["r1", "r5", "m1"])
    }

    @Test func logicalMessageOutbox() throws {
        let m1 = try #require(try routeFixture().events.first { $0.id == "m1" })
        #expect(m1.topic == "outbox.event.invoice" && m1.key == "7" && m1.type == "Issued")
        #expect(String(decoding: m1.payload ?? [], as: UTF8.self) == #"[1, {"z": null}]"#)
        #expect(m1.headers.map(\.name) == ["id", "type", "k"])
    }

    @Test func otherTablesAndPayloadTypes() throws {
        // bytes_outbox and text_outbox are not the configured table.
        #expect(try routeFixture().events.allSatisfy { $0.topic != "outbox.event.blob" })
        let bytes = try #require(try routeFixture { $0.table = "bytes_outbox" }.events.first)
        #expect(bytes.payload == [0x00, 0xFF, 0x10] && bytes.payloadFormat == .bytes)
        let text = try #require(try routeFixture { $0.table = "text_outbox" }.events.first)
        #expect(
            String(decoding: text.payload ?? [], as: UTF8.self) == #"plain "text""#
                && text.payloadFormat == .text)
    }

    @Test func configurableColumnsTemplateAndExtraHeaders() throws {
        let (events, _, _) = try routeFixture {
            $0.topicTemplate = "{aggregatetype}.{type}.v1"
            $0.headerColumns = [.init(column: "tenant", header: "x-tenant")]
            $0.headersColumn = nil
        }
        let r1 = try #require(events.first { $0.id == "r1" })
        #expect(r1.topic == "order.Created.v1")
        #expect(r1.headers.map(\.name) == ["id", "type", "x-tenant"])
        #expect(r1.headers.last?.value == "acme")
        let m1 = try #require(events.first { $0.id == "m1" })
        #expect(m1.headers.last?.name == "x-tenant" && m1.headers.last?.value == "acme")
    }

    @Test func misnamedColumnPoisonsEveryRowWithAClearReason() throws {
        let (events, poison, _) = try routeFixture { $0.aggregateIDColumn = "aggregate_id" }
        #expect(events.allSatisfy { $0.id.hasPrefix("m") })
        #expect(
            poison.contains {
                $0.reason
                    == #"table loose.outbox has no column "aggregate_id" (configured column names do not match the table)"#
            })
    }

    @Test func configValidation() {
        var config = RoutingConfig()
        #expect(config.validate().isEmpty)
        config.topicTemplate = "x.{aggregate}"
        #expect(
            config.validate() == [
                #"topic template "x.{aggregate}" has an unknown placeholder; use {aggregatetype} and {type}"#
            ])
    }

    @Test func headersMembersNeverSpoofTheRelaysOwnHeaders() {
        let reserved: Set<String> = ["id", "type", "lsn", "tenant"]
        let spoof = Array(#"{"id": "forged", "type": "Forged", "lsn": "0/1", "tenant": "x", "trace": "t-1"}"#.utf8)
        guard case .success(let members) = OutboxRouter.headerMembers(spoof, column: "headers", reserved: reserved)
        else {
            Issue.record("a spoofing object is still an object")
            return
        }
        #expect(members.kept.map(\.name) == ["trace"] && members.dropped == 4)
        // null is valid JSON and means no headers; other JSON values are poison with an accurate reason.
        guard
            case .success(let none) = OutboxRouter.headerMembers(
                Array(" null ".utf8), column: "headers", reserved: reserved)
        else {
            Issue.record("null must mean no headers")
            return
        }
        #expect(none.kept.isEmpty && none.dropped == 0)
        for (json, kind) in [(#""text""#, "a string"), ("42", "a number"), ("true", "a boolean"), ("[]", "an array")] {
            guard
                case .failure(let failure) = OutboxRouter.headerMembers(
                    Array(json.utf8), column: "headers", reserved: reserved)
            else {
                Issue.record("\(json) must be a poison row")
                continue
            }
            #expect(failure.reason == "column \"headers\" must be a JSON object or null, not \(kind)")
        }
    }

    @Test func qualifiedTableNamesAcceptSQLQuoting() {
        #expect(parseQualifiedTableName("outbox")! == ("public", "outbox"))
        #expect(parseQualifiedTableName("app.outbox")! == ("app", "outbox"))
        #expect(parseQualifiedTableName(#""Sales"."Outbox""#)! == ("Sales", "Outbox"))
        #expect(parseQualifiedTableName(#""my.schema"."out.box""#)! == ("my.schema", "out.box"))
        #expect(parseQualifiedTableName(#""a""b".t"#)! == (#"a"b"#, "t"))
        for bad in ["", ".", "a.", ".b", "a.b.c", #""open"#, #"a"b".t"#, #""x"y.t"#] {
            #expect(parseQualifiedTableName(bad) == nil, "\(bad)")
        }
    }
}
