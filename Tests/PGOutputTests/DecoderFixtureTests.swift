import Foundation
import PGOutput
import TestFixtures
import Testing

@Suite("pgoutput decoder on messages captured from PostgreSQL 15")
struct DecoderFixtureTests {
    @Test func protocolOneCarriesEveryTransactionalMessageKind() throws {
        let messages = try Fixture.decodeAll("v1-all", protocolVersion: 1)
        let kinds = Set(messages.map(\.type))
        #expect(
            kinds == [
                .begin, .commit, .origin, .relation, .type, .insert, .update, .delete, .truncate, .message,
            ])

        // First transaction: Begin, Relation(public.outbox), Insert, Commit.
        guard case .begin(let begin) = messages[0], case .relation(let outbox) = messages[1],
            case .insert(let insert) = messages[2], case .commit(let commit) = messages[3]
        else {
            Issue.record("unexpected first transaction: \(messages.prefix(4).map(\.type))")
            return
        }
        #expect(outbox.qualifiedName == "public.outbox")
        #expect(
            outbox.columns.map(\.name) == [
                "id", "aggregatetype", "aggregateid", "type", "payload", "headers", "created_at",
            ])
        #expect(outbox.columns.map(\.typeOID) == [2950, 1043, 1043, 1043, 3802, 3802, 1184])
        #expect(outbox.columns[0].isKey && !outbox.columns[1].isKey)
        #expect(outbox.replicaIdentity == UInt8(ascii: "d"))
        #expect(insert.relationOID == outbox.oid && insert.xid == nil)
        #expect(insert.newTuple.string(at: 0) == "5f0c6a4e-8f0a-4f43-9c55-3b7f2f1f9a01")
        #expect(insert.newTuple.string(at: 2) == "42")
        #expect(insert.newTuple.string(at: 4) == #"{"note": "größe ✓ 😀", "total": 10}"#)
        #expect(insert.newTuple.string(at: 5) == #"{"n": 1, "trace": "abc"}"#)
        #expect(begin.finalLSN == commit.commitLSN)
        #expect(commit.endLSN > commit.commitLSN)
        #expect(commit.commitTimestamp == begin.commitTimestamp)
        // A commit timestamp from this decade, converted from PostgreSQL's epoch.
        #expect(commit.commitTimestamp.unixMicroseconds > 1_600_000_000_000_000)

        // Second transaction: NULL payload insert, its delete (key only), a transactional message.
        let second = Array(messages[4...8])
        #expect(second.map(\.type) == [.begin, .insert, .delete, .message, .commit])
        if case .insert(let tombstoneRow) = second[1] {
            #expect(tombstoneRow.newTuple.columns[4] == .null)
        }
        if case .delete(let delete) = second[2] {
            #expect(delete.oldTupleKind == .key)
            #expect(delete.oldTuple.string(at: 0) == "5f0c6a4e-8f0a-4f43-9c55-3b7f2f1f9a02")
            #expect(delete.oldTuple.columns[1] == .null)
        }
        if case .message(let message) = second[3] {
            #expect(message.isTransactional && message.prefix == "outbox" && message.xid == nil)
            #expect(String(decoding: message.content, as: UTF8.self).hasPrefix(#"{"id":"m1""#))
        }

        // The non-transactional message stands alone, outside any transaction.
        let loose = messages.compactMap {
            if case .message(let m) = $0, !m.isTransactional { m } else { nil }
        }
        #expect(loose.map(\.prefix) == ["other-prefix"])

        // The enum column's type is described before the relation that uses it.
        let types = messages.compactMap { if case .type(let t) = $0 { t } else { nil } }
        #expect(types.map(\.name).contains("mood"))
        #expect(types.allSatisfy { $0.namespace == "public" })

        // Updates: a key change (old key 'K'), and REPLICA IDENTITY FULL (old row 'O')
        // where the unchanged TOASTed column is sent as 'u'.
        let updates = messages.compactMap { if case .update(let u) = $0 { u } else { nil } }
        #expect(
            updates.contains {
                $0.oldTupleKind == .key && $0.oldTuple?.string(at: 0) == "1"
                    && $0.newTuple.string(at: 0) == "2"
            })
        let full = try #require(updates.first { $0.oldTupleKind == .old })
        #expect(full.newTuple.columns[1] == .unchanged)
        #expect(full.newTuple.string(at: 3) == "2.5")

        let truncate = try #require(
            messages.compactMap { if case .truncate(let t) = $0 { t } else { nil } }.first)
        #expect(truncate.relationOIDs.count == 2)
        #expect(truncate.options == 3)  // CASCADE | RESTART IDENTITY

        let origin = try #require(
            messages.compactMap { if case .origin(let o) = $0 { o } else { nil } }.first)
        #expect(origin.name == "fx_origin" && origin.commitLSN == LSN(0xAB))
    }

    @Test func relationIsResentAfterSchemaChangeAndCacheFollows() throws {
        var decoder = PGOutputDecoder(protocolVersion: 1)
        var outboxColumnCounts: [Int] = []
        for bytes in try Fixture.messages("v1-all") {
            let message = try decoder.decode(bytes)
            if case .insert(let insert) = message, decoder.relations[insert.relationOID]?.name == "outbox" {
                #expect(insert.newTuple.count == decoder.relations[insert.relationOID]?.columns.count)
                outboxColumnCounts.append(insert.newTuple.count)
            }
        }
        // ALTER TABLE … ADD COLUMN tenant between the inserts.
        #expect(outboxColumnCounts == [7, 7, 8])
        let outbox = try #require(decoder.relations.values.first { $0.name == "outbox" })
        #expect(outbox.columns.last?.name == "tenant")
    }

    @Test func binaryTupleFormat() throws {
        let messages = try Fixture.decodeAll("v1-binary", protocolVersion: 1)
        let inserts = messages.compactMap { if case .insert(let i) = $0 { i } else { nil } }
        let first = try #require(inserts.first)
        guard case .binary(let id) = first.newTuple.columns[0] else {
            Issue.record("id not binary")
            return
        }
        #expect(id.count == 16)  // uuid_send: 16 raw bytes
        #expect(Array(first.newTuple.storage[id].prefix(4)) == [0x5f, 0x0c, 0x6a, 0x4e])
        // jsonb_send: version byte 1, then the text.
        let payload = try #require(first.newTuple.bytes(at: 4))
        #expect(payload.first == 1)
    }

    @Test func protocolTwoStreamsInProgressTransactions() throws {
        var decoder = PGOutputDecoder(protocolVersion: 2)
        var sawStreamedInsertXID = false
        var kinds: [PGOutputMessageType] = []
        for bytes in try Fixture.messages("v2-streaming") {
            let message = try decoder.decode(bytes)
            kinds.append(message.type)
            if case .insert(let insert) = message, decoder.inStreamBlock {
                #expect(insert.xid != nil)
                sawStreamedInsertXID = true
            }
            if case .relation(let relation) = message, decoder.inStreamBlock {
                #expect(relation.xid != nil)
            }
        }
        #expect(sawStreamedInsertXID)
        #expect(kinds.filter { $0 == .streamStart }.count == kinds.filter { $0 == .streamStop }.count)
        #expect(kinds.contains(.streamCommit) && kinds.contains(.streamAbort))
        let messages = try Fixture.decodeAll("v2-streaming", protocolVersion: 2)
        let commit = try #require(
            messages.compactMap { if case .streamCommit(let c) = $0 { c } else { nil } }.first)
        #expect(commit.endLSN > commit.commitLSN)
        let aborts = messages.compactMap { if case .streamAbort(let a) = $0 { a } else { nil } }
        // The subtransaction's abort names it; the top-level abort has subxid == xid.
        #expect(aborts.contains { $0.xid == $0.subxid })
        #expect(aborts.allSatisfy { $0.abortLSN == nil })
    }

    /// Captured from PostgreSQL 18 with `proto_version 4, streaming parallel`
    /// (scripts/capture-fixtures.sh --pg 18): Stream Abort carries the abort LSN and time.
    @Test func protocolFourStreamAbortCarriesItsLSNAndTime() throws {
        let messages = try Fixture.decodeAll("v4-parallel", protocolVersion: 4)
        let aborts = messages.compactMap { if case .streamAbort(let a) = $0 { a } else { nil } }
        let abort = try #require(aborts.first)
        #expect(aborts.count == 1 && abort.subxid != abort.xid, "the aborted subtransaction")
        let abortLSN = try #require(abort.abortLSN)
        #expect(abortLSN > .zero && abort.abortTimestamp != nil)
        let commits = messages.compactMap { if case .streamCommit(let c) = $0 { c } else { nil } }
        #expect(commits.count == 2 && commits.allSatisfy { $0.endLSN > $0.commitLSN })
        #expect(commits.contains { $0.xid == abort.xid }, "the subtransaction's parent commits")
        // The same bytes are not a protocol 2 Stream Abort: the extra fields are trailing bytes there.
        let raw = try #require(try Fixture.messages("v4-parallel").first { $0.first == 65 })
        var v2 = PGOutputDecoder(protocolVersion: 2)
        #expect(throws: DecodeError.self) { try v2.decode(raw) }
    }

    @Test func protocolThreeTwoPhaseCommit() throws {
        let messages = try Fixture.decodeAll("v3-two-phase", protocolVersion: 3)
        let kinds = Set(messages.map(\.type))
        #expect(
            kinds.isSuperset(of: [
                .beginPrepare, .prepare, .commitPrepared, .rollbackPrepared, .streamPrepare, .streamStart,
                .streamStop,
            ]))
        let gids = messages.compactMap { m -> String? in
            switch m {
            case .beginPrepare(let b): b.gid
            case .prepare(let p), .streamPrepare(let p): p.gid
            case .commitPrepared(let c): c.gid
            case .rollbackPrepared(let r): r.gid
            default: nil
            }
        }
        #expect(Set(gids) == ["fx_gid_1", "fx_gid_2", "fx_gid_3"])
        if let rollback = messages.compactMap({
            if case .rollbackPrepared(let r) = $0 { r } else { nil }
        }).first {
            #expect(rollback.rollbackEndLSN > rollback.prepareEndLSN)
        }
    }

    @Test func streamMessagesNeedTheirProtocolVersion() throws {
        let streamStart = try #require(try Fixture.messages("v2-streaming").first)
        var decoder = PGOutputDecoder(protocolVersion: 1)
        #expect(throws: DecodeError.self) { try decoder.decode(streamStart) }
    }
}
