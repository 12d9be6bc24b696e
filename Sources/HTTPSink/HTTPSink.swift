import CCurl
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
                token: token, url: record.url, body: record.body, headers: lines,
                timeoutMilliseconds: config.timeoutMilliseconds,
                connectTimeoutMilliseconds: config.connectTimeoutMilliseconds, caFile: config.caFile)
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

/// libcurl's multi interface on its own thread: requests go in, answers come
/// out through a lock, and `wakeup` tells the relay's thread.
final class CurlWorker: @unchecked Sendable {
    struct Answer {
        var token: UInt64
        var status: Int
        var transportError: String?
        var retryAfter: String?
        var location: String?
        var response: String
    }

    let wakeup = Wakeup()
    private let multi: UnsafeMutableRawPointer
    /// What the relay's thread and the worker share. `@unchecked Sendable`: the
    /// request pointers in `submitted` are handed over, owned by one side at a time.
    private struct Shared: @unchecked Sendable {
        var submitted: [UnsafeMutablePointer<outbox_http_request>] = []
        var answers: [Answer] = []
        var running = true
    }
    private let shared = Mutex(Shared())
    private let done = DispatchSemaphore(value: 0)

    init(maxConnections: Int) throws {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        guard let multi = outbox_http_multi_new(maxConnections) else {
            throw SinkError("cannot create a libcurl multi handle")
        }
        self.multi = multi
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "outbox-http"
        thread.start()
    }

    deinit {
        shared.withLock { $0.running = false }
        curl_multi_wakeup(multi)
        done.wait()
        curl_multi_cleanup(multi)
    }

    func submit(
        token: UInt64, url: String, body: [UInt8], headers: [String], timeoutMilliseconds: Int,
        connectTimeoutMilliseconds: Int,
        caFile: String?
    ) {
        let copies = headers.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        let request = copies.map { UnsafePointer($0) }.withUnsafeBufferPointer { lines in
            body.withUnsafeBytes { bytes in
                outbox_http_request_new(
                    url, bytes.baseAddress, bytes.count, lines.baseAddress, Int32(lines.count), timeoutMilliseconds,
                    connectTimeoutMilliseconds, token, caFile)
            }
        }
        guard let request else {
            shared.withLock {
                $0.answers.append(
                    Answer(token: token, status: 0, transportError: "cannot create a request", response: ""))
            }
            wakeup.signal()
            return
        }
        nonisolated(unsafe) let handed = request
        shared.withLock { $0.submitted.append(handed) }
        curl_multi_wakeup(multi)
    }

    func takeAnswers() -> [Answer] {
        shared.withLock { shared in
            defer { shared.answers.removeAll(keepingCapacity: true) }
            return shared.answers
        }
    }

    private func run() {
        var active: Set<UnsafeMutablePointer<outbox_http_request>> = []
        while true {
            nonisolated(unsafe) let (stop, new) = shared.withLock {
                shared -> (Bool, [UnsafeMutablePointer<outbox_http_request>]) in
                defer { shared.submitted.removeAll() }
                return (!shared.running, shared.submitted)
            }
            if stop {
                for request in active.union(new) {
                    curl_multi_remove_handle(multi, request.pointee.easy)
                    outbox_http_request_free(request)
                }
                done.signal()
                return
            }
            for request in new {
                curl_multi_add_handle(multi, request.pointee.easy)
                active.insert(request)
            }
            var stillRunning: Int32 = 0
            curl_multi_perform(multi, &stillRunning)
            var finished: [Answer] = []
            while let request = outbox_http_next_done(multi) {
                active.remove(request)
                let r = request.pointee
                let error =
                    r.result == 0
                    ? nil
                    : Self.text(r.error).nonEmpty ?? String(cString: curl_easy_strerror(CURLcode(UInt32(r.result))))
                finished.append(
                    Answer(
                        token: r.token, status: r.result == 0 ? Int(r.status) : 0, transportError: error,
                        retryAfter: Self.text(r.retry_after).nonEmpty, location: Self.text(r.location).nonEmpty,
                        response: Self.text(r.response)))
                outbox_http_request_free(request)
            }
            if !finished.isEmpty {
                shared.withLock { $0.answers += finished }
                wakeup.signal()
            }
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
    }

    static func text<T>(_ tuple: T) -> String {
        withUnsafeBytes(of: tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

extension String {
    fileprivate var nonEmpty: String? { isEmpty ? nil : self }
}
