/// The streaming replication protocol's CopyData framing around pgoutput
/// (PostgreSQL docs, "Streaming Replication Protocol", START_REPLICATION).
public enum ReplicationMessage: Sendable, Hashable {
    /// 'w' XLogData: WAL data starting at `walStart`; `payload` is one pgoutput message.
    case xLogData(walStart: LSN, walEnd: LSN, sendTime: PostgresTimestamp, payload: [UInt8])
    /// 'k' Primary keepalive: the server's WAL end; reply at once when `replyRequested`.
    case keepalive(walEnd: LSN, sendTime: PostgresTimestamp, replyRequested: Bool)

    /// Decodes one CopyData message from the server.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer
    ) throws(DecodeError)
        -> ReplicationMessage
    {
        guard let first = bytes.first else {
            throw DecodeError(
                messageType: nil, offset: 0, reason: .truncated(field: "message type", needed: 1), bytes: []
            )
        }
        func header(_ count: Int, _ what: String) throws(DecodeError) -> ByteReader {
            // Only the fixed header is copied here; the payload is copied once below.
            var r = ByteReader(Array(bytes.prefix(count)), offset: 1, messageType: first)
            if bytes.count < count { _ = try r.range(count - 1, what) }
            return r
        }
        switch first {
        case 119:  // 'w'
            var r = try header(25, "XLogData header")
            let start = try r.lsn("WAL start")
            let end = try r.lsn("WAL end")
            let time = try r.timestamp("send time")
            return .xLogData(walStart: start, walEnd: end, sendTime: time, payload: Array(bytes[25...]))
        case 107:  // 'k'
            var r = try header(18, "keepalive")
            let end = try r.lsn("WAL end")
            let time = try r.timestamp("send time")
            let reply = try r.uint8("reply requested")
            guard bytes.count == 18 else {
                throw DecodeError(
                    messageType: first, offset: 18, reason: .trailingBytes(count: bytes.count - 18),
                    bytes: Array(bytes))
            }
            return .keepalive(walEnd: end, sendTime: time, replyRequested: reply != 0)
        default:
            throw DecodeError(
                messageType: first, offset: 0, reason: .unknownMessageType, bytes: Array(bytes.prefix(64)))
        }
    }

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> ReplicationMessage {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(DecodeError) in try decode(raw) }
        }
        return try result.get()
    }
}

/// 'r' Standby status update, the client's progress report.
public struct StandbyStatusUpdate: Sendable, Hashable {
    /// Last WAL byte received.
    public var written: LSN
    /// Last WAL byte durably processed: for logical slots this becomes `confirmed_flush_lsn`.
    public var flushed: LSN
    public var applied: LSN
    public var clock: PostgresTimestamp
    public var replyRequested: Bool

    public init(
        written: LSN, flushed: LSN, applied: LSN, clock: PostgresTimestamp, replyRequested: Bool = false
    ) {
        self.written = written
        self.flushed = flushed
        self.applied = applied
        self.clock = clock
        self.replyRequested = replyRequested
    }

    /// The 34-byte CopyData payload.
    public var encoded: [UInt8] {
        var out: [UInt8] = [114]  // 'r'
        out.reserveCapacity(34)
        for value in [
            written.rawValue, flushed.rawValue, applied.rawValue, UInt64(bitPattern: clock.rawValue),
        ] {
            for shift in stride(from: 56, through: 0, by: -8) {
                out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
            }
        }
        out.append(replyRequested ? 1 : 0)
        return out
    }
}
