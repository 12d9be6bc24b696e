import PGOutput

/// One event on its way to a sink: built from an outbox row or message.
public struct OutboxEvent: Sendable, Hashable {
    /// How the payload bytes are to be read.
    public enum PayloadFormat: Sendable, Hashable {
        /// JSON text as stored (jsonb/json columns, message payloads): passed on as is.
        case json
        /// Any other text (text, varchar, …).
        case text
        /// Raw bytes (bytea, decoded from its hex text form).
        case bytes
    }

    /// The outbox row id; header `id`. Stable across redeliveries: consumers dedupe on it.
    public var id: String
    public var topic: String
    /// The aggregate id: the Kafka key, so one aggregate's events stay in one partition, in order.
    public var key: String
    public var type: String
    /// The value, exactly as stored; nil for a NULL payload.
    public var payload: [UInt8]?
    public var payloadFormat: PayloadFormat
    /// Header `id`, header `type`, the members of the `headers` column, extra columns; in that order.
    public var headers: [(name: String, value: String)]
    /// A tombstone: key kept, value null (NULL payload with tombstones enabled).
    public var tombstone: Bool
    /// The transaction's commit LSN (`Begin`'s final LSN): the same for all of its
    /// events, increasing in commit order, known before the first event (so large
    /// transactions stream). With `id` it identifies a delivery for deduplication.
    public var lsn: LSN
    /// The transaction's commit time.
    public var commitTime: PostgresTimestamp

    public init(
        id: String, topic: String, key: String, type: String, payload: [UInt8]?,
        payloadFormat: PayloadFormat = .json, headers: [(name: String, value: String)], tombstone: Bool,
        lsn: LSN, commitTime: PostgresTimestamp
    ) {
        self.id = id
        self.topic = topic
        self.key = key
        self.type = type
        self.payload = payload
        self.payloadFormat = payloadFormat
        self.headers = headers
        self.tombstone = tombstone
        self.lsn = lsn
        self.commitTime = commitTime
    }

    /// Bytes counted against the in-flight bound: key and value, which every
    /// sink can recompute from what it delivered.
    public var weight: Int { key.utf8.count + (payload?.count ?? 0) }

    public static func == (lhs: OutboxEvent, rhs: OutboxEvent) -> Bool {
        lhs.id == rhs.id && lhs.topic == rhs.topic && lhs.key == rhs.key && lhs.type == rhs.type
            && lhs.payload == rhs.payload && lhs.payloadFormat == rhs.payloadFormat
            && lhs.headers.elementsEqual(rhs.headers, by: { $0 == $1 }) && lhs.tombstone == rhs.tombstone
            && lhs.lsn == rhs.lsn && lhs.commitTime == rhs.commitTime
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(id)
        hasher.combine(lsn)
    }
}

extension OutboxEvent {
    /// Appends the event as one NDJSON line (with the newline):
    /// `{"id":…,"topic":…,"key":…,"type":…,"payload":…,"headers":{…},"tombstone":…,"lsn":"X/Y","commit_time_us":…}`.
    /// A JSON payload is copied verbatim, not re-encoded.
    public func appendJSONLine(to out: inout [UInt8]) {
        out.append(contentsOf: #"{"id":"#.utf8)
        JSONText.appendString(id, to: &out)
        out.append(contentsOf: #","topic":"#.utf8)
        JSONText.appendString(topic, to: &out)
        out.append(contentsOf: #","key":"#.utf8)
        JSONText.appendString(key, to: &out)
        out.append(contentsOf: #","type":"#.utf8)
        JSONText.appendString(type, to: &out)
        out.append(contentsOf: #","payload":"#.utf8)
        if let payload, !tombstone {
            switch payloadFormat {
            case .json: out.append(contentsOf: payload)
            case .text: JSONText.appendString(String(decoding: payload, as: UTF8.self), to: &out)
            case .bytes: JSONText.appendString(Base64.encode(payload), to: &out)
            }
        } else {
            out.append(contentsOf: "null".utf8)
        }
        out.append(contentsOf: #","headers":{"#.utf8)
        for (index, header) in headers.enumerated() {
            if index > 0 { out.append(44) }
            JSONText.appendString(header.name, to: &out)
            out.append(58)
            JSONText.appendString(header.value, to: &out)
        }
        out.append(contentsOf: #"},"tombstone":"#.utf8)
        out.append(contentsOf: (tombstone ? "true" : "false").utf8)
        if lsn == .zero {
            out.append(contentsOf: #","lsn":null"#.utf8)  // polled events have no LSN
        } else {
            out.append(contentsOf: #","lsn":""#.utf8)
            out.append(contentsOf: lsn.description.utf8)
            out.append(34)
        }
        out.append(contentsOf: #","commit_time_us":"#.utf8)
        out.append(contentsOf: String(commitTime.unixMicroseconds).utf8)
        if payloadFormat == .bytes && payload != nil && !tombstone {
            out.append(contentsOf: #","payload_encoding":"base64""#.utf8)
        }
        out.append(contentsOf: "}\n".utf8)
    }
}

/// Minimal standard Base64 (for bytea payloads in NDJSON).
enum Base64 {
    private static let alphabet = Array(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = UInt32(bytes[i])
            let b1 = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
            let b2 = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
            let n = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
            out.append(i + 1 < bytes.count ? alphabet[Int(n >> 6 & 63)] : 61)
            out.append(i + 2 < bytes.count ? alphabet[Int(n & 63)] : 61)
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
