import OutboxCore

/// Pure rules of the NATS sink: what a subject and a header may be, what an
/// event becomes, and which failures are the destination's (wait, publish
/// again) and which the event's (dead-letter it or stop).
public enum NATSMessage {
    /// Why `subject` cannot be published to, or nil. NATS subjects are tokens
    /// separated by dots: no empty token, no whitespace, and no wildcard (`*`,
    /// `>`) when publishing.
    public static func subjectProblem(_ subject: String) -> String? {
        if subject.isEmpty { return "is empty" }
        if subject.utf8.contains(where: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
            return "contains whitespace"
        }
        for token in subject.split(separator: ".", omittingEmptySubsequences: false) {
            if token.isEmpty { return "has an empty token (a leading, trailing or doubled \".\")" }
            if token == "*" || token == ">" { return "has a wildcard token (\(token)), which cannot be published to" }
        }
        return nil
    }

    /// Why a header cannot travel in a NATS message, or nil: names are visible
    /// ASCII without `:`, values have no line break (NATS headers are
    /// HTTP-style lines).
    public static func headerProblem(name: String, value: String) -> String? {
        if name.isEmpty || name.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: ":") }) {
            return "header name \"\(name)\" is not visible ASCII without \":\""
        }
        if value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A }) {
            return "header \(name) has a line break, which a NATS header cannot carry"
        }
        return nil
    }

    /// The headers of an event's message: `Nats-Msg-Id` (the event id, so
    /// JetStream's duplicate window drops a redelivery), then `messageHeaders`.
    public static func headers(for event: OutboxEvent) -> [(name: String, value: String)] {
        [("Nats-Msg-Id", event.id)] + event.messageHeaders
    }

    /// What a failed publication means.
    public enum Failure: Equatable, Sendable {
        /// The destination is away or slow (connection lost, no acknowledgement
        /// in time, JetStream temporarily unavailable): publish again, in order.
        case transient(String)
        /// This event cannot be stored as it is: dead-letter it or stop.
        case permanent(String)
    }

    /// JetStream API error codes that say "not now" rather than "never":
    /// cluster not available, insufficient resources, stream offline, leader election.
    static let transientErrorCodes: Set<Int> = [10008, 10023, 10118, 10119]

    /// Classifies a publication failure from the client status name (`NATS_TIMEOUT`,
    /// …), the JetStream error code (0 when the server sent none) and its text.
    public static func classify(status: String, errorCode: Int, text: String, subject: String) -> Failure {
        if errorCode != 0 {
            let what = "JetStream refused the message on \(subject): \(text) (error \(errorCode))"
            return transientErrorCodes.contains(errorCode) ? .transient(what) : .permanent(what)
        }
        switch status {
        case "NATS_NO_RESPONDERS":
            return .permanent(
                "no JetStream stream covers subject \(subject) (NATS answered \"no responders\"): add one whose subjects include it, e.g. `nats stream add OUTBOX --subjects 'outbox.event.>'`"
            )
        case "NATS_MAX_PAYLOAD":
            return .permanent("the message for \(subject) is larger than the server's max_payload")
        case "NATS_INVALID_SUBJECT":
            return .permanent("\(subject) is not a valid NATS subject")
        default:
            return .transient("publishing to \(subject) failed: \(text.isEmpty ? status : text)")
        }
    }
}
