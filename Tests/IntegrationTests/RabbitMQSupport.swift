import CRabbitMQ
import Foundation
import Glibc
import Testing

/// A private RabbitMQ node (Debian's rabbitmq-server) on 127.0.0.1 with its own
/// ports, node name and data directory, which a test can stop and start again.
/// epmd is bound to loopback as well.
final class RabbitMQServer: @unchecked Sendable {
    // @unchecked Sendable: `process` is touched only by the test's own task.
    /// Set by scripts/test.sh on the default PostgreSQL version only: the sink does not depend on it.
    static let binary = ProcessInfo.processInfo.environment["RABBITMQ_SERVER_BIN"] ?? ""
    static var available: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    let port: Int
    let directory: String
    private var process: Process?
    var url: String { "amqp://guest:guest@127.0.0.1:\(port)" }

    /// `config`: extra rabbitmq.conf lines (e.g. `max_message_size = …`); `plugins`: to enable (`rabbitmq_amqp1_0`).
    init(config: [String] = [], plugins: [String] = []) throws {
        port = try TCPProxy.freePort()
        directory = NSTemporaryDirectory() + "rabbitmq-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let conf = ["listeners.tcp.1 = 127.0.0.1:\(port)", "loopback_users = none"] + config
        try conf.joined(separator: "\n").appending("\n").write(
            toFile: directory + "/rabbitmq.conf", atomically: true, encoding: .utf8)
        try "[\(plugins.joined(separator: ","))].\n".write(
            toFile: directory + "/enabled_plugins", atomically: true, encoding: .utf8)
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        let distPort = port + 20_000 <= 65_000 ? port + 20_000 : port - 20_000
        environment.merge(
            [
                "HOME": directory, "RABBITMQ_NODENAME": "outbox\(port)@localhost",
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": "\(port)", "RABBITMQ_DIST_PORT": "\(distPort)",
                "RABBITMQ_MNESIA_BASE": directory + "/mnesia", "RABBITMQ_LOG_BASE": directory + "/log",
                "RABBITMQ_CONFIG_FILE": directory + "/rabbitmq.conf",
                "RABBITMQ_ENABLED_PLUGINS_FILE": directory + "/enabled_plugins",
                "RABBITMQ_PID_FILE": directory + "/pid", "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            ]
        ) { $1 }
        return environment
    }

    func start() throws {
        let process = Process()
        // Through perl, to clear the signal mask and dispositions a process started
        // from a test thread inherits: with SIGCHLD blocked, the script's `wait`
        // never sees the node exit.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/perl")
        process.arguments = [
            "-e",
            "use POSIX; sigprocmask(SIG_SETMASK, POSIX::SigSet->new); $SIG{$_} = 'DEFAULT' for qw(CHLD TERM INT PIPE); exec @ARGV or die",
            Self.binary,
        ]
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if (try? RabbitMQClient(url: url)) != nil { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw RabbitMQClient.Failure(message: "rabbitmq-server did not start on \(url)")
    }

    /// A clean stop with `rabbitmqctl stop` (durable queues and persistent messages
    /// stay); SIGKILL if that does not end it.
    func stop() {
        guard let process, process.isRunning else { return }
        let ctl = Process()
        ctl.executableURL = URL(fileURLWithPath: (Self.binary as NSString).deletingLastPathComponent + "/rabbitmqctl")
        ctl.arguments = ["-n", "outbox\(port)@localhost", "stop"]
        ctl.environment = environment
        ctl.standardOutput = FileHandle.nullDevice
        ctl.standardError = FileHandle.nullDevice
        try? ctl.run()
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            if let pid = try? String(contentsOfFile: directory + "/pid", encoding: .utf8),
                let beam = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines))
            {
                kill(beam, SIGKILL)
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if ctl.isRunning { kill(ctl.processIdentifier, SIGKILL) }
        self.process = nil
    }
}

/// A plain rabbitmq-c client for tests: exchanges, queues, bindings, and reading back what the relay published.
final class RabbitMQClient {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    struct Message {
        var routingKey: String
        var messageID: String
        var deliveryMode: Int
        var headers: [String: String]
        /// Header values as bytes (AMQP 1.0 sections a 3.x broker keeps encoded, `x-amqp-1.0-…`).
        var rawHeaders: [String: [UInt8]] = [:]
        var body: [UInt8]
        func json() -> [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
    }

    private let conn: amqp_connection_state_t

    init(url: String) throws {
        var result = outbox_amqp_result()
        guard let conn = outbox_amqp_connect(url, "", 0, 2_000, nil, &result) else {
            throw Failure(
                message: withUnsafeBytes(of: &result.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            )
        }
        self.conn = conn
    }

    /// C copies of the strings handed to rabbitmq-c (`amqp_cstring_bytes` of a
    /// Swift string would point at a temporary), freed with the client.
    private var copies: [UnsafeMutablePointer<CChar>] = []

    deinit {
        outbox_amqp_close(conn, 1)
        copies.forEach { free($0) }
    }

    private func bytes(_ text: String) -> amqp_bytes_t {
        let copy = strdup(text)!
        copies.append(copy)
        return amqp_cstring_bytes(copy)
    }

    private func check(_ what: String) throws {
        let reply = amqp_get_rpc_reply(conn)
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            var detail = outbox_amqp_result()
            outbox_amqp_reply_text(reply, what, &detail)
            throw Failure(
                message: withUnsafeBytes(of: &detail.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            )
        }
    }

    func declareExchange(_ name: String, type: String = "topic") throws {
        amqp_exchange_declare(conn, 1, bytes(name), bytes(type), 0, 1, 0, 0, amqp_empty_table)
        try check("exchange.declare \(name)")
    }

    /// A durable queue bound to `exchange` with `bindingKey`; `maxLength` with
    /// `x-overflow: reject-publish`, so the broker nacks what does not fit.
    func declareQueue(
        _ name: String, boundTo exchange: String? = nil, bindingKey: String = "#", maxLength: Int? = nil
    ) throws {
        if let maxLength {
            var entries = [amqp_table_entry_t(), amqp_table_entry_t()]
            entries[0].key = bytes("x-max-length")
            entries[0].value.kind = UInt8(ascii: "l")
            entries[0].value.value.i64 = Int64(maxLength)
            entries[1].key = bytes("x-overflow")
            entries[1].value.kind = UInt8(ascii: "S")
            entries[1].value.value.bytes = bytes("reject-publish")
            entries.withUnsafeMutableBufferPointer { buffer in
                _ = amqp_queue_declare(
                    conn, 1, bytes(name), 0, 1, 0, 0, amqp_table_t(num_entries: 2, entries: buffer.baseAddress))
            }
        } else {
            amqp_queue_declare(conn, 1, bytes(name), 0, 1, 0, 0, amqp_empty_table)
        }
        try check("queue.declare \(name)")
        if let exchange {
            amqp_queue_bind(conn, 1, bytes(name), bytes(exchange), bytes(bindingKey), amqp_empty_table)
            try check("queue.bind \(name)")
        }
    }

    /// Everything in `queue`, in order, taken off it.
    func messages(_ queue: String) throws -> [Message] {
        var out: [Message] = []
        while true {
            let reply = amqp_basic_get(conn, 1, bytes(queue), 1)
            guard reply.reply_type == AMQP_RESPONSE_NORMAL else { throw Failure(message: "basic.get \(queue) failed") }
            guard reply.reply.id == 0x003C_0047 else { return out }  // basic.get-ok; else basic.get-empty
            let routingKey = Self.string(
                reply.reply.decoded.assumingMemoryBound(to: amqp_basic_get_ok_t.self).pointee.routing_key)
            var message = amqp_message_t()
            guard amqp_read_message(conn, 1, &message, 0).reply_type == AMQP_RESPONSE_NORMAL else {
                throw Failure(message: "reading a message from \(queue) failed")
            }
            defer { amqp_destroy_message(&message) }
            var headers: [String: String] = [:]
            var rawHeaders: [String: [UInt8]] = [:]
            let table = message.properties.headers
            for i in 0..<Int(table.num_entries) {
                let entry = table.entries[i]
                if entry.value.kind == UInt8(ascii: "S") || entry.value.kind == UInt8(ascii: "x") {
                    headers[Self.string(entry.key)] = Self.string(entry.value.value.bytes)
                    let bytes = entry.value.value.bytes
                    rawHeaders[Self.string(entry.key)] = Array(
                        UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.len))
                }
            }
            out.append(
                Message(
                    routingKey: routingKey, messageID: Self.string(message.properties.message_id),
                    deliveryMode: Int(message.properties.delivery_mode), headers: headers, rawHeaders: rawHeaders,
                    body: Array(UnsafeRawBufferPointer(start: message.body.bytes, count: message.body.len))))
            amqp_maybe_release_buffers(conn)
        }
    }

    static func string(_ bytes: amqp_bytes_t) -> String {
        String(decoding: UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.len), as: UTF8.self)
    }
}
