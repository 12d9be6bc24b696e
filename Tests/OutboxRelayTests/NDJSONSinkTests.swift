import Foundation
import OutboxCore
import PGOutput
import Testing

@testable import OutboxRelay

@Suite("NDJSON sinks")
struct NDJSONSinkTests {
    func event(payload: String) -> OutboxEvent {
        OutboxEvent(
            id: "1", topic: "t", key: "k\n", type: "T", payload: Array(payload.utf8), payloadFormat: .json,
            headers: [], tombstone: false, lsn: .zero, commitTime: .init(rawValue: 0))
    }

    @Test func fileSinkAcknowledgesAfterFsyncAndAppends() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "outbox-relay-\(UUID()).ndjson"
        ).path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try NDJSONSink.file(path: path)
        try sink.send(event(payload: "{}"), ticket: 7)
        try sink.send(event(payload: "[]"), ticket: 8)
        #expect(
            try sink.poll(timeoutMilliseconds: 0) == [
                Acknowledgement(ticket: 7, weight: 4), Acknowledgement(ticket: 8, weight: 4),
            ])
        #expect(try sink.poll(timeoutMilliseconds: 0).isEmpty)
        let again = try NDJSONSink.file(path: path)
        try again.send(event(payload: "1"), ticket: 9)
        _ = try again.flush(timeoutMilliseconds: 0)
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 3)
    }

    @Test func unopenableFileIsAClearError() {
        #expect { try NDJSONSink.file(path: "/nonexistent-dir/x.ndjson") } throws: { error in
            "\(error)".contains(
                "cannot open sink file /nonexistent-dir/x.ndjson: No such file or directory")
        }
    }
}
