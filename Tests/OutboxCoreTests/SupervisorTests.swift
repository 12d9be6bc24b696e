import OutboxCore
import Testing

/// The process around the loop: connect, back off, stand by, stop, fail — input by input.
@Suite("Supervisor: reconnects, backoff, standby and stop")
struct SupervisorTests {
    static let t0 = Instant.milliseconds(1_000)

    static func supervisor() -> Supervisor {
        var c = Supervisor.Configuration()
        c.initialBackoffMilliseconds = 100
        c.maxBackoffMilliseconds = 800
        c.standbyRetryMilliseconds = 2_000
        c.healthyAfterMilliseconds = 10_000
        c.seed = 7
        return Supervisor(configuration: c)
    }

    @Test func connectsFirstThenBacksOffWithJitterUpToTheCap() {
        var s = Self.supervisor()
        #expect(s.next(now: Self.t0, stopRequested: false) == .connect(reconnect: false))
        var now = Self.t0
        var delays: [Int] = []
        for _ in 0..<6 {
            guard case .reconnecting(let wait)? = s.sessionEnded(.retry, now: now) else { return #expect(Bool(false)) }
            delays.append(wait)
            #expect(s.next(now: now, stopRequested: false) == .wait(until: now + wait))
            now = now + wait
            #expect(s.next(now: now, stopRequested: false) == .connect(reconnect: true))
        }
        for (delay, ceiling) in zip(delays, [100, 200, 400, 800, 800, 800]) {
            #expect(delay >= ceiling / 2 && delay <= ceiling, "\(delays)")
        }
        #expect(s.reconnects == 6)
    }

    @Test func aHealthySessionResetsTheBackoff() {
        var s = Self.supervisor()
        _ = s.next(now: Self.t0, stopRequested: false)
        var now = Self.t0
        for _ in 0..<4 {
            guard case .reconnecting(let wait)? = s.sessionEnded(.retry, now: now) else { return #expect(Bool(false)) }
            now = now + wait
            _ = s.next(now: now, stopRequested: false)
        }
        // This session streamed for a minute, then the connection dropped: retried fast.
        now = now + 60_000
        guard case .reconnecting(let wait)? = s.sessionEnded(.retry, now: now) else { return #expect(Bool(false)) }
        #expect(wait <= 100)
    }

    @Test func aStandbyRetriesAtItsIntervalAndSaysSoOncePerPeriod() {
        var s = Self.supervisor()
        _ = s.next(now: Self.t0, stopRequested: false)
        #expect(s.sessionEnded(.standBy, now: Self.t0) == .standingBy)
        #expect(s.isStandby)
        #expect(s.next(now: Self.t0, stopRequested: false) == .wait(until: Self.t0 + 2_000))
        #expect(s.next(now: Self.t0 + 2_000, stopRequested: false) == .connect(reconnect: true))
        // Still in use: nothing new to say.
        #expect(s.sessionEnded(.standBy, now: Self.t0 + 2_000) == nil)
        #expect(s.next(now: Self.t0 + 4_000, stopRequested: false) == .connect(reconnect: true))
        // It got the slot and streamed; losing it again starts a new standby period.
        s.sessionStreaming()
        #expect(s.sessionEnded(.standBy, now: Self.t0 + 9_000) == .standingBy)
    }

    @Test func aFatalEndFailsAndAStopStops() {
        var s = Self.supervisor()
        _ = s.next(now: Self.t0, stopRequested: false)
        #expect(s.sessionEnded(.fail, now: Self.t0) == nil)
        #expect(s.state == .failed)
        #expect(s.next(now: Self.t0, stopRequested: true) == .fail)

        var t = Self.supervisor()
        _ = t.next(now: Self.t0, stopRequested: false)
        _ = t.sessionEnded(.retry, now: Self.t0)
        // A stop during the backoff ends the wait: no more attempts.
        #expect(t.next(now: Self.t0 + 1, stopRequested: true) == .stop)
        #expect(t.next(now: Self.t0 + 10_000, stopRequested: false) == .stop)
    }

    @Test func aSessionThatFinishedStops() {
        var s = Self.supervisor()
        _ = s.next(now: Self.t0, stopRequested: false)
        s.sessionFinished()
        #expect(s.next(now: Self.t0, stopRequested: false) == .stop)
    }
}
