import CNats
import Foundation
import Glibc
import Logging
import OutboxCore
import RelayIO
import Synchronization

/// How the NATS sink connects and publishes.
public struct NATSSinkConfig: Sendable {
    /// `nats://host:port`, comma-separated for several servers; may carry
    /// `user:password@` or a token (never logged).
    public var url: String
    /// Where each event goes; `{topic}` by default, so subjects are the topics.
    public var subject: DestinationTemplate
    /// A subject for events JetStream refuses for good and rows that cannot become events.
    public var deadLetterSubject: String?
    /// A `.creds` file (JWT and NKey seed) for NATS accounts.
    public var credentialsFile: String?
    /// How long a publication waits for JetStream's acknowledgement before it counts as lost.
    public var acknowledgementTimeoutMilliseconds = 10_000
    /// Connect timeout, and how often the connection is pinged (2 unanswered pings: dead).
    public var connectTimeoutMilliseconds = 2_000
    public var pingIntervalMilliseconds = 5_000

    public init(url: String, subject: DestinationTemplate) {
        self.url = url
        self.subject = subject
    }
}

/// Start-up problems the relay cannot run with (bad URL, JetStream not enabled): exit, not retry.
public struct NATSConfigurationError: Error, CustomStringConvertible {
    public var description: String
}

/// `EventSink` over NATSSink: a concrete class around the shared `DeliveryDriver`,
/// so this module gets a copy of the driver and the machine specialized for
/// `NATSTransport` (through the generic driver directly, every event paid for
/// generic metadata lookups: NATS drained 10 % slower).
public final class NATSSink: EventSink {
    public let driver: DeliveryDriver<NATSTransport>

    /// Checks the names, then connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: NATSSinkConfig, logger: Logger) throws {
        if let subject = config.deadLetterSubject, let problem = NATSMessage.subjectProblem(subject) {
            throw NATSConfigurationError(description: "--dlq-topic \(subject) \(problem)")
        }
        if config.subject.isConstant, let problem = NATSMessage.subjectProblem(config.subject.description) {
            throw NATSConfigurationError(description: "--nats-subject \(config.subject) \(problem)")
        }
        driver = try DeliveryDriver(transport: NATSTransport(config: config), logger: logger)
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

    /// PubAcks that said the stream already had the message (a redelivery inside the duplicate window).
    public var duplicates: Int { driver.transport.duplicates.load(ordering: .relaxed) }
}

/// NATS JetStream as a delivery transport.
///
/// - Subject from the template; body = the payload as stored; headers
///   `Nats-Msg-Id` (the event id), `key`, `id`, `type`, the `headers`
///   members and extra columns, `lsn`; a tombstone is an empty body with
///   `tombstone: true`.
/// - Asynchronous publications; an event is acknowledged when its stream's
///   PubAck arrives (the stream has it, per its replicas and storage). A PubAck
///   that says "duplicate" (JetStream's window dropped a redelivery) also
///   acknowledges: the stream has the event.
/// - A lost connection, unanswered pings or a transient JetStream error is a
///   lost link: the delivery machine puts what was not acknowledged back in
///   order and connects again; redeliveries JetStream already stored are
///   dropped by `Nats-Msg-Id`. The client's own reconnect and its reconnect
///   buffer are off, so nothing sent after a lost publication reaches the
///   stream before it: order per key holds.
/// - An event JetStream refuses for good (no stream covers its subject, larger
///   than max_payload, a stream limit with discard new, an invalid subject or
///   header) goes to the dead-letter subject when there is one, else stops the relay.
///
/// libnats's threads only hand results over to the link's `Inbox` and signal
/// the driver's wake-up; the token of a publication is its message's address,
/// kept alive until its result was matched.
public final class NATSTransport: DeliveryTransport {
    public let config: NATSSinkConfig
    public let destination = "NATS"
    public let name = "nats"
    public var redactedLocation: String { redactedURL(config.url) }
    public var hasDeadLetter: Bool { config.deadLetterSubject != nil }
    /// libnats times out each publication itself (`MaxWait`); the machine's deadline is a backstop behind it.
    public var acknowledgementTimeoutMilliseconds: Int? { config.acknowledgementTimeoutMilliseconds + 2_000 }
    let duplicates = Atomic<Int>(0)

    public struct Message {
        var subject: String
        var headers: [(name: String, value: String)]
        var body: [UInt8]
    }

    public init(config: NATSSinkConfig) { self.config = config }

    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> Connection {
        do {
            return try Connection(config: config, inbox: Inbox(wakeup: wakeup))
        } catch {
            switch error {
            case .configuration(let message): throw ConnectFailure(message, permanent: true)
            case .unreachable(let message): throw ConnectFailure(message)
            }
        }
    }

    public func close(_ link: Connection) { link.close() }
    public func descriptor(of link: Connection) -> (fd: Int32, writable: Bool)? { nil }

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let subject = config.subject.render(event)
        let message = Message(subject: subject, headers: NATSMessage.headers(for: event), body: event.messageBody)
        if let problem = NATSMessage.subjectProblem(subject) {
            return (message, "subject \"\(subject)\" (from --nats-subject \(config.subject)) \(problem)")
        }
        let headerProblem = message.headers.lazy.compactMap {
            NATSMessage.headerProblem(name: $0.name, value: $0.value)
        }.first
        return (message, headerProblem)
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard let subject = config.deadLetterSubject else { return nil }
        let headers: [(name: String, value: String)] = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description),
            ("dlq.reason", Self.oneLine(poison.reason)), ("dlq.source", Self.oneLine(poison.source)),
        ]
        return Message(subject: subject, headers: headers, body: poison.payload ?? [])
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        var headers = message.headers.filter { NATSMessage.headerProblem(name: $0.name, value: $0.value) == nil }
        headers += [("dlq.error", Self.oneLine(why)), ("dlq.original.subject", Self.oneLine(message.subject))]
        let tooLarge = why.contains("max_payload")
        if tooLarge { headers.append(("dlq.payload.omitted", "\(message.body.count) bytes")) }
        return Message(subject: config.deadLetterSubject ?? "", headers: headers, body: tooLarge ? [] : message.body)
    }

    public func publish(_ message: Message, on link: Connection) -> PublishOutcome<UInt> {
        switch link.publish(message, timeoutMilliseconds: config.acknowledgementTimeoutMilliseconds) {
        case .published(let address): return .sent(address)
        case .failed(let status, let text):
            switch NATSMessage.classify(status: status, errorCode: 0, text: text, subject: message.subject) {
            case .permanent(let why): return .refused(why)
            case .transient(let why): return .lost(why)
            }
        }
    }

    public func results(on link: Connection, now: Instant) -> [TransportResult<UInt>] {
        let (results, disconnected) = link.inbox.take()
        // Matched before their messages are freed: a freed address could be reused by the next publication.
        defer { Inbox.release(results) }
        var out: [TransportResult<UInt>] = []
        out.reserveCapacity(results.count + 1)
        var lost = disconnected
        for result in results {
            switch result.outcome {
            case .stored(let duplicate):
                if duplicate { duplicates.add(1, ordering: .relaxed) }
                out.append(.delivered(result.address))
            case .failed(let status, let code, let text):
                let subject =
                    natsMsg_GetSubject(OpaquePointer(bitPattern: result.address)).map { String(cString: $0) } ?? "?"
                switch NATSMessage.classify(status: status, errorCode: code, text: text, subject: subject) {
                case .permanent(let why): out.append(.refused(result.address, why))
                case .transient(let why): if lost == nil { lost = why }
                }
            }
        }
        if let lost { out.append(.lost(lost)) }
        return out
    }

    static func oneLine(_ text: String) -> String {
        String(text.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}

// MARK: - libnats

/// What libnats's threads report, taken by the relay's thread.
final class Inbox: @unchecked Sendable {
    enum Outcome: Sendable {
        case stored(duplicate: Bool)
        case failed(status: String, code: Int, text: String)
    }

    /// The messages stay alive until the relay's thread has matched them: a
    /// message freed here could have its address reused by the next publication.
    private let state = Mutex<(results: [(address: UInt, outcome: Outcome)], disconnected: String?)>(([], nil))
    private let wakeup: Wakeup

    init(wakeup: Wakeup) { self.wakeup = wakeup }

    /// What a closed connection reported and nobody matched (also a result a
    /// callback delivered just as the connection closed) is freed with the
    /// inbox, when the connection is dropped.
    deinit { Self.release(state.withLock { $0.results }) }

    func deliver(_ address: UInt, _ outcome: Outcome) {
        state.withLock { $0.results.append((address, outcome)) }
        wakeup.signal()
    }

    func disconnect(_ why: String) {
        state.withLock { if $0.disconnected == nil { $0.disconnected = why } }
        wakeup.signal()
    }

    /// The results so far; the caller destroys their messages (`release`) once matched.
    func take() -> ([(address: UInt, outcome: Outcome)], String?) {
        state.withLock { state in
            defer { state.results.removeAll(keepingCapacity: true) }
            return (state.results, state.disconnected)
        }
    }

    static func release(_ results: [(address: UInt, outcome: Outcome)]) {
        for result in results { natsMsg_Destroy(OpaquePointer(bitPattern: result.address)) }
    }
}

/// libnats calls back from its own threads, and may do so after the
/// connection it calls for was destroyed: the disconnected callback of a
/// connection closed at shutdown can arrive once the sink is gone. So a
/// callback's closure is a number, never a pointer; it finds its inbox here
/// while the connection is open, and nothing after `Connection.close()` — a
/// late PubAck's message is then freed by the callback, a late disconnect
/// ignored. (A pointer to an inbox freed meanwhile crashed the relay on exit.)
enum InboxRegistry {
    private static let state = Mutex<(next: UInt, inboxes: [UInt: Inbox])>((1, [:]))

    static func register(_ inbox: Inbox) -> UInt {
        state.withLock { state in
            let id = state.next
            state.next += 1
            state.inboxes[id] = inbox
            return id
        }
    }

    static func remove(_ id: UInt) { _ = state.withLock { $0.inboxes.removeValue(forKey: id) } }

    /// The inbox a callback's closure names, if its connection is still open.
    static func inbox(_ closure: UnsafeMutableRawPointer?) -> Inbox? {
        let id = UInt(bitPattern: closure)
        return state.withLock { $0.inboxes[id] }
    }

    static func closure(_ id: UInt) -> UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: id) }
}

enum ConnectError: Error {
    case configuration(String)
    case unreachable(String)
}

/// One libnats connection and its JetStream context. Closed, never reused.
public final class Connection {
    let inbox: Inbox
    /// The inbox's number in `InboxRegistry`, the closure libnats hands back.
    private let id: UInt
    private var nc: OpaquePointer?
    private var js: OpaquePointer?

    enum PublishResult {
        case published(UInt)
        case failed(status: String, text: String)
    }

    init(config: NATSSinkConfig, inbox: Inbox) throws(ConnectError) {
        self.inbox = inbox
        id = InboxRegistry.register(inbox)
        let closure = InboxRegistry.closure(id)
        var connected = false
        defer { if !connected { close() } }
        var opts: OpaquePointer?
        guard natsOptions_Create(&opts) == NATS_OK, let opts else { throw .unreachable("cannot create NATS options") }
        defer { natsOptions_Destroy(opts) }
        if natsOptions_SetURL(opts, config.url) != NATS_OK {
            throw .configuration("--nats-url \(redactedURL(config.url)) is not a NATS URL: \(Self.lastError())")
        }
        _ = natsOptions_SetName(opts, "outbox-relay")
        _ = natsOptions_SetTimeout(opts, Int64(config.connectTimeoutMilliseconds))
        _ = natsOptions_SetPingInterval(opts, Int64(config.pingIntervalMilliseconds))
        _ = natsOptions_SetMaxPingsOut(opts, 2)
        // The sink reconnects itself, after taking back what was not acknowledged:
        // libnats's reconnect would resend its buffer behind a lost publication.
        _ = natsOptions_SetAllowReconnect(opts, false)
        _ = natsOptions_SetDisconnectedCB(opts, natsDisconnected, closure)
        if let file = config.credentialsFile {
            let s = natsOptions_SetUserCredentialsFromFiles(opts, file, nil)
            if s != NATS_OK { throw .configuration("--nats-credentials \(file): \(Self.lastError())") }
        }
        var connection: OpaquePointer?
        let s = natsConnection_Connect(&connection, opts)
        guard s == NATS_OK, let connection else {
            let text = Self.lastError(s)
            if s == NATS_NOT_PERMITTED || s == NATS_CONNECTION_AUTH_FAILED {
                throw .configuration("NATS refused the credentials: \(text)")
            }
            throw .unreachable("cannot connect to \(redactedURL(config.url)): \(text)")
        }
        nc = connection
        var jsOpts = jsOptions()
        jsOptions_Init(&jsOpts)
        jsOpts.Wait = Int64(config.connectTimeoutMilliseconds)
        jsOpts.PublishAsync.MaxPending = 1 << 30  // the relay's in-flight bound is the bound
        jsOpts.PublishAsync.AckHandler = natsAcknowledged
        jsOpts.PublishAsync.AckHandlerClosure = closure
        var context: OpaquePointer?
        guard natsConnection_JetStream(&context, connection, &jsOpts) == NATS_OK, let context else {
            throw .unreachable("cannot create a JetStream context: \(Self.lastError())")
        }
        js = context
        // JetStream must answer: an account without it is a configuration error, not an outage.
        var info: UnsafeMutablePointer<jsAccountInfo>?
        var code = jsErrCode(rawValue: 0)
        let infoStatus = js_GetAccountInfo(&info, context, nil, &code)
        if let info { jsAccountInfo_Destroy(info) }
        if infoStatus != NATS_OK {
            let text = Self.lastError(infoStatus)
            if infoStatus == NATS_NO_RESPONDERS || code.rawValue == 10039 {
                throw .configuration(
                    "JetStream is not enabled for this account on \(redactedURL(config.url)) (\(text)): start nats-server with -js, or enable JetStream for the account"
                )
            }
            throw .unreachable("JetStream did not answer: \(text)")
        }
        connected = true
    }

    func publish(_ record: NATSTransport.Message, timeoutMilliseconds: Int) -> PublishResult {
        guard let js else { return .failed(status: "NATS_CONNECTION_CLOSED", text: "connection closed") }
        var msg: OpaquePointer?
        var s = record.body.withUnsafeBufferPointer { body in
            body.baseAddress.map { base in
                base.withMemoryRebound(to: CChar.self, capacity: body.count) {
                    natsMsg_Create(&msg, record.subject, nil, $0, Int32(body.count))
                }
            } ?? natsMsg_Create(&msg, record.subject, nil, nil, 0)
        }
        guard s == NATS_OK, let created = msg else {
            return .failed(status: Self.statusName(s), text: Self.lastError(s))
        }
        for header in record.headers {
            s = natsMsgHeader_Add(created, header.name, header.value)
            if s != NATS_OK {
                natsMsg_Destroy(created)
                return .failed(status: "NATS_INVALID_ARG", text: "header \(header.name): \(Self.lastError(s))")
            }
        }
        let address = UInt(bitPattern: created)
        var pubOpts = jsPubOptions()
        jsPubOptions_Init(&pubOpts)
        pubOpts.MaxWait = Int64(timeoutMilliseconds)
        s = js_PublishMsgAsync(js, &msg, &pubOpts)
        if s != NATS_OK {
            if let msg { natsMsg_Destroy(msg) }
            return .failed(status: Self.statusName(s), text: Self.lastError(s))
        }
        return .published(address)
    }

    /// Destroys the connection; from now on its callbacks find no inbox.
    func close() {
        if let js { jsCtx_Destroy(js) }
        if let nc { natsConnection_Destroy(nc) }
        js = nil
        nc = nil
        InboxRegistry.remove(id)
    }

    static func lastError(_ status: natsStatus? = nil) -> String {
        var s = natsStatus(rawValue: 0)
        if let text = nats_GetLastError(&s), text.pointee != 0 { return String(cString: text) }
        return status.map { String(cString: natsStatus_GetText($0)) } ?? "unknown error"
    }

    static func statusName(_ s: natsStatus) -> String {
        switch s {
        case NATS_NO_RESPONDERS: "NATS_NO_RESPONDERS"
        case NATS_MAX_PAYLOAD: "NATS_MAX_PAYLOAD"
        case NATS_INVALID_SUBJECT: "NATS_INVALID_SUBJECT"
        case NATS_TIMEOUT: "NATS_TIMEOUT"
        case NATS_CONNECTION_CLOSED: "NATS_CONNECTION_CLOSED"
        case NATS_CONNECTION_DISCONNECTED: "NATS_CONNECTION_DISCONNECTED"
        default: "NATS_STATUS_\(s.rawValue)"
        }
    }
}

private let natsAcknowledged: jsPubAckHandler = { _, msg, pa, pae, closure in
    guard let msg else { return }
    guard let inbox = InboxRegistry.inbox(closure) else {
        natsMsg_Destroy(msg)  // its connection is closed: nobody waits for it
        return
    }
    if let pa {
        inbox.deliver(UInt(bitPattern: msg), .stored(duplicate: pa.pointee.Duplicate))
    } else if let pae {
        let text =
            pae.pointee.ErrText.map { String(cString: $0) } ?? String(cString: natsStatus_GetText(pae.pointee.Err))
        inbox.deliver(
            UInt(bitPattern: msg),
            .failed(status: Connection.statusName(pae.pointee.Err), code: Int(pae.pointee.ErrCode.rawValue), text: text)
        )
    } else {
        natsMsg_Destroy(msg)
    }
}

private let natsDisconnected: natsConnectionHandler = { _, closure in
    InboxRegistry.inbox(closure)?.disconnect("the connection to NATS was lost")
}
