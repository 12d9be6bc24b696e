import Foundation
import Glibc
import Testing

/// A private redis-server (Debian's) on 127.0.0.1 with its own port and
/// directory, durable (`appendonly yes`, `appendfsync always`) unless told
/// otherwise. `kill()` is SIGKILL: what it acknowledged must survive it.
final class RedisServer: @unchecked Sendable {
    // @unchecked Sendable: `process` is touched only by the test's own task.
    /// Set by scripts/test.sh on the default PostgreSQL version only: the sink does not depend on it.
    static let binary = ProcessInfo.processInfo.environment["REDIS_SERVER_BIN"] ?? ""
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: binary) && FileManager.default.isExecutableFile(atPath: cli)
    }
    static let cli = "/usr/bin/redis-cli"

    let port: Int
    let directory: String
    let arguments: [String]
    /// From `--requirepass`: the checks and reads log in with it.
    let password: String?
    private var process: Process?
    var url: String { "redis://127.0.0.1:\(port)" }

    /// `arguments`: more redis-server options (`--requirepass x`, `--replicaof 127.0.0.1 p`).
    init(durable: Bool = true, _ arguments: [String] = []) throws {
        port = try TCPProxy.freePort()
        directory = NSTemporaryDirectory() + "redis-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.arguments =
            [
                "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--logfile",
                directory + "/log",
            ]
            + (durable ? ["--appendonly", "yes", "--appendfsync", "always"] : []) + arguments
        password = arguments.firstIndex(of: "--requirepass").map { arguments[$0 + 1] }
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if (try? command(["PING"])) == "PONG" { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw RedisFailure(message: "redis-server did not start on \(url)")
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    /// Signalled whether or not `Process` still reports it running (its view can
    /// lag under load), and waited for.
    func kill() {
        guard let process else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// One command through redis-cli (a real client), its output trimmed.
    @discardableResult
    func command(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.cli)
        process.arguments =
            ["-h", "127.0.0.1", "-p", "\(port)", "-2"] + (password.map { ["--no-auth-warning", "-a", $0] } ?? [])
            + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    struct Entry {
        var id: String
        var fields: [(name: String, value: String)]
        func field(_ name: String) -> String? { fields.first { $0.name == name }?.value }
        func json() -> [String: Any]? {
            field("payload").flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
    }

    /// Every entry of a stream, read with `redis-cli --json XRANGE`.
    func entries(_ stream: String) throws -> [Entry] {
        let output = try command(["--json", "XRANGE", stream, "-", "+"])
        guard let list = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[Any]] else {
            throw RedisFailure(message: "XRANGE \(stream): \(output.prefix(200))")
        }
        return list.map { item in
            let flat = (item[1] as? [String]) ?? []
            return Entry(
                id: item[0] as? String ?? "",
                fields: stride(from: 0, to: flat.count - 1, by: 2).map { (flat[$0], flat[$0 + 1]) })
        }
    }

    func deliveries(_ stream: String) throws -> [(id: String, key: String, seq: Int)] {
        try entries(stream).map { ($0.field("id") ?? "", $0.field("key") ?? "", $0.json()?["seq"] as? Int ?? -1) }
    }
}

struct RedisFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
