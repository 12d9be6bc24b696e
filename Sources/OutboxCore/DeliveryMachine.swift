import PGOutput

/// The delivery machine every networked destination shares: what to hand to the
/// transport, what an acknowledgement or a refusal means, what goes back in
/// front of the queue when a link is lost, and when to connect again.
///
/// Pure: no I/O, no clock, no C. Every input that depends on time carries the
/// time; decisions come back as values. The driver around it (`DeliveryDriver`
/// in `SinkRuntime`) connects off the relay thread, calls the transport, and
/// feeds the machine what happened.
///
/// Invariants (tested input by input in `DeliveryMachineTests` and by the fuzz
/// target `fuzz/DeliveryFuzz.swift`):
/// - `waiting` is in accept order, and every record in flight was accepted
///   before every waiting one: only the front of `waiting` is handed over.
/// - A lost link puts what was in flight back at the front of `waiting`, in
///   send order: a record never overtakes an earlier one of its key when it is
///   sent again.
/// - Results carry the generation of the link they came on; a result of an
///   older link (a late acknowledgement after a loss) is ignored, because its
///   record was already put back and will be sent again.
/// - An acknowledgement is returned at most once per accepted record.
/// - A record the destination refuses for good goes to the dead-letter
///   destination (a new record, same ticket) when there is one, else stops the
///   relay; a refused dead-letter record stops it.
public struct DeliveryMachine<Message, Token: Hashable> {
    public struct Configuration: Sendable {
        /// For messages: `NATS`, `RabbitMQ`, `Redis`, …
        public var destination: String
        /// The name of the option that sets the dead-letter destination, for messages.
        public var deadLetterOption = "--dlq-topic"
        /// Whether refused records go to a dead-letter destination (else the relay stops).
        public var hasDeadLetter = false
        /// No acknowledgement for the oldest record in flight within this long: the link is lost.
        /// nil: the transport times its own requests.
        public var acknowledgementTimeoutMilliseconds: Int? = 10_000
        public var backoff = Backoff.Policy()
        /// Seeds the backoff's jitter (fixed in tests, random in the driver).
        public var seed: UInt64 = 0x9E37_79B9_7F4A_7C15

        public init(destination: String) { self.destination = destination }
    }

    /// One accepted record: an event, or a record for the dead-letter destination.
    public struct Record {
        /// Accept order; put-back and per-key order are decided by it.
        public let sequence: UInt64
        /// The relay's opaque ticket, handed back with the acknowledgement.
        public let ticket: UInt64
        public let weight: Int
        /// For messages and the per-key order checks: the event id, its commit LSN, its key.
        public let eventID: String
        public let lsn: LSN
        public let key: String
        public var message: Message
        public let isDeadLetter: Bool
    }

    /// The link to the destination, with the data of each state.
    public enum Link: Equatable, Sendable {
        /// Not connected, and nothing asks for a connection yet.
        case idle
        /// An attempt is under way (off the relay thread).
        case connecting(attempt: Int)
        /// Records may be handed over.
        case connected(generation: UInt64)
        /// Connected, but nothing is handed over until `until` (nil: until `release`),
        /// because the destination asked for it (a resource alarm, too few replicas, out of memory).
        case held(generation: UInt64, until: Instant?, because: String)
        /// The last attempt or link failed; the next attempt starts at `until`.
        case backingOff(until: Instant, attempt: Int, because: String)
        /// A permanent failure (refused credentials, a destination that does not exist): nothing more is tried.
        case failed(String)
    }

    /// What the driver does next.
    public enum Action {
        /// Start a connection attempt (off the relay thread) and report it with
        /// `connected(now:)` or `connectFailed(_:permanent:now:)`.
        case connect
        /// Hand this record (the front of the queue) to the transport, then report
        /// `handedOver(token:now:)`, `refusedBeforeSending(_:)` or `linkLost(_:now:)`.
        case publish(Record)
        /// The link is not to be trusted any more (no acknowledgement in time):
        /// close it. What was in flight is already back in the queue.
        case close(generation: UInt64, because: String)
        /// Nothing to do before `until` (nil: until an input comes).
        case wait(until: Instant?)
        /// Stop the relay: a permanent failure.
        case fail(SinkError)
    }

    /// What a refusal led to.
    public enum Refusal {
        /// Send `record.message` rewritten for the dead-letter destination with
        /// `acceptDeadLetter(_:for:because:)`.
        case deadLetter(Record, because: String)
        /// Stop the relay with this error: nothing of the event's transaction on was confirmed.
        case stop(SinkError)
        /// A result for a record no longer in flight (late, duplicate): nothing to do.
        case ignored
    }

    /// Lines for the log, in order; the driver takes them after each input.
    public enum Notice: Equatable, Sendable {
        /// The destination became unreachable (once per outage).
        case unreachable(because: String, waiting: Int)
        /// Connected after an outage; `waiting` records go again.
        case reconnected(waiting: Int)
        /// The first acknowledgement after an outage.
        case reachableAgain
        /// Held by the destination (once per hold).
        case held(because: String, waiting: Int)
        case deadLettered(eventID: String, lsn: LSN, because: String)
    }

    public let configuration: Configuration
    public private(set) var link: Link = .idle
    private var waiting = PendingQueue<Record>()
    /// In flight, by the transport's token; `sent` orders them by send time (= accept order).
    private var inFlight: [Token: Sent] = [:]
    /// A record handed over, and when (for the acknowledgement deadline).
    struct Sent {
        var record: Record
        var sentAt: Instant
    }
    private var sent = PendingQueue<Token>()
    private var generation: UInt64 = 0
    private var nextSequence: UInt64 = 1
    private var backoff: Backoff
    private var notices: [Notice] = []
    /// Why the destination is away, while it is; nil when it is reachable.
    public private(set) var outage: String?
    /// Set once an attempt is asked for at start (the first connection is not an outage).
    private var everConnected = false

    /// Counters for tests, metrics and logs.
    public private(set) var acknowledged = 0
    public private(set) var deadLettered = 0
    public private(set) var linksLost = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
        backoff = Backoff(policy: configuration.backoff, seed: configuration.seed)
    }

    // MARK: Questions

    /// Accepted and not acknowledged, dead-lettered or refused.
    public var unsettled: Int { waiting.count + inFlight.count }
    public var waitingCount: Int { waiting.count }
    /// The record `next` hands over when the transport can take it (a
    /// transport that keeps a key's order by holding it back looks at it).
    public var front: Record? { waiting.first }
    public var inFlightCount: Int { inFlight.count }
    /// Reachable as far as the machine knows (readiness): connected, not held, no outage.
    public var isReachable: Bool {
        if case .connected = link { return outage == nil }
        return false
    }
    /// The generation of the current link, when there is one.
    public var currentGeneration: UInt64? {
        switch link {
        case .connected(let g), .held(let g, _, _): return g
        default: return nil
        }
    }

    /// The notices since the last call.
    public mutating func takeNotices() -> [Notice] {
        defer { notices.removeAll(keepingCapacity: true) }
        return notices
    }

    // MARK: Inputs from the relay

    /// Accepts a record for delivery, after every record accepted before it.
    public mutating func accept(
        _ message: Message, ticket: UInt64, weight: Int, eventID: String, lsn: LSN, key: String
    ) {
        waiting.append(
            Record(
                sequence: takeSequence(), ticket: ticket, weight: weight, eventID: eventID, lsn: lsn, key: key,
                message: message, isDeadLetter: false))
    }

    /// Accepts a record for the dead-letter destination (a row that could not
    /// become an event, or an event refused for good), acknowledged under `ticket`.
    public mutating func acceptDeadLetter(
        _ message: Message, ticket: UInt64, weight: Int, eventID: String, lsn: LSN, key: String
    ) {
        deadLettered += 1
        waiting.append(
            Record(
                sequence: takeSequence(), ticket: ticket, weight: weight, eventID: eventID, lsn: lsn, key: key,
                message: message, isDeadLetter: true))
    }

    /// The dead-letter record for a refused one (see `Refusal.deadLetter`).
    public mutating func acceptDeadLetter(_ message: Message, for refused: Record, because why: String) {
        acceptDeadLetter(
            message, ticket: refused.ticket, weight: refused.weight, eventID: refused.eventID, lsn: refused.lsn,
            key: refused.key)
        notices.append(.deadLettered(eventID: refused.eventID, lsn: refused.lsn, because: why))
    }

    /// A record the sink cannot even try (an invalid subject, a header that cannot travel):
    /// refused for good before it is accepted.
    public mutating func refuseAtOnce(
        _ message: Message, ticket: UInt64, weight: Int, eventID: String, lsn: LSN, key: String, because why: String
    ) -> Refusal {
        let record = Record(
            sequence: takeSequence(), ticket: ticket, weight: weight, eventID: eventID, lsn: lsn, key: key,
            message: message, isDeadLetter: false)
        return refusal(of: record, why)
    }

    /// Drops everything accepted and not acknowledged (a stale session); returns
    /// how many. Results still to come for them are ignored. Whether the link
    /// itself must go too (a transport whose answers are positional) is the driver's call.
    public mutating func discardAll() -> Int {
        let dropped = unsettled
        waiting.removeAll()
        inFlight.removeAll()
        sent.removeAll()
        return dropped
    }

    // MARK: Deciding

    /// What to do now. `canPublish`: the transport takes another record now
    /// (false while its window is full, or a batch is out).
    public mutating func next(now: Instant, canPublish: Bool = true) -> Action {
        switch link {
        case .failed(let why):
            return .fail(SinkError(why))
        case .idle:
            guard !waiting.isEmpty else { return .wait(until: nil) }
            link = .connecting(attempt: 1)
            return .connect
        case .connecting:
            return .wait(until: nil)
        case .backingOff(let until, let attempt, _):
            if now < until { return .wait(until: until) }
            link = .connecting(attempt: attempt + 1)
            return .connect
        case .held(let g, let until, _):
            if let expired = expiredAcknowledgement(now: now, generation: g) { return expired }
            if let until, now >= until {
                link = .connected(generation: g)
                return next(now: now, canPublish: canPublish)
            }
            return .wait(until: earliest(until, acknowledgementDeadline))
        case .connected(let g):
            if let expired = expiredAcknowledgement(now: now, generation: g) { return expired }
            if canPublish, let record = waiting.first { return .publish(record) }
            return .wait(until: acknowledgementDeadline)
        }
    }

    /// When the machine next wants to be asked, whatever else happens.
    public var nextDeadline: Instant? {
        switch link {
        case .backingOff(let until, _, _): return until
        case .held(_, let until, _): return earliest(until, acknowledgementDeadline)
        case .connected: return acknowledgementDeadline
        default: return nil
        }
    }

    /// A link is lost when the destination has been silent for the timeout while
    /// something is in flight: since the oldest record went out, or since its last
    /// answer if that came later. A slow destination that keeps answering (a
    /// backlog confirmed at its pace) keeps its link: timing out the oldest record
    /// alone would resend the whole window to a broker that is merely busy, again
    /// and again (measured: 140,677 duplicates of 25,607 events after a 60 s cut,
    /// AMQP 1.0 on a loaded machine). No record waits longer than ten timeouts.
    private var acknowledgementDeadline: Instant? {
        guard let timeout = configuration.acknowledgementTimeoutMilliseconds, let oldest = oldestInFlight else {
            return nil
        }
        let quiet = max(oldest.sentAt, lastAnswer ?? oldest.sentAt) + timeout
        return min(quiet, oldest.sentAt + timeout * 10)
    }

    /// When the destination last answered on the current link.
    private var lastAnswer: Instant?

    private var oldestInFlight: Sent? {
        var index = 0
        while index < sent.count {
            if let entry = inFlight[sent[index]] { return entry }
            index += 1
        }
        return nil
    }

    private mutating func expiredAcknowledgement(now: Instant, generation g: UInt64) -> Action? {
        guard let deadline = acknowledgementDeadline, now >= deadline else { return nil }
        let why =
            "no acknowledgement from \(configuration.destination) within \(configuration.acknowledgementTimeoutMilliseconds ?? 0) ms"
        lose(why, now: now)
        return .close(generation: g, because: why)
    }

    private func earliest(_ a: Instant?, _ b: Instant?) -> Instant? {
        switch (a, b) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        default: return b
        }
    }

    // MARK: Inputs from the transport

    /// The connection attempt succeeded: a new link, whose results carry the returned generation.
    @discardableResult
    public mutating func connected(now: Instant) -> UInt64 {
        generation += 1
        lastAnswer = nil
        link = .connected(generation: generation)
        if outage != nil {
            notices.append(.reconnected(waiting: waiting.count))
            if waiting.isEmpty {
                outage = nil
                backoff.reset()
                notices.append(.reachableAgain)
            }
        } else {
            backoff.reset()
        }
        everConnected = true
        return generation
    }

    /// The attempt failed; `permanent`: retrying cannot help (refused credentials).
    public mutating func connectFailed(_ why: String, permanent: Bool, now: Instant) {
        if permanent {
            link = .failed(why)
            return
        }
        let attempt: Int
        if case .connecting(let a) = link { attempt = a } else { attempt = 1 }
        link = .backingOff(until: now + backoff.next(), attempt: attempt, because: why)
        enterOutage(why)
    }

    /// The front record was handed over under `token`.
    public mutating func handedOver(token: Token, now: Instant) {
        guard let record = waiting.first else { return }
        waiting.removeFirst()
        inFlight[token] = Sent(record: record, sentAt: now)
        sent.append(token)
    }

    /// The front record cannot be sent as it is (too large for the transport, an invalid name).
    public mutating func refusedBeforeSending(_ why: String) -> Refusal {
        guard let record = waiting.first else { return .ignored }
        waiting.removeFirst()
        return refusal(of: record, why)
    }

    /// The destination has the record `token` names. Returns its acknowledgement,
    /// or nil for a result that is late (an older link), duplicate or unknown.
    /// `now`: when the answer came (it keeps a slow but answering link alive).
    public mutating func delivered(_ token: Token, generation g: UInt64, now: Instant? = nil) -> Acknowledgement? {
        guard g == currentGeneration, let entry = inFlight.removeValue(forKey: token) else { return nil }
        if let now { lastAnswer = now }
        compactSent()
        acknowledged += 1
        if outage != nil {
            outage = nil
            backoff.reset()
            notices.append(.reachableAgain)
        }
        return Acknowledgement(ticket: entry.record.ticket, weight: entry.record.weight)
    }

    /// The destination refused the record for good (too large, no such queue, not allowed).
    public mutating func refused(
        _ token: Token, generation g: UInt64, because why: String, now: Instant? = nil
    )
        -> Refusal
    {
        guard g == currentGeneration, let entry = inFlight.removeValue(forKey: token) else { return .ignored }
        if let now { lastAnswer = now }
        compactSent()
        return refusal(of: entry.record, why)
    }

    /// Looks at a record in flight (to decide how to describe a refusal), without changing anything.
    public func record(for token: Token) -> Record? { inFlight[token]?.record }

    /// The link is lost or cannot be trusted (a transient failure of one
    /// record counts: later records may not be stored behind it). Everything in
    /// flight goes back in front of the queue, in send order; the next attempt
    /// waits for the backoff. A report for an older link is ignored.
    public mutating func linkLost(_ why: String, generation g: UInt64? = nil, now: Instant) {
        if let g, g != currentGeneration { return }
        guard currentGeneration != nil else { return }
        lose(why, now: now)
    }

    /// The destination asks not to be sent anything until `until` (nil: until `release`).
    public mutating func hold(until: Instant?, because why: String) {
        guard let g = currentGeneration else { return }
        if case .held = link {} else { notices.append(.held(because: why, waiting: unsettled)) }
        link = .held(generation: g, until: until, because: why)
        outage = why
    }

    /// `hold` for the backoff's next delay (a refusal the destination may get over).
    public mutating func holdWithBackoff(now: Instant, because why: String) {
        hold(until: now + backoff.next(), because: why)
    }

    /// The destination takes records again (a resource alarm cleared).
    public mutating func release() {
        guard case .held(let g, _, _) = link else { return }
        link = .connected(generation: g)
        outage = nil
    }

    /// The driver closed the link on purpose (records discarded on a link whose
    /// answers are positional): no outage; the next record connects again.
    public mutating func linkReset() {
        guard currentGeneration != nil else { return }
        lose("reset", now: Instant(nanoseconds: 0), outage: false)
        link = .idle
    }

    /// Puts records the transport took back (a refused batch that may be sent
    /// again) in front of the queue, in send order, without losing the link.
    public mutating func putBack(_ tokens: [Token]) {
        putInFront(tokens.compactMap { inFlight.removeValue(forKey: $0)?.record })
        compactSent()
    }

    // MARK: Internals

    private mutating func takeSequence() -> UInt64 {
        defer { nextSequence += 1 }
        return nextSequence
    }

    private mutating func lose(_ why: String, now: Instant, outage isOutage: Bool = true) {
        lastAnswer = nil
        var back: [Record] = []
        back.reserveCapacity(inFlight.count)
        while let token = sent.first {
            sent.removeFirst()
            if let entry = inFlight.removeValue(forKey: token) { back.append(entry.record) }
        }
        inFlight.removeAll()
        putInFront(back)
        guard isOutage else { return }
        linksLost += 1
        link = .backingOff(until: now + backoff.next(), attempt: 0, because: why)
        enterOutage(why)
    }

    /// Puts records taken back in front of the queue, merged by accept order
    /// with any taken back earlier (a batch put back while later ones were in
    /// flight): `waiting` stays in accept order.
    private mutating func putInFront(_ records: [Record]) {
        guard !records.isEmpty else { return }
        var back = records.sorted { $0.sequence < $1.sequence }
        var merged = false
        let newest = back[back.count - 1].sequence
        while let first = waiting.first, first.sequence < newest {
            back.append(first)
            waiting.removeFirst()
            merged = true
        }
        if merged { back.sort { $0.sequence < $1.sequence } }
        waiting.insertAtFront(back)
    }

    private mutating func enterOutage(_ why: String) {
        if outage == nil { notices.append(.unreachable(because: why, waiting: waiting.count)) }
        outage = why
    }

    /// Drops delivered tokens from the front of the send order.
    private mutating func compactSent() {
        while let token = sent.first, inFlight[token] == nil { sent.removeFirst() }
        if inFlight.isEmpty { sent.removeAll() }
    }

    private mutating func refusal(of record: Record, _ why: String) -> Refusal {
        let d = configuration.destination
        if record.isDeadLetter {
            return .stop(
                SinkError(
                    "the dead-letter destination refused the record for event id=\(record.eventID) (LSN \(record.lsn)) too: \(why)"
                ))
        }
        guard configuration.hasDeadLetter else {
            return .stop(
                SinkError(
                    "\(d) refused event id=\(record.eventID) (commit LSN \(record.lsn)): \(why). Nothing from this transaction on was confirmed; fix the cause (or set \(configuration.deadLetterOption)) and restart"
                ))
        }
        return .deadLetter(record, because: why)
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from [d/2, d],
/// where d doubles from `initialMilliseconds` to `capMilliseconds`; `reset`
/// after a success. The jitter comes from a seeded generator, so the machine
/// stays deterministic for a given seed (tests) while relays started together
/// do not retry in step (the driver seeds it at random).
public struct Backoff: Sendable {
    public struct Policy: Sendable, Equatable {
        public var initialMilliseconds: Int
        public var capMilliseconds: Int
        public init(initialMilliseconds: Int = 250, capMilliseconds: Int = 5_000) {
            self.initialMilliseconds = max(1, initialMilliseconds)
            self.capMilliseconds = max(self.initialMilliseconds, capMilliseconds)
        }
    }

    public let policy: Policy
    /// The ceiling of the next delay.
    public private(set) var ceiling: Int
    private var state: UInt64

    public init(policy: Policy, seed: UInt64) {
        self.policy = policy
        ceiling = policy.initialMilliseconds
        state = seed
    }

    /// The delay to wait now, in milliseconds; the ceiling of the next one doubles.
    public mutating func next() -> Int {
        let top = ceiling
        ceiling = min(ceiling * 2, policy.capMilliseconds)
        let half = top / 2
        return half + Int(random() % UInt64(top - half + 1))
    }

    public mutating func reset() { ceiling = policy.initialMilliseconds }

    /// SplitMix64.
    private mutating func random() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
