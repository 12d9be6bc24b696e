import CurlIO
import Foundation
import Logging
import OutboxCore
import RelayIO

/// How the SQS or SNS sink reaches its queue or topic.
public struct AWSSinkConfig: Sendable {
    public var service: AWSService
    /// The queue URL (SQS) or topic ARN (SNS).
    public var target: String
    /// The dead-letter queue URL or topic ARN.
    public var deadLetterTarget: String?
    public var region: String
    /// The service endpoint: `https://sqs.REGION.amazonaws.com/` unless `--aws-endpoint-url` says otherwise.
    public var endpointURL: String
    /// STS, for web identity.
    public var stsURL: String
    /// The largest message (body and attributes) the queue or topic takes.
    public var maximumMessageBytes = 262_144
    /// Batches in flight at once (FIFO: never two of one message group).
    public var maximumRequestsInFlight = 8
    public var requestTimeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 5_000
    public var caFile: String?
    /// How long web-identity credentials are asked for (STS `DurationSeconds`).
    public var sessionDurationSeconds = 3_600
    /// Where credentials are looked up (`AWS_*` variables, `HOME`).
    public var environment: [String: String]

    public init(
        service: AWSService, target: String, region: String, endpointURL: String, stsURL: String,
        environment: [String: String]
    ) {
        self.service = service
        self.target = target
        self.region = region
        self.endpointURL = endpointURL
        self.stsURL = stsURL
        self.environment = environment
    }

    /// FIFO queues' URLs and FIFO topics' ARNs end in `.fifo` (both services require it).
    public static func isFIFO(_ target: String) -> Bool { target.hasSuffix(".fifo") }
}

/// `EventSink` over `AWSTransport`: a concrete class around the shared driver (see RabbitMQSink).
public final class AWSSink: EventSink {
    public let driver: DeliveryDriver<AWSTransport>

    /// Connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: AWSSinkConfig, logger: Logger) throws {
        if !AWSSinkConfig.isFIFO(config.target) {
            logger.notice(
                "\(config.service.displayName) \(config.service == .sqs ? "standard queue" : "standard topic"): events arrive in no particular order; use a .fifo one for per-key order"
            )
        }
        driver = try DeliveryDriver(transport: AWSTransport(config: config), logger: logger)
    }

    public var name: String { driver.name }
    public func send(_ event: OutboxEvent, ticket: UInt64) throws { try driver.send(event, ticket: ticket) }
    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        try driver.deadLetter(poison, ticket: ticket)
    }
    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try driver.poll(timeoutMilliseconds: timeoutMilliseconds)
    }
    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try driver.flush(timeoutMilliseconds: timeoutMilliseconds)
    }
    public func discardUnacknowledged() -> Int { driver.discardUnacknowledged() }
    public var isReachable: Bool { driver.isReachable }
    public var wakeupDescriptor: Int32? { driver.wakeupDescriptor }
    public var nextDeadline: Instant? { driver.nextDeadline }
    public var deadLettered: Int { driver.deadLettered }
}

/// AWS SQS (`SendMessageBatch`) and SNS (`PublishBatch`) as a delivery
/// transport, over libcurl on a thread of its own; libcurl signs (SigV4).
///
/// - Batches of up to ten entries and 256 KiB; several batches in flight.
/// - Each event is a message: the body is the payload, the event's fields are
///   string attributes; on FIFO queues and topics `MessageGroupId` = key and
///   `MessageDeduplicationId` = event id, and at most one message of a group is
///   in flight, so a retried one is never overtaken by a later one of its group.
/// - A batch's per-entry results are per-event: a sender fault refuses that
///   event (dead-letter queue or stop), a service fault sends it again after a
///   backoff. A whole request refused as malformed is split into single-entry
///   requests to find the entry at fault.
/// - The link is the credentials and the worker; web-identity credentials are
///   renewed in the background before they expire.
public final class AWSTransport: DeliveryTransport {
    public let config: AWSSinkConfig
    public var destination: String { config.service.displayName }
    public var name: String { config.service.rawValue }
    public var redactedLocation: String { config.target }
    public var hasDeadLetter: Bool { config.deadLetterTarget != nil }
    /// libcurl times each request.
    public var acknowledgementTimeoutMilliseconds: Int? { nil }

    public struct Message {
        var entry: AWSEntry
        var pairs: [(name: String, value: String)]
        var deadLetter: Bool
    }

    public init(config: AWSSinkConfig) { self.config = config }

    private func isFIFO(deadLetter: Bool) -> Bool {
        AWSSinkConfig.isFIFO(deadLetter ? (config.deadLetterTarget ?? "") : config.target)
    }

    // MARK: Messages

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let (entry, problem) = AWSMapping.entry(for: event, fifo: true, maximumBytes: config.maximumMessageBytes)
        return (Message(entry: entry, pairs: event.messageHeaders, deadLetter: false), problem)
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard config.deadLetterTarget != nil else { return nil }
        let pairs = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description), ("dlq.reason", poison.reason),
            ("dlq.source", poison.source),
        ]
        let body = poison.payload.map { String(decoding: $0, as: UTF8.self) } ?? ""
        let entry = AWSEntry(
            body: body.isEmpty
                ? "null" : AWSMapping.attributeValue(body),
            attributes: AWSMapping.attributes(pairs), group: "dead-letter",
            deduplicationID: AWSMapping.identifier(poison.id ?? "lsn-\(poison.lsn)"))
        return Message(entry: entry, pairs: pairs, deadLetter: true)
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        var dead = message
        dead.deadLetter = true
        dead.pairs += [("dlq.error", why), ("dlq.original", config.target)]
        dead.entry.attributes = AWSMapping.attributes(dead.pairs)
        dead.entry.body = AWSMapping.attributeValue(dead.entry.body)
        if dead.entry.body.isEmpty { dead.entry.body = "null" }
        return dead
    }

    // MARK: The link

    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> AWSLink {
        let source: AWSCredentialSource
        switch AWSCredentialSource.resolve(
            environment: config.environment, credentialsFile: readFile(credentialsPath),
            configFile: readFile(configPath))
        {
        case .success(let found): source = found
        case .failure(let missing): throw ConnectFailure(missing.description, permanent: true)
        }
        let credentials: AWSCredentials
        var webIdentity: AWSLink.WebIdentity?
        switch source {
        case .environment(let c), .profile(_, let c):
            credentials = c
        case .webIdentity(let role, let file, let session):
            let identity = AWSLink.WebIdentity(roleARN: role, tokenFile: file, sessionName: session)
            let answer = CurlWorker.perform(try webIdentityRequest(identity))
            if let error = answer.transportError { throw ConnectFailure("STS at \(config.stsURL): \(error)") }
            switch AWSWebIdentity.credentials(status: answer.status, body: answer.response) {
            case .success(let c): credentials = c
            case .failure(let why):
                throw ConnectFailure(why.description, permanent: answer.status >= 400 && answer.status < 500)
            }
            webIdentity = identity
        }
        for target in [config.target, config.deadLetterTarget].compactMap({ $0 }) {
            let answer = CurlWorker.perform(probe(target, credentials: credentials))
            if let error = answer.transportError {
                throw ConnectFailure("\(destination) at \(config.endpointURL): \(error)")
            }
            let parsed =
                config.service == .sqs
                ? AWSAnswer.sqs(status: answer.status, body: answer.response)
                : AWSAnswer.query(status: answer.status, body: answer.response)
            if case .error(let code, let message) = parsed {
                let verdict = AWSVerdict.of(status: answer.status, code: code)
                throw ConnectFailure(
                    "\(destination) refused \(target) with credentials from \(source.summary): \(code): \(message)",
                    permanent: verdict != .retry)
            }
        }
        do {
            let worker = try CurlWorker(
                maxConnections: config.maximumRequestsInFlight + 1, wakeup: wakeup, name: "outbox-\(name)")
            return AWSLink(worker: worker, credentials: credentials, webIdentity: webIdentity)
        } catch {
            throw ConnectFailure(error.description)
        }
    }

    public func close(_ link: AWSLink) { link.worker = nil }

    public func descriptor(of link: AWSLink) -> (fd: Int32, writable: Bool)? { nil }

    public func deadline(of link: AWSLink) -> Instant? {
        guard link.webIdentity != nil, !link.refreshing, let at = link.refreshAt else { return nil }
        return Instant.now() + max(0, Int(at.timeIntervalSinceNow * 1000))
    }

    public func canPublish(_ message: Message, on link: AWSLink) -> Bool {
        if isFIFO(deadLetter: message.deadLetter), link.groupsInFlight[link.groupKey(message)] != nil { return false }
        if !link.open.isEmpty, link.openDeadLetter == message.deadLetter, link.open.count < link.batchLimit,
            link.openBytes + message.entry.size <= 262_144
        {
            return true
        }
        return link.requests.count + (link.open.isEmpty ? 0 : 1) < config.maximumRequestsInFlight
    }

    public func publish(_ message: Message, on link: AWSLink) -> PublishOutcome<UInt64> {
        guard link.worker != nil else { return .lost("the \(destination) link is closed") }
        if !link.open.isEmpty
            && (link.openDeadLetter != message.deadLetter || link.open.count >= link.batchLimit
                || link.openBytes + message.entry.size > 262_144)
        {
            submitOpen(on: link)
        }
        let token = link.nextToken
        link.nextToken += 1
        link.open.append((token, message))
        link.openBytes += message.entry.size
        link.openDeadLetter = message.deadLetter
        if isFIFO(deadLetter: message.deadLetter) { link.groupsInFlight[link.groupKey(message), default: 0] += 1 }
        if link.singles > 0 { link.singles -= 1 }
        if link.open.count >= link.batchLimit { submitOpen(on: link) }
        return .sent(token)
    }

    public func endOfTurn(on link: AWSLink, now: Instant) -> String? {
        if !link.open.isEmpty { submitOpen(on: link) }
        return nil
    }

    public func results(on link: AWSLink, now: Instant) -> [TransportResult<UInt64>] {
        guard let worker = link.worker else { return [] }
        var out: [TransportResult<UInt64>] = []
        if let identity = link.webIdentity, !link.refreshing, let at = link.refreshAt, at.timeIntervalSinceNow <= 0 {
            do throws(ConnectFailure) {
                worker.submit(try webIdentityRequest(identity), token: 0)
                link.refreshing = true
            } catch {
                link.refreshAt = Date().addingTimeInterval(30)
                out.append(
                    .notice(.warning, "cannot renew AWS credentials; trying again in 30 s", ["error": "\(error)"]))
            }
        }
        for answer in worker.takeAnswers() {
            if answer.token == 0 {
                out += renewed(answer, on: link)
                continue
            }
            guard let sent = link.requests.removeValue(forKey: answer.token) else { continue }
            for (_, message) in sent { link.release(message, fifo: isFIFO(deadLetter: message.deadLetter)) }
            out += outcome(of: answer, for: sent, on: link)
        }
        return out
    }

    // MARK: Requests and answers

    private func submitOpen(on link: AWSLink) {
        guard let worker = link.worker, !link.open.isEmpty else { return }
        let batch = link.open
        link.open.removeAll(keepingCapacity: true)
        link.openBytes = 0
        let target = batch[0].message.deadLetter ? config.deadLetterTarget ?? config.target : config.target
        let fifo = AWSSinkConfig.isFIFO(target)
        let entries = batch.map { _, message -> AWSEntry in
            var entry = message.entry
            if !fifo {
                entry.group = nil
                entry.deduplicationID = nil
            }
            return entry
        }
        let requestID = link.nextToken
        link.nextToken += 1
        link.requests[requestID] = batch
        switch config.service {
        case .sqs:
            worker.submit(
                signed(
                    AWSBatchRequest.sqs(queueURL: target, entries: entries), action: "SendMessageBatch",
                    credentials: link.credentials), token: requestID)
        case .sns:
            worker.submit(
                signed(
                    AWSBatchRequest.sns(topicARN: target, entries: entries), action: nil, credentials: link.credentials),
                token: requestID)
        }
    }

    private func outcome(
        of answer: CurlAnswer, for sent: [(token: UInt64, message: Message)], on link: AWSLink
    ) -> [TransportResult<UInt64>] {
        let tokens = sent.map(\.token)
        if let error = answer.transportError { return [.lost("\(destination): \(error)")] }
        let parsed =
            config.service == .sqs
            ? AWSAnswer.sqs(status: answer.status, body: answer.response)
            : AWSAnswer.query(status: answer.status, body: answer.response)
        switch parsed {
        case .batch(let successful, let failed):
            var out: [TransportResult<UInt64>] = []
            var settled = Set<Int>()
            for index in successful where sent.indices.contains(index) {
                out.append(.delivered(tokens[index]))
                settled.insert(index)
            }
            var again: [UInt64] = []
            var why = ""
            for failure in failed where sent.indices.contains(failure.index) {
                settled.insert(failure.index)
                if failure.senderFault {
                    out.append(
                        .refused(
                            tokens[failure.index], "\(destination) refused it: \(failure.code): \(failure.message)"))
                } else {
                    again.append(tokens[failure.index])
                    why = "\(failure.code): \(failure.message)"
                }
            }
            for index in sent.indices where !settled.contains(index) { again.append(tokens[index]) }
            if !again.isEmpty {
                out.append(
                    .notice(
                        .info, "\(destination) did not take \(again.count) message(s); sending them again",
                        ["error": "\(why)"]))
                out.append(
                    .retryLater(
                        again,
                        "\(destination) did not take \(again.count) message(s): \(why.isEmpty ? "no result" : why)"))
            }
            return out
        case .ok:
            return [.retryLater(tokens, "\(destination) answered a batch without results")]
        case .error(let code, let message):
            let why = "\(destination): \(code): \(message)"
            switch AWSVerdict.of(status: answer.status, code: code) {
            case .retry:
                return [
                    .notice(.info, "\(destination) did not take a batch; sending it again", ["error": "\(why)"]),
                    .retryLater(tokens, why),
                ]
            case .lostLink: return [.lost(why)]
            case .fatal:
                return [.fatal(tokens[0], why + " (check the queue or topic and the IAM policy)")]
            case .refuse:
                guard tokens.count > 1 else { return [.refused(tokens[0], why)] }
                link.singles = max(link.singles, tokens.count)
                return [
                    .notice(
                        .info,
                        "\(destination) refused a batch; sending its messages one by one to find the one at fault",
                        ["error": "\(why)"]),
                    .putBack(tokens),
                ]
            }
        }
    }

    private func renewed(_ answer: CurlAnswer, on link: AWSLink) -> [TransportResult<UInt64>] {
        link.refreshing = false
        if let error = answer.transportError {
            link.refreshAt = Date().addingTimeInterval(30)
            return [.notice(.warning, "cannot renew AWS credentials; trying again in 30 s", ["error": "\(error)"])]
        }
        switch AWSWebIdentity.credentials(status: answer.status, body: answer.response) {
        case .success(let fresh):
            link.adopt(fresh)
            return [
                .notice(
                    .info, "AWS credentials renewed",
                    ["expires": "\(fresh.expiration.map { ISO8601DateFormatter().string(from: $0) } ?? "never")"])
            ]
        case .failure(let why):
            link.refreshAt = Date().addingTimeInterval(30)
            return [.notice(.warning, "cannot renew AWS credentials; trying again in 30 s", ["error": "\(why)"])]
        }
    }

    private func signed(_ body: [UInt8], action: String?, credentials: AWSCredentials) -> CurlRequest {
        var headers: [String]
        if let action {
            headers = ["Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS.\(action)"]
        } else {
            headers = ["Content-Type: application/x-www-form-urlencoded"]
        }
        if let token = credentials.sessionToken { headers.append("X-Amz-Security-Token: \(token)") }
        var request = CurlRequest(
            url: config.endpointURL, body: body, headers: headers,
            timeoutMilliseconds: config.requestTimeoutMilliseconds,
            connectTimeoutMilliseconds: config.connectTimeoutMilliseconds, caFile: config.caFile)
        request.signing = (
            "aws:amz:\(config.region):\(config.service.signingName)",
            credentials.accessKeyID + ":" + credentials.secretAccessKey
        )
        request.responseLimit = 256 * 1024
        return request
    }

    /// Asks for the target's attributes: proves the credentials, the signature and that it exists.
    private func probe(_ target: String, credentials: AWSCredentials) -> CurlRequest {
        switch config.service {
        case .sqs:
            var body: [UInt8] = Array(#"{"QueueUrl":"#.utf8)
            JSONText.appendString(target, to: &body)
            body += Array(#","AttributeNames":["QueueArn"]}"#.utf8)
            return signed(body, action: "GetQueueAttributes", credentials: credentials)
        case .sns:
            return signed(
                AWSBatchRequest.formEncoded([
                    ("Action", "GetTopicAttributes"), ("Version", "2010-03-31"), ("TopicArn", target),
                ]), action: nil, credentials: credentials)
        }
    }

    private func webIdentityRequest(_ identity: AWSLink.WebIdentity) throws(ConnectFailure) -> CurlRequest {
        guard let token = readFile(identity.tokenFile)?.trimmingCharacters(in: .whitespacesAndNewlines),
            !token.isEmpty
        else {
            throw ConnectFailure("AWS_WEB_IDENTITY_TOKEN_FILE \(identity.tokenFile) cannot be read or is empty")
        }
        var request = AWSWebIdentity.request(
            stsURL: config.stsURL, roleARN: identity.roleARN, sessionName: identity.sessionName, token: token,
            durationSeconds: config.sessionDurationSeconds, timeoutMilliseconds: config.requestTimeoutMilliseconds)
        request.caFile = config.caFile
        return request
    }

    private var credentialsPath: String {
        config.environment["AWS_SHARED_CREDENTIALS_FILE"] ?? (config.environment["HOME"] ?? "") + "/.aws/credentials"
    }
    private var configPath: String {
        config.environment["AWS_CONFIG_FILE"] ?? (config.environment["HOME"] ?? "") + "/.aws/config"
    }

    private func readFile(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

/// One SQS or SNS link: the credentials in use, the batch being filled, the
/// batches in flight, and (FIFO) the groups that have a message in flight.
public final class AWSLink {
    struct WebIdentity {
        var roleARN: String
        var tokenFile: String
        var sessionName: String
    }

    var worker: CurlWorker?
    private(set) var credentials: AWSCredentials
    let webIdentity: WebIdentity?
    var refreshAt: Date?
    var refreshing = false
    /// Message and request tokens (0 is the credentials' renewal).
    var nextToken: UInt64 = 1
    var open: [(token: UInt64, message: AWSTransport.Message)] = []
    var openBytes = 0
    var openDeadLetter = false
    var requests: [UInt64: [(token: UInt64, message: AWSTransport.Message)]] = [:]
    var groupsInFlight: [String: Int] = [:]
    /// After a whole batch was refused as malformed: this many entries go one per request.
    var singles = 0
    var batchLimit: Int { singles > 0 ? 1 : AWSMapping.maximumBatchEntries }

    init(worker: CurlWorker, credentials: AWSCredentials, webIdentity: WebIdentity?) {
        self.worker = worker
        self.credentials = credentials
        self.webIdentity = webIdentity
        adopt(credentials)
    }

    func adopt(_ fresh: AWSCredentials) {
        credentials = fresh
        refreshAt = fresh.refreshTime(issuedAt: Date())
    }

    func groupKey(_ message: AWSTransport.Message) -> String {
        (message.deadLetter ? "d" : "e") + (message.entry.group ?? "")
    }

    func release(_ message: AWSTransport.Message, fifo: Bool) {
        guard fifo else { return }
        let key = groupKey(message)
        if let n = groupsInFlight[key], n > 1 { groupsInFlight[key] = n - 1 } else { groupsInFlight[key] = nil }
    }
}
