import Foundation
import Glibc
import Testing

/// A private mosquitto (Debian's) on 127.0.0.1 with its own port, directory
/// and configuration lines (an ACL, a password file), and subscribers that
/// print every message as a JSON line (`mosquitto_sub -F %j`: topic, payload,
/// user properties).
final class MosquittoServer: @unchecked Sendable {
    // @unchecked Sendable: the processes are touched only by the test's own task.
    /// Set by scripts/test.sh on the default PostgreSQL version only: the sink does not depend on it.
    static let binary = ProcessInfo.processInfo.environment["MOSQUITTO_BIN"] ?? ""
    static let subscribe = "/usr/bin/mosquitto_sub"
    static let password = "/usr/bin/mosquitto_passwd"
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: binary) && FileManager.default.isExecutableFile(atPath: subscribe)
    }

    let port: Int
    let directory: String
    private var process: Process?
    private var subscribers: [Process] = []

    /// `lines`: more mosquitto.conf lines; `users`: name → password for a password file (then no anonymous clients).
    init(_ lines: [String] = [], users: [String: String] = [:]) throws {
        port = try TCPProxy.freePort()
        directory = NSTemporaryDirectory() + "mosquitto-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var config = [
            "listener \(port) 127.0.0.1", "persistence false", "log_dest file \(directory)/log",
            "max_queued_messages 100000",
        ]
        if users.isEmpty {
            config.append("allow_anonymous true")
        } else {
            let file = directory + "/passwords"
            FileManager.default.createFile(atPath: file, contents: nil)
            for (user, secret) in users { try Shell.run("\(Self.password) -b '\(file)' '\(user)' '\(secret)'") }
            config += ["allow_anonymous false", "password_file \(file)"]
        }
        try (config + lines).joined(separator: "\n").appending("\n").write(
            toFile: directory + "/mosquitto.conf", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["-c", directory + "/mosquitto.conf"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while !TCPProxy.canConnect(port: port) && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        guard TCPProxy.canConnect(port: port) else { throw ShellError(message: "mosquitto did not start on \(port)") }
    }

    deinit {
        for child in subscribers + [process].compactMap({ $0 }) {
            Glibc.kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts a QoS 1 subscriber to `filter` (as `user`), writing one JSON line per message; returns its file.
    @discardableResult
    func subscribe(_ filter: String, user: (String, String)? = nil) throws -> String {
        let file = directory + "/sub-\(subscribers.count).jsonl"
        FileManager.default.createFile(atPath: file, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.subscribe)
        process.arguments =
            ["-h", "127.0.0.1", "-p", "\(port)", "-V", "mqttv5", "-q", "1", "-t", filter, "-F", "%j"]
            + (user.map { ["-u", $0.0, "-P", $0.1] } ?? [])
        process.standardOutput = FileHandle(forWritingAtPath: file)
        process.standardError = FileHandle.nullDevice
        try process.run()
        subscribers.append(process)
        Thread.sleep(forTimeInterval: 0.3)  // subscribed before anything is published
        return file
    }

    /// The messages a subscriber received, in order.
    static func messages(_ file: String) throws -> [MQTTReceived] {
        let data = FileManager.default.contents(atPath: file) ?? Data()
        return data.split(separator: 10).compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]).map(MQTTReceived.init)
        }
    }

    /// A subscriber's messages on `topic` as (id, key, seq from the payload), for `DeliveryCheck`.
    static func deliveries(_ file: String, topic: String) throws -> [(id: String, key: String, seq: Int)] {
        try messages(file).filter { $0.topic == topic }.map {
            ($0.property("id") ?? "", $0.property("key") ?? "", $0.json()?["seq"] as? Int ?? -1)
        }
    }
}

/// One message as `mosquitto_sub -F %j` printed it.
struct MQTTReceived {
    var topic: String
    var payload: String
    var properties: [String: String]
    var contentType: String?

    init(_ object: [String: Any]) {
        topic = object["topic"] as? String ?? ""
        payload = object["payload"] as? String ?? ""
        let properties = object["properties"] as? [String: Any] ?? [:]
        self.properties = properties["user-properties"] as? [String: String] ?? [:]
        contentType = properties["content-type"] as? String
    }

    func property(_ name: String) -> String? { properties[name] }
    func json() -> [String: Any]? { try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any] }
}
