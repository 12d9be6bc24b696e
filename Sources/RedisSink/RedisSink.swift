import CEpoll
import Glibc
import Logging
import OutboxCore

/// How the Redis sink connects and adds entries.
public struct RedisSinkConfig: Sendable {
    /// `redis://[user[:password]@]host[:port][/db]`; the password is never logged.
    public var url: String
    /// The stream each event is added to; `{topic}` by default, so streams are the topics.
    public var stream: DestinationTemplate
    /// A stream for events Redis refuses for good and rows that cannot become events.
    public var deadLetterStream: String?
    /// `MAXLEN ~ n` on every add (0: the streams are not trimmed).
    public var maxLength = 0
    /// Keep a marker per event id this long and skip an event whose marker
    /// exists: redeliveries after a relay crash are dropped (0: off).
    public var dedupeWindowSeconds = 0
    public var dedupePrefix = "outbox-relay:dedupe:"
    /// An event is acknowledged only once this many replicas have it (`WAIT`).
    public var waitReplicas = 0
    /// How long one `WAIT` waits for the replicas.
    public var waitTimeoutMilliseconds = 1_000
    /// How long a batch waits for Redis's replies before the connection counts as dead.
    public var acknowledgementTimeoutMilliseconds = 10_000
    public var connectTimeoutMilliseconds = 2_000
    /// Bounds of one MULTI/EXEC batch.
    public var maxBatchEvents = 1_024
    public var maxBatchBytes = 8 << 20

    public init(url: String, stream: DestinationTemplate) {
        self.url = url
        self.stream = stream
    }
}

/// `EventSink` over Redis Streams, in Swift over a socket (RESP2; no client library).
///
/// - Each event is one entry (`XADD stream * …`) of the stream the template
///   names: fields `key`, `id`, `type`, the `headers` members and extra
///   columns, `lsn`, `tombstone` for a tombstone, then `payload`.
/// - Events go in `MULTI`/`EXEC` batches, one batch at a time on one
///   connection: a batch is applied whole or not at all, and the next starts
///   only after its answer, so a refused batch is retried before anything newer
///   is added and order per key (and overall) holds. Whatever is accepted
///   while a batch is out forms the next one.
/// - Acknowledged when `EXEC` answered; with `waitReplicas`, only once `WAIT`
///   says that many replicas have the batch (retried until they do). Redis
///   answers from memory: without replicas, an acknowledged event survives a
///   Redis crash only with `appendonly yes` and `appendfsync always`; the sink
///   warns at connect when the server says otherwise.
/// - With a duplicate window, a Lua script adds the entry only if no marker for
///   the event id exists, then sets the marker with that expiry: redeliveries
///   after a relay crash inside the window are dropped.
/// - Redis away (connection refused or lost, no answer within the timeout) or
///   refusing writes for now (OOM, LOADING, READONLY, MISCONF, BUSY): the batch
///   goes back to the front of the queue and is sent again after a capped
///   backoff; nothing new is acknowledged meanwhile.
/// - An event Redis refuses for good (the key holds another type, an ACL
///   forbids it) goes to the dead-letter stream when there is one; without one
///   the sink throws, naming the event, before it is acknowledged. Redis Cluster
///   redirections and unknown errors stop the relay.
///
/// Runs on the relay's I/O thread alone: a non-blocking socket, and an epoll
/// descriptor (the socket and a timer wake-up) as `wakeupDescriptor`.
public final class RedisSink: EventSink {
    public let name = "redis"
    public let config: RedisSinkConfig
    private let endpoint: RedisEndpoint
    private let logger: Logger

    struct Record {
        var ticket: UInt64
        var weight: Int
        var eventID: String
        var lsn: String
        var stream: String
        var fields: [[UInt8]]
        var deadLetter: Bool
        var bytes: Int { fields.reduce(stream.utf8.count) { $0 + $1.count } }
    }

    /// One MULTI/EXEC batch out (or its WAIT, once EXEC stored it).
    private struct Batch {
        enum Phase { case executing, awaitingReplicas }
        var records: [Record]
        var phase: Phase
        var expected: Int
        var replies: [RESPValue] = []
        /// nil: not sent yet (a WAIT waiting for its retry time).
        var sentAt: Instant?
        /// The timer that ends the wait for its answer is set.
        var deadlineArmed = false
    }

    private var queue = PendingQueue<Record>()
    private var batch: Batch?
    private var ready: [Acknowledgement] = []
    private var connection: RedisConnection?
    private var script: String?
    private var nextAttempt = Instant(nanoseconds: 0)
    /// After a refusal Redis may get over (OOM, too few replicas): no batch before this.
    private var holdUntil = Instant(nanoseconds: 0)
    private var backoff = ReconnectBackoff()
    private var outage: String?
    private var warnedDurability = false
    private let readiness: Readiness

    /// Records added to the dead-letter stream.
    public private(set) var deadLettered = 0
    /// Events the duplicate window dropped (the stream had them already).
    public private(set) var duplicates = 0
    public var isReachable: Bool { connection != nil && outage == nil }
    public var wakeupDescriptor: Int32? { readiness.descriptor }
    public var inFlight: Int { queue.count + (batch?.records.count ?? 0) }

    public init(config: RedisSinkConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        endpoint = try RedisEndpoint.parse(config.url)
        if let dlq = config.deadLetterStream, dlq.isEmpty {
            throw RedisConfigurationError(description: "--dlq-topic must not be empty")
        }
        readiness = try Readiness()
        do {
            try connect()
            logger.notice("Redis connected", metadata: ["url": "\(redactedURL(config.url))"])
        } catch let error as RedisConfigurationError {
            throw error
        } catch {
            outage = "\(error)"
            scheduleAttempt()
            logger.warning(
                "Redis unreachable; events wait in the relay and PostgreSQL until it is",
                metadata: ["url": "\(redactedURL(config.url))", "error": "\(error)"])
        }
    }

    // MARK: EventSink

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let stream = config.stream.render(event)
        let record = Record(
            ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn.description, stream: stream,
            fields: RedisMessage.fields(for: event), deadLetter: false)
        if stream.isEmpty {
            return try failPermanently(record, "the stream name (from --redis-stream \(config.stream)) is empty")
        }
        queue.append(record)
        try pump()
    }

    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        guard let stream = config.deadLetterStream else { return false }
        let fields: [[UInt8]] =
            [
                "id", poison.id ?? "", "lsn", poison.lsn.description, "dlq.reason", poison.reason, "dlq.source", poison.source,
            ].map { Array($0.utf8) } + [Array("payload".utf8), poison.payload ?? []]
        queue.append(
            Record(
                ticket: ticket, weight: poison.payload?.count ?? 0, eventID: poison.id ?? "", lsn: poison.lsn.description,
                stream: stream, fields: fields, deadLetter: true))
        deadLettered += 1
        try pump()
        return true
    }

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        readiness.clearTimer()
        try receive()
        try pump()
        if ready.isEmpty && timeoutMilliseconds > 0 && inFlight > 0 {
            var fd = pollfd(fd: readiness.descriptor, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&fd, 1, Int32(clamping: timeoutMilliseconds))
            readiness.clearTimer()
            try receive()
            try pump()
        }
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try flushByPolling(timeoutMilliseconds: timeoutMilliseconds) { inFlight > 0 }
    }

    /// Drops what is queued; a batch that is out may still be applied, so its
    /// connection is closed too (its answer must not be read as the next batch's).
    public func discardUnacknowledged() -> Int {
        let dropped = inFlight
        queue.removeAll()
        if batch != nil {
            batch = nil
            closeConnection()
            nextAttempt = Instant.now()
        }
        return dropped
    }

    // MARK: Batches

    /// Connects when it is time to, sends the next batch (or a WAIT retry) when
    /// none is out, and writes what the socket takes.
    private func pump() throws {
        let now = Instant.now()
        if connection == nil {
            guard now >= nextAttempt else { return }
            reconnect()
            guard connection != nil else { return }
        }
        guard let connection else { return }
        if now >= holdUntil {
            if batch == nil && !queue.isEmpty {
                startBatch(on: connection, now: now)
            } else if var waiting = batch, waiting.sentAt == nil {
                var out: [UInt8] = []
                RESP.append(command: waitCommand, to: &out)
                connection.enqueue(out)
                waiting.sentAt = now
                waiting.replies = []
                batch = waiting
            }
        }
        if let error = connection.writeAvailable() { return lose(error) }
        readiness.watch(connection.descriptor, writable: connection.hasPendingOutput)
    }

    private var waitCommand: [[UInt8]] {
        ["WAIT", String(config.waitReplicas), String(config.waitTimeoutMilliseconds)].map { Array($0.utf8) }
    }

    private func startBatch(on connection: RedisConnection, now: Instant) {
        var records: [Record] = []
        var bytes = 0
        var out: [UInt8] = []
        RESP.append(command: [Array("MULTI".utf8)], to: &out)
        while let record = queue.first, records.count < config.maxBatchEvents, records.isEmpty || bytes < config.maxBatchBytes {
            queue.removeFirst()
            bytes += record.bytes
            let dedupe = record.deadLetter ? nil : script.map { (script: $0, marker: config.dedupePrefix + record.eventID, seconds: config.dedupeWindowSeconds) }
            RESP.append(
                command: RedisMessage.addCommand(
                    stream: record.stream, fields: record.fields, maxLength: config.maxLength, dedupe: dedupe),
                to: &out)
            records.append(record)
        }
        RESP.append(command: [Array("EXEC".utf8)], to: &out)
        let wait = config.waitReplicas > 0
        if wait { RESP.append(command: waitCommand, to: &out) }
        connection.enqueue(out)
        batch = Batch(
            records: records, phase: .executing, expected: RedisMessage.replyCount(commands: records.count, wait: wait),
            sentAt: now)
    }

    /// Reads what Redis answered and settles the batch once all its replies are in.
    private func receive() throws {
        guard let connection else { return }
        if let error = connection.readAvailable() { return lose(error) }
        while true {
            let reply: RESPValue?
            do { reply = try connection.parser.next() } catch { return lose("Redis sent something that is not RESP: \(error)") }
            guard let reply else { break }
            guard var current = batch, current.sentAt != nil else {
                return lose("Redis sent a reply nothing asked for: \(reply)")
            }
            current.replies.append(reply)
            batch = current
            if current.replies.count == current.expected {
                batch = nil
                try settle(current)
                if self.connection == nil { return }
            }
        }
        if var current = batch, let sentAt = current.sentAt {
            let limit = config.acknowledgementTimeoutMilliseconds + (config.waitReplicas > 0 ? config.waitTimeoutMilliseconds : 0)
            let waited = Instant.now().milliseconds(since: sentAt)
            if waited > limit {
                lose("no answer from Redis within \(limit) ms")
            } else if !current.deadlineArmed {
                readiness.signal(afterMilliseconds: limit - waited + 1)
                current.deadlineArmed = true
                batch = current
            }
        }
    }

    private func settle(_ finished: Batch) throws {
        if finished.phase == .awaitingReplicas {
            switch finished.replies[0] {
            case .integer(let n) where n >= config.waitReplicas:
                acknowledge(finished.records)
                recovered()
            case .integer(let n):
                awaitReplicas(finished.records, have: Int(n))
            case .error(let e):
                batch = Batch(records: finished.records, phase: .awaitingReplicas, expected: 1)
                hold("WAIT refused: \(e)")
            default:
                lose("WAIT answered \(finished.replies[0])")
            }
            return
        }
        switch RedisMessage.outcome(of: finished.replies, commands: finished.records.count, wait: config.waitReplicas > 0) {
        case .executed(let results, let replicas):
            var stored: [Record] = []
            for (index, result) in results.enumerated() {
                let record = finished.records[index]
                switch result {
                case .added:
                    stored.append(record)
                case .duplicate:
                    duplicates += 1
                    stored.append(record)
                case .refused(.permanent(let why)):
                    try failPermanently(record, why)
                case .refused(.transient(let why)):
                    // Redis cannot write now: this one and the rest go again, first.
                    settleStored(stored, replicas: replicas)
                    return retryLater(Array(finished.records[index...]), why)
                case .refused(.fatal(let why)):
                    throw refusal(record, why)
                }
            }
            settleStored(stored, replicas: replicas)
            if batch == nil { recovered() }
        case .aborted(let index, let refused):
            switch refused {
            case .transient(let why):
                retryLater(finished.records, why)
            case .permanent(let why):
                guard let index else { throw refusal(finished.records[0], why) }
                var rest = finished.records
                let record = rest.remove(at: index)
                queue.insertAtFront(rest)
                try failPermanently(record, why)
            case .fatal(let why):
                throw refusal(finished.records[index ?? 0], why)
            }
        }
    }

    private func settleStored(_ stored: [Record], replicas: Int?) {
        guard !stored.isEmpty else { return }
        if config.waitReplicas > 0, let replicas, replicas < config.waitReplicas {
            awaitReplicas(stored, have: replicas)
        } else {
            acknowledge(stored)
        }
    }

    /// A batch went through: the outage, if any, is over.
    private func recovered() {
        guard outage != nil else { return }
        outage = nil
        backoff.reset()
        logger.notice("Redis reachable again; delivering", metadata: ["waiting": "\(queue.count)"])
    }

    private func acknowledge(_ records: [Record]) {
        for record in records { ready.append(Acknowledgement(ticket: record.ticket, weight: record.weight)) }
    }

    /// Stored on the primary, not yet on enough replicas: held (not acknowledged)
    /// and WAIT asked again after the backoff. Nothing newer is sent meanwhile.
    private func awaitReplicas(_ records: [Record], have: Int) {
        batch = Batch(records: records, phase: .awaitingReplicas, expected: 1)
        hold("\(have) of \(config.waitReplicas) replicas acknowledged within \(config.waitTimeoutMilliseconds) ms (WAIT)")
    }

    /// Redis refused a batch for now (OOM, LOADING, READONLY, NOSCRIPT, …):
    /// it goes back in front of the queue, and the sink reconnects after the
    /// backoff — a new connection loads the script again (after a SCRIPT FLUSH
    /// or a failover) and resolves the host again (a name that moved to the new
    /// primary). Unless replicas are awaited for an earlier batch on this
    /// connection: then it waits on it (WAIT counts this connection's writes).
    private func retryLater(_ records: [Record], _ why: String) {
        queue.insertAtFront(records)
        if batch == nil {
            lose(why, "Redis is not taking events now; reconnecting, nothing new is confirmed meanwhile")
        } else {
            hold(why)
        }
    }

    /// Redis refused writes for now: wait before the next batch; reachability off meanwhile.
    private func hold(_ why: String) {
        let delay = backoff.next()
        holdUntil = Instant.now() + Int(delay * 1000)
        readiness.signal(afterMilliseconds: Int(delay * 1000))
        if outage == nil {
            logger.warning(
                "Redis is not taking events now; retrying, nothing new is confirmed meanwhile",
                metadata: ["reason": "\(why)", "waiting": "\(inFlight)"])
        }
        outage = why
    }

    /// The connection is lost or cannot be trusted: close it, put the batch
    /// back at the front of the queue, try again later. Its events may have
    /// been applied: sending them again is at-least-once (the window drops them).
    private func lose(_ why: String, _ message: Logger.Message = "Redis unreachable; retrying, nothing new is confirmed meanwhile") {
        guard connection != nil else { return }
        closeConnection()
        if let lost = batch {
            queue.insertAtFront(lost.records)
            batch = nil
        }
        scheduleAttempt()
        if outage == nil {
            logger.warning(message, metadata: ["error": "\(why)", "waiting": "\(queue.count)"])
        }
        outage = why
    }

    private func closeConnection() {
        if let connection { readiness.unwatch(connection.descriptor) }
        connection = nil
    }

    private func scheduleAttempt() {
        let delay = backoff.next()
        nextAttempt = Instant.now() + Int(delay * 1000)
        readiness.signal(afterMilliseconds: Int(delay * 1000))
    }

    private func reconnect() {
        do {
            try connect()
            logger.info("Redis connected; adding again", metadata: ["waiting": "\(queue.count)"])
            holdUntil = Instant(nanoseconds: 0)
            if queue.isEmpty && outage != nil {
                outage = nil
                backoff.reset()
                logger.notice("Redis reachable again")
            }
        } catch {
            scheduleAttempt()
            if outage == nil {
                logger.warning("Redis unreachable; retrying", metadata: ["error": "\(error)"])
            }
            outage = "\(error)"
        }
    }

    /// Opens a connection: AUTH, SELECT, the script, and a look at how durable the server is.
    private func connect() throws {
        let connection = try RedisConnection(endpoint: endpoint, timeoutMilliseconds: config.connectTimeoutMilliseconds)
        var setup: [[String]] = []
        if let password = endpoint.password {
            setup.append(["AUTH"] + (endpoint.username.map { [$0] } ?? []) + [password])
        }
        if endpoint.database != 0 { setup.append(["SELECT", String(endpoint.database)]) }
        let dedupe = config.dedupeWindowSeconds > 0
        if dedupe { setup.append(["SCRIPT", "LOAD", RedisMessage.deduplicatingAdd]) }
        setup.append(["CONFIG", "GET", "append*"])
        let replies = try connection.request(setup, timeoutMilliseconds: config.connectTimeoutMilliseconds)
        for (command, reply) in zip(setup, replies) {
            guard case .error(let e) = reply else { continue }
            switch command[0] {
            case "AUTH":
                throw RedisConfigurationError(description: "Redis refused the credentials in --redis-url: \(e)")
            case "SELECT":
                throw RedisConfigurationError(description: "Redis refused database \(endpoint.database): \(e)")
            case "SCRIPT":
                throw RedisConfigurationError(description: "Redis refused the duplicate-window script (needs EVALSHA and SCRIPT LOAD): \(e)")
            default: break  // CONFIG may be renamed or forbidden: no durability warning then
            }
        }
        if dedupe, case .bulk(let sha?)? = replies.dropLast().last { script = String(decoding: sha, as: UTF8.self) }
        if case .array(let pairs?)? = replies.last { warnAboutDurability(pairs) }
        readiness.watch(connection.descriptor, writable: false)
        self.connection = connection
    }

    private func warnAboutDurability(_ pairs: [RESPValue]) {
        guard !warnedDurability, config.waitReplicas == 0 else { return }
        var settings: [String: String] = [:]
        var index = 0
        while index + 1 < pairs.count {
            if let name = pairs[index].text, let value = pairs[index + 1].text { settings[name] = value }
            index += 2
        }
        guard let appendonly = settings["appendonly"], let fsync = settings["appendfsync"] else { return }
        if appendonly != "yes" || fsync != "always" {
            warnedDurability = true
            logger.warning(
                "Redis acknowledges from memory: a Redis crash can lose acknowledged events (set appendonly yes and appendfsync always on the server, or use --redis-wait-replicas)",
                metadata: ["appendonly": "\(appendonly)", "appendfsync": "\(fsync)"])
        }
    }

    // MARK: Refusals

    private func refusal(_ record: Record, _ why: String) -> SinkError {
        SinkError(
            "Redis refused event id=\(record.eventID) (commit LSN \(record.lsn)) for stream \(record.stream): \(why). Nothing from this transaction on was confirmed; fix the cause and restart"
        )
    }

    /// An event that can never be added as it is: to the dead-letter stream, or stop.
    private func failPermanently(_ record: Record, _ why: String) throws {
        if record.deadLetter {
            throw SinkError("dead-letter stream \(record.stream) refused the record for event id=\(record.eventID) (LSN \(record.lsn)): \(why)")
        }
        guard let dlq = config.deadLetterStream else {
            throw SinkError(
                "Redis refused event id=\(record.eventID) (commit LSN \(record.lsn)) for stream \(record.stream): \(why). Nothing from this transaction on was confirmed; fix the cause (or set --dlq-topic) and restart"
            )
        }
        let extra: [[UInt8]] = ["dlq.error", why, "dlq.original.stream", record.stream].map { Array($0.utf8) }
        queue.append(
            Record(
                ticket: record.ticket, weight: record.weight, eventID: record.eventID, lsn: record.lsn, stream: dlq,
                fields: extra + record.fields, deadLetter: true))
        deadLettered += 1
        logger.warning(
            "event sent to the dead-letter stream",
            metadata: ["id": "\(record.eventID)", "lsn": "\(record.lsn)", "stream": "\(record.stream)", "error": "\(why)"])
    }
}

// MARK: - The socket

struct RedisUnreachable: Error, CustomStringConvertible {
    var description: String
}

/// One TCP connection to Redis, non-blocking. Closed on deinit, never reused.
final class RedisConnection {
    let descriptor: Int32
    var parser = RESPParser()
    private var output: [UInt8] = []
    private var written = 0
    var hasPendingOutput: Bool { written < output.count }

    init(endpoint: RedisEndpoint, timeoutMilliseconds: Int) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list)
        guard resolved == 0, let first = list else {
            throw RedisUnreachable(description: "cannot resolve \(endpoint.host): \(String(cString: gai_strerror(resolved)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        let deadline = Instant.now() + timeoutMilliseconds
        while let address = candidate {
            candidate = address.pointee.ai_next
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if Glibc.poll(&p, 1, Instant.now().millisecondsRoundedUp(until: deadline)) == 1 {
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                    if error == 0 {
                        descriptor = fd
                        return
                    }
                    lastError = String(cString: strerror(error))
                } else {
                    lastError = "connect timed out after \(timeoutMilliseconds) ms"
                }
            } else {
                lastError = String(cString: strerror(errno))
            }
            close(fd)
        }
        throw RedisUnreachable(description: "cannot connect to \(endpoint.host):\(endpoint.port): \(lastError)")
    }

    deinit { close(descriptor) }

    func enqueue(_ bytes: [UInt8]) {
        if written == output.count {
            output.removeAll(keepingCapacity: true)
            written = 0
        }
        output += bytes
    }

    /// Writes what the socket takes now; an error's text when the connection is broken.
    func writeAvailable() -> String? {
        while written < output.count {
            let n = output.withUnsafeBytes { send(descriptor, $0.baseAddress! + written, $0.count - written, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                written += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return nil
            } else {
                return "write to Redis failed: \(String(cString: strerror(errno)))"
            }
        }
        return nil
    }

    /// Reads what has arrived into the parser; an error's text when the connection is closed or broken.
    func readAvailable() -> String? {
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                chunk.withUnsafeBytes { parser.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if n < chunk.count { return nil }
            } else if n == 0 {
                return "Redis closed the connection"
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                return nil
            } else {
                return "read from Redis failed: \(String(cString: strerror(errno)))"
            }
        }
    }

    /// Sends commands and waits for their replies (the connection's set-up).
    func request(_ commands: [[String]], timeoutMilliseconds: Int) throws -> [RESPValue] {
        var out: [UInt8] = []
        for command in commands { RESP.append(command: command.map { Array($0.utf8) }, to: &out) }
        enqueue(out)
        let deadline = Instant.now() + timeoutMilliseconds
        var replies: [RESPValue] = []
        while replies.count < commands.count {
            if let error = writeAvailable() { throw RedisUnreachable(description: error) }
            var p = pollfd(fd: descriptor, events: Int16(POLLIN) | (hasPendingOutput ? Int16(POLLOUT) : 0), revents: 0)
            let left = Instant.now().millisecondsRoundedUp(until: deadline)
            guard left > 0, Glibc.poll(&p, 1, left) >= 0 else {
                throw RedisUnreachable(description: "no answer from Redis within \(timeoutMilliseconds) ms")
            }
            if let error = readAvailable() { throw RedisUnreachable(description: error) }
            while let reply = try parser.next() { replies.append(reply) }
        }
        return replies
    }
}

/// The one descriptor the relay waits on for this sink: an epoll set of the
/// socket and a timer wake-up (a reconnect, a retry, a reply deadline).
final class Readiness {
    let descriptor: Int32
    private let timer = Wakeup()
    private var watched: (fd: Int32, writable: Bool)?

    init() throws {
        descriptor = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard descriptor >= 0 else { throw SinkError("epoll_create1: \(String(cString: strerror(errno)))") }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = timer.descriptor
        _ = epoll_ctl(descriptor, EPOLL_CTL_ADD, timer.descriptor, &event)
    }

    deinit { close(descriptor) }

    func watch(_ fd: Int32, writable: Bool) {
        if let watched, watched.fd == fd, watched.writable == writable { return }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd
        let operation = watched?.fd == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD
        if let old = watched, old.fd != fd { unwatch(old.fd) }
        _ = epoll_ctl(descriptor, operation, fd, &event)
        watched = (fd, writable)
    }

    func unwatch(_ fd: Int32) {
        guard watched?.fd == fd else { return }
        _ = epoll_ctl(descriptor, EPOLL_CTL_DEL, fd, nil)
        watched = nil
    }

    func signal(afterMilliseconds milliseconds: Int) { timer.signal(afterMilliseconds: milliseconds) }
    func clearTimer() { timer.clear() }
}
