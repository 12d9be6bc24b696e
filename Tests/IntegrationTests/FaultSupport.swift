import Foundation
import OutboxCore
import PGOutput
import PostgresClient
import PostgresReplication
import Synchronization
import Testing

/// A PostgreSQL 15 cluster of one test's own (scripts/pg-env.sh), for faults
/// that would disturb other suites: restarts, slot invalidation.
final class PrivateCluster: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; pg_ctl calls are serialized by the test.
    let directory: String
    let port: Int
    var conninfo: String { "host=127.0.0.1 port=\(port) user=postgres dbname=postgres" }
    static let pgBin = ProcessInfo.processInfo.environment["PG_BIN"] ?? "/usr/lib/postgresql/15/bin"

    private init(directory: String, port: Int) {
        self.directory = directory
        self.port = port
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started and replaying.
    /// `settings` go into its postgresql.conf; `slot` names a physical slot on this
    /// cluster for it (`pg_basebackup -C -S`); the connection string it replicates
    /// with names a database, which slot synchronization (17+) needs.
    func makeStandby(_ settings: [String] = [], slot: String? = nil) throws -> PrivateCluster {
        let port = try TCPProxy.freePort()
        let slotOptions = slot.map { "-C -S \($0)" } ?? ""
        let lines = settings.map { "echo \"\($0)\" >> \"$dir/data/postgresql.conf\" && " }.joined()
        let output = try Shell.run(
            """
            dir=$(mktemp -d /tmp/outbox-relay-pg.XXXXXX) && { [ "$(id -u)" != 0 ] || chown postgres "$dir"; } &&
            \(owner("pg_basebackup")) -D "$dir/data" -R -X stream \(slotOptions) -d "host=127.0.0.1 port=\(self.port) user=postgres dbname=postgres" >/dev/null &&
            echo "port = \(port)" >> "$dir/data/postgresql.conf" &&
            echo "unix_socket_directories = '$dir'" >> "$dir/data/postgresql.conf" && \(lines)
            \(owner("pg_ctl")) -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null && echo "$dir"
            """)
        let standby = PrivateCluster(directory: output, port: port)
        standby.pgBin = pgBin
        standby.pgLib = pgLib
        return standby
    }

    /// Waits (10 s at most) until this standby has replayed the primary's WAL up to `end`.
    func waitForReplay(upTo end: LSN) async throws {
        let connection = try connect()
        for _ in 0..<200 {
            let replayed =
                try connection.query("SELECT pg_last_wal_replay_lsn() AS l")[0, "l"].flatMap { LSN(string: $0) }
                ?? .zero
            if replayed >= end { return }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// `pg_ctl promote`: the standby becomes a primary on a new timeline.
    func promote() throws {
        try Shell.run("\(owner("pg_ctl")) -D '\(directory)/data' -w -t 60 promote >/dev/null")
    }

    /// `pg_ctl stop -m immediate`: the primary dies.
    func kill() throws {
        try Shell.run("\(owner("pg_ctl")) -D '\(directory)/data' -m immediate -w stop >/dev/null")
    }

    /// The server binaries of this cluster when it is not the suite's own version.
    private(set) var pgBin = PrivateCluster.pgBin
    private(set) var pgLib = ProcessInfo.processInfo.environment["PG_LIB"] ?? ""

    /// `major`: another PostgreSQL version than the suite's (scripts/pg-versions.sh fetches it).
    /// `port`: listen there (a client may already be trying it).
    init(_ settings: [String] = [], major: Int? = nil, port: Int? = nil) throws {
        let script = TestDatabase.repository.appendingPathComponent("scripts/pg-env.sh").path
        let versions = TestDatabase.repository.appendingPathComponent("scripts/pg-versions.sh").path
        let quoted = settings.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let use = major.map { "source '\(versions)' && pg_use \($0) && " } ?? ""
        let wanted = port.map { "PGPORT_WANTED=\($0) " } ?? ""
        let output = try Shell.run(
            "\(use)source '\(script)' && unset PGPORT && \(wanted)pg_start \(quoted) && trap - EXIT && echo \"$PG_DIR $PGPORT $PG_BIN $PG_LIB\""
        )
        let parts = output.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 3, let port = Int(parts[1]) else {
            throw ShellError(message: "pg_start printed \(output)")
        }
        directory = parts[0]
        self.port = port
        pgBin = parts[2]
        pgLib = parts.count > 3 ? parts[3] : ""
    }

    /// Runs a server command of this cluster's version as its owner.
    func owner(_ command: String) -> String {
        let env = pgLib.isEmpty ? "" : "env LD_LIBRARY_PATH='\(pgLib)' "
        return (getuid() == 0 ? "runuser -u postgres -- " : "") + env + "'\(pgBin)/\(command)'"
    }

    deinit {
        _ = try? Shell.run(
            "\(owner("pg_ctl")) -D '\(directory)/data' -m immediate -w stop >/dev/null 2>&1; rm -rf '\(directory)'")
    }

    /// `pg_ctl restart -m fast|immediate`.
    func restart(mode: String) throws {
        try Shell.run(
            "\(owner("pg_ctl")) -D '\(directory)/data' -l '\(directory)/server.log' -m \(mode) -w -t 60 restart >/dev/null"
        )
    }

    func connect() throws -> PGConnection { try PGConnection(conninfo: conninfo, replication: false) }
}

struct ShellError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

enum Shell {
    /// Runs a bash command; returns its trimmed stdout, throws with stderr on failure.
    /// Output goes through temporary files, not pipes: a server the command
    /// starts in the background must not keep the test waiting for EOF.
    @discardableResult
    static func run(_ command: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory
        let out = directory.appendingPathComponent("shell-\(UUID()).out").path
        let err = directory.appendingPathComponent("shell-\(UUID()).err").path
        defer {
            try? FileManager.default.removeItem(atPath: out)
            try? FileManager.default.removeItem(atPath: err)
        }
        // Not Foundation's Process: on Linux it learns of the child's exit
        // through a socket the child inherits, and a server the command leaves
        // running (pg_ctl start) inherits it too, so `waitUntilExit` waits for
        // ever. posix_spawn and waitpid on the one pid; bash also closes every
        // inherited descriptor above 2 so the server holds nothing of ours.
        let closeInherited =
            #"for fd in /proc/self/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-" 2>/dev/null; done"#
        let script = "\(closeInherited); ( \(command) ) >'\(out)' 2>'\(err)' </dev/null"
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/bash"), strdup("-c"), strdup(script), nil]
        defer { argv.forEach { free($0) } }
        let spawned = posix_spawn(&pid, "/bin/bash", nil, nil, argv, environ)
        guard spawned == 0 else { throw ShellError(message: "posix_spawn: \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exitCode = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let output = String(decoding: FileManager.default.contents(atPath: out) ?? Data(), as: UTF8.self)
        guard exitCode == 0 else {
            let errors = String(decoding: FileManager.default.contents(atPath: err) ?? Data(), as: UTF8.self)
            throw ShellError(message: "`\(command)` exited \(exitCode): \(errors)")
        }
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Writers that commit outbox transactions continuously until stopped: several
/// connections, single- and 3-row transactions, every fifth rolled back. Each
/// writer has its own keys, so its commit order per key is known; a commit
/// whose outcome is unknown (the connection broke during it) is "uncertain".
final class ContinuousWriters: @unchecked Sendable {
    // @unchecked Sendable: the state is behind `state`'s lock; threads are joined in `stop()`.
    struct Written {
        var committed: [(id: String, key: String, seq: Int)] = []
        var rolledBack: Set<String> = []
        var uncertain: Set<String> = []
        var errors: [String] = []
    }
    let state = Mutex(Written())
    private let running = Atomic<Bool>(true)
    private let done = DispatchGroup()

    init(conninfo: String, table: String, writers: Int = 3, pauseMicroseconds: UInt32 = 2_000) {
        for w in 0..<writers {
            done.enter()
            Thread { [self] in
                defer { done.leave() }
                var seq = 0
                var connection: PGConnection?
                while running.load(ordering: .acquiring) {
                    do {
                        if connection == nil { connection = try PGConnection(conninfo: conninfo, replication: false) }
                        let rows = seq % 3 == 1 ? 3 : 1
                        let rollback = seq % 5 == 4
                        var batch: [(id: String, key: String, seq: Int)] = []
                        for _ in 0..<rows {
                            seq += 1
                            batch.append((UUID().uuidString.lowercased(), "w\(w)-k\(seq % 4)", seq))
                        }
                        let values = batch.map {
                            "('\($0.id)', 'crash', '\($0.key)', 'Written', '{\"w\": \(w), \"seq\": \($0.seq)}')"
                        }.joined(separator: ",")
                        try connection!.query("BEGIN")
                        try connection!.query(
                            "INSERT INTO \(table) (id, aggregatetype, aggregateid, type, payload) VALUES \(values)")
                        if rollback {
                            try connection!.query("ROLLBACK")
                            state.withLock { s in batch.forEach { s.rolledBack.insert($0.id) } }
                        } else {
                            do {
                                try connection!.query("COMMIT")
                                state.withLock { $0.committed += batch }
                            } catch {
                                state.withLock { s in batch.forEach { s.uncertain.insert($0.id) } }
                                throw error
                            }
                        }
                    } catch {
                        // The server restarted or the connection broke: reconnect and go on.
                        state.withLock { $0.errors.append("\(error)") }
                        connection = nil
                        usleep(50_000)
                    }
                    usleep(pauseMicroseconds)
                }
            }.start()
        }
    }

    var committedCount: Int { state.withLock { $0.committed.count } }

    /// Stops and joins the writers; returns what they wrote.
    func stop() -> Written {
        running.store(false, ordering: .releasing)
        done.wait()
        return state.withLock { $0 }
    }
}

extension ContinuousWriters {
    /// Under these writers, starts the relay and SIGKILLs it after a random pause,
    /// `kills` times; starts it once more, lets it run briefly and stops the writers.
    func sigkillLoop(
        _ arguments: [String], kills: Int, pauses: ClosedRange<Int>
    ) async throws -> (written: Written, last: CLI) {
        for _ in 0..<kills {
            let cli = try CLI.start(arguments)
            try await Task.sleep(for: .milliseconds(Int.random(in: pauses)))
            cli.kill9()
        }
        let last = try CLI.start(arguments)
        try await Task.sleep(for: .milliseconds(500))
        return (stop(), last)
    }
}

/// A destination stopped for `seconds` under two writers and started again:
/// checks that it is reported unreachable, that nothing written after the stop
/// is confirmed while it is away, and that the relay catches up after.
/// Returns what was written, for the caller to check against what the destination has.
func destinationOutage(
    _ outbox: TestOutbox, sink: any EventSink, topicTemplate: String? = nil, seconds: Int,
    stop: () -> Void, start: () throws -> Void
) async throws -> ContinuousWriters.Written {
    let running = RunningRelay(
        config: outbox.config { if let topicTemplate { $0.routing.topicTemplate = topicTemplate } }, sink: sink)
    try await running.waitFor("streaming") { $0.state == .streaming }
    let writers = ContinuousWriters(
        conninfo: outbox.conninfo, table: "\(outbox.schema).outbox", writers: 2, pauseMicroseconds: 20_000)
    try await running.waitFor("first deliveries") { $0.eventsAcknowledged > 10 }
    stop()
    let atOutage = try outbox.currentWAL
    try await running.waitFor("not ready", within: 20) { !$0.sinkReachable }
    for _ in 0..<seconds {
        try await Task.sleep(for: .seconds(1))
        #expect(try outbox.confirmedFlush <= atOutage, "nothing undelivered is confirmed")
    }
    #expect(running.relay.currentStats.state == .streaming, "still streaming from PostgreSQL")
    try start()
    try await Task.sleep(for: .seconds(2))
    let written = writers.stop()
    let end = try outbox.currentWAL
    try await running.waitFor("caught up", within: 90) { _ in try outbox.confirmedFlush >= end }
    #expect(running.relay.currentStats.sinkReachable)
    await running.stop()
    return written
}

extension TestOutbox {
    /// What every sink's shape test writes: an event with a header and then a
    /// tombstone of the same key (their ids), and 3 s of 3 concurrent writers
    /// (what they committed); returns once the relay confirmed all of it.
    func shapedRowsUnderLoad() async throws -> (shaped: [String], written: ContinuousWriters.Written) {
        let shaped = try sql.query(
            """
            INSERT INTO \(schema).outbox (aggregatetype, aggregateid, type, payload, headers)
            VALUES ('order', 'o-1', 'OrderCreated', '{"total": 5}', '{"tenant": "t9"}'),
                   ('order', 'o-1', 'OrderDeleted', NULL, NULL)
            RETURNING id
            """
        ).values.map { $0[0]! }
        let writers = ContinuousWriters(
            conninfo: conninfo, table: "\(schema).outbox", writers: 3, pauseMicroseconds: 5_000)
        try await Task.sleep(for: .seconds(3))
        let written = writers.stop()
        try await waitUntilConfirmed(try currentWAL)
        return (shaped, written)
    }
}

/// What a sink received, checked against what was written.
struct DeliveryCheck: CustomStringConvertible {
    /// Records an issue for anything lost, phantom or out of order per key, and for duplicates unless `duplicates` allows them.
    func expectIntact(duplicates allowed: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(lost.isEmpty, "lost, e.g.: \(lost.prefix(5))", sourceLocation: sourceLocation)
        #expect(phantoms.isEmpty, "phantoms, e.g.: \(phantoms.prefix(5))", sourceLocation: sourceLocation)
        #expect(orderViolations.isEmpty, "\(orderViolations.prefix(5))", sourceLocation: sourceLocation)
        if !allowed { #expect(duplicates == 0, sourceLocation: sourceLocation) }
    }

    var written = 0
    var delivered = 0
    var lost: [String] = []
    var phantoms: [String] = []
    var duplicates = 0
    var orderViolations: [String] = []

    /// `events` in delivery order as (id, key, seq); `written` from `ContinuousWriters`.
    init(events: [(id: String, key: String, seq: Int)], written: ContinuousWriters.Written) {
        self.written = written.committed.count
        delivered = events.count
        var seen = Set<String>()
        var lastSeq: [String: Int] = [:]
        for event in events {
            if !seen.insert(event.id).inserted {
                duplicates += 1
                continue
            }
            // Order per key, duplicates aside: a writer's sequence numbers only grow.
            if let last = lastSeq[event.key], event.seq <= last {
                orderViolations.append("\(event.key): \(event.seq) after \(last)")
            }
            lastSeq[event.key] = event.seq
        }
        lost = written.committed.map(\.id).filter { !seen.contains($0) }
        phantoms = Array(seen.intersection(written.rolledBack))
    }

    var description: String {
        "written \(written), delivered \(delivered), lost \(lost.count), duplicates \(duplicates), phantoms \(phantoms.count), order violations \(orderViolations.count)"
    }
}

extension CLI {
    /// Peak resident set (VmHWM) of the running relay, in MiB; 0 once it exited.
    var peakRSSMiB: Double {
        guard let text = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)
        else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return (line.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0) / 1024
        }
        return 0
    }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        _ = wait()
    }
}

/// NDJSON events of a file sink as (id, key, seq from the payload).
func crashEvents(fromFile path: String) throws -> [(id: String, key: String, seq: Int)] {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    return try data.split(separator: 10).map { line in
        let json = try JSONSerialization.jsonObject(with: Data(line)) as! [String: Any]
        let payload = json["payload"] as? [String: Any]
        return (json["id"] as! String, json["key"] as! String, payload?["seq"] as? Int ?? -1)
    }
}
