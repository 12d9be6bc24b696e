/// A destination for events: stdout, a file, Kafka, …
///
/// The contract, which the relay's correctness rests on:
/// - `send` accepts an event for delivery. Events are sent in log order, and a
///   sink must deliver events with the same key in the order it accepted them.
///   Accepting is not delivering: nothing is confirmed to PostgreSQL yet.
/// - An acknowledgement (`Acknowledgement`, returned by `poll`) means the event
///   is durable in the destination as far as that sink can know (stdout: written
///   to the descriptor; file: fsynced; Kafka: acknowledged by the brokers per
///   `acks`). Only then does the relay count it towards the confirmed LSN.
/// - Acks may come in any order and carry back the ticket and weight given to `send`.
/// - A permanent failure for one event (it can never be delivered as it is)
///   is thrown from `send` or reported from `poll` as a `SinkError`; the relay
///   then stops before confirming that event's transaction.
/// - Sinks know nothing of LSNs beyond the opaque ticket.
///
/// - `wakeupDescriptor`, when a sink has one, becomes readable when `poll(0)`
///   has something to return: the relay waits on it together with the
///   PostgreSQL socket in one `poll(2)`. A sink without one (stdout, file)
///   acknowledges everything it accepted by the next `poll`.
/// - `nextDeadline`: the relay's wait also ends then. A sink never blocks the
///   relay's thread in `send`, `poll(0)` or `deadLetter`: it connects on
///   threads of its own (see `DeliveryDriver` in RelayIO).
/// - `discardUnacknowledged` drops what is accepted but not yet handed to the
///   destination, where the sink can (Kafka: `rd_kafka_purge` of its queues).
///   The relay calls it when its session may be stale (a freeze longer than the
///   server waits, a dead connection): those events were read in a session that
///   another relay may have taken over, so publishing them now could put them
///   after newer records of the same key. They stay unconfirmed and are read again.
///
/// Sinks are driven from the relay's single I/O thread and need not be thread-safe.
public protocol EventSink: AnyObject {
    /// For logs: `stdout`, `file:/path`, `kafka`.
    var name: String { get }
    /// Takes an event for delivery.
    func send(_ event: OutboxEvent, ticket: UInt64) throws
    /// Completes what can be completed and returns the acknowledgements since the
    /// last call, waiting at most `timeoutMilliseconds` for one when none is ready.
    func poll(timeoutMilliseconds: Int) throws -> [Acknowledgement]
    /// Delivers everything accepted, waiting at most `timeoutMilliseconds`, and
    /// returns the acknowledgements. Called on shutdown and before a reconnect.
    func flush(timeoutMilliseconds: Int) throws -> [Acknowledgement]
    /// Sends a row that cannot become an event to the sink's dead-letter
    /// destination, if it has one. Returns false when it has none (the relay
    /// then stops with the poison row's error). When it returns true, the
    /// record counts as in flight under `ticket` and is acknowledged like an
    /// event, with weight `poison.payload?.count ?? 0`.
    func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool
    /// Whether the destination is reachable as far as the sink knows (readiness).
    var isReachable: Bool { get }
    /// A descriptor that becomes readable when acknowledgements are ready; nil when
    /// every accepted event is acknowledged by the next `poll`.
    var wakeupDescriptor: Int32? { get }
    /// Drops accepted events that have not reached the destination yet; returns how many.
    func discardUnacknowledged() -> Int
    /// When the sink next has something to do whatever its descriptor says (a
    /// reconnect after its backoff, an acknowledgement deadline, a retry): the
    /// relay's one wait ends by then and calls `poll`. nil: nothing timed.
    var nextDeadline: Instant? { get }
}

extension EventSink {
    public func deadLetter(_ poison: PoisonEvent, ticket: UInt64) throws -> Bool { false }
    public var isReachable: Bool { true }
    public var wakeupDescriptor: Int32? { nil }
    public func discardUnacknowledged() -> Int { 0 }
    public var nextDeadline: Instant? { nil }
}

/// One event acknowledged by a sink.
public struct Acknowledgement: Sendable, Hashable {
    public var ticket: UInt64
    public var weight: Int
    public init(ticket: UInt64, weight: Int) {
        self.ticket = ticket
        self.weight = weight
    }
}

/// A sink failure that the relay cannot work around.
public struct SinkError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// The sink dropped what it had not delivered and can go on: the relay
    /// discards its session and reads those events again (a Kafka transaction
    /// that had to be aborted). False: the relay stops.
    public var retryable: Bool
    public init(_ message: String, retryable: Bool = false) {
        self.message = message
        self.retryable = retryable
    }
    public var description: String { message }
}
