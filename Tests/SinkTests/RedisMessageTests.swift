import OutboxCore
import PGOutput
import RedisSink
import Testing

/// Replies captured from Debian's redis-server 7.0.15 on 127.0.0.1 (raw socket,
/// RESP2), for the commands named.
private enum Captured {
    /// MULTI, XADD s1 (2 fields ×2), XADD s1, EXEC, WAIT 0 100
    static let multiExecWait = Array(
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$15\r\n1795519730606-0\r\n$15\r\n1795519730606-1\r\n:0\r\n".utf8)
    /// MULTI, XADD s1, XADD str (a string key), EXEC
    static let wrongTypeInExec = Array(
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$15\r\n1795519731808-0\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
            .utf8)
    /// MULTI, XADD s1 (no fields), EXEC
    static let abortedAtQueueTime = Array(
        "+OK\r\n-ERR wrong number of arguments for 'xadd' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
            .utf8)
    /// MULTI, XADD, EXEC with maxmemory 1
    static let outOfMemory = Array(
        "+OK\r\n-OOM command not allowed when used memory > 'maxmemory'.\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
            .utf8)
    /// MULTI, XADD, EXEC on a replica
    static let readOnlyReplica = Array(
        "+OK\r\n-READONLY You can't write against a read only replica.\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"
            .utf8)
    /// MULTI, the duplicate-window script ×3 (new id, the same id again, a string key), EXEC
    static let scriptInExec = Array(
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n$15\r\n1795519742441-0\r\n:0\r\n-WRONGTYPE Operation against a key holding the wrong kind of value script: 8b95d111b996ad9b3e770a96b6344ab5765dbfd8, on @user_script:6.\r\n"
            .utf8)
    /// XRANGE s1 - + COUNT 1, GET missing, CONFIG GET appendfsync
    static let nested = Array(
        "*1\r\n*2\r\n$15\r\n1795519730606-0\r\n*4\r\n$3\r\nkey\r\n$3\r\no-1\r\n$7\r\npayload\r\n$7\r\n{\"a\":1}\r\n$-1\r\n*2\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n"
            .utf8)
}

private func parseAll(_ bytes: [UInt8], splitAt: Int? = nil) throws -> [RESPValue] {
    var parser = RESPParser()
    var out: [RESPValue] = []
    let pieces = splitAt.map { [Array(bytes[..<$0]), Array(bytes[$0...])] } ?? [bytes]
    for piece in pieces {
        parser.append(piece)
        while let value = try parser.next() { out.append(value) }
    }
    #expect(parser.buffered == 0)
    return out
}

@Suite("Redis: RESP and the batch rules")
struct RedisMessageTests {
    @Test func repliesParseWhole() throws {
        let replies = try parseAll(Captured.nested)
        #expect(replies.count == 3)
        #expect(
            replies[0]
                == .array([
                    .array([
                        .bulk(Array("1795519730606-0".utf8)),
                        .array([
                            .bulk(Array("key".utf8)), .bulk(Array("o-1".utf8)), .bulk(Array("payload".utf8)),
                            .bulk(Array("{\"a\":1}".utf8)),
                        ]),
                    ])
                ]))
        #expect(replies[1] == .bulk(nil))
        #expect(replies[2].text == nil)
    }

    @Test func repliesSplitAtEveryOffsetParseTheSame() throws {
        for fixture in [
            Captured.multiExecWait, Captured.wrongTypeInExec, Captured.scriptInExec, Captured.nested,
            Captured.outOfMemory,
        ] {
            let whole = try parseAll(fixture)
            for offset in 0...fixture.count {
                #expect(try parseAll(fixture, splitAt: offset) == whole, "split at \(offset)")
            }
        }
    }

    @Test func bytesThatAreNotRESPAreAnErrorNotAHang() throws {
        for bad in ["HTTP/1.1 400 Bad Request\r\n", ":12x\r\n", "$-2\r\n", "$3\r\nabcd\r\n", "*-5\r\n"] {
            var parser = RESPParser()
            parser.append(Array(bad.utf8))
            #expect(throws: RESPProtocolError.self, "\(bad)") { _ = try parser.next() }
        }
        // Incomplete is not an error: it waits for more.
        var parser = RESPParser()
        parser.append(Array("$10\r\nabc".utf8))
        #expect(try parser.next() == nil)
    }

    /// Captured replies with bytes flipped, cut and repeated: the parser returns
    /// replies, asks for more, or throws — it never traps or loops.
    @Test func mangledRepliesNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        let fixtures = [Captured.multiExecWait, Captured.scriptInExec, Captured.nested, Captured.abortedAtQueueTime]
        var outcomes = (values: 0, errors: 0)
        for _ in 0..<20_000 {
            var bytes = fixtures.randomElement(using: &generator)!
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[at] = UInt8.random(in: 0...255, using: &generator)
                case 1: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...8, using: &generator)))
                default: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 6)], at: at)
                }
                if bytes.isEmpty { bytes = [42] }
            }
            var parser = RESPParser()
            parser.append(bytes)
            do {
                var replies = 0
                while try parser.next() != nil {
                    replies += 1
                    #expect(replies <= bytes.count, "every reply consumes bytes")
                    if replies > bytes.count { break }
                }
                outcomes.values += 1
            } catch {
                outcomes.errors += 1
            }
        }
        #expect(outcomes.errors > 0 && outcomes.values > 0)
    }

    @Test func commandsAreArraysOfBulkStrings() throws {
        #expect(
            RESP.command("XADD", "s", "*", "k", "")
                == Array("*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nk\r\n$0\r\n\r\n".utf8))
        let plain = RedisMessage.addCommand(
            stream: "s", fields: [Array("k".utf8), [0, 13, 10]], maxLength: 0, dedupe: nil)
        #expect(plain.map { String(decoding: $0, as: UTF8.self) } == ["XADD", "s", "*", "k", "\0\r\n"])
        let trimmed = RedisMessage.addCommand(stream: "s", fields: [], maxLength: 1000, dedupe: ("abc", "m:e1", 120))
        #expect(
            trimmed.map { String(decoding: $0, as: UTF8.self) } == ["EVALSHA", "abc", "2", "s", "m:e1", "120", "1000"])
        // A binary payload survives: the parser reads back exactly what was encoded.
        var out: [UInt8] = []
        RESP.append(command: plain, to: &out)
        var parser = RESPParser()
        parser.append(out)
        #expect(try parser.next() == .array(plain.map { .bulk($0) }))
    }

    @Test func aBatchThatRanAcknowledgesEachAdd() throws {
        let replies = try parseAll(Captured.multiExecWait)
        #expect(
            RedisMessage.outcome(of: replies, commands: 2, wait: true)
                == .executed([.added("1795519730606-0"), .added("1795519730606-1")], replicas: 0))
        let script = try parseAll(Captured.scriptInExec)
        guard case .executed(let results, nil) = RedisMessage.outcome(of: script, commands: 3, wait: false) else {
            Issue.record("expected executed")
            return
        }
        #expect(results[0] == .added("1795519742441-0"))
        #expect(results[1] == .duplicate)
        guard case .refused(.permanent(let why)) = results[2] else {
            Issue.record("WRONGTYPE is permanent")
            return
        }
        #expect(why.hasPrefix("WRONGTYPE"))
        #expect(
            RedisMessage.outcome(of: try parseAll(Captured.wrongTypeInExec), commands: 2, wait: false).executedCount
                == 2)
    }

    @Test func aBatchRedisRefusedAtQueueTimeAppliedNothing() throws {
        #expect(
            RedisMessage.outcome(of: try parseAll(Captured.outOfMemory), commands: 1, wait: false)
                == .aborted(index: 0, .transient("OOM command not allowed when used memory > 'maxmemory'.")))
        #expect(
            RedisMessage.outcome(of: try parseAll(Captured.readOnlyReplica), commands: 1, wait: false)
                == .aborted(index: 0, .transient("READONLY You can't write against a read only replica.")))
        // An error Redis gives for no known reason stops rather than dead-letters every event.
        guard
            case .aborted(0, .fatal) = RedisMessage.outcome(
                of: try parseAll(Captured.abortedAtQueueTime), commands: 1, wait: false)
        else {
            Issue.record("unknown ERR is fatal")
            return
        }
        // A reply count that does not match is not guessed at.
        guard
            case .aborted(nil, .fatal) = RedisMessage.outcome(
                of: try parseAll(Captured.outOfMemory), commands: 2, wait: false)
        else {
            Issue.record("wrong count is fatal")
            return
        }
    }

    @Test func errorsAreSortedByWhatTheOperatorMustDo() {
        #expect(
            RedisMessage.classify("NOPERM this user has no permissions to access the 'x' key")
                == .permanent("NOPERM this user has no permissions to access the 'x' key"))
        for transient in [
            "LOADING Redis is loading", "BUSY Redis is busy running a script", "MISCONF Errors writing to disk",
            "NOSCRIPT No matching script", "ERR max number of clients reached",
        ] {
            #expect(RedisMessage.classify(transient) == .transient(transient))
        }
        guard case .fatal(let why) = RedisMessage.classify("MOVED 3999 127.0.0.1:6381") else {
            Issue.record("MOVED is fatal")
            return
        }
        #expect(why.contains("Redis Cluster is not supported"))
    }

    @Test func urlsParseAndNeverShowTheirPassword() throws {
        #expect(
            try RedisEndpoint.parse("redis://127.0.0.1")
                == RedisEndpoint(host: "127.0.0.1", port: 6379, username: nil, password: nil, database: 0))
        #expect(
            try RedisEndpoint.parse("redis://relay:p%40ss:w@[::1]:6380/3")
                == RedisEndpoint(host: "::1", port: 6380, username: "relay", password: "p@ss:w", database: 3))
        #expect(try RedisEndpoint.parse("redis://:only@h:1").password == "only")
        #expect(try RedisEndpoint.parse("redis://only@h").password == "only")
        for bad in [
            "rediss://u:s3cret@h", "http://u:s3cret@h", "redis://u:s3cret@h:0", "redis://u:s3cret@h/x",
            "redis://u:s3cret@",
        ] {
            do {
                _ = try RedisEndpoint.parse(bad)
                Issue.record("\(bad) parsed")
            } catch {
                #expect(!"\(error)".contains("s3cret"), "\(error)")
            }
        }
    }

    @Test func anEventBecomesFieldsWithThePayloadLast() {
        var event = OutboxEvent(
            id: "e1", topic: "outbox.event.order", key: "o-1", type: "OrderCreated", payload: Array("{\"a\":1}".utf8),
            headers: [("id", "e1"), ("type", "OrderCreated"), ("tenant", "t9")], tombstone: false,
            lsn: LSN(rawValue: 0x16B_3748), commitTime: PostgresTimestamp(rawValue: 0))
        var fields = RedisMessage.fields(for: event).map { String(decoding: $0, as: UTF8.self) }
        #expect(
            fields == [
                "key", "o-1", "id", "e1", "type", "OrderCreated", "tenant", "t9", "lsn", "0/16B3748", "payload",
                "{\"a\":1}",
            ])
        event.payload = nil
        event.tombstone = true
        fields = RedisMessage.fields(for: event).map { String(decoding: $0, as: UTF8.self) }
        #expect(fields.suffix(4) == ["tombstone", "true", "payload", ""])
    }
}

extension RedisMessage.BatchOutcome {
    fileprivate var executedCount: Int? {
        if case .executed(let results, _) = self { return results.count }
        return nil
    }
}
