/// A pgoutput or replication-framing message that could not be decoded.
///
/// It names the message type and the byte offset where decoding stopped and
/// keeps the message's bytes, so any bad frame seen in production can be
/// turned into a test fixture. Decoding never traps on input: every read is
/// bounds-checked and every failure is one of these.
public struct DecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// The message ended before a field: `needed` bytes at `offset`, fewer were left.
        case truncated(field: String, needed: Int)
        /// The first byte is not a message type this decoder knows.
        case unknownMessageType
        /// A field holds a value the protocol does not allow.
        case invalidValue(field: String, value: Int64)
        /// Bytes were left after the last field of the message.
        case trailingBytes(count: Int)
        /// A change names a relation no Relation message has described.
        case unknownRelation(oid: UInt32)
        /// A tuple's column count differs from its relation's.
        case columnCountMismatch(relation: String, expected: Int, actual: Int)
        /// A string field is not terminated inside the message.
        case unterminatedString(field: String)
        /// The message is not valid in the current protocol state (e.g. Stream Stop outside a stream).
        case unexpected(String)
    }

    /// The message type byte (`'I'` = 73 …), or nil for an empty message.
    public var messageType: UInt8?
    /// Offset into the message where decoding failed.
    public var offset: Int
    public var reason: Reason
    /// The whole message, for turning into a fixture.
    public var bytes: [UInt8]

    public init(messageType: UInt8?, offset: Int, reason: Reason, bytes: [UInt8]) {
        self.messageType = messageType
        self.offset = offset
        self.reason = reason
        self.bytes = bytes
    }

    public var description: String {
        let kind: String
        if let messageType {
            let name = PGOutputMessageType(rawValue: messageType).map { "\($0)" } ?? "unknown"
            let letter = (32..<127).contains(messageType) ? String(UnicodeScalar(messageType)) : "?"
            kind = "\(name) ('\(letter)', 0x\(String(messageType, radix: 16)))"
        } else {
            kind = "empty message"
        }
        let what: String
        switch reason {
        case .truncated(let field, let needed):
            what = "truncated: \(field) needs \(needed) bytes, \(max(0, bytes.count - offset)) left"
        case .unknownMessageType: what = "unknown message type"
        case .invalidValue(let field, let value): what = "invalid \(field): \(value)"
        case .trailingBytes(let count): what = "\(count) unexpected trailing bytes"
        case .unknownRelation(let oid):
            what = "change for relation OID \(oid) before its Relation message"
        case .columnCountMismatch(let relation, let expected, let actual):
            what = "tuple has \(actual) columns, relation \(relation) has \(expected)"
        case .unterminatedString(let field): what = "\(field) is not NUL-terminated"
        case .unexpected(let text): what = text
        }
        let shown = bytes.prefix(64).map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
        return
            "pgoutput \(kind) at offset \(offset) of \(bytes.count) bytes: \(what) [\(shown)\(bytes.count > 64 ? "…" : "")]"
    }
}
