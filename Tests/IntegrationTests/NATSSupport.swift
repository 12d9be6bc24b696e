import CNats
import Foundation
import Glibc
import Testing

/// A private nats-server with JetStream (file storage) on 127.0.0.1, which a
/// test can stop and start again on the same port and store.
final class NATSServer: @unchecked Sendable {
    // @unchecked Sendable: `process` is touched only by the test's own task.
    /// Set by scripts/test.sh on the default PostgreSQL version only: the sink does not depend on it.
    static let binary = ProcessInfo.processInfo.environment["NATS_SERVER_BIN"] ?? ""
    static var available: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    let port: Int
    let store: String
    private var process: Process?
    var url: String { "nats://127.0.0.1:\(port)" }

    init() throws {
        port = try TCPProxy.freePort()
        store = NSTemporaryDirectory() + "nats-\(UUID().uuidString.prefix(8))"
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: store)
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["-js", "-sd", store, "-a", "127.0.0.1", "-p", "\(port)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? NATSClient(url: url)) != nil { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw NATSClient.Failure(message: "nats-server did not start on \(url)")
    }

    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
        self.process = nil
    }
}

/// A plain libnats client for tests: streams, and reading back what the relay stored.
final class NATSClient {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    struct Message {
        var sequence: UInt64
        var subject: String
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        func json() -> [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
    }

    private var nc: OpaquePointer?
    private var js: OpaquePointer?

    init(url: String) throws {
        var connection: OpaquePointer?
        guard natsConnection_ConnectTo(&connection, url) == NATS_OK, let connection else {
            throw Failure(message: "cannot connect to \(url)")
        }
        nc = connection
        var context: OpaquePointer?
        guard natsConnection_JetStream(&context, connection, nil) == NATS_OK else {
            natsConnection_Destroy(connection)
            throw Failure(message: "no JetStream context")
        }
        js = context
    }

    deinit {
        if let js { jsCtx_Destroy(js) }
        if let nc { natsConnection_Destroy(nc) }
    }

    /// A file-storage stream over `subjects`; `duplicateWindow` is JetStream's (default 2 minutes).
    func addStream(
        _ name: String, subjects: [String], duplicateWindow: Duration? = nil, maxMessageSize: Int32? = nil
    ) throws {
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        let cSubjects = subjects.map { strdup($0) }
        defer { cSubjects.forEach { free($0) } }
        var code = jsErrCode(rawValue: 0)
        var info: UnsafeMutablePointer<jsStreamInfo>?
        let status = name.withCString { cName in
            cSubjects.map { UnsafePointer($0) }.withUnsafeBufferPointer { list in
                config.Name = cName
                config.Subjects = UnsafeMutablePointer(mutating: list.baseAddress)
                config.SubjectsLen = Int32(list.count)
                config.Storage = js_FileStorage
                if let duplicateWindow {
                    config.Duplicates =
                        Int64(duplicateWindow.components.seconds) * 1_000_000_000 + duplicateWindow.components
                        .attoseconds / 1_000_000_000
                }
                if let maxMessageSize { config.MaxMsgSize = maxMessageSize }
                return js_AddStream(&info, js, &config, nil, &code)
            }
        }
        if let info { jsStreamInfo_Destroy(info) }
        guard status == NATS_OK else {
            throw Failure(message: "js_AddStream \(name): status \(status.rawValue), code \(code.rawValue)")
        }
    }

    func messageCount(_ stream: String) throws -> (count: UInt64, first: UInt64, last: UInt64) {
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(rawValue: 0)
        guard js_GetStreamInfo(&info, js, stream, nil, &code) == NATS_OK, let info else {
            throw Failure(message: "js_GetStreamInfo \(stream): code \(code.rawValue)")
        }
        defer { jsStreamInfo_Destroy(info) }
        return (info.pointee.State.Msgs, info.pointee.State.FirstSeq, info.pointee.State.LastSeq)
    }

    /// Every message of the stream, in stream order.
    func messages(_ stream: String) throws -> [Message] {
        let state = try messageCount(stream)
        guard state.count > 0 else { return [] }
        var out: [Message] = []
        for sequence in state.first...state.last {
            var msg: OpaquePointer?
            var code = jsErrCode(rawValue: 0)
            guard js_GetMsg(&msg, js, stream, sequence, nil, &code) == NATS_OK, let msg else { continue }
            defer { natsMsg_Destroy(msg) }
            var headers: [String: String] = [:]
            var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
            var count: Int32 = 0
            if natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK, let keys {
                for i in 0..<Int(count) {
                    guard let key = keys[i] else { continue }
                    var value: UnsafePointer<CChar>?
                    if natsMsgHeader_Get(msg, key, &value) == NATS_OK, let value {
                        headers[String(cString: key)] = String(cString: value)
                    }
                }
                free(keys)
            }
            let length = Int(natsMsg_GetDataLength(msg))
            let body =
                natsMsg_GetData(msg).map { Array(UnsafeRawBufferPointer(start: $0, count: length)).map { $0 } } ?? []
            out.append(
                Message(
                    sequence: sequence, subject: String(cString: natsMsg_GetSubject(msg)), headers: headers, body: body)
            )
        }
        return out
    }
}
