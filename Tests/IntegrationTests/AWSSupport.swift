import CurlIO
import Foundation
import Glibc
import Testing

/// A private moto server (PyPI's `moto[server]`, through scripts/moto-server.py, which speaks the AWS wire
/// protocols: SQS's JSON, SNS's and STS's query protocol, IAM) on 127.0.0.1 with
/// its own port. `authenticating`: moto checks access keys and SigV4
/// signatures, after the three unauthenticated calls that make the test's user.
final class MotoServer: @unchecked Sendable {
    /// Set by scripts/test.sh on the default PostgreSQL version only: the sinks do not depend on it.
    static let binary = ProcessInfo.processInfo.environment["MOTO_SERVER_BIN"] ?? ""
    static var available: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    let port: Int
    let url: String
    private var process: Process?
    /// The client the test uses (after `authenticating`: the user it made, allowed everything).
    private(set) var client: AWSClient

    init(authenticating: Bool = false) throws {
        port = try TCPProxy.freePort()
        url = "http://127.0.0.1:\(port)/"
        let process = Process()
        // moto's server with SQS's queue counters made O(1) (see the script).
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", TestDatabase.repository.appendingPathComponent("scripts/moto-server.py").path, "-H",
            "127.0.0.1", "-p", "\(port)",
        ]
        var environment = ProcessInfo.processInfo.environment
        if authenticating { environment["INITIAL_NO_AUTH_ACTION_COUNT"] = "3" }
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        client = AWSClient(endpoint: url, key: "AKIDTEST", secret: "test-secret")
        let deadline = Date().addingTimeInterval(20)
        while !TCPProxy.canConnect(port: port) && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        guard TCPProxy.canConnect(port: port) else { throw ShellError(message: "moto_server did not start on \(port)") }
        if authenticating {
            _ = try client.call(.iam, ["Action": "CreateUser", "UserName": "relay"])
            let made = try client.call(.iam, ["Action": "CreateAccessKey", "UserName": "relay"])
            let policy = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
            _ = try client.call(
                .iam, ["Action": "PutUserPolicy", "UserName": "relay", "PolicyName": "all", "PolicyDocument": policy])
            client = AWSClient(
                endpoint: url, key: AWSClient.xml("AccessKeyId", made) ?? "",
                secret: AWSClient.xml("SecretAccessKey", made) ?? "")
        }
    }

    deinit {
        if let process {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// The environment a relay needs to reach this server as the test's user.
    var relayEnvironment: [String: String] {
        ["AWS_ACCESS_KEY_ID": client.key, "AWS_SECRET_ACCESS_KEY": client.secret, "AWS_REGION": "us-east-1"]
    }
}

/// Just enough of an AWS client for tests, over the relay's own CurlIO (libcurl signs).
struct AWSClient: Sendable {
    enum Service: String { case sqs, sns, iam, sts }
    struct Problem: Error, CustomStringConvertible { var description: String }

    var endpoint: String
    var key: String
    var secret: String

    /// One SQS JSON call; the answer's object.
    func sqs(_ action: String, _ body: [String: Any]) throws -> [String: Any] {
        var request = CurlRequest(
            url: endpoint, body: Array(try JSONSerialization.data(withJSONObject: body)),
            headers: ["Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS.\(action)"],
            timeoutMilliseconds: 30_000, connectTimeoutMilliseconds: 5_000)
        request.signing = ("aws:amz:us-east-1:sqs", "\(key):\(secret)")
        request.responseLimit = 16 * 1024 * 1024
        let answer = CurlWorker.perform(request)
        guard answer.status == 200 else {
            throw Problem(description: "SQS \(action): \(answer.status) \(answer.transportError ?? answer.response)")
        }
        return (try JSONSerialization.jsonObject(with: Data(answer.response.utf8)) as? [String: Any]) ?? [:]
    }

    /// One query-protocol call (SNS, IAM, STS); the answer's XML.
    func call(_ service: Service, _ parameters: [String: String]) throws -> String {
        var all = parameters
        all["Version"] = ["sns": "2010-03-31", "iam": "2010-05-08", "sts": "2011-06-15"][service.rawValue]
        let body = all.map { "\(Self.encoded($0.key))=\(Self.encoded($0.value))" }.joined(separator: "&")
        var request = CurlRequest(
            url: endpoint, body: Array(body.utf8), headers: ["Content-Type: application/x-www-form-urlencoded"],
            timeoutMilliseconds: 30_000, connectTimeoutMilliseconds: 5_000)
        request.signing = ("aws:amz:us-east-1:\(service.rawValue)", "\(key):\(secret)")
        request.responseLimit = 1024 * 1024
        let answer = CurlWorker.perform(request)
        guard answer.status == 200 else {
            throw Problem(description: "\(service) \(parameters["Action"] ?? ""): \(answer.status) \(answer.response)")
        }
        return answer.response
    }

    func createQueue(_ name: String, attributes: [String: String] = [:]) throws -> String {
        var all = attributes
        if name.hasSuffix(".fifo") { all["FifoQueue"] = "true" }
        return try sqs("CreateQueue", ["QueueName": name, "Attributes": all])["QueueUrl"] as? String ?? ""
    }

    func createTopic(_ name: String) throws -> String {
        var parameters = ["Action": "CreateTopic", "Name": name]
        if name.hasSuffix(".fifo") {
            parameters["Attributes.entry.1.key"] = "FifoTopic"
            parameters["Attributes.entry.1.value"] = "true"
        }
        return Self.xml("TopicArn", try call(.sns, parameters)) ?? ""
    }

    /// Subscribes a queue to a topic with raw delivery (the message as it was published, attributes kept).
    func subscribe(queue name: String, to topic: String) throws {
        _ = try call(
            .sns,
            [
                "Action": "Subscribe", "TopicArn": topic, "Protocol": "sqs",
                "Endpoint": "arn:aws:sqs:us-east-1:123456789012:\(name)",
                "Attributes.entry.1.key": "RawMessageDelivery",
                "Attributes.entry.1.value": "true",
            ])
    }

    struct Received {
        var body: String
        var attributes: [String: String]
        var group: String?
        var deduplicationID: String?
        var id: String { attributes["id"] ?? "" }
        var seq: Int {
            ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any])?["seq"] as? Int ?? -1
        }
    }

    /// Every message in the queue, in the order the queue hands them out (each deleted once read).
    func drain(_ queueURL: String) throws -> [Received] {
        var out: [Received] = []
        var empty = 0
        while empty < 2 {
            let answer = try sqs(
                "ReceiveMessage",
                [
                    "QueueUrl": queueURL, "MaxNumberOfMessages": 10, "MessageAttributeNames": ["All"],
                    "MessageSystemAttributeNames": ["All"], "AttributeNames": ["All"], "VisibilityTimeout": 600,
                ])
            let messages = answer["Messages"] as? [[String: Any]] ?? []
            if messages.isEmpty {
                empty += 1
                continue
            }
            empty = 0
            var deletes: [[String: String]] = []
            for (index, message) in messages.enumerated() {
                let attributes = (message["MessageAttributes"] as? [String: [String: Any]] ?? [:]).compactMapValues {
                    $0["StringValue"] as? String
                }
                let system = message["Attributes"] as? [String: String] ?? [:]
                out.append(
                    Received(
                        body: message["Body"] as? String ?? "", attributes: attributes, group: system["MessageGroupId"],
                        deduplicationID: system["MessageDeduplicationId"]))
                deletes.append(["Id": "\(index)", "ReceiptHandle": message["ReceiptHandle"] as? String ?? ""])
            }
            _ = try sqs("DeleteMessageBatch", ["QueueUrl": queueURL, "Entries": deletes])
        }
        return out
    }

    static func xml(_ name: String, _ text: String) -> String? {
        guard let start = text.range(of: "<\(name)>"),
            let end = text.range(of: "</\(name)>", range: start.upperBound..<text.endIndex)
        else { return nil }
        return String(text[start.upperBound..<end.lowerBound])
    }

    static func encoded(_ text: String) -> String {
        text.addingPercentEncoding(
            withAllowedCharacters: CharacterSet(
                charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")) ?? text
    }
}
