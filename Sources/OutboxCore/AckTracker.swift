import PGOutput

/// Decides which LSN may be confirmed to PostgreSQL (ARCHITECTURE.md, rules 3 and 4).
///
/// A pure state machine: no I/O, no clock. The relay feeds it transaction
/// boundaries, published events and sink acknowledgements, and sends
/// `confirmed` as the flush LSN.
///
/// - Each transaction gets a ticket (a sequence number); every event of the
///   transaction carries it to the sink and back.
/// - `confirmed` is the end LSN of the newest transaction such that it and
///   every earlier one are committed and fully acknowledged. Acks may arrive
///   in any order (Kafka partitions); the confirmed position only advances
///   over a fully acknowledged prefix.
/// - The server's keepalive WAL end, seen between transactions, is queued as
///   an empty pseudo-transaction, so an idle outbox on a busy database
///   confirms the current WAL position and the slot retains no WAL; it never
///   overtakes an unacknowledged transaction.
/// - `confirmed` never moves backwards.
public struct AckTracker: Sendable {
    struct Entry: Sendable {
        var ticket: UInt64
        /// Events sent and not yet acknowledged.
        var pending: Int
        /// Known once the transaction's Commit arrived (or for a keepalive position).
        var endLSN: LSN?
    }

    public private(set) var confirmed: LSN
    /// Events handed to the sink and not yet acknowledged.
    public private(set) var inFlightEvents = 0
    /// Their weight (key + value bytes).
    public private(set) var inFlightBytes = 0

    /// Open and unconfirmed transactions, oldest first (a ring: `head` is the oldest).
    private var entries: [Entry] = []
    private var head = 0
    private var nextTicket: UInt64 = 1
    /// Tickets below this belong to a previous stream (before `reset`); their acks are ignored.
    private var oldestLiveTicket: UInt64 = 1
    private var openTicket: UInt64?

    public init(confirmed: LSN) { self.confirmed = confirmed }

    public var isInTransaction: Bool { openTicket != nil }
    /// The open transaction's ticket (0 outside a transaction).
    public var openTicketValue: UInt64 { openTicket ?? 0 }
    /// Transactions waiting for acknowledgement or commit.
    public var pendingTransactions: Int { entries.count - head }

    /// A Begin: returns the ticket for the transaction's events.
    public mutating func begin() -> UInt64 {
        precondition(openTicket == nil, "Begin inside a transaction")
        let ticket = nextTicket
        nextTicket += 1
        entries.append(Entry(ticket: ticket, pending: 0, endLSN: nil))
        openTicket = ticket
        return ticket
    }

    /// An event of the open transaction was handed to the sink.
    public mutating func sent(weight: Int) {
        guard let ticket = openTicket, let index = index(of: ticket) else {
            preconditionFailure("event outside a transaction")
        }
        entries[index].pending += 1
        inFlightEvents += 1
        inFlightBytes += weight
    }

    /// The transaction's Commit: its end LSN is what to confirm once all its events are acknowledged.
    public mutating func commit(endLSN: LSN) {
        guard let ticket = openTicket, let index = index(of: ticket) else {
            preconditionFailure("Commit outside a transaction")
        }
        entries[index].endLSN = endLSN
        openTicket = nil
        advance()
    }

    /// The sink acknowledged one event of transaction `ticket`. Returns false for
    /// a ticket that is not live (already reset, or never issued), which is ignored.
    @discardableResult
    public mutating func acknowledge(ticket: UInt64, weight: Int) -> Bool {
        guard ticket >= oldestLiveTicket, let index = index(of: ticket), entries[index].pending > 0
        else { return false }
        entries[index].pending -= 1
        inFlightEvents -= 1
        inFlightBytes -= weight
        if index == head { advance() }
        return true
    }

    /// The server's WAL end from a keepalive. Between transactions everything
    /// before it has been sent to us, so once all earlier transactions are
    /// acknowledged it may be confirmed. Inside a transaction it is ignored.
    public mutating func serverWALEnd(_ lsn: LSN) {
        guard openTicket == nil, lsn > confirmed else { return }
        let last = entries.count - 1
        if last >= head, entries[last].pending == 0, let end = entries[last].endLSN {
            // Coalesce with a trailing fully acknowledged entry: only the newest position matters.
            entries[last].endLSN = max(end, lsn)
        } else {
            entries.append(Entry(ticket: nextTicket, pending: 0, endLSN: lsn))
            nextTicket += 1
        }
        advance()
    }

    /// A new stream starts (after a reconnect): PostgreSQL will resend every
    /// transaction after `confirmed`, so what was pending is forgotten and late
    /// acks for it are ignored.
    public mutating func reset() {
        entries.removeAll(keepingCapacity: true)
        head = 0
        openTicket = nil
        oldestLiveTicket = nextTicket
        inFlightEvents = 0
        inFlightBytes = 0
    }

    private func index(of ticket: UInt64) -> Int? {
        guard head < entries.count else { return nil }
        let offset = Int(truncatingIfNeeded: ticket &- entries[head].ticket)
        // Tickets are consecutive from the head, so the entry is found by offset.
        guard ticket >= entries[head].ticket, offset < entries.count - head,
            entries[head + offset].ticket == ticket
        else { return nil }
        return head + offset
    }

    private mutating func advance() {
        while head < entries.count, entries[head].pending == 0, let end = entries[head].endLSN {
            if end > confirmed { confirmed = end }
            head += 1
        }
        if head > 1024 && head * 2 > entries.count {
            entries.removeFirst(head)
            head = 0
        } else if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            head = 0
        }
    }
}
