import CRdKafka
import Foundation
import Logging
import OutboxCore
import RelayIO

/// How the Kafka sink connects and publishes.
public struct KafkaSinkConfig: Sendable {
    /// `bootstrap.servers`.
    public var brokers: String
    /// librdkafka properties from `-X key=value`; they win over the defaults.
    public var properties: [(key: String, value: String)] = []
    /// Permanent per-event failures go here (with the error in headers) instead of stopping the relay.
    public var deadLetterTopic: String?
    /// `transactional.id`: publish in Kafka transactions, one per relay loop
    /// turn, acknowledged only once committed. A relay that starts with the same
    /// id fences this one at the brokers (see README, "Producer fencing").
    public var transactionalID: String?

    public init(brokers: String) { self.brokers = brokers }

    /// The defaults that make delivery safe, before the user's properties:
    /// an idempotent producer with `acks=all` keeps order per partition through
    /// retries; `message.timeout.ms=0` retries transient failures (a broker
    /// down) for ever instead of failing events; `murmur2_random` places keys
    /// on the same partitions as the Java client (Debezium, Kafka Connect);
    /// `linger.ms=0` sends a record as soon as a request slot is free (batches
    /// still form while five requests are in flight, so a drain loses nothing:
    /// 77k/74k events/s against 79k/72k with librdkafka's 5 ms), which keeps
    /// librdkafka's queue empty at almost every instant — what its threads
    /// could send after a freeze, before the relay purges it — and takes 5 ms
    /// off every event's latency.
    public static let defaults: [(key: String, value: String)] = [
        ("enable.idempotence", "true"), ("acks", "all"), ("message.timeout.ms", "0"),
        ("partitioner", "murmur2_random"), ("client.id", "outbox-relay"), ("linger.ms", "0"),
    ]

    public var effectiveProperties: [(key: String, value: String)] {
        var merged = Self.defaults + [("bootstrap.servers", brokers)]
        if let transactionalID {
            // A transactional producer's records must time out within the transaction's own timeout.
            merged += [
                ("transactional.id", transactionalID), ("message.timeout.ms", "60000"),
                ("transaction.timeout.ms", "60000"),
            ]
        }
        merged += properties
        merged.append(("log.queue", "true"))  // logs arrive as events we route to our logger
        // Keep the last value of each key, in first-seen order.
        var seen: [String: Int] = [:]
        var out: [(key: String, value: String)] = []
        for (key, value) in merged {
            if let index = seen[key] {
                out[index].value = value
            } else {
                seen[key] = out.count
                out.append((key, value))
            }
        }
        return out
    }

    /// Properties whose values never reach a log.
    public static func isSecret(_ key: String) -> Bool {
        let k = key.lowercased()
        return k.contains("password") || k.contains("secret") || k.contains("jaas")
            || k.hasSuffix(".key.pem") || k.contains("token") || k.contains("oauthbearer.config")
    }

    /// `key=value …` with secret values replaced by `[redacted]`.
    public var redactedDescription: String {
        effectiveProperties.map { "\($0.key)=\(Self.isSecret($0.key) ? "[redacted]" : $0.value)" }
            .joined(separator: " ")
    }
}

/// A librdkafka property (`-X`) that librdkafka refuses: a usage error (exit 64), named by its key.
public struct KafkaConfigurationError: Error, CustomStringConvertible {
    public var description: String
}

/// `EventSink` over librdkafka.
///
/// - Key = the aggregate id; value = the payload bytes exactly as stored
///   (a JSON `null` for a NULL payload without tombstones; a null value for a
///   tombstone); headers `id`, `type`, the `headers` members and extra columns,
///   then `lsn` (the commit LSN).
/// - An event is acknowledged when its delivery report says the brokers have
///   it (`acks=all`). Reports from different partitions arrive in any order.
/// - A permanent failure of one event (too large, invalid topic, not
///   authorized) goes to the dead-letter topic when one is configured, and is
///   acknowledged only once the dead-letter record is; without one, the sink
///   throws an error naming the event id and LSN, before it is acknowledged.
/// - A full local queue is backpressure: the record is held, in order, and
///   produced once delivery reports make room; the relay's in-flight bound
///   stops its reading meanwhile. `send` never waits.
///
/// Used only from the relay's I/O thread.
public final class KafkaSink: EventSink {
    public let name = "kafka"
    public let config: KafkaSinkConfig
    private let producer: KafkaProducer
    private let logger: Logger

    struct Pending {
        var ticket: UInt64
        var weight: Int
        var eventID: String
        var lsn: String
        var deadLetter: Bool
        /// The transaction it was produced in (transactional mode), else 0.
        var transaction = 0
    }

    /// Records produced and not yet reported, by the opaque they carry.
    private var pending: [UInt64: Pending] = [:]
    private var nextOpaque: UInt64 = 1
    private var ready: [Acknowledgement] = []
    /// False after librdkafka reported all brokers down, until a delivery succeeds.
    public private(set) var brokersReachable = true
    public var isReachable: Bool { brokersReachable }
    /// Records sent to the dead-letter topic (after a permanent failure, or poison rows).
    public private(set) var deadLettered = 0

    // Transactional mode: transactions are numbered; `openTransaction` is 0
    // when none is open. A delivered record of a transaction not yet committed
    // waits in `uncommitted`: it is acknowledged only with the commit.
    private var openTransaction = 0
    private var lastTransaction = 0
    private var committedTransaction = 0
    private var uncommitted: [Acknowledgement] = []
    private var transactional: Bool { config.transactionalID != nil }

    /// A commit or an abort under way on a thread of its own: each blocks for
    /// a round trip to the transaction coordinator, and with the brokers away
    /// for up to `transaction.timeout.ms` (librdkafka asks for -1, the remaining
    /// transaction time, so its state cannot desynchronise). Meanwhile nothing
    /// is produced — new records are held, in order — and the relay thread goes
    /// on; the thread's end writes the wake-up descriptor.
    private struct TransactionCall {
        enum Kind {
            case commit
            /// `reason` nil: a stale session's abort, nothing to report.
            case abort(reason: String?)
        }
        var kind: Kind
        var transaction: Int
        var outcome: Handoff<TransactionOutcome>
    }
    struct TransactionOutcome { var error: KafkaProducer.TransactionError? }
    private var call: TransactionCall?
    /// The newest transaction a stale session discarded: its outcome acknowledges nothing.
    private var discardedTransaction = 0

    public init(config: KafkaSinkConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        do {
            producer = try KafkaProducer(configuration: config.effectiveProperties)
        } catch let error as KafkaProducer.ConfigurationError {
            throw KafkaConfigurationError(description: error.description)
        } catch {
            throw SinkError("\(error)")
        }
        _ = producer.wakeupDescriptor()  // before any thread of ours signals it
        logger.info(
            "Kafka producer created",
            metadata: [
                "librdkafka": "\(KafkaProducer.libraryVersion)", "config": "\(config.redactedDescription)",
            ])
        switch producer.brokerCount(timeoutMilliseconds: 5_000) {
        case .success(let count): logger.notice("Kafka connected", metadata: ["brokers": "\(count)"])
        case .failure(let error):
            brokersReachable = false
            logger.warning(
                "Kafka brokers unreachable; events wait in the relay and PostgreSQL until they are",
                metadata: ["error": "\(error.message)"])
        }
        if let id = config.transactionalID {
            if let error = producer.initTransactions(timeoutMilliseconds: 30_000) {
                throw SinkError("cannot start Kafka transactions for transactional.id \(id): \(error.message)")
            }
            logger.notice(
                "Kafka transactions initialised; older producers with this id are fenced",
                metadata: ["transactional_id": "\(id)"])
        }
    }

    /// Opens a transaction for the next record, if none is open.
    private func ensureTransaction() throws {
        guard transactional, openTransaction == 0 else { return }
        if let error = producer.beginTransaction() {
            throw SinkError("cannot begin a Kafka transaction: \(error.message)")
        }
        lastTransaction += 1
        openTransaction = lastTransaction
    }

    /// Carries the transactional protocol one step: takes a finished commit or
    /// abort, produces what was held meanwhile, and commits the open
    /// transaction — one commit under way at a time, so a transaction holds
    /// what was sent while the one before it was being committed. Never blocks.
    private func advance() throws {
        if let running = call {
            guard let outcome = running.outcome.take() else { return }
            call = nil
            try finish(running, outcome.error)
        }
        guard call == nil else { return }
        try produceHeld()
        if transactional && openTransaction != 0 { start(.commit, of: openTransaction) }
    }

    private func start(_ kind: TransactionCall.Kind, of transaction: Int) {
        nonisolated(unsafe) let producer = self.producer
        let commit: Bool
        if case .commit = kind { commit = true } else { commit = false }
        let outcome = OwnThread.handOff(commit ? "kafka-commit" : "kafka-abort", signal: { producer.signalWakeup() }) {
            TransactionOutcome(
                error: commit
                    ? producer.commitTransaction(timeoutMilliseconds: -1)
                    : producer.abortTransaction(timeoutMilliseconds: -1))
        }
        call = TransactionCall(kind: kind, transaction: transaction, outcome: outcome)
    }

    /// What a finished commit or abort means. A committed transaction's
    /// records are acknowledged; a failed commit is aborted, and its records
    /// are read again from PostgreSQL (the session ends); a fenced or failed
    /// producer stops the relay.
    private func finish(_ finished: TransactionCall, _ error: KafkaProducer.TransactionError?) throws {
        let t = finished.transaction
        let discarded = t <= discardedTransaction
        if let error, error.fatal {
            throw SinkError(
                "Kafka transaction failed and the producer cannot go on: \(error.message). If another relay with transactional.id \(config.transactionalID ?? "") started, it fenced this one: nothing of this transaction is visible to read_committed consumers, and the other relay publishes it again"
            )
        }
        switch finished.kind {
        case .commit:
            guard let error else {
                if discarded {
                    logger.warning(
                        "Kafka transaction of a stale session committed before it could be aborted",
                        metadata: ["transaction": "\(t)"])
                }
                committedTransaction = t
                if openTransaction == t { openTransaction = 0 }
                try drainEvents()
                ready += uncommitted
                uncommitted.removeAll(keepingCapacity: true)
                return
            }
            // With the remaining transaction time as its timeout, a commit that
            // returns an error has failed for good (aborted, or timed out): abort
            // it, and the session reads its records again.
            start(.abort(reason: discarded ? nil : error.message), of: t)
        case .abort(let reason):
            if let error {
                logger.warning("Kafka transaction abort failed", metadata: ["error": "\(error.message)"])
            }
            // A stale session's abort: its records were forgotten when it was discarded;
            // what is held now is the next session's, produced at the next step.
            guard let reason else {
                logger.notice("Kafka transaction of a stale session aborted", metadata: ["transaction": "\(t)"])
                return
            }
            // The session ends (`sinkInterrupted`): what is held is read again too.
            let dropped = forget(t) + dropHeld()
            throw SinkError(
                "Kafka transaction aborted (\(reason)); its \(dropped) records are read again from PostgreSQL",
                retryable: true)
        }
    }

    /// Forgets transaction `t`'s records (committed or not, they are read
    /// again); returns how many were not yet acknowledged.
    private func forget(_ t: Int) -> Int {
        if openTransaction == t { openTransaction = 0 }
        discardedTransaction = max(discardedTransaction, t)
        purged = 0
        try? drainEvents()
        var dropped = uncommitted.count + purged
        uncommitted.removeAll(keepingCapacity: true)
        let before = pending.count
        pending = pending.filter { $0.value.transaction != t }
        dropped += before - pending.count
        return dropped
    }

    public var inFlight: Int { pending.count + held.count - heldHead }

    public func send(_ event: OutboxEvent, ticket: UInt64) throws {
        let value: [UInt8]? = event.tombstone ? nil : (event.payload ?? Self.jsonNull)
        var headers = event.headers
        // Polled events (`outbox-relay poll`) have no LSN and no lsn header.
        if event.lsn != .zero { headers.append(("lsn", event.lsn.description)) }
        let record = Pending(
            ticket: ticket, weight: event.weight, eventID: event.id, lsn: event.lsn.description,
            deadLetter: false)
        if let failure = try produce(
            topic: event.topic, key: event.key, value: value, headers: headers, record: record)
        {
            // Refused at once (e.g. larger than message.max.bytes): a permanent failure of this event.
            try handlePermanentFailure(
                record, topic: event.topic, key: Array(event.key.utf8), value: value, headers: headers,
                code: failure.code, message: failure.message)
        }
    }

    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool {
        guard let topic = config.deadLetterTopic else { return false }
        let record = Pending(
            ticket: ticket, weight: poison.payload?.count ?? 0, eventID: poison.id ?? "",
            lsn: poison.lsn.description, deadLetter: true)
        let headers: [(name: String, value: String)] = [
            ("id", poison.id ?? ""), ("lsn", poison.lsn.description), ("dlq.reason", poison.reason),
            ("dlq.source", poison.source),
        ]
        if let failure = try produce(
            topic: topic, key: poison.id ?? "", value: poison.payload, headers: headers, record: record)
        {
            throw SinkError(
                "dead-letter topic \(topic) refused row id=\(poison.id ?? "?") (LSN \(poison.lsn)): \(failure.message); \(poison)"
            )
        }
        deadLettered += 1
        return true
    }

    public var wakeupDescriptor: Int32? { producer.wakeupDescriptor() }

    /// Purges what librdkafka has not sent yet (a stale session's events): see `EventSink`.
    ///
    /// Transactional: the open transaction's records are forgotten at once
    /// and it is aborted on a thread of its own (after the commit under way,
    /// if one is: whatever that commit's outcome, it acknowledges nothing);
    /// records of the next session are held until the abort is done.
    public func discardUnacknowledged() -> Int {
        let dropped = dropHeld()
        if transactional {
            guard openTransaction != 0 else { return dropped }
            let t = openTransaction
            // What librdkafka has not sent fails at once: a commit under way
            // fails with it (and is then aborted) instead of committing stale records.
            producer.purgeQueued()
            let forgotten = forget(t)
            if call == nil { start(.abort(reason: nil), of: t) }
            return dropped + forgotten
        }
        producer.purgeQueued()
        purged = 0
        try? drainEvents()
        return dropped + purged
    }

    /// Delivery reports of purged records seen by the last `discardUnacknowledged`.
    private var purged = 0

    public func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try drainEvents()
        try advance()
        if ready.isEmpty && timeoutMilliseconds > 0 && busy {
            // Delivery reports and our own threads' ends both write the descriptor.
            var fd = pollfd(fd: producer.wakeupDescriptor() ?? -1, events: Int16(POLLIN), revents: 0)
            _ = Glibc.poll(&fd, 1, Int32(clamping: timeoutMilliseconds))
            try drainEvents()
            try advance()
        }
        probeWhileIdleAndUnreachable()
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    /// Something accepted is not acknowledged yet, or a transaction call is under way.
    private var busy: Bool { !pending.isEmpty || heldHead < held.count || call != nil || openTransaction != 0 }

    private var lastProbe: Instant?
    private var probe: Handoff<Bool>?

    /// A delivery is what tells the sink the brokers are back; with nothing in
    /// flight none comes, so readiness would stay down after an outage of an
    /// idle relay. Then, every 5 s, a metadata request (on a thread of its own,
    /// bounded by 2 s) asks.
    private func probeWhileIdleAndUnreachable() {
        if let running = probe, let reachable = running.take() {
            probe = nil
            if reachable && !brokersReachable {
                brokersReachable = true
                logger.notice("Kafka brokers reachable again")
            }
        }
        let now = Instant.now()
        guard !brokersReachable, probe == nil, pending.isEmpty,
            lastProbe.map({ now.milliseconds(since: $0) >= 5_000 }) ?? true
        else { return }
        lastProbe = now
        nonisolated(unsafe) let producer = self.producer
        probe = OwnThread.handOff("kafka-probe", signal: { producer.signalWakeup() }) {
            if case .success = producer.brokerCount(timeoutMilliseconds: 2_000) { return true }
            return false
        }
    }

    /// Waits (up to the timeout) until everything accepted is acknowledged —
    /// delivered, and committed in transactional mode: in one `poll(2)` on
    /// the wake-up descriptor per wake-up.
    public func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement] {
        try pollUntilSettled(timeoutMilliseconds: timeoutMilliseconds) { busy }
    }

    static let jsonNull = Array("null".utf8)

    /// A record librdkafka's queue had no room for, with what it is produced from.
    struct Held {
        var topic: String
        var key: String
        var value: [UInt8]?
        var headers: [(name: String, value: String)]
        var record: Pending
    }

    /// Records accepted while librdkafka's queue was full, in accept order:
    /// produced first, before anything newer, as delivery reports make room.
    /// The relay's in-flight bound counts them, so this is backpressure, not a
    /// second unbounded queue — and the relay's thread never waits for room.
    private var held: [Held] = []
    private var heldHead = 0

    /// Produces a record, or holds it (behind any held before it) when the queue is full.
    /// Returns the error of a refused record; the record is then not pending.
    private func produce(
        topic: String, key: String, value: [UInt8]?, headers: [(name: String, value: String)],
        record: Pending
    ) throws -> KafkaProducer.ProduceError? {
        let one = Held(topic: topic, key: key, value: value, headers: headers, record: record)
        if heldHead < held.count || call != nil {
            held.append(one)
            return nil
        }
        switch try produceNow(one) {
        case .produced: return nil
        case .queueFull:
            held.append(one)
            return nil
        case .refused(let failure): return failure
        }
    }

    private enum ProduceOutcome {
        case produced
        case queueFull
        case refused(KafkaProducer.ProduceError)
    }

    private func produceNow(_ one: Held) throws -> ProduceOutcome {
        try ensureTransaction()
        var record = one.record
        record.transaction = openTransaction
        let opaque = nextOpaque
        guard
            let failure = producer.produce(
                topic: one.topic, key: one.key, value: one.value, headers: one.headers, opaque: opaque)
        else {
            nextOpaque += 1
            pending[opaque] = record
            return .produced
        }
        if failure.isQueueFull { return .queueFull }
        if failure.code == RD_KAFKA_RESP_ERR__FATAL {
            throw SinkError("Kafka producer failed fatally: \(failure.message)")
        }
        return .refused(failure)
    }

    /// Produces held records, in order, while the queue takes them.
    private func produceHeld() throws {
        while heldHead < held.count {
            let one = held[heldHead]
            switch try produceNow(one) {
            case .queueFull: return
            case .produced: heldHead += 1
            case .refused(let failure):
                heldHead += 1
                try handlePermanentFailure(
                    one.record, topic: one.topic, key: Array(one.key.utf8), value: one.value, headers: one.headers,
                    code: failure.code, message: failure.message)
            }
        }
        held.removeAll(keepingCapacity: true)
        heldHead = 0
    }

    /// Forgets held records (a stale session's, or an aborted transaction's); returns how many.
    private func dropHeld() -> Int {
        defer {
            held.removeAll(keepingCapacity: true)
            heldHead = 0
        }
        return held.count - heldHead
    }

    private func handlePermanentFailure(
        _ record: Pending, topic: String, key: [UInt8], value: [UInt8]?,
        headers: [(name: String, value: String)], code: rd_kafka_resp_err_t, message: String
    ) throws {
        if record.deadLetter {
            throw SinkError(
                "dead-letter topic \(topic) rejected the record for event id=\(record.eventID) (LSN \(record.lsn)): \(message)"
            )
        }
        guard let dlq = config.deadLetterTopic else {
            throw SinkError(
                "Kafka rejected event id=\(record.eventID) (commit LSN \(record.lsn)) for topic \(topic): \(message). Nothing from this transaction on was confirmed; fix the cause (or set --dlq-topic) and restart"
            )
        }
        // Without the payload when the payload was the problem.
        let tooLarge =
            code == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE
            || code == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE
        var dlqHeaders = headers
        dlqHeaders += [
            ("dlq.error", message), ("dlq.error.code", "\(code.rawValue)"), ("dlq.original.topic", topic),
        ]
        if tooLarge { dlqHeaders.append(("dlq.payload.omitted", "\(value?.count ?? 0) bytes")) }
        var dlqRecord = record
        dlqRecord.deadLetter = true
        if let failure = try produce(
            topic: dlq, key: String(decoding: key, as: UTF8.self), value: tooLarge ? nil : value,
            headers: dlqHeaders, record: dlqRecord)
        {
            throw SinkError(
                "dead-letter topic \(dlq) refused event id=\(record.eventID) (LSN \(record.lsn)): \(failure.message)"
            )
        }
        deadLettered += 1
        logger.warning(
            "event sent to the dead-letter topic",
            metadata: [
                "id": "\(record.eventID)", "lsn": "\(record.lsn)", "topic": "\(topic)",
                "error": "\(message)",
            ])
    }

    /// Handles queued events until the queue is empty, without waiting.
    /// (Emptying it matters: librdkafka writes the wake-up descriptor only when
    /// the queue becomes non-empty.)
    private func drainEvents() throws {
        producer.clearWakeup()
        while true {
            guard let event = producer.poll(timeoutMilliseconds: 0) else { return }
            switch event {
            case .delivery(let reports):
                for report in reports {
                    guard let record = pending.removeValue(forKey: report.opaque) else { continue }
                    if report.error == RD_KAFKA_RESP_ERR__PURGE_QUEUE
                        || report.error == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT
                    {
                        // Discarded on purpose (a stale session's): neither acknowledged nor failed.
                        purged += 1
                    } else if report.error == RD_KAFKA_RESP_ERR_NO_ERROR {
                        if !brokersReachable {
                            brokersReachable = true
                            logger.notice("Kafka brokers reachable again; delivering")
                        }
                        let ack = Acknowledgement(ticket: record.ticket, weight: record.weight)
                        if record.transaction > committedTransaction {
                            uncommitted.append(ack)  // acknowledged with its transaction's commit
                        } else {
                            ready.append(ack)
                        }
                    } else if report.error == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT {
                        throw SinkError(
                            "event id=\(record.eventID) (LSN \(record.lsn)) was not delivered within message.timeout.ms; it stays unconfirmed. Leave message.timeout.ms at 0 to retry until the brokers are back"
                        )
                    } else {
                        try handlePermanentFailure(
                            record, topic: report.topic, key: report.key, value: report.value,
                            headers: report.headers, code: report.error, message: report.errorMessage)
                    }
                }
            case .error(let code, let message, let fatal):
                if fatal { throw SinkError("Kafka producer failed fatally: \(message)") }
                if code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN {
                    if brokersReachable {
                        brokersReachable = false
                        logger.warning(
                            "Kafka brokers unreachable; retrying, nothing new is confirmed meanwhile",
                            metadata: ["error": "\(message)"])
                    }
                } else {
                    logger.debug(
                        "Kafka client error", metadata: ["code": "\(code.rawValue)", "error": "\(message)"])
                }
            case .log(let level, let facility, let message):
                // Connection errors repeat while a broker is down; our own state line covers them.
                logger.log(
                    level: level <= 2 ? .error : level <= 6 ? .debug : .trace, "librdkafka: \(message)",
                    metadata: ["facility": "\(facility)"])
            }
        }
    }
}
