import OutboxCore
import PGOutput
import TestFixtures
import Testing

/// Messages captured from PostgreSQL 15 (`v1-router`, tables in schema `loose`):
/// transaction r1 (Begin, Relation, Insert, Commit) is a good event, r2 a
/// poison row, r5 a good event with a NULL payload.
private struct Captured {
    let all: [[UInt8]]
    var r1: [[UInt8]] { Array(all[0...3]) }
    var r2: [[UInt8]] { Array(all[4...6]) }
    var r5: [[UInt8]] { Array(all[13...15]) }
    var begin: [UInt8] { all[0] }
    var relation: [UInt8] { all[1] }
    var insert: [UInt8] { all[2] }
    var commit: [UInt8] { all[3] }
    static let r1End = LSN(0x154_a398)
    static let r5End = LSN(0x154_a5c0)

    init() throws { all = try Fixture.messages("v1-router") }
}

private func xlog(_ payload: [UInt8], at lsn: UInt64 = 0x154_a300) -> ReplicationMessage {
    .xLogData(walStart: LSN(lsn), walEnd: LSN(lsn), sendTime: PostgresTimestamp(rawValue: 0), payload: payload)
}

private func keepalive(_ lsn: UInt64, reply: Bool = false) -> ReplicationMessage {
    .keepalive(walEnd: LSN(lsn), sendTime: PostgresTimestamp(rawValue: 0), replyRequested: reply)
}

private let t0 = Instant.milliseconds(1_000_000)

/// A machine with a session started at `t0` on a server with the given `wal_sender_timeout`.
private func started(
    walSenderTimeout: Int? = 10_000, slot: LSN = LSN(0x100), _ configure: (inout StreamConfiguration) -> Void = { _ in }
) -> StreamMachine {
    var routing = RoutingConfig()
    routing.schema = "loose"
    var configuration = StreamConfiguration(routing: routing)
    configuration.statusIntervalMilliseconds = 10_000
    configuration.minStatusIntervalMilliseconds = 100
    configure(&configuration)
    var machine = StreamMachine(configuration: configuration)
    _ = machine.sessionStarted(
        ServerSettings(slotConfirmedFlush: slot, walSenderTimeoutMilliseconds: walSenderTimeout), now: t0)
    return machine
}

extension StreamMachine.Action {
    var publishedEvent: OutboxEvent? {
        if case .publish(let event, _) = self { return event }
        return nil
    }
    var ticket: UInt64? {
        switch self {
        case .publish(_, let ticket), .deadLetter(_, let ticket): return ticket
        default: return nil
        }
    }
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
    var ended: SessionEnd? {
        if case .end(let reason) = self { return reason }
        return nil
    }
}

/// Feeds messages at `now`; returns the actions that were not `.none`.
private func feed(_ machine: inout StreamMachine, _ messages: [[UInt8]], now: Instant = t0) -> [StreamMachine.Action] {
    messages.map { machine.received(xlog($0), now: now) }.filter { !$0.isNone }
}

@Suite("stream state machine")
struct StreamMachineTests {
    @Test func sessionStartsAtTheLaterOfOwnAndSlotPositionAndDerivesItsDeadlines() {
        var machine = StreamMachine(configuration: StreamConfiguration(routing: RoutingConfig()))
        #expect(machine.state == .connecting)
        let start = machine.sessionStarted(
            ServerSettings(slotConfirmedFlush: LSN(0x500), walSenderTimeoutMilliseconds: 8_000), now: t0)
        #expect(start == LSN(0x500))
        #expect(machine.state == .streamingIdle)
        // Status at least every half of wal_sender_timeout; receive timeout = wal_sender_timeout.
        #expect(machine.effectiveStatusIntervalMilliseconds == 4_000)
        #expect(machine.effectiveReceiveTimeoutMilliseconds == 8_000)
        #expect(machine.stallLimitMilliseconds == 8_000)

        let quiet = started(walSenderTimeout: 0)
        #expect(quiet.effectiveStatusIntervalMilliseconds == 10_000)
        #expect(quiet.effectiveReceiveTimeoutMilliseconds == 60_000)
        #expect(quiet.stallLimitMilliseconds == 0)
        let unknown = started(walSenderTimeout: nil)
        #expect(unknown.stallLimitMilliseconds == 60_000)
        let explicit = started { $0.receiveTimeoutMilliseconds = 0 }
        #expect(explicit.effectiveReceiveTimeoutMilliseconds == 0)
    }

    @Test func aTransactionIsPublishedAndConfirmedOnlyAfterItsAck() throws {
        let fx = try Captured()
        var machine = started()
        #expect(machine.received(xlog(fx.begin), now: t0).isNone)
        #expect(machine.state == .inTransaction)
        #expect(machine.received(xlog(fx.relation), now: t0).isNone)
        let action = machine.received(xlog(fx.insert), now: t0)
        let event = try #require(action.publishedEvent)
        #expect(event.id == "r1" && event.topic == "outbox.event.order")
        #expect(machine.received(xlog(fx.commit), now: t0).isNone)
        #expect(machine.state == .streamingIdle)
        #expect(machine.inFlightEvents == 1)
        // Not acknowledged: nothing to report before the status interval.
        #expect(machine.next(now: t0 + 200) == .read(until: t0 + 5_000))
        #expect(machine.acknowledged(Acknowledgement(ticket: try #require(action.ticket), weight: event.weight)))
        #expect(machine.confirmed == Captured.r1End)
        // The new position goes out at once (the min interval since the last update has passed).
        let report = StatusReport(
            written: max(Captured.r1End, LSN(0x154_a300)), flushed: Captured.r1End, replyRequested: false)
        #expect(machine.next(now: t0 + 200) == .sendStatus(report))
        machine.statusSent(report, now: t0 + 200)
        #expect(machine.stats.statusUpdates == 1 && machine.stats.eventsPublished == 1)
        #expect(machine.stats.eventsAcknowledged == 1 && machine.stats.transactions == 1)
    }

    @Test func aMovedPositionWaitsForTheMinimumInterval() throws {
        let fx = try Captured()
        var machine = started()
        let actions = feed(&machine, fx.r1, now: t0 + 50)
        machine.acknowledged(Acknowledgement(ticket: try #require(actions[0].ticket), weight: 0))
        // 50 ms after the last update (the session start): due at t0 + 100.
        #expect(machine.next(now: t0 + 50) == .read(until: t0 + 100))
        guard case .sendStatus(let report) = machine.next(now: t0 + 100) else {
            Issue.record("expected a status update")
            return
        }
        #expect(report.flushed == Captured.r1End)
    }

    @Test func keepaliveRequestingAReplyIsAnsweredAtOnce() {
        var machine = started()
        #expect(machine.received(keepalive(0x900, reply: true), now: t0 + 10).isNone)
        #expect(!machine.wantsMessage(now: t0 + 10))
        // Nothing pending: the keepalive's WAL end is confirmed (rule 4), and reported now.
        let report = StatusReport(written: LSN(0x900), flushed: LSN(0x900), replyRequested: false)
        #expect(machine.next(now: t0 + 10) == .sendStatus(report))
        machine.statusSent(report, now: t0 + 10)
        #expect(machine.wantsMessage(now: t0 + 11))
    }

    @Test func keepaliveNeverConfirmsPastAnUnacknowledgedTransaction() throws {
        let fx = try Captured()
        var machine = started()
        _ = feed(&machine, fx.r1)
        #expect(machine.received(keepalive(0x200_0000), now: t0).isNone)
        #expect(machine.confirmed == LSN(0x100))
        #expect(machine.stats.serverWALEnd == LSN(0x200_0000))
    }

    @Test func protocolViolationsAreReturnedNeverTrapped() throws {
        let fx = try Captured()
        var insertFirst = started()
        _ = insertFirst.received(xlog(fx.relation), now: t0)
        #expect(
            insertFirst.received(xlog(fx.insert), now: t0).ended
                == .protocolViolation("Insert outside a transaction at 0/154A300"))
        #expect(insertFirst.state == .stopped)

        var commitFirst = started()
        #expect(commitFirst.received(xlog(fx.commit), now: t0).ended != nil)

        var twoBegins = started()
        _ = twoBegins.received(xlog(fx.begin), now: t0)
        #expect(
            twoBegins.received(xlog(fx.begin), now: t0).ended
                == .protocolViolation("Begin inside a transaction at 0/154A300"))

        var garbage = started()
        guard case .undecodable? = garbage.received(xlog([0x5A, 1, 2]), now: t0).ended else {
            Issue.record("an unknown message type must end the session as undecodable")
            return
        }
        #expect(garbage.received(xlog(fx.begin), now: t0).ended != nil)  // nothing after the end
    }

    @Test func backpressureStopsReadingButNotStatusUpdates() throws {
        let fx = try Captured()
        var machine = started { $0.maxInFlightEvents = 1 }
        let actions = feed(&machine, fx.r1)
        #expect(!machine.wantsMessage(now: t0))
        // At the bound: wait for the sink until the next status update (half of wal_sender_timeout).
        #expect(machine.next(now: t0) == .waitForSink(until: t0 + 5_000))
        // Held for three times wal_sender_timeout: status updates keep the session alive,
        // no receive timeout fires (nothing is read), nothing is confirmed.
        var now = t0
        for _ in 0..<6 {
            now = now + 5_000
            guard case .sendStatus(let report) = machine.next(now: now) else {
                Issue.record("expected a status update at \(now)")
                return
            }
            #expect(report.flushed == LSN(0x100) && !report.replyRequested)
            machine.statusSent(report, now: now)
            #expect(machine.next(now: now) == .waitForSink(until: now + 5_000))
        }
        // Released: reading resumes, and the receive clock starts from here.
        machine.acknowledged(Acknowledgement(ticket: try #require(actions[0].ticket), weight: 0))
        #expect(machine.wantsMessage(now: now))
        guard case .sendStatus = machine.next(now: now + 100) else {
            Issue.record("the confirmed position must be reported")
            return
        }
    }

    @Test func silenceIsPingedAtHalfTheReceiveTimeoutAndEndsTheSessionAtIt() {
        var machine = started()  // receive timeout = wal_sender_timeout = 10 s
        #expect(machine.next(now: t0 + 1_000) == .read(until: t0 + 5_000))
        let ping = StatusReport(written: LSN(0x100), flushed: LSN(0x100), replyRequested: true)
        #expect(machine.next(now: t0 + 5_000) == .sendStatus(ping))
        machine.statusSent(ping, now: t0 + 5_000)
        #expect(machine.next(now: t0 + 5_001) == .read(until: t0 + 10_000))
        // An answer resets the clock.
        _ = machine.received(keepalive(0x100), now: t0 + 5_002)
        #expect(machine.next(now: t0 + 5_003) == .read(until: t0 + 10_000))  // status due at 10 s too
        // No answer to the next ping: the connection is dead.
        let secondPing = StatusReport(written: LSN(0x100), flushed: LSN(0x100), replyRequested: true)
        #expect(machine.next(now: t0 + 10_002) == .sendStatus(secondPing))
        machine.statusSent(secondPing, now: t0 + 10_002)
        let end = machine.next(now: t0 + 15_002)
        #expect(end == .end(.receiveTimeout(milliseconds: 10_000)))
        #expect(SessionEnd.receiveTimeout(milliseconds: 1).sessionMayBeStale)
        #expect(machine.state == .connecting)
    }

    @Test func aFreezeLongerThanTheServerWaitsPublishesNothingBuffered() throws {
        let fx = try Captured()
        var machine = started()
        _ = feed(&machine, Array(fx.r1.prefix(2)), now: t0 + 1)
        // Frozen (SIGSTOP) for 12 s with wal_sender_timeout 10 s; the buffered Insert must not be published.
        let action = machine.received(xlog(fx.insert), now: t0 + 12_001)
        #expect(action.ended == .stalled(milliseconds: 12_001, limitMilliseconds: 10_000))
        #expect(action.ended?.sessionMayBeStale == true)
        #expect(machine.stats.eventsPublished == 0)
        #expect(machine.state == .connecting)

        // The same seen by the loop before reading anything.
        var idle = started()
        #expect(idle.next(now: t0 + 10_001) == .end(.stalled(milliseconds: 10_001, limitMilliseconds: 10_000)))
        // A freeze shorter than the server's timeout is harmless.
        var short = started()
        #expect(short.received(xlog(fx.begin), now: t0 + 9_000).isNone)
    }

    @Test func aFreezeAfterEventsWereHandedToTheSinkEndsTheSessionBeforeTheyAreDelivered() throws {
        let fx = try Captured()
        var machine = started()
        // Read and handed to the sink at 1 ms; SIGSTOP lands before the sink's poll writes them.
        let handed = feed(&machine, fx.r1, now: t0 + 1)
        #expect(handed.contains { $0.publishedEvent != nil })
        #expect(machine.checkBeforeDelivery(now: t0 + 2) == nil)  // no freeze: deliver
        #expect(
            machine.checkBeforeDelivery(now: t0 + 10_002) == .stalled(milliseconds: 10_002, limitMilliseconds: 10_000))
        #expect(machine.state == .connecting)
        // No session, nothing to check.
        #expect(machine.checkBeforeDelivery(now: t0 + 20_000) == nil)
        // A freeze shorter than the server's timeout is harmless here too.
        var short = started()
        _ = feed(&short, fx.r1, now: t0 + 1)
        #expect(short.checkBeforeDelivery(now: t0 + 9_999) == nil)
        #expect(short.state != .connecting)
    }

    @Test func theNextSessionIgnoresLateAcksAndResumesFromTheConfirmedPosition() throws {
        let fx = try Captured()
        var machine = started()
        let first = feed(&machine, fx.r1)
        _ = machine.received(xlog(fx.begin), now: t0 + 11_000)  // stalled: session over
        let start = machine.sessionStarted(
            ServerSettings(slotConfirmedFlush: LSN(0x100), walSenderTimeoutMilliseconds: 10_000), now: t0 + 12_000)
        #expect(start == LSN(0x100) && machine.state == .streamingIdle && machine.inFlightEvents == 0)
        #expect(!machine.acknowledged(Acknowledgement(ticket: try #require(first[0].ticket), weight: 0)))
        #expect(machine.confirmed == LSN(0x100))
        // The server resends the transaction (the Relation too); it is published again.
        let again = feed(&machine, fx.r1, now: t0 + 12_000)
        #expect(again.first?.publishedEvent?.id == "r1")
    }

    @Test func stopInsideATransactionReadsOnToItsCommitThenDrains() throws {
        let fx = try Captured()
        var machine = started()
        _ = feed(&machine, Array(fx.r1.prefix(3)))
        machine.stopRequested(now: t0 + 100)
        #expect(machine.state == .finishingTransaction)
        #expect(machine.wantsMessage(now: t0 + 100))
        #expect(machine.received(xlog(fx.commit), now: t0 + 150).isNone)
        #expect(machine.state == .draining)
        #expect(!machine.wantsMessage(now: t0 + 150))
        #expect(machine.next(now: t0 + 150) == .drain(until: t0 + 5_000))
        machine.acknowledged(Acknowledgement(ticket: 1, weight: 0))
        let final = machine.next(now: t0 + 160)
        #expect(final == .finish(StatusReport(written: Captured.r1End, flushed: Captured.r1End, replyRequested: false)))
        #expect(machine.state == .stopped)
    }

    @Test func stopInsideATransactionThatNeverCommitsGivesUpAtTheDeadline() throws {
        let fx = try Captured()
        var machine = started { $0.shutdownTimeoutMilliseconds = 1_000 }
        _ = feed(&machine, fx.r1)
        machine.acknowledged(Acknowledgement(ticket: 1, weight: 0))
        _ = feed(&machine, Array(fx.r5.prefix(2)))  // Begin and Insert of r5, no Commit
        machine.stopRequested(now: t0)
        let report1 = StatusReport(written: Captured.r1End, flushed: Captured.r1End, replyRequested: false)
        #expect(machine.next(now: t0 + 500) == .sendStatus(report1))
        machine.statusSent(report1, now: t0 + 500)
        #expect(machine.next(now: t0 + 600) == .read(until: t0 + 1_000))
        // Deadline: r5 stays unconfirmed (it is read again after a restart).
        guard case .finish(let report) = machine.next(now: t0 + 1_000) else {
            Issue.record("expected finish at the deadline")
            return
        }
        #expect(report.flushed == Captured.r1End)
    }

    @Test func stopBetweenTransactionsDrainsAndFinishes() throws {
        let fx = try Captured()
        var machine = started()
        _ = feed(&machine, fx.r1)
        machine.stopRequested(now: t0)
        #expect(machine.state == .draining)
        #expect(machine.next(now: t0 + 1) == .drain(until: t0 + 5_000))
        // The sink never acknowledges: finish at the shutdown deadline, nothing unacknowledged confirmed.
        #expect(
            machine.next(now: t0 + 5_000)
                == .sendStatus(
                    StatusReport(written: LSN(0x154_a300), flushed: LSN(0x100), replyRequested: false)))
        machine.statusSent(
            StatusReport(written: LSN(0x154_a300), flushed: LSN(0x100), replyRequested: false), now: t0 + 5_000)
        guard case .finish(let report) = machine.next(now: t0 + 10_000) else {
            Issue.record("expected finish")
            return
        }
        #expect(report.flushed == LSN(0x100))
    }

    @Test func readOnlyTailNeverConfirmsAndStopsAtOnce() throws {
        let fx = try Captured()
        var machine = started {
            $0.confirms = false
            $0.eventLimit = 1
        }
        let actions = feed(&machine, fx.r1)
        #expect(actions.count == 1)
        #expect(machine.state == .draining)  // the limit stops it without waiting for a Commit
        machine.acknowledged(Acknowledgement(ticket: try #require(actions[0].ticket), weight: 0))
        guard case .finish(let report) = machine.next(now: t0 + 1) else {
            Issue.record("expected finish")
            return
        }
        #expect(report.flushed == LSN(0x100))  // the slot's own position
    }

    @Test func endLSNStopsOnceConfirmed() throws {
        let fx = try Captured()
        var machine = started { $0.endLSN = Captured.r1End }
        let actions = feed(&machine, fx.r1)
        #expect(machine.next(now: t0 + 1) == .read(until: t0 + 5_000))
        machine.acknowledged(Acknowledgement(ticket: try #require(actions[0].ticket), weight: 0))
        guard case .finish(let report) = machine.next(now: t0 + 2) else {
            Issue.record("expected finish once the end LSN is confirmed")
            return
        }
        #expect(report.flushed == Captured.r1End)
    }

    @Test func poisonRowsGoToTheDeadLetterDestinationOrEndTheSession() throws {
        let fx = try Captured()
        var withDLQ = started()
        _ = feed(&withDLQ, fx.r1)
        let actions = feed(&withDLQ, Array(fx.r2.prefix(2)))
        guard case .deadLetter(let poison, let ticket)? = actions.first else {
            Issue.record("r2 must be offered to the dead-letter destination")
            return
        }
        #expect(poison.id == "r2" && ticket == 2)
        #expect(withDLQ.deadLetterResult(poison, accepted: true).isNone)
        #expect(withDLQ.received(xlog(fx.r2[2]), now: t0).isNone)
        #expect(withDLQ.inFlightEvents == 2 && withDLQ.stats.deadLettered == 1)

        var without = started()
        _ = feed(&without, Array(fx.r1.prefix(2)))
        _ = without.received(xlog(fx.commit), now: t0)
        let offered = feed(&without, Array(fx.r2.prefix(2)))
        guard case .deadLetter(let p, _)? = offered.first else {
            Issue.record("expected a dead-letter offer")
            return
        }
        #expect(without.deadLetterResult(p, accepted: false).ended == .poison(p))
        #expect(without.state == .stopped)
    }

    @Test func routesTheCapturedStreamLikeTheRouterAlone() throws {
        // The whole v1-router capture through the machine: the same events and counters.
        var machine = started()
        var events: [String] = []
        var poison = 0
        for (index, message) in try Captured().all.enumerated() {
            switch machine.received(xlog(message, at: 0x154_a300 + UInt64(index)), now: t0) {
            case .publish(let event, _): events.append(event.id)
            case .deadLetter(let p, _):
                poison += 1
                _ = machine.deadLetterResult(p, accepted: true)
            case .end(let reason): Issue.record("unexpected end: \(reason)")
            case .none: break
            }
        }
        #expect(events == ["r1", "r5", "m1"])
        #expect(poison == 5)
        #expect(machine.stats.suppressedDeletes == 5 && machine.stats.suppressedUpdates == 1)
        #expect(machine.state == .streamingIdle)
    }
}
