import OutboxCore
import PGOutput
import Testing

@Suite("AckTracker: what may be confirmed when")
struct AckTrackerTests {
    @Test func confirmsOnlyAFullyAcknowledgedPrefix() {
        var t = AckTracker(confirmed: LSN(100))
        let a = t.begin()
        t.sent(weight: 10)
        t.sent(weight: 10)
        t.commit(endLSN: LSN(200))
        let b = t.begin()
        t.sent(weight: 5)
        t.commit(endLSN: LSN(300))
        #expect(t.confirmed == LSN(100) && t.inFlightEvents == 3 && t.inFlightBytes == 25)
        // B acknowledged first (another partition): nothing moves.
        do {
            let accepted = t.acknowledge(ticket: b, weight: 5)
            #expect(accepted)
        }
        #expect(t.confirmed == LSN(100))
        do {
            let accepted = t.acknowledge(ticket: a, weight: 10)
            #expect(accepted)
        }
        #expect(t.confirmed == LSN(100))
        do {
            let accepted = t.acknowledge(ticket: a, weight: 10)
            #expect(accepted)
        }
        // A complete, and B already was: both confirmed at once.
        #expect(t.confirmed == LSN(300) && t.inFlightEvents == 0 && t.inFlightBytes == 0)
    }

    @Test func openTransactionIsNeverConfirmedEvenWhenAllItsEventsAreAcked() {
        var t = AckTracker(confirmed: .zero)
        let a = t.begin()
        t.sent(weight: 1)
        t.acknowledge(ticket: a, weight: 1)
        #expect(t.confirmed == .zero)
        t.commit(endLSN: LSN(50))
        #expect(t.confirmed == LSN(50))
    }

    @Test func transactionsWithoutEventsConfirmInOrder() {
        var t = AckTracker(confirmed: .zero)
        let a = t.begin()
        t.sent(weight: 1)
        t.commit(endLSN: LSN(10))
        _ = t.begin()
        t.commit(endLSN: LSN(20))  // only deletes: no events
        #expect(t.confirmed == .zero)
        t.acknowledge(ticket: a, weight: 1)
        #expect(t.confirmed == LSN(20))
    }

    @Test func keepaliveConfirmsServerPositionWhenIdle() {
        var t = AckTracker(confirmed: LSN(10))
        t.serverWALEnd(LSN(500))
        #expect(t.confirmed == LSN(500))
        t.serverWALEnd(LSN(400))  // never backwards
        #expect(t.confirmed == LSN(500))
    }

    @Test func keepaliveWaitsBehindUnacknowledgedEvents() {
        var t = AckTracker(confirmed: LSN(10))
        let a = t.begin()
        t.sent(weight: 1)
        t.commit(endLSN: LSN(100))
        t.serverWALEnd(LSN(900))
        t.serverWALEnd(LSN(1000))
        #expect(t.confirmed == LSN(10))
        #expect(t.pendingTransactions == 2)  // the keepalives were coalesced
        t.acknowledge(ticket: a, weight: 1)
        #expect(t.confirmed == LSN(1000))
    }

    @Test func keepaliveInsideATransactionIsIgnored() {
        var t = AckTracker(confirmed: LSN(10))
        let a = t.begin()
        t.sent(weight: 1)
        t.serverWALEnd(LSN(900))
        t.acknowledge(ticket: a, weight: 1)
        #expect(t.confirmed == LSN(10))
        t.commit(endLSN: LSN(100))
        #expect(t.confirmed == LSN(100))
    }

    @Test func resetIgnoresLateAcksFromTheOldStream() {
        var t = AckTracker(confirmed: LSN(10))
        let old = t.begin()
        t.sent(weight: 7)
        t.commit(endLSN: LSN(100))
        t.reset()
        #expect(t.inFlightEvents == 0 && t.inFlightBytes == 0)
        do {
            let accepted = t.acknowledge(ticket: old, weight: 7)
            #expect(!accepted)
        }
        #expect(t.confirmed == LSN(10))
        // The server resends the transaction after the confirmed position.
        let again = t.begin()
        t.sent(weight: 7)
        t.commit(endLSN: LSN(100))
        #expect(again != old)
        t.acknowledge(ticket: again, weight: 7)
        #expect(t.confirmed == LSN(100))
    }

    @Test func unknownAndDuplicateAcksAreIgnored() {
        var t = AckTracker(confirmed: .zero)
        let a = t.begin()
        t.sent(weight: 1)
        t.commit(endLSN: LSN(10))
        do {
            let accepted = t.acknowledge(ticket: 999, weight: 1)
            #expect(!accepted)
        }
        do {
            let accepted = t.acknowledge(ticket: a, weight: 1)
            #expect(accepted)
        }
        do {
            let accepted = t.acknowledge(ticket: a, weight: 1)
            #expect(!accepted)
        }
        #expect(t.inFlightEvents == 0)
    }

    /// Many transactions acknowledged in a shuffled order: the confirmed LSN is
    /// always the end of the longest fully acknowledged prefix, never beyond.
    @Test func randomAckOrderNeverConfirmsAnUnacknowledgedTransaction() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            var t = AckTracker(confirmed: .zero)
            var events: [(ticket: UInt64, txn: Int)] = []
            var ends: [LSN] = []
            for txn in 0..<200 {
                let ticket = t.begin()
                for _ in 0..<Int.random(in: 0...3, using: &generator) {
                    t.sent(weight: 1)
                    events.append((ticket, txn))
                }
                ends.append(LSN(UInt64(txn + 1) * 100))
                t.commit(endLSN: ends[txn])
            }
            var remaining = Array(repeating: 0, count: 200)
            for e in events { remaining[e.txn] += 1 }
            for e in events.shuffled(using: &generator) {
                t.acknowledge(ticket: e.ticket, weight: 1)
                remaining[e.txn] -= 1
                let prefix = remaining.firstIndex { $0 > 0 } ?? 200
                let expected = prefix == 0 ? LSN.zero : ends[prefix - 1]
                #expect(t.confirmed == expected)
            }
            #expect(t.confirmed == LSN(20_000))
        }
    }
}
