import MQTTSink
import Testing

@Suite("MQTT endpoint and topic checks")
struct MQTTEndpointTests {
    @Test func urlsGiveHostPortCredentialsAndTLS() throws {
        let plain = try MQTTEndpoint.parse("mqtt://broker.example:1884").get()
        #expect(plain.host == "broker.example" && plain.port == 1884 && plain.username == nil && !plain.tls)
        let secure = try MQTTEndpoint.parse("mqtts://relay:p%40ss@broker.example").get()
        #expect(secure.port == 8883 && secure.tls && secure.username == "relay" && secure.password == "p@ss")
        #expect(secure.redacted == "mqtts://[redacted]@broker.example:8883")
        #expect(try MQTTEndpoint.parse("mqtt://127.0.0.1").get().port == 1883)
    }

    @Test func badURLsAreNamedWithoutQuotingThem() {
        for url in ["http://broker:1883", "broker:1883", "mqtt://", "mqtt://user:s3cret@"] {
            guard case .failure(let problem) = MQTTEndpoint.parse(url) else {
                Issue.record("\(url) was accepted")
                continue
            }
            #expect(!problem.description.contains("s3cret"), "\(problem)")
        }
    }

    @Test func topicsWithWildcardsOrNothingCannotBePublishedTo() {
        #expect(MQTTEndpoint.topicProblem("outbox.event.order") == nil)
        #expect(MQTTEndpoint.topicProblem("orders/42/paid") == nil)
        #expect(MQTTEndpoint.topicProblem("") != nil)
        #expect(MQTTEndpoint.topicProblem("orders/+/paid")?.contains("wildcard") == true)
        #expect(MQTTEndpoint.topicProblem("orders/#")?.contains("wildcard") == true)
        #expect(MQTTEndpoint.topicProblem("a\0b") != nil)
        #expect(MQTTEndpoint.topicProblem(String(repeating: "a", count: 65_536)) != nil)
    }
}
