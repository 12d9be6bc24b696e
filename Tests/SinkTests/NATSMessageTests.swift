import NATSSink
import OutboxCore
import PGOutput
import Testing

@Suite("NATS sink rules: subjects, headers, failures")
struct NATSMessageTests {
    func event(
        topic: String = "outbox.event.Order", key: String = "o-1", payload: String? = #"{"a":1}"#,
        tombstone: Bool = false
    ) -> OutboxEvent {
        OutboxEvent(
            id: "e-1", topic: topic, key: key, type: "OrderCreated", payload: payload.map { Array($0.utf8) },
            headers: [("id", "e-1"), ("type", "OrderCreated"), ("tenant", "t9")], tombstone: tombstone,
            lsn: LSN(rawValue: 0x16B_3748), commitTime: PostgresTimestamp(rawValue: 0))
    }

    @Test func subjectsFollowNATSRules() {
        #expect(NATSMessage.subjectProblem("outbox.event.Order") == nil)
        #expect(NATSMessage.subjectProblem("") == "is empty")
        #expect(NATSMessage.subjectProblem("outbox.event.") != nil)
        #expect(NATSMessage.subjectProblem(".outbox") != nil)
        #expect(NATSMessage.subjectProblem("a..b") != nil)
        #expect(NATSMessage.subjectProblem("outbox.*") != nil)
        #expect(NATSMessage.subjectProblem("outbox.>") != nil)
        #expect(NATSMessage.subjectProblem("outbox.order 1") == "contains whitespace")
        #expect(NATSMessage.subjectProblem("outbox.a*b") == nil)  // not a wildcard token
    }

    @Test func headersMustBeHTTPStyleLines() {
        #expect(NATSMessage.headerProblem(name: "tenant", value: "t9") == nil)
        #expect(NATSMessage.headerProblem(name: "bad name", value: "x") != nil)
        #expect(NATSMessage.headerProblem(name: "a:b", value: "x") != nil)
        #expect(NATSMessage.headerProblem(name: "note", value: "two\nlines")?.contains("line break") == true)
    }

    @Test func anEventBecomesAMessageWithItsIdForDeduplication() {
        let headers = NATSMessage.headers(for: event())
        #expect(headers.map(\.name) == ["Nats-Msg-Id", "key", "id", "type", "tenant", "lsn"])
        #expect(headers.map(\.value) == ["e-1", "o-1", "e-1", "OrderCreated", "t9", "0/16B3748"])
        #expect(event().messageBody == Array(#"{"a":1}"#.utf8))
        let tombstone = event(payload: nil, tombstone: true)
        #expect(tombstone.messageBody.isEmpty)
        #expect(NATSMessage.headers(for: tombstone).last! == ("tombstone", "true"))
        #expect(event(payload: nil).messageBody == Array("null".utf8))
    }

    @Test func failuresOfTheDestinationAreRetriedThoseOfTheEventAreNot() {
        let s = "outbox.event.Order"
        guard
            case .permanent(let why) = NATSMessage.classify(
                status: "NATS_NO_RESPONDERS", errorCode: 0, text: "", subject: s)
        else {
            Issue.record("no responders must be permanent")
            return
        }
        #expect(why.contains("no JetStream stream covers subject outbox.event.Order"))
        #expect(NATSMessage.classify(status: "NATS_MAX_PAYLOAD", errorCode: 0, text: "", subject: s) != .transient(""))
        if case .transient = NATSMessage.classify(status: "NATS_TIMEOUT", errorCode: 0, text: "Timeout", subject: s) {
        } else {
            Issue.record("a timeout must be transient")
        }
        if case .transient = NATSMessage.classify(
            status: "NATS_STATUS_1", errorCode: 10008, text: "cluster", subject: s)
        {
        } else {
            Issue.record("JetStream unavailable must be transient")
        }
        if case .permanent(let why) = NATSMessage.classify(
            status: "NATS_ERR", errorCode: 10077, text: "maximum messages exceeded", subject: s)
        {
            #expect(why.contains("maximum messages exceeded (error 10077)"))
        } else {
            Issue.record("a stream limit must be permanent")
        }
    }

    @Test func templatesNameOnlyKnownFields() throws {
        let template = try DestinationTemplate("events.{type}.{key}")
        #expect(template.render(event()) == "events.OrderCreated.o-1")
        #expect(try DestinationTemplate("{topic}").render(event()) == "outbox.event.Order")
        #expect(try DestinationTemplate("fixed.subject").isConstant)
        #expect(throws: TemplateError.self) { try DestinationTemplate("events.{aggregate}") }
        #expect(throws: TemplateError.self) { try DestinationTemplate("events.{key") }
        #expect(throws: TemplateError.self) { try DestinationTemplate("") }
    }

    @Test func credentialsInURLsAreRedacted() {
        #expect(redactedURL("nats://alice:s3cret@127.0.0.1:4222") == "nats://[redacted]@127.0.0.1:4222")
        #expect(redactedURL("nats://tok@a:1,nats://b:2") == "nats://[redacted]@a:1,nats://b:2")
        #expect(redactedURL("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222")
    }
}
