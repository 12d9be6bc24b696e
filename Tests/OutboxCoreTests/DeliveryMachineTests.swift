import OutboxCore
import PGOutput
import Testing

/// The shared delivery machine, input by input, without sockets: a token is an
/// integer the test picks, a link a generation the machine hands out.
@Suite("DeliveryMachine: what is sent, acknowledged, put back and retried")
struct DeliveryMachineTests {
    typealias Machine = DeliveryMachine<String, Int>

    static func machine(deadLetter: Bool = false, timeout: Int = 10_000) -> Machine {
        var c = Machine.Configuration(destination: "Test")
        c.hasDeadLetter = deadLetter
        c.acknowledgementTimeoutMilliseconds = timeout
        c.backoff = Backoff.Policy(initialMilliseconds: 100, capMilliseconds: 1_600)
        c.seed = 42
        return Machine(configuration: c)
    }

    static let t0 = Instant.milliseconds(1_000)

    /// Accepts events e1…eN with keys from `keys` (cycled), tickets 1…N.
    static func accept(_ m: inout Machine, _ count: Int, keys: [String] = ["k"], from first: Int = 1) {
        for i in first..<(first + count) {
            m.accept(
                "e\(i)", ticket: UInt64(i), weight: 1, eventID: "e\(i)", lsn: LSN(UInt64(i)),
                key: keys[(i - 1) % keys.count])
        }
    }

    /// Hands over everything the machine offers, token = the event's number; returns what was sent.
    @discardableResult
    static func publishAll(_ m: inout Machine, now: Instant = t0) -> [String] {
        var out: [String] = []
        while case .publish(let record) = m.next(now: now) {
            out.append(record.message)
            m.handedOver(token: Int(record.message.dropFirst())!, now: now)
        }
        return out
    }

    static func connect(_ m: inout Machine, now: Instant = t0) -> UInt64 {
        guard case .connect = m.next(now: now) else {
            Issue.record("expected .connect, link \(m.link)")
            return 0
        }
        return m.connected(now: now)
    }

    @Test func connectsOnlyWhenThereIsSomethingToSend() {
        var m = Self.machine()
        guard case .wait(nil) = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        Self.accept(&m, 1)
        guard case .connect = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        #expect(m.link == .connecting(attempt: 1))
        // While the attempt runs, nothing else happens.
        guard case .wait(nil) = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        let g = m.connected(now: Self.t0)
        #expect(m.link == .connected(generation: g))
        #expect(Self.publishAll(&m) == ["e1"])
    }

    @Test func acknowledgementsInAnyOrderEachOnce() {
        var m = Self.machine()
        Self.accept(&m, 3)
        let g = Self.connect(&m)
        #expect(Self.publishAll(&m) == ["e1", "e2", "e3"])
        #expect(m.delivered(3, generation: g) == Acknowledgement(ticket: 3, weight: 1))
        #expect(m.delivered(1, generation: g) == Acknowledgement(ticket: 1, weight: 1))
        // A duplicate acknowledgement (a broker that acks twice) counts once.
        #expect(m.delivered(1, generation: g) == nil)
        #expect(m.delivered(99, generation: g) == nil)
        #expect(m.unsettled == 1 && m.acknowledged == 2)
    }

    @Test func lostLinkPutsInFlightBackInSendOrderAcrossInterleavedAcks() {
        var m = Self.machine()
        Self.accept(&m, 6, keys: ["a", "b"])
        let g = Self.connect(&m)
        #expect(Self.publishAll(&m) == ["e1", "e2", "e3", "e4", "e5", "e6"])
        _ = m.delivered(2, generation: g)
        _ = m.delivered(5, generation: g)
        Self.accept(&m, 2, keys: ["a", "b"], from: 7)
        m.linkLost("connection reset", generation: g, now: Self.t0)
        guard case .backingOff(let until, _, "connection reset") = m.link else { return #expect(Bool(false)) }
        #expect(until > Self.t0)
        #expect(m.takeNotices() == [.unreachable(because: "connection reset", waiting: 6)])
        // Nothing before the backoff ends; then a new link, and the unacknowledged go first, in order.
        guard case .wait(let w) = m.next(now: Self.t0), w == until else { return #expect(Bool(false)) }
        let g2 = Self.connect(&m, now: until)
        #expect(g2 == g + 1)
        #expect(Self.publishAll(&m, now: until) == ["e1", "e3", "e4", "e6", "e7", "e8"])
        #expect(m.takeNotices() == [.reconnected(waiting: 6)])
    }

    @Test func lateAcknowledgementFromALostLinkIsIgnored() {
        var m = Self.machine()
        Self.accept(&m, 2)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        m.linkLost("gone", generation: g, now: Self.t0)
        // The old link's ack arrives after the loss: the event is back in the queue; not acknowledged twice.
        #expect(m.delivered(1, generation: g) == nil)
        let later = Self.t0 + 10_000
        let g2 = Self.connect(&m, now: later)
        Self.publishAll(&m, now: later)
        // …and after the reconnect, an old-generation ack for a token reused by the new link is ignored too.
        #expect(m.delivered(1, generation: g) == nil)
        #expect(m.delivered(1, generation: g2) == Acknowledgement(ticket: 1, weight: 1))
        #expect(m.delivered(2, generation: g2) == Acknowledgement(ticket: 2, weight: 1))
        #expect(m.unsettled == 0 && m.acknowledged == 2)
        #expect(m.takeNotices().last == .reachableAgain && m.isReachable)
    }

    @Test func aLossReportedForAnOlderLinkChangesNothing() {
        var m = Self.machine()
        Self.accept(&m, 1)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        m.linkLost("first", generation: g, now: Self.t0)
        let g2 = Self.connect(&m, now: Self.t0 + 5_000)
        Self.publishAll(&m, now: Self.t0 + 5_000)
        m.linkLost("a late disconnect callback of the first link", generation: g, now: Self.t0 + 5_000)
        #expect(m.link == .connected(generation: g2) && m.inFlightCount == 1)
    }

    @Test func noAcknowledgementInTimeClosesTheLink() {
        var m = Self.machine(timeout: 2_000)
        Self.accept(&m, 2)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        #expect(m.nextDeadline == Self.t0 + 2_000)
        guard case .wait(let until) = m.next(now: Self.t0 + 1_999), until == Self.t0 + 2_000 else {
            return #expect(Bool(false))
        }
        guard case .close(let closed, let why) = m.next(now: Self.t0 + 2_000) else { return #expect(Bool(false)) }
        #expect(closed == g && why.contains("within 2000 ms"))
        #expect(m.waitingCount == 2 && m.inFlightCount == 0)
    }

    @Test func acknowledgementDeadlineFollowsTheOldestInFlight() {
        var m = Self.machine(timeout: 1_000)
        Self.accept(&m, 1)
        let g = Self.connect(&m)
        Self.publishAll(&m, now: Self.t0)
        Self.accept(&m, 1, from: 2)
        Self.publishAll(&m, now: Self.t0 + 500)
        _ = m.delivered(1, generation: g)
        #expect(m.nextDeadline == Self.t0 + 1_500)
        _ = m.delivered(2, generation: g)
        #expect(m.nextDeadline == nil)
    }

    /// A busy destination confirming a backlog at its own pace keeps its link:
    /// the deadline runs from its last answer, not from the oldest record's send,
    /// up to ten timeouts for any one record.
    @Test func aSlowButAnsweringDestinationKeepsItsLink() {
        var m = Self.machine(timeout: 1_000)
        Self.accept(&m, 30)
        let g = Self.connect(&m)
        Self.publishAll(&m, now: Self.t0)
        // One acknowledgement every 900 ms: never 1 s of silence.
        for i in 1...9 {
            let now = Self.t0 + 900 * i
            #expect(
                m.nextDeadline == Self.t0 + 900 * (i - 1) + 1_000 || i == 1,
                "deadline \(String(describing: m.nextDeadline))")
            guard case .wait = m.next(now: now) else { return #expect(Bool(false), "closed at ack \(i)") }
            _ = m.delivered(i, generation: g, now: now)
            #expect(m.nextDeadline == now + 1_000)
        }
        // Silent for the timeout after the last answer: lost, everything goes back.
        guard case .close(let closed, _) = m.next(now: Self.t0 + 8_100 + 1_000) else { return #expect(Bool(false)) }
        #expect(closed == g && m.waitingCount == 21)
        // However busy, no record waits more than ten timeouts.
        var n = Self.machine(timeout: 1_000)
        Self.accept(&n, 30)
        let h = Self.connect(&n)
        Self.publishAll(&n, now: Self.t0)
        _ = n.delivered(2, generation: h, now: Self.t0 + 9_500)  // others answered, the oldest never
        #expect(n.nextDeadline == Self.t0 + 10_000)
    }

    @Test func refusalGoesToDeadLetterWithTheSameTicket() {
        var m = Self.machine(deadLetter: true)
        Self.accept(&m, 2)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        guard case .deadLetter(let record, let why) = m.refused(1, generation: g, because: "too large") else {
            return #expect(Bool(false))
        }
        #expect(record.ticket == 1 && why == "too large")
        m.acceptDeadLetter("dlq:e1", for: record, because: why)
        guard case .publish(let dlq) = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        #expect(dlq.message == "dlq:e1" && dlq.isDeadLetter && dlq.ticket == 1)
        m.handedOver(token: 101, now: Self.t0)
        #expect(m.delivered(101, generation: g) == Acknowledgement(ticket: 1, weight: 1))
        #expect(m.deadLettered == 1)
        #expect(m.takeNotices().contains(.deadLettered(eventID: "e1", lsn: LSN(1), because: "too large")))
    }

    @Test func aRefusedDeadLetterStopsTheRelay() {
        var m = Self.machine(deadLetter: true)
        m.acceptDeadLetter("poison", ticket: 7, weight: 0, eventID: "p", lsn: LSN(7), key: "")
        let g = Self.connect(&m)
        guard case .publish = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        m.handedOver(token: 7, now: Self.t0)
        guard case .stop(let error) = m.refused(7, generation: g, because: "no such stream") else {
            return #expect(Bool(false))
        }
        #expect(error.description.contains("dead-letter destination refused the record for event id=p"))
        #expect(!error.retryable)
    }

    @Test func refusalWithoutDeadLetterStopsNamingTheEvent() {
        var m = Self.machine()
        Self.accept(&m, 1)
        _ = Self.connect(&m)
        guard case .stop(let error) = m.refusedBeforeSending("invalid subject") else { return #expect(Bool(false)) }
        #expect(error.description.hasPrefix("Test refused event id=e1 (commit LSN 0/1): invalid subject."))
        #expect(error.description.contains("--dlq-topic"))
    }

    @Test func refusalOfARecordNoLongerInFlightIsIgnored() {
        var m = Self.machine()
        Self.accept(&m, 1)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        _ = m.delivered(1, generation: g)
        guard case .ignored = m.refused(1, generation: g, because: "late") else { return #expect(Bool(false)) }
    }

    @Test func backoffGrowsWithJitterAndResetsAfterAnAcknowledgement() {
        var m = Self.machine()
        Self.accept(&m, 1)
        var now = Self.t0
        var delays: [Int] = []
        guard case .connect = m.next(now: now) else { return #expect(Bool(false)) }
        for _ in 0..<7 {
            m.connectFailed("refused", permanent: false, now: now)
            guard case .backingOff(let until, _, _) = m.link else { return #expect(Bool(false)) }
            delays.append(until.milliseconds(since: now))
            now = until
            guard case .connect = m.next(now: now) else { return #expect(Bool(false)) }
        }
        // Ceilings 100, 200, 400, 800, 1600, 1600, 1600; each delay in [ceiling/2, ceiling].
        for (delay, ceiling) in zip(delays, [100, 200, 400, 800, 1600, 1600, 1600]) {
            #expect(delay >= ceiling / 2 && delay <= ceiling, "\(delays)")
        }
        #expect(m.takeNotices() == [.unreachable(because: "refused", waiting: 1)])
        // Connected is not enough to reset (a link that drops at once keeps backing off) …
        let g = m.connected(now: now)
        Self.publishAll(&m, now: now)
        m.linkLost("dropped", generation: g, now: now)
        guard case .backingOff(let until, _, _) = m.link else { return #expect(Bool(false)) }
        #expect(until.milliseconds(since: now) >= 800)
        // … an acknowledgement is.
        let g2 = Self.connect(&m, now: until)
        Self.publishAll(&m, now: until)
        _ = m.delivered(1, generation: g2)
        Self.accept(&m, 1, from: 2)
        Self.publishAll(&m, now: until)
        m.linkLost("again", generation: g2, now: until)
        guard case .backingOff(let again, _, _) = m.link else { return #expect(Bool(false)) }
        #expect(again.milliseconds(since: until) <= 100)
    }

    @Test func jitterDiffersBySeed() {
        var a = Backoff(policy: .init(initialMilliseconds: 1_000, capMilliseconds: 1_000), seed: 1)
        var b = Backoff(policy: .init(initialMilliseconds: 1_000, capMilliseconds: 1_000), seed: 2)
        let da = (0..<8).map { _ in a.next() }
        let db = (0..<8).map { _ in b.next() }
        #expect(da != db)
        #expect((da + db).allSatisfy { $0 >= 500 && $0 <= 1_000 })
    }

    @Test func permanentConnectFailureFails() {
        var m = Self.machine()
        Self.accept(&m, 1)
        _ = m.next(now: Self.t0)
        m.connectFailed("the credentials were refused", permanent: true, now: Self.t0)
        guard case .fail(let error) = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        #expect(error.description == "the credentials were refused")
    }

    @Test func holdStopsPublishingUntilItsTimeOrARelease() {
        var m = Self.machine()
        Self.accept(&m, 3)
        let g = Self.connect(&m)
        guard case .publish = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        m.handedOver(token: 1, now: Self.t0)
        m.hold(until: Self.t0 + 300, because: "OOM")
        #expect(!m.isReachable)
        #expect(m.takeNotices() == [.held(because: "OOM", waiting: 3)])
        guard case .wait(let until) = m.next(now: Self.t0 + 100), until == Self.t0 + 300 else {
            return #expect(Bool(false))
        }
        #expect(Self.publishAll(&m, now: Self.t0 + 300) == ["e2", "e3"])
        m.hold(until: nil, because: "connection.blocked")
        Self.accept(&m, 1, from: 4)
        guard case .wait = m.next(now: Self.t0 + 5_000) else { return #expect(Bool(false)) }
        m.release()
        #expect(m.isReachable)
        #expect(Self.publishAll(&m, now: Self.t0 + 5_000) == ["e4"])
        #expect(m.delivered(1, generation: g) != nil)
    }

    @Test func putBackKeepsTheLinkAndTheOrder() {
        var m = Self.machine()
        Self.accept(&m, 4)
        let g = Self.connect(&m)
        Self.publishAll(&m)
        // A batch of 2 and 3 refused for now (Redis OOM): back in front, link kept.
        m.putBack([3, 2])
        #expect(m.link == .connected(generation: g))
        _ = m.delivered(1, generation: g)
        m.linkLost("x", generation: g, now: Self.t0)
        let g2 = Self.connect(&m, now: Self.t0 + 10_000)
        #expect(Self.publishAll(&m, now: Self.t0 + 10_000) == ["e2", "e3", "e4"])
        #expect(g2 > g)
    }

    @Test func canPublishFalseHoldsRecordsBack() {
        var m = Self.machine()
        Self.accept(&m, 2)
        _ = Self.connect(&m)
        guard case .wait(nil) = m.next(now: Self.t0, canPublish: false) else { return #expect(Bool(false)) }
        #expect(m.waitingCount == 2)
    }

    @Test func discardAllDropsEverythingAndIgnoresLateResults() {
        var m = Self.machine()
        Self.accept(&m, 3)
        let g = Self.connect(&m)
        guard case .publish = m.next(now: Self.t0) else { return #expect(Bool(false)) }
        m.handedOver(token: 1, now: Self.t0)
        #expect(m.discardAll() == 3)
        #expect(m.delivered(1, generation: g) == nil)
        #expect(m.unsettled == 0 && m.nextDeadline == nil)
    }

    /// Memory: after many records through one link, with losses, the machine holds only what is unsettled.
    @Test func holdsOnlyWhatIsUnsettled() {
        var m = Self.machine()
        var now = Self.t0
        var g = m.connected(now: now)
        for round in 0..<50 {
            Self.accept(&m, 1_000, keys: ["a", "b", "c"], from: round * 1_000 + 1)
            while case .publish(let r) = m.next(now: now) {
                m.handedOver(token: Int(r.ticket), now: now)
                if r.ticket % 7 != 0 { _ = m.delivered(Int(r.ticket), generation: g) }
            }
            m.linkLost("drop", generation: g, now: now)
            now = now + 10_000
            g = Self.connect(&m, now: now)
            while case .publish(let r) = m.next(now: now) {
                m.handedOver(token: Int(r.ticket), now: now)
                _ = m.delivered(Int(r.ticket), generation: g)
            }
            #expect(m.unsettled == 0)
        }
        #expect(m.acknowledged == 50_000)
    }
}
