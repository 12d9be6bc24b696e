import PGOutput
import TestFixtures
import Testing

@Suite("pgoutput decoder on malformed input")
struct MalformedInputTests {
    /// Every strict prefix of every captured message (up to 40 of each type per
    /// fixture) must throw a DecodeError, never trap, and leave the decoder's
    /// state as it was.
    @Test(arguments: [("v1-all", 1), ("v1-binary", 1), ("v2-streaming", 2), ("v3-two-phase", 3), ("v4-parallel", 4)])
    func truncationSweep(fixture: String, protocolVersion: Int) throws {
        var decoder = PGOutputDecoder(protocolVersion: protocolVersion)
        var perType: [UInt8: Int] = [:]
        var prefixesTried = 0
        for message in try Fixture.messages(fixture) {
            let type = message[0]
            perType[type, default: 0] += 1
            if perType[type]! <= 40 {
                for length in 0..<message.count {
                    var probe = decoder
                    do {
                        _ = try probe.decode(Array(message[..<length]))
                        Issue.record(
                            "prefix \(length)/\(message.count) of a '\(UnicodeScalar(type))' message decoded")
                    } catch {
                        #expect(error.offset <= length)
                        #expect(error.messageType == (length == 0 ? nil : type))
                    }
                    #expect(
                        probe.relations == decoder.relations && probe.inStreamBlock == decoder.inStreamBlock)
                    prefixesTried += 1
                }
                // One byte too many is also an error: the message must be consumed exactly.
                var probe = decoder
                #expect(throws: DecodeError.self) { try probe.decode(message + [0]) }
            }
            _ = try decoder.decode(message)
        }
        #expect(prefixesTried > 1000)
    }

    @Test func unknownMessageTypeIsNamed() {
        var decoder = PGOutputDecoder()
        do {
            _ = try decoder.decode([0x5A, 1, 2, 3])
            Issue.record("decoded")
        } catch {
            #expect(error.reason == .unknownMessageType)
            #expect(error.description.contains("unknown ('Z', 0x5a) at offset 0"))
            #expect(error.description.contains("5a010203"))
        }
    }

    @Test func insertBeforeItsRelationIsAnError() throws {
        let messages = try Fixture.messages("v1-all")
        var decoder = PGOutputDecoder()
        do {
            _ = try decoder.decode(messages[2])  // the first Insert, without Relation
            Issue.record("decoded")
        } catch {
            guard case .unknownRelation = error.reason else {
                Issue.record("\(error)")
                return
            }
            #expect(error.description.contains("insert ('I', 0x49)"))
        }
    }

    @Test func columnCountMismatchIsAnError() throws {
        let messages = try Fixture.messages("v1-all")
        var decoder = PGOutputDecoder()
        _ = try decoder.decode(messages[1])  // Relation public.outbox, 7 columns
        var insert = messages[2]
        // Tuple column count lives right after 'I', OID (4) and 'N': offset 6.
        insert[7] = 6
        #expect(throws: DecodeError.self) { try decoder.decode(insert) }
    }

    @Test func negativeLengthsAreRejected() {
        var decoder = PGOutputDecoder()
        // Message 'M', flags, LSN, prefix "p\0", length -1.
        let bytes: [UInt8] =
            [77, 1] + [UInt8](repeating: 0, count: 8) + [112, 0] + [0xFF, 0xFF, 0xFF, 0xFF]
        do {
            _ = try decoder.decode(bytes)
            Issue.record("decoded")
        } catch {
            #expect(error.reason == .invalidValue(field: "content", value: -1))
        }
    }

    @Test func streamStopOutsideStreamIsAnError() {
        var decoder = PGOutputDecoder(protocolVersion: 2)
        #expect(throws: DecodeError.self) { try decoder.decode([69]) }
    }
}

@Suite("streaming replication framing")
struct ReplicationFramingTests {
    @Test func xLogDataAndKeepalive() throws {
        let header: [UInt8] = [119] + be(0x1_0000_0010) + be(0x1_0000_0020) + be(5)
        guard
            case .xLogData(let start, let end, let time, let payload) = try ReplicationMessage.decode(
                header + [66, 1])
        else {
            Issue.record("not XLogData")
            return
        }
        #expect(
            start == LSN(0x1_0000_0010) && end == LSN(0x1_0000_0020) && time.rawValue == 5
                && payload == [66, 1])
        #expect(
            try ReplicationMessage.decode([107] + be(42) + be(7) + [1])
                == .keepalive(
                    walEnd: LSN(42), sendTime: PostgresTimestamp(rawValue: 7), replyRequested: true))
        for length in 0..<25 {
            #expect(throws: DecodeError.self) {
                try ReplicationMessage.decode(Array(header.prefix(length)))
            }
        }
        #expect(throws: DecodeError.self) {
            try ReplicationMessage.decode([107] + be(42) + be(7) + [1, 0])
        }
        #expect(throws: DecodeError.self) { try ReplicationMessage.decode([100, 1]) }
    }

    @Test func standbyStatusUpdateLayout() {
        let update = StandbyStatusUpdate(
            written: LSN(0x10), flushed: LSN(0x0F), applied: LSN(0x0F),
            clock: PostgresTimestamp(rawValue: 1), replyRequested: true)
        let bytes = update.encoded
        #expect(bytes.count == 34)
        #expect(
            bytes[0] == 114 && bytes[8] == 0x10 && bytes[16] == 0x0F && bytes[24] == 0x0F
                && bytes[32] == 1 && bytes[33] == 1)
    }

    @Test func lsnTextForm() {
        #expect(LSN(0x16_B374_D848).description == "16/B374D848")
        #expect(LSN(string: "16/B374D848") == LSN(0x16_B374_D848))
        #expect(LSN(string: "0/0") == .zero)
        for bad in ["", "1", "/1", "1/", "G/1", "123456789/0", "1/2/3"] {
            #expect(LSN(string: bad) == nil)
        }
    }

    private func be(_ value: UInt64) -> [UInt8] {
        (0..<8).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
    }
}
