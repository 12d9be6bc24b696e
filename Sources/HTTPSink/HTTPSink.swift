import CurlIO
import Foundation
import Glibc
import Logging
import OutboxCore
import RelayIO
import Synchronization

/// How the HTTP sink posts events.
public struct HTTPSinkConfig: Sendable {
    /// Where each event is POSTed.
    public var url: String
    /// Where events the endpoint refuses for good (4xx) and rows that cannot become events are POSTed.
    public var deadLetterURL: String?
    /// The HMAC-SHA256 key for `X-Outbox-Signature-256` (read from a file; never logged).
    public var signingKey: [UInt8]?
    /// Extra request headers, `Name: value` (e.g. `Authorization: Bearer …`; values never logged).
    public var headers: [String] = []
    /// Requests in flight at once, across keys (one per key at a time).
    public var concurrency = 16
    public var timeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 2_000
    /// The longest wait between attempts (and the cap on a `Retry-After`'s effect is 5 minutes).
    public var maxBackoffMilliseconds = 30_000
    public var caFile: String?

    public init(url: String) { self.url = url }
}

/// `EventSink` that POSTs each event as JSON to a webhook (libcurl's multi interface on a thread of its own).
///
/// - Body: the event as one JSON object, the same as an NDJSON line of the
///   stdout and file sinks (`id`, `topic`, `key`, `type`, `payload` verbatim,
///   `headers`, `tombstone`, `lsn`, `commit_time_us`). Headers:
///   `Content-Type: application/json`, `Idempotency-Key: <event id>`, and with a
///   signing key `X-Outbox-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
/// - A 2xx answer acknowledges. 408, 429 and 5xx, a timeout or a connection
///   error: tried again after a backoff (250 ms doubling to 30 s) or the
///   `Retry-After` the endpoint gave; meanwhile later events of the same key wait.
///   Other answers (4xx, a redirect) refuse the event for good: it is POSTed to
///   the dead-letter URL with the reason, or the sink throws before it is acknowledged.
/// - Per key, one request at a time, in order; across keys up to `concurrency`.
public final class HTTPSink: EventSink {
    public let name = "http"
    public let config: HTTPSinkConfig
    private let logger: Logger

    struct Record {
        var ticket: UInt64
        var weight: Int
        var eventID: String
        var lsn: String
        var url: String
        var body: [UInt8]
        var deadLetter: Bool
    }

    private var scheduler: WebhookScheduler
    /// By internal token (a relay ticket can come back in a new session).
    private var records: [UInt64: Record] = [:]
    private var nextToken: UInt64 = 1
    private var ready: [Acknowledgement] = []
    private let worker: CurlWorker
    private var failure: String?

    public private(set) var deadLettered = 0
    public private(set) var retries = 0
    public var isReachable: Bool { failure == nil }
    public var wakeupDescriptor: Int32? { worker.wakeup.descriptor }
    public var inFlight: Int { scheduler.pending }

    public init(config: HTTPSinkConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        scheduler = WebhookScheduler(
            concurrency: config.concurrency, maxBackoffMilliseconds: config.maxBackoffMilliseconds)
        worker = try CurlWorker(maxConnections: config.concurrency + 1)
    }

    // MARK: EventSink

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        var body: [UInt8] = []
        event.appendJSONLine(to: &body)
        body.removeLast()  // the newline
        accept(
            Record(
                ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn.description, url: config.url,
                body: body, deadLetter: false), key: event.key)
        dispatch()
    }

    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        guard let url = config.deadLetterURL else { return false }
        var body: [UInt8] = Array(#"{"id":"#.utf8)
        if let id = poison.id { JSONText.appendString(id, to: &body) } else { body += Array("null".utf8) }
        body += Array(#","lsn":""#.utf8) + Array(poison.lsn.description.utf8) + Array(#"","reason":"#.utf8)
        JSONText.appendString(poison.reason, to: &body)
        body += Array(#","source":"#.utf8)
        JSONText.appendString(poison.source, to: &body)
        body += Array(#","payload":"#.utf8)
        JSONText.appendString(String(decoding: poison.payload ?? [], as: UTF8.self), to: &body)
        body.append(UInt8(ascii: "}"))
        accept(
            Record(
                ticket: ticket, weight: poison.payload?.count ?? 0, eventID: poison.id ?? "",
                lsn: poison.lsn.description,
                url: url, body: body, deadLetter: true), key: Self.deadLetterKey)
        deadLettered += 1
        dispatch()
        return true
    }

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try collect()
        dispatch()
        if ready.isEmpty && timeoutMilliseconds > 0 && scheduler.pending > 0 {
            var wait = timeoutMilliseconds
            if let next = scheduler.nextRetry {
                wait = min(wait, max(1, Int(Instant.now().millisecondsRoundedUp(until: next))))
            }
            var fd = pollfd(fd: worker.wakeup.descriptor, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&fd, 1, Int32(clamping: wait))
            try collect()
            dispatch()
        }
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try pollUntilSettled(timeoutMilliseconds: timeoutMilliseconds) { scheduler.pending > 0 }
    }

    /// A retry's time: the relay's wait ends then (no timer thread).
    public var nextDeadline: Instant? { scheduler.nextRetry }

    public func discardUnacknowledged() -> Int {
        records.removeAll()
        return scheduler.removeAll()
    }

    // MARK: Requests

    /// Dead-letter posts have a queue of their own, in order.
    static let deadLetterKey = "\u{0}dead-letter"

    private func accept(_ record: Record, key: String) {
        let token = nextToken
        nextToken += 1
        records[token] = record
        scheduler.accept(token, key: key)
    }

    private func dispatch() {
        for token in scheduler.due(now: Instant.now()) {
            guard let record = records[token] else { continue }
            var lines = ["Content-Type: application/json", "Idempotency-Key: \(Self.headerValue(record.eventID))"]
            if let key = config.signingKey {
                lines.append(
                    "X-Outbox-Signature-256: sha256=\(HMACSHA256.hex(HMACSHA256.signature(key: key, message: record.body)))"
                )
            }
            if record.deadLetter { lines.append("X-Outbox-Dead-Letter: true") }
            lines += config.headers
            worker.submit(
                CurlRequest(
                    url: record.url, body: record.body, headers: lines, timeoutMilliseconds: config.timeoutMilliseconds,
                    connectTimeoutMilliseconds: config.connectTimeoutMilliseconds, caFile: config.caFile),
                token: token)
        }
    }

    private func collect() throws {
        worker.wakeup.clear()
        let now = Instant.now()
        for answer in worker.takeAnswers() {
            guard let record = records[answer.token] else { continue }  // discarded meanwhile
            let verdict = WebhookScheduler.verdict(
                status: answer.status, transportError: answer.transportError, retryAfter: answer.retryAfter,
                location: answer.location, response: answer.response,
                backoffMilliseconds: scheduler.backoffMilliseconds(after: answer.token),
                nowUnixSeconds: Int(Date().timeIntervalSince1970))
            scheduler.finished(answer.token, verdict, now: now)
            switch verdict {
            case .delivered:
                records[answer.token] = nil
                ready.append(Acknowledgement(ticket: record.ticket, weight: record.weight))
                if failure != nil {
                    failure = nil
                    logger.notice("HTTP endpoint accepting again; delivering")
                }
            case .retry(let after, let why):
                retries += 1
                if failure == nil {
                    logger.warning(
                        "HTTP endpoint failing; retrying, nothing new is confirmed meanwhile",
                        metadata: ["error": "\(why)", "retry_in_ms": "\(after)", "waiting": "\(scheduler.pending)"])
                }
                failure = why  // the relay's wait ends at `nextDeadline`, the scheduler's next retry
            case .refused(let why):
                records[answer.token] = nil
                try refuse(record, why)
            }
        }
    }

    private func refuse(_ record: Record, _ why: String) throws {
        if record.deadLetter {
            throw SinkError(
                "the dead-letter URL refused the record for event id=\(record.eventID) (LSN \(record.lsn)): \(why)")
        }
        guard let url = config.deadLetterURL else {
            throw SinkError(
                "the HTTP endpoint refused event id=\(record.eventID) (commit LSN \(record.lsn)): \(why). Nothing from this transaction on was confirmed; fix the cause (or set --dlq-topic to a dead-letter URL) and restart"
            )
        }
        var body: [UInt8] = Array(#"{"error":"#.utf8)
        JSONText.appendString(why, to: &body)
        body += Array(#","event":"#.utf8) + record.body + [UInt8(ascii: "}")]
        var dead = record
        dead.url = url
        dead.body = body
        dead.deadLetter = true
        accept(dead, key: Self.deadLetterKey)
        deadLettered += 1
        logger.warning(
            "event sent to the dead-letter URL",
            metadata: ["id": "\(record.eventID)", "lsn": "\(record.lsn)", "error": "\(why)"])
    }

    static func headerValue(_ text: String) -> String {
        String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.map(Character.init))
    }
}
