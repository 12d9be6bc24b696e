import Foundation
import Synchronization

/// Runs blocking work (a C client's connect and handshake, closing a
/// connection that may wait for a silent peer) on a thread of its own, never on
/// the relay's thread or Swift's cooperative pool.
public enum OwnThread {
    /// Starts `work` on a new thread and returns at once.
    public static func detach(_ name: String, _ work: @escaping @Sendable () -> Void) {
        let thread = Thread { work() }
        thread.name = name
        thread.start()
    }

    /// Runs blocking `work` on a thread of its own and hands its result over:
    /// the relay thread takes it from the returned `Handoff` once `signal` (its
    /// wake-up descriptor) has woken it. A result nobody will take any more (the
    /// taker abandoned the handoff) goes to `unclaimed`, to be disposed of.
    public static func handOff<T>(
        _ name: String, signal: @escaping @Sendable () -> Void, unclaimed: (@Sendable (T) -> Void)? = nil,
        _ work: @escaping @Sendable () -> T
    ) -> Handoff<T> {
        let handoff = Handoff<T>()
        detach(name) {
            let value = work()
            if !handoff.put(value) { unclaimed?(value) }
            signal()
        }
        return handoff
    }

    /// Runs `work` on a new thread and awaits its result: for blocking set-up
    /// (a sink's first connection) called from async code.
    public static func run<T: Sendable>(_ name: String, _ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            detach(name) {
                do { continuation.resume(returning: try work()) } catch { continuation.resume(throwing: error) }
            }
        }
    }
}

/// A value handed from one thread to another exactly once: the connector
/// thread puts a finished connection attempt, the relay thread takes it.
///
/// `@unchecked Sendable`: the value is behind a `Mutex` and only ever owned by
/// one side — the putter gives it up when it puts, the taker owns it after taking.
public final class Handoff<Value>: @unchecked Sendable {
    private struct State: @unchecked Sendable {
        var value: Value?
        /// The taker is gone: a value put after that goes back to the putter.
        var abandoned = false
    }
    private let state = Mutex(State())

    public init() {}

    /// Puts `value`; returns false when nobody will take it (the caller then disposes of it).
    public func put(_ value: Value) -> Bool {
        nonisolated(unsafe) let value = value
        return state.withLock { state in
            if state.abandoned { return false }
            state.value = value
            return true
        }
    }

    public func take() -> Value? {
        nonisolated(unsafe) let value = state.withLock { state in
            defer { state.value = nil }
            return state.value
        }
        return value
    }

    /// The taker is gone; returns what was put and not taken, for disposal.
    public func abandon() -> Value? {
        nonisolated(unsafe) let value = state.withLock { state in
            state.abandoned = true
            defer { state.value = nil }
            return state.value
        }
        return value
    }
}
