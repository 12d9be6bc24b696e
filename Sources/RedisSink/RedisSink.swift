import CEpoll
import Glibc
import Logging
import OutboxCore
import RelayIO
import Synchronization

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

/// `EventSink` over RedisSink: a concrete class around the shared `DeliveryDriver`,
/// so this module gets a copy of the driver and the machine specialized for
/// `RedisTransport` (through the generic driver directly, every event paid for
/// generic metadata lookups: NATS drained 10 % slower).
public final class RedisSink: EventSink {
    public let driver: DeliveryDriver<RedisTransport>

    /// Checks the names, then connects (blocking: call it off the relay's thread and the cooperative pool).
    public init(config: RedisSinkConfig, logger: Logger) throws {
        let endpoint = try RedisEndpoint.parse(config.url)
        if let dlq = config.deadLetterStream, dlq.isEmpty {
            throw RedisConfigurationError(description: "--dlq-topic must not be empty")
        }
        driver = try DeliveryDriver(
            transport: RedisTransport(config: config, endpoint: endpoint, logger: logger), logger: logger)
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

    /// Events the duplicate window dropped (the stream had them already).
    public var duplicates: Int { driver.transport.duplicates.load(ordering: .relaxed) }
}

/// Redis Streams as a delivery transport, in Swift over a socket (RESP2; no client library).
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
///   says that many replicas have the batch (asked again after a growing
///   delay until they do; the link is held meanwhile). Redis answers from
///   memory: without replicas, an acknowledged event survives a Redis crash
///   only with `appendonly yes` and `appendfsync always`; the sink warns at
///   connect when the server says otherwise.
/// - With a duplicate window, a Lua script adds the entry only if no marker for
///   the event id exists, then sets the marker with that expiry: redeliveries
///   after a relay crash inside the window are dropped.
/// - Redis away (connection refused or lost, no answer within the timeout) or
///   refusing writes for now (OOM, LOADING, READONLY, MISCONF, BUSY): the link
///   is lost — the batch goes back in front and a new connection (which loads
///   the script again and resolves the host again) sends it after the backoff.
/// - An event Redis refuses for good (the key holds another type, an ACL
///   forbids it) goes to the dead-letter stream when there is one; without one
///   the relay stops, naming the event. Redis Cluster redirections and unknown
///   errors stop the relay.
///
/// Answers are positional (one per command, in order), so the link itself
/// keeps the batch that is out and matches replies to it.
public final class RedisTransport: DeliveryTransport {
    public let config: RedisSinkConfig
    let endpoint: RedisEndpoint
    private let logger: Logger
    public let destination = "Redis"
    public let name = "redis"
    public var redactedLocation: String { redactedURL(config.url) }
    public var hasDeadLetter: Bool { config.deadLetterStream != nil }
    /// The link times its own requests (a WAIT may be asked again for long): no deadline in the machine.
    public var acknowledgementTimeoutMilliseconds: Int? { nil }
    public var closesOnDiscard: Bool { true }
    let duplicates = Atomic<Int>(0)
    private let warnedDurability = Atomic<Bool>(false)

    public struct Message {
        var stream: String
        var fields: [[UInt8]]
        var isDeadLetter: Bool
        var eventID: String
        var bytes: Int { fields.reduce(stream.utf8.count) { $0 + $1.count } }
    }

    init(config: RedisSinkConfig, endpoint: RedisEndpoint, logger: Logger) {
        self.config = config
        self.endpoint = endpoint
        self.logger = logger
    }

    // MARK: Messages

    public func message(for event: OutboxEvent) -> (Message, problem: String?) {
        let stream = config.stream.render(event)
        let message = Message(
            stream: stream, fields: RedisMessage.fields(for: event), isDeadLetter: false, eventID: event.id)
        return (message, stream.isEmpty ? "the stream name (from --redis-stream \(config.stream)) is empty" : nil)
    }

    public func poisonMessage(_ poison: PoisonEvent) -> Message? {
        guard let stream = config.deadLetterStream else { return nil }
        let fields: [[UInt8]] =
            [
                "id", poison.id ?? "", "lsn", poison.lsn.description, "dlq.reason", poison.reason, "dlq.source",
                poison.source,
            ].map { Array($0.utf8) } + [Array("payload".utf8), poison.payload ?? []]
        return Message(stream: stream, fields: fields, isDeadLetter: true, eventID: poison.id ?? "")
    }

    public func deadLetterMessage(_ message: Message, because why: String) -> Message {
        let extra: [[UInt8]] = ["dlq.error", why, "dlq.original.stream", message.stream].map { Array($0.utf8) }
        return Message(
            stream: config.deadLetterStream ?? "", fields: extra + message.fields, isDeadLetter: true,
            eventID: message.eventID)
    }

    // MARK: The link

    /// Opens a connection: AUTH, SELECT, the script, and a look at how durable the server is.
    public func connect(wakeup: Wakeup) throws(ConnectFailure) -> RedisLink {
        let connection: RedisConnection
        let replies: [RESPValue]
        var setup: [[String]] = []
        if let password = endpoint.password {
            setup.append(["AUTH"] + (endpoint.username.map { [$0] } ?? []) + [password])
        }
        if endpoint.database != 0 { setup.append(["SELECT", String(endpoint.database)]) }
        let dedupe = config.dedupeWindowSeconds > 0
        if dedupe { setup.append(["SCRIPT", "LOAD", RedisMessage.deduplicatingAdd]) }
        setup.append(["CONFIG", "GET", "append*"])
        do {
            connection = try RedisConnection(endpoint: endpoint, timeoutMilliseconds: config.connectTimeoutMilliseconds)
            replies = try connection.request(setup, timeoutMilliseconds: config.connectTimeoutMilliseconds)
        } catch {
            throw ConnectFailure("\(error)")
        }
        for (command, reply) in zip(setup, replies) {
            guard case .error(let e) = reply else { continue }
            switch command[0] {
            case "AUTH":
                throw ConnectFailure("Redis refused the credentials in --redis-url: \(e)", permanent: true)
            case "SELECT":
                throw ConnectFailure("Redis refused database \(endpoint.database): \(e)", permanent: true)
            case "SCRIPT":
                throw ConnectFailure(
                    "Redis refused the duplicate-window script (needs EVALSHA and SCRIPT LOAD): \(e)", permanent: true)
            default: break  // CONFIG may be renamed or forbidden: no durability warning then
            }
        }
        let link = RedisLink(connection: connection)
        if dedupe, case .bulk(let sha?)? = replies.dropLast().last {
            link.script = String(decoding: sha, as: UTF8.self)
        }
        if case .array(let pairs?)? = replies.last { warnAboutDurability(pairs) }
        return link
    }

    public func close(_ link: RedisLink) { link.connection.shutdown() }

    public func descriptor(of link: RedisLink) -> (fd: Int32, writable: Bool)? {
        (link.connection.descriptor, link.connection.hasPendingOutput)
    }

    public func deadline(of link: RedisLink) -> Instant? {
        if let waitAgainAt = link.waitAgainAt { return waitAgainAt }
        guard let out = link.batch, let sentAt = out.sentAt else { return nil }
        return sentAt + answerLimit
    }

    private var answerLimit: Int {
        config.acknowledgementTimeoutMilliseconds + (config.waitReplicas > 0 ? config.waitTimeoutMilliseconds : 0)
    }

    public func canPublish(on link: RedisLink) -> Bool {
        link.batch == nil && link.building.count < config.maxBatchEvents
            && (link.building.isEmpty || link.buildingBytes < config.maxBatchBytes)
    }

    public func publish(_ message: Message, on link: RedisLink) -> PublishOutcome<UInt64> {
        let token = link.nextToken
        link.nextToken += 1
        link.building.append((token, message))
        link.buildingBytes += message.bytes
        return .sent(token)
    }

    /// Sends the batch built this turn (or a WAIT asked again), and writes what the socket takes.
    public func endOfTurn(on link: RedisLink, now: Instant) -> String? {
        if !link.building.isEmpty {
            var out: [UInt8] = []
            RESP.append(command: [Array("MULTI".utf8)], to: &out)
            for (_, message) in link.building {
                let dedupe =
                    message.isDeadLetter
                    ? nil
                    : link.script.map {
                        (script: $0, marker: config.dedupePrefix + message.eventID, seconds: config.dedupeWindowSeconds)
                    }
                RESP.append(
                    command: RedisMessage.addCommand(
                        stream: message.stream, fields: message.fields, maxLength: config.maxLength, dedupe: dedupe),
                    to: &out)
            }
            RESP.append(command: [Array("EXEC".utf8)], to: &out)
            let wait = config.waitReplicas > 0
            if wait { RESP.append(command: waitCommand, to: &out) }
            link.connection.enqueue(out)
            link.batch = RedisLink.Batch(
                tokens: link.building.map(\.token), phase: .executing,
                expected: RedisMessage.replyCount(commands: link.building.count, wait: wait), sentAt: now)
            link.building.removeAll(keepingCapacity: true)
            link.buildingBytes = 0
        } else if let again = link.waitAgainAt, now >= again, var out = link.batch {
            var bytes: [UInt8] = []
            RESP.append(command: waitCommand, to: &bytes)
            link.connection.enqueue(bytes)
            link.waitAgainAt = nil
            out.sentAt = now
            out.replies = []
            link.batch = out
        }
        return link.connection.writeAvailable()
    }

    private var waitCommand: [[UInt8]] {
        ["WAIT", String(config.waitReplicas), String(config.waitTimeoutMilliseconds)].map { Array($0.utf8) }
    }

    /// Reads what Redis answered and settles the batch once all its replies are in.
    public func results(on link: RedisLink, now: Instant) -> [TransportResult<UInt64>] {
        var out: [TransportResult<UInt64>] = []
        if let error = link.connection.readAvailable() { return [.lost(error)] }
        while true {
            let reply: RESPValue?
            do { reply = try link.connection.parser.next() } catch {
                return out + [.lost("Redis sent something that is not RESP: \(error)")]
            }
            guard let reply else { break }
            guard var current = link.batch, current.sentAt != nil else {
                return out + [.lost("Redis sent a reply nothing asked for: \(reply)")]
            }
            current.replies.append(reply)
            link.batch = current
            if current.replies.count == current.expected {
                link.batch = nil
                settle(current, link: link, now: now, into: &out)
            }
        }
        if let current = link.batch, let sentAt = current.sentAt, now.milliseconds(since: sentAt) > answerLimit {
            out.append(.lost("no answer from Redis within \(answerLimit) ms"))
        }
        if let error = link.connection.writeAvailable() { out.append(.lost(error)) }
        return out
    }

    private func settle(
        _ finished: RedisLink.Batch, link: RedisLink, now: Instant, into out: inout [TransportResult<UInt64>]
    ) {
        if finished.phase == .awaitingReplicas {
            switch finished.replies[0] {
            case .integer(let n) where n >= config.waitReplicas:
                link.waitBackoff.reset()
                out.append(.release)
                out += finished.tokens.map { .delivered($0) }
            case .integer(let n):
                awaitReplicas(finished.tokens, have: Int(n), link: link, now: now, into: &out)
            case .error(let e):
                link.batch = RedisLink.Batch(tokens: finished.tokens, phase: .awaitingReplicas, expected: 1)
                link.waitAgainAt = now + link.waitBackoff.next()
                out.append(.hold("WAIT refused: \(e)"))
            default:
                out.append(.lost("WAIT answered \(finished.replies[0])"))
            }
            return
        }
        switch RedisMessage.outcome(
            of: finished.replies, commands: finished.tokens.count, wait: config.waitReplicas > 0)
        {
        case .executed(let results, let replicas):
            var stored: [UInt64] = []
            for (index, result) in results.enumerated() {
                let token = finished.tokens[index]
                switch result {
                case .added:
                    stored.append(token)
                case .duplicate:
                    duplicates.add(1, ordering: .relaxed)
                    stored.append(token)
                case .refused(.permanent(let why)):
                    out.append(.refused(token, why))
                case .refused(.transient(let why)):
                    // Redis cannot write now: this one and the rest go again, first.
                    settleStored(stored, replicas: replicas, link: link, now: now, into: &out)
                    retryLater(Array(finished.tokens[index...]), why, link: link, into: &out)
                    return
                case .refused(.fatal(let why)):
                    out.append(.fatal(token, why))
                    return
                }
            }
            settleStored(stored, replicas: replicas, link: link, now: now, into: &out)
        case .aborted(let index, let refused):
            switch refused {
            case .transient(let why):
                retryLater(finished.tokens, why, link: link, into: &out)
            case .permanent(let why):
                guard let index else { return out.append(.fatal(finished.tokens[0], why)) }
                var rest = finished.tokens
                let token = rest.remove(at: index)
                out.append(.putBack(rest))
                out.append(.refused(token, why))
            case .fatal(let why):
                out.append(.fatal(finished.tokens[index ?? 0], why))
            }
        }
    }

    private func settleStored(
        _ stored: [UInt64], replicas: Int?, link: RedisLink, now: Instant, into out: inout [TransportResult<UInt64>]
    ) {
        guard !stored.isEmpty else { return }
        if config.waitReplicas > 0, let replicas, replicas < config.waitReplicas {
            awaitReplicas(stored, have: replicas, link: link, now: now, into: &out)
        } else {
            out += stored.map { .delivered($0) }
        }
    }

    /// Stored on the primary, not yet on enough replicas: held (not acknowledged)
    /// and WAIT asked again after a growing delay. Nothing newer is sent meanwhile.
    private func awaitReplicas(
        _ tokens: [UInt64], have: Int, link: RedisLink, now: Instant, into out: inout [TransportResult<UInt64>]
    ) {
        link.batch = RedisLink.Batch(tokens: tokens, phase: .awaitingReplicas, expected: 1)
        link.waitAgainAt = now + link.waitBackoff.next()
        out.append(
            .hold(
                "\(have) of \(config.waitReplicas) replicas acknowledged within \(config.waitTimeoutMilliseconds) ms (WAIT)"
            ))
    }

    /// Redis refused a batch for now (OOM, LOADING, READONLY, NOSCRIPT, …): the
    /// link is lost, so the batch goes back in front of the queue and a new
    /// connection — which loads the script again (after a SCRIPT FLUSH or a
    /// failover) and resolves the host again (a name that moved to the new
    /// primary) — sends it after the backoff. Unless replicas are awaited for an
    /// earlier batch on this connection (WAIT counts this connection's writes):
    /// then the refused ones go back in front and wait on it.
    private func retryLater(
        _ tokens: [UInt64], _ why: String, link: RedisLink, into out: inout [TransportResult<UInt64>]
    ) {
        if link.batch == nil {
            out.append(.lost("Redis is not taking events now: \(why)"))
        } else {
            out.append(.retryLater(tokens, why))
        }
    }

    private func warnAboutDurability(_ pairs: [RESPValue]) {
        guard config.waitReplicas == 0, !warnedDurability.load(ordering: .relaxed) else { return }
        var settings: [String: String] = [:]
        var index = 0
        while index + 1 < pairs.count {
            if let name = pairs[index].text, let value = pairs[index + 1].text { settings[name] = value }
            index += 2
        }
        guard let appendonly = settings["appendonly"], let fsync = settings["appendfsync"] else { return }
        if appendonly != "yes" || fsync != "always" {
            warnedDurability.store(true, ordering: .relaxed)
            logger.warning(
                "Redis acknowledges from memory: a Redis crash can lose acknowledged events (set appendonly yes and appendfsync always on the server, or use --redis-wait-replicas)",
                metadata: ["appendonly": "\(appendonly)", "appendfsync": "\(fsync)"])
        }
    }
}

/// One connection to Redis and the batch that is out on it; used by the relay's thread alone once handed over.
public final class RedisLink {
    struct Batch {
        enum Phase { case executing, awaitingReplicas }
        var tokens: [UInt64]
        var phase: Phase
        var expected: Int
        var replies: [RESPValue] = []
        /// nil: not sent yet (a WAIT waiting to be asked again).
        var sentAt: Instant?
    }

    let connection: RedisConnection
    var script: String?
    var batch: Batch?
    var building: [(token: UInt64, message: RedisTransport.Message)] = []
    var buildingBytes = 0
    var nextToken: UInt64 = 1
    var waitAgainAt: Instant?
    var waitBackoff = Backoff(
        policy: .init(initialMilliseconds: 250, capMilliseconds: 5_000), seed: UInt64.random(in: .min ... .max))

    init(connection: RedisConnection) { self.connection = connection }
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
        switch TCPConnect.open(host: endpoint.host, port: endpoint.port, timeoutMilliseconds: timeoutMilliseconds) {
        case .success(let fd): descriptor = fd
        case .failure(let failure): throw RedisUnreachable(description: failure.description)
        }
    }

    deinit { close(descriptor) }

    /// Ends the connection for both sides now (the descriptor is closed when the object goes).
    func shutdown() { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }

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
            let n = output.withUnsafeBytes {
                send(descriptor, $0.baseAddress! + written, $0.count - written, Int32(MSG_NOSIGNAL))
            }
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
