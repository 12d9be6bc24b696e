import Testing

@testable import OutboxCore

@Suite("Debezium's value encodings and topic routing")
struct DebeziumEncodingTests {
    @Test func jacksonStringEscapes() {
        var out: [UInt8] = []
        DebeziumEncoding.appendJacksonString(Array("a\"b\\c\n\t\u{8}\u{C}\r\u{1}é/😀".utf8), to: &out)
        #expect(String(decoding: out, as: UTF8.self) == #""a\"b\\c\n\t\b\f\r\u0001é/\uD83D\uDE00""#)
    }

    @Test(arguments: [
        (1.5, "1.5"), (2.0, "2.0"), (0.001, "0.001"), (1e-4, "1.0E-4"), (1234567.0, "1234567.0"),
        (1e7, "1.0E7"), (12345678.9, "1.23456789E7"), (-0.5, "-0.5"), (0.1, "0.1"), (1.0e21, "1.0E21"), (0.0, "0.0"),
    ])
    func javaDoubleToString(value: Double, expected: String) {
        #expect(DebeziumEncoding.javaDouble(value) == expected)
    }

    @Test func expandIsCompactKeepsOrderAndDropsNullMembers() {
        func expand(_ text: String, keepNull: Bool = false) -> String? {
            DebeziumEncoding.expand(Array(text.utf8), dropNullMembers: !keepNull).map {
                String(decoding: $0, as: UTF8.self)
            }
        }
        #expect(
            expand(#"{"b": 1, "a": [1.50, 2, "x \"y\""], "n": null, "o": {}}"#)
                == #"{"b":1,"a":[1.5,2,"x \"y\""],"o":{}}"#)
        #expect(expand(#"{"n": null}"#, keepNull: true) == #"{"n":null}"#)
        #expect(expand(#"[true, false, null]"#) == "[true,false,null]")
        #expect(expand(#"{"s": "Zoë 😀"}"#) == #"{"s":"Zoë \uD83D\uDE00"}"#)
        #expect(expand(#""a string""#) == nil, "not an object or array: Debezium keeps the string")
        #expect(expand("{broken") == nil)
        #expect(expand(#"{"a": 1} x"#) == nil)
    }

    @Test func topicRouteIsJavaRegexRouter() throws {
        let route = TopicRoute(regex: "(?<t>[a-z]+)-(\\d+)", replacement: "events.${t}.v$2")
        let regex = try Regex(route.regex)
        #expect(try route.topic(for: "order-7", compiled: regex) == "events.order.v7")
        #expect(try route.topic(for: "Order-7", compiled: regex) == "Order-7", "no whole match: the value itself")
        #expect(route.problem == nil)
        #expect(TopicRoute(regex: "(", replacement: "x").problem?.contains("route.topic.regex") == true)
        #expect(TopicRoute(regex: ".*", replacement: "x${").problem?.contains("unclosed") == true)
        let missing = TopicRoute(regex: "(.*)", replacement: "${nope}")
        #expect(throws: TopicRoute.RouteError.self) { try missing.topic(for: "a", compiled: try Regex(missing.regex)) }
    }
}
