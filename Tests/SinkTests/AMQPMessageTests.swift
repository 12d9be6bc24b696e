import OutboxCore
import RabbitMQSink
import Testing

@Suite("RabbitMQ sink rules: names, refusals, hints")
struct AMQPMessageTests {
    @Test func shortStringsAreAtMost255BytesWithoutNUL() {
        #expect(AMQPMessage.routingKeyProblem("outbox.event.Order") == nil)
        #expect(AMQPMessage.routingKeyProblem(String(repeating: "k", count: 255)) == nil)
        #expect(AMQPMessage.routingKeyProblem(String(repeating: "k", count: 256))?.contains("256 bytes") == true)
        #expect(
            AMQPMessage.routingKeyProblem(String(repeating: "é", count: 128))?.contains("256 bytes") == true,
            "bytes, not characters")
        #expect(AMQPMessage.routingKeyProblem("a\u{0}b")?.contains("NUL") == true)
        #expect(AMQPMessage.routingKeyProblem("") == nil, "an empty routing key is allowed")
    }

    @Test func exchangesMayBeDefaultButNotReserved() {
        #expect(AMQPMessage.exchangeProblem("") == nil)
        #expect(AMQPMessage.exchangeProblem("outbox") == nil)
        #expect(AMQPMessage.exchangeProblem("amq.topic") == nil)
        #expect(AMQPMessage.exchangeProblem("amq.mine")?.contains("reserved") == true)
    }

    @Test func messageIdAndHeaderNamesAreChecked() {
        #expect(AMQPMessage.messageProblem(id: "e-1", headers: [("key", "o-1"), ("tenant", "t9")]) == nil)
        #expect(
            AMQPMessage.messageProblem(id: String(repeating: "i", count: 300), headers: [])?.contains("message_id")
                == true)
        #expect(AMQPMessage.messageProblem(id: "e-1", headers: [("", "x")])?.contains("empty name") == true)
        #expect(AMQPMessage.messageProblem(id: "e-1", headers: [("k", "a\u{0}b")])?.contains("NUL") == true)
        #expect(
            AMQPMessage.messageProblem(id: "e-1", headers: [("k", "line\nbreak, any bytes")]) == nil,
            "AMQP long strings carry anything")
    }

    @Test func refusalsNameTheExchangeAndRoutingKey() {
        guard
            case .refused(let returned) = AMQPMessage.returned(
                code: 312, text: "NO_ROUTE", exchange: "outbox", routingKey: "outbox.event.X")
        else { Issue.record("a return is a refusal"); return }
        #expect(returned.contains("unroutable (312 NO_ROUTE)"))
        #expect(returned.contains("exchange \"outbox\" for routing key \"outbox.event.X\""))
        guard
            case .refused(let defaultExchange) = AMQPMessage.returned(
                code: 312, text: "NO_ROUTE", exchange: "", routingKey: "q")
        else { return }
        #expect(defaultExchange.contains("the default exchange"))
        guard case .refused(let nacked) = AMQPMessage.nacked(exchange: "outbox", routingKey: "k") else { return }
        #expect(nacked.contains("nacked") && nacked.contains("reject-publish"))
    }

    @Test func theBrokersSizeLimitIsReadFromItsCloseText() {
        #expect(
            AMQPMessage.maxMessageSize(
                closeCode: 406,
                text: "PRECONDITION_FAILED - message size 200000 is larger than configured max size 131072") == 131072)
        #expect(AMQPMessage.maxMessageSize(closeCode: 406, text: "PRECONDITION_FAILED - inequivalent arg") == nil)
        #expect(AMQPMessage.maxMessageSize(closeCode: 320, text: "CONNECTION_FORCED - max size 5") == nil)
    }

    @Test func aTrailingSlashIsTheEmptyVhost() {
        let error = "login: the server closed the connection: 530 NOT_ALLOWED - vhost  not found"
        #expect(AMQPMessage.vhostHint(url: "amqp://u:p@h:5672/", error: error)?.contains("empty vhost") == true)
        #expect(AMQPMessage.vhostHint(url: "amqp://u:p@h:5672", error: error) == nil)
        #expect(AMQPMessage.vhostHint(url: "amqp://u:p@h:5672/prod", error: error) == nil)
        #expect(AMQPMessage.vhostHint(url: "amqp://u:p@h:5672/", error: "403 ACCESS_REFUSED") == nil)
    }

    @Test func passwordsAreRedacted() {
        #expect(redactedURL("amqp://alice:s3cret@h:5672/prod") == "amqp://[redacted]@h:5672/prod")
        #expect(redactedURL("amqp://h:5672") == "amqp://h:5672")
        #expect(redactedURL("amqp://alice:p@ss@h") == "amqp://[redacted]@h")
    }
}
