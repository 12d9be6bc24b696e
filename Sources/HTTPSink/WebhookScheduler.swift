import OutboxCore

/// The HTTP sink's decisions, with no I/O and no clock: which accepted events
/// may be sent now, what an answer means, when a failed one is tried again.
///
/// Per key, one request at a time, in acceptance order: an event waits until
/// the one before it with the same key is delivered (or refused for good).
/// Across keys, up to `concurrency` requests overlap.
public struct WebhookScheduler {
    /// What an answer (or its absence) means.
    public enum Verdict: Equatable, Sendable {
        case delivered
        /// Try again, not before `afterMilliseconds`.
        case retry(afterMilliseconds: Int, why: String)
        /// This event will never be accepted as it is: dead-letter it or stop.
        case refused(String)
    }

    public let concurrency: Int
    public let maxBackoffMilliseconds: Int

    /// Events accepted and not yet delivered or refused, per key, in order.
    private var queues: [String: [UInt64]] = [:]
    /// Keys whose head may be sent once it is due, in the order they became ready.
    private var ready: [String] = []
    private var readyHead = 0
    private var waiting: [String: Instant] = [:]
    private var keyOf: [UInt64: String] = [:]
    private var attempts: [UInt64: Int] = [:]
    /// Sent and not answered yet.
    private var sent: Set<UInt64> = []
    public var inFlight: Int { sent.count }

    public init(concurrency: Int, maxBackoffMilliseconds: Int = 30_000) {
        precondition(concurrency > 0)
        self.concurrency = concurrency
        self.maxBackoffMilliseconds = maxBackoffMilliseconds
    }

    /// Events accepted and not finished.
    public var pending: Int { keyOf.count }

    public mutating func accept(_ ticket: UInt64, key: String) {
        keyOf[ticket] = key
        if queues[key, default: []].isEmpty { ready.append(key) }
        queues[key, default: []].append(ticket)
    }

    /// The events to send now (each marked in flight), oldest key first.
    public mutating func due(now: Instant) -> [UInt64] {
        for (key, at) in waiting where at <= now {
            waiting[key] = nil
            ready.append(key)
        }
        var out: [UInt64] = []
        while inFlight < concurrency && readyHead < ready.count {
            let key = ready[readyHead]
            readyHead += 1
            guard let head = queues[key]?.first, !sent.contains(head), waiting[key] == nil else { continue }
            out.append(head)
            sent.insert(head)
        }
        if readyHead > 256 && readyHead * 2 > ready.count {
            ready.removeFirst(readyHead)
            readyHead = 0
        }
        return out
    }

    /// When the earliest waiting retry is due; nil when none waits.
    public var nextRetry: Instant? { waiting.values.min() }

    /// What became of an in-flight event (anything else is ignored). Returns the verdict to act on:
    /// `.delivered` and `.refused` finish it (the next of its key becomes
    /// ready); `.retry` keeps it at the head of its key until the delay passed.
    public mutating func finished(_ ticket: UInt64, _ verdict: Verdict, now: Instant) {
        guard let key = keyOf[ticket], sent.remove(ticket) != nil else { return }
        switch verdict {
        case .delivered, .refused:
            keyOf[ticket] = nil
            attempts[ticket] = nil
            queues[key]?.removeFirst()
            if queues[key]?.isEmpty == true { queues[key] = nil } else { ready.append(key) }
        case .retry(let after, _):
            attempts[ticket, default: 0] += 1
            waiting[key] = now + after
        }
    }

    /// The backoff before attempt `attempt + 1`: 250 ms doubling, capped.
    public func backoffMilliseconds(after ticket: UInt64) -> Int {
        let n = attempts[ticket] ?? 0
        return min(maxBackoffMilliseconds, 250 << min(n, 16))
    }

    /// Forgets everything not in flight and everything in flight (a stale session): returns how many.
    public mutating func removeAll() -> Int {
        defer {
            queues.removeAll()
            ready.removeAll()
            readyHead = 0
            waiting.removeAll()
            keyOf.removeAll()
            attempts.removeAll()
            sent.removeAll()
        }
        return keyOf.count
    }

    /// What an HTTP answer means. `status` 0 with `transportError`: no answer
    /// (connect refused, timeout, reset). `retryAfter`: the header's value, in
    /// seconds or an HTTP date (`nowUnixSeconds` turns a date into a delay).
    public static func verdict(
        status: Int, transportError: String?, retryAfter: String?, location: String?, response: String,
        backoffMilliseconds: Int, nowUnixSeconds: Int, maxRetryAfterMilliseconds: Int = 300_000
    ) -> Verdict {
        if status == 0 {
            return .retry(afterMilliseconds: backoffMilliseconds, why: transportError ?? "no answer")
        }
        let what = "HTTP \(status)" + (response.isEmpty ? "" : ": \(oneLine(response))")
        switch status {
        case 200..<300:
            return .delivered
        case 408, 429, 500..<600:
            var delay = backoffMilliseconds
            if let retryAfter, let seconds = retryAfterSeconds(retryAfter, nowUnixSeconds: nowUnixSeconds) {
                delay = min(maxRetryAfterMilliseconds, max(0, seconds * 1000))
            }
            return .retry(afterMilliseconds: delay, why: what)
        case 300..<400:
            return .refused(
                "\(what) — the endpoint redirects\(location.map { " to \($0)" } ?? ""); redirects are not followed: set the URL to where it points"
            )
        default:
            return .refused(what)
        }
    }

    /// `Retry-After`: delay-seconds, or an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`).
    public static func retryAfterSeconds(_ value: String, nowUnixSeconds: Int) -> Int? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int(text), seconds >= 0 { return seconds }
        let parts = text.split(separator: " ")
        guard parts.count == 6, parts[5] == "GMT", let day = Int(parts[1]), let year = Int(parts[3]) else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let monthIndex = months.firstIndex(of: String(parts[2])) else { return nil }
        let clock = parts[4].split(separator: ":").compactMap { Int($0) }
        guard clock.count == 3 else { return nil }
        // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
        let m = monthIndex + 1
        let y = m <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let at = days * 86_400 + clock[0] * 3_600 + clock[1] * 60 + clock[2]
        return max(0, at - nowUnixSeconds)
    }

    static func oneLine(_ text: String) -> String {
        String(text.prefix(200).map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
