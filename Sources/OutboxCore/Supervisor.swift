/// The process around the relay's loop, as a machine: when to connect, how
/// long to back off after a session ends, when a relay is a hot standby, when
/// to give up. Shared by `run` (log tailing) and `poll` (polling), so an error
/// that is retried in one is retried in the other.
///
/// Pure: the driver reports what happened with the time it happened and
/// carries out the returned action (connect, wait until, stop, fail).
///
/// Rules:
/// - A retryable end waits a jittered, capped backoff (`Backoff`: each delay in
///   [d/2, d], d doubling from `initialBackoffMilliseconds` to
///   `maxBackoffMilliseconds`). A session that lasted `healthyAfterMilliseconds`
///   or more resets it first: one hiccup after hours of streaming retries fast.
/// - A standby end (another relay holds the slot) retries every
///   `standbyRetryMilliseconds`, without growing, and is reported once per
///   standby period, not per retry.
/// - A fatal end fails; a stop request (at any point) stops.
public struct Supervisor: Sendable {
    /// What an ended session means; the drivers map their errors to it with one function each.
    public enum Disposition: Sendable, Equatable {
        case retry
        case standBy
        case fail
    }

    public struct Configuration: Sendable {
        public var initialBackoffMilliseconds = 500
        public var maxBackoffMilliseconds = 30_000
        public var standbyRetryMilliseconds = 2_000
        public var healthyAfterMilliseconds = 10_000
        public var seed: UInt64 = 0x2545_F491_4F6C_DD1D
        public init() {}
    }

    public enum State: Sendable, Equatable {
        /// Nothing tried yet.
        case starting
        /// A session is being set up or runs (since the attempt began).
        case running(attempt: Int, since: Instant)
        /// Waiting before the next attempt after a retryable end.
        case backingOff(until: Instant, attempt: Int)
        /// Another relay holds the slot; the next look is at `until`.
        case standingBy(until: Instant)
        case stopped
        case failed
    }

    public enum Action: Sendable, Equatable {
        /// Start a session (connect, then stream or poll).
        case connect(reconnect: Bool)
        /// Wait (interruptibly) until then.
        case wait(until: Instant)
        case stop
        case fail
    }

    /// What the driver logs about a decision.
    public enum Notice: Sendable, Equatable {
        /// A retryable end: the next attempt in `retryInMilliseconds`.
        case reconnecting(retryInMilliseconds: Int)
        /// Became a standby (once per standby period).
        case standingBy
    }

    public let configuration: Configuration
    public private(set) var state: State = .starting
    /// Attempts after the first.
    public private(set) var reconnects = 0
    private var backoff: Backoff

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        backoff = Backoff(
            policy: .init(
                initialMilliseconds: configuration.initialBackoffMilliseconds,
                capMilliseconds: configuration.maxBackoffMilliseconds),
            seed: configuration.seed)
    }

    public var isStandby: Bool {
        if case .standingBy = state { return true }
        return false
    }

    /// What to do now.
    public mutating func next(now: Instant, stopRequested: Bool) -> Action {
        if stopRequested, state != .failed { state = .stopped }
        switch state {
        case .starting:
            state = .running(attempt: 1, since: now)
            return .connect(reconnect: false)
        case .running:
            // The driver asks only between sessions; a running session that returned cleanly stopped.
            state = .stopped
            return .stop
        case .backingOff(let until, let attempt):
            if now < until { return .wait(until: until) }
            state = .running(attempt: attempt + 1, since: now)
            return .connect(reconnect: true)
        case .standingBy(let until):
            if now < until { return .wait(until: until) }
            state = .running(attempt: 1, since: now)
            return .connect(reconnect: true)
        case .stopped:
            return .stop
        case .failed:
            return .fail
        }
    }

    /// The session (or the attempt to start one) ended with `disposition`; returns the line to log, if any.
    @discardableResult
    public mutating func sessionEnded(_ disposition: Disposition, now: Instant) -> Notice? {
        guard case .running(let attempt, let since) = state else { return nil }
        switch disposition {
        case .fail:
            state = .failed
            return nil
        case .standBy:
            reconnects += 1
            backoff.reset()
            state = .standingBy(until: now + configuration.standbyRetryMilliseconds)
            defer { standbyPeriod = true }
            return standbyPeriod ? nil : .standingBy
        case .retry:
            reconnects += 1
            standbyPeriod = false
            if now.milliseconds(since: since) >= configuration.healthyAfterMilliseconds { backoff.reset() }
            let delay = backoff.next()
            state = .backingOff(until: now + delay, attempt: attempt)
            return .reconnecting(retryInMilliseconds: delay)
        }
    }

    /// The session is streaming (or polling): a standby period, if any, is over.
    public mutating func sessionStreaming() { standbyPeriod = false }

    /// The session ended because a stop was asked for, or it reached its end.
    public mutating func sessionFinished() { state = .stopped }

    /// Between the first standby end and the next session that streams.
    public private(set) var standbyPeriod = false
}
