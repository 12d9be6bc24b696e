import Foundation
import PGOutput
import Testing

@testable import OutboxCore

@Suite("event output")
struct EventOutputTests {
    func event(
        payload: String?, format: OutboxEvent.PayloadFormat = .json, tombstone: Bool = false
    )
        -> OutboxEvent
    {
        OutboxEvent(
            id: "e\"1", topic: "outbox.event.order", key: "k\n", type: "T",
            payload: payload.map { Array($0.utf8) }, payloadFormat: format,
            headers: [("id", "e\"1"), ("x", "ü\u{1}")], tombstone: tombstone, lsn: LSN(0x1_0000_00AB),
            commitTime: PostgresTimestamp(unixMicroseconds: 1_700_000_000_000_001))
    }

    func parse(_ e: OutboxEvent) throws -> [String: Any] {
        var line: [UInt8] = []
        e.appendJSONLine(to: &line)
        #expect(line.last == 10 && line.filter { $0 == 10 }.count == 1)
        return try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
    }

    @Test func jsonPayloadIsEmbeddedVerbatim() throws {
        var line: [UInt8] = []
        event(payload: #"{"b": 2, "a": [1.50]}"#).appendJSONLine(to: &line)
        #expect(String(decoding: line, as: UTF8.self).contains(#""payload":{"b": 2, "a": [1.50]},"#))
        let object = try parse(event(payload: #"{"b": 2}"#))
        #expect(object["id"] as? String == "e\"1" && object["key"] as? String == "k\n")
        #expect(object["lsn"] as? String == "1/AB" && object["tombstone"] as? Bool == false)
        #expect((object["headers"] as? [String: String])?["x"] == "ü\u{1}")
        #expect(object["commit_time_us"] as? Int == 1_700_000_000_000_001)
    }

    @Test func tombstoneAndNullPayload() throws {
        #expect(try parse(event(payload: nil, tombstone: true))["payload"] is NSNull)
        #expect(try parse(event(payload: nil, tombstone: true))["tombstone"] as? Bool == true)
        #expect(try parse(event(payload: nil))["payload"] is NSNull)
    }

    @Test func textAndBytesPayloads() throws {
        #expect(
            try parse(event(payload: "he said \"hi\"", format: .text))["payload"] as? String
                == "he said \"hi\"")
        let bytes = OutboxEvent(
            id: "1", topic: "t", key: "k", type: "T", payload: [0, 255, 16], payloadFormat: .bytes,
            headers: [], tombstone: false, lsn: .zero, commitTime: .init(rawValue: 0))
        let object = try parse(bytes)
        #expect(
            object["payload"] as? String == "AP8Q" && object["payload_encoding"] as? String == "base64")
    }
}

@Suite("JSON scanner")
struct JSONTextTests {
    @Test func membersKeepTheirBytes() throws {
        let text = Array(
            #" {"a" : "x\u00e9\ud83d\ude00", "b":[1,{"c":null}], "n": -1.5e3, "t": true} "#.utf8)
        let members = try JSONText.objectMembers(text)
        #expect(members.map(\.name) == ["a", "b", "n", "t"])
        #expect(members.map(\.kind) == [.string, .array, .number, .bool])
        #expect(try JSONText.stringValue(text, members[0].range) == "xé😀")
        #expect(String(decoding: text[members[1].range], as: UTF8.self) == #"[1,{"c":null}]"#)
    }

    @Test(arguments: [
        #""#, #"[]"#, #"{"#, #"{"a"}"#, #"{"a":}"#, #"{"a":1,}"#, #"{"a":01x}"#, #"{"a":"\x"}"#,
        #"{"a":"\ud800"}"#, #"{} x"#, "{\"a\":\"\u{1}\"}", #"{"a":tru}"#,
    ])
    func invalidDocumentsThrow(_ text: String) {
        #expect(throws: JSONText.SyntaxError.self) { try JSONText.objectMembers(Array(text.utf8)) }
    }

    @Test func deepNestingIsRejectedNotACrash() {
        let deep =
            "{\"a\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
            + "}"
        #expect(throws: JSONText.SyntaxError.self) { try JSONText.objectMembers(Array(deep.utf8)) }
    }

    @Test func invalidUTF8InStringsIsRejected() {
        #expect(throws: JSONText.SyntaxError.self) {
            try JSONText.objectMembers([123, 34, 97, 34, 58, 34, 0xC3, 34, 125])
        }
    }
}

@Suite("UTF-8 validation")
struct UTF8ValidationTests {
    /// Agrees with the standard library on every 1–3 byte sequence and on edge cases.
    @Test func agreesWithTheStandardLibrary() {
        var cases: [[UInt8]] = [
            [], Array("größe ✓ 😀".utf8), [0xF4, 0x90, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xC0, 0xAF],
            [0xF0, 0x9F, 0x98],
        ]
        for a in stride(from: 0, through: 255, by: 1) {
            for b in stride(from: 0x70, through: 0xC5, by: 3) {
                cases.append([UInt8(a), UInt8(b)])
                cases.append([UInt8(a), UInt8(b), 0x80])
            }
        }
        for bytes in cases {
            let ours = UTF8Text.isValid(bytes[...])
            #expect(ours == (String(validating: bytes, as: UTF8.self) != nil), "\(bytes)")
        }
    }
}
