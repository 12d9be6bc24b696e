/// A WAL position (`pg_lsn`): a 64-bit byte offset into the write-ahead log,
/// printed by PostgreSQL as two hex halves, `X/Y`.
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    /// `0/0`, "no position": `START_REPLICATION … 0/0` means "from the slot's confirmed position".
    public static let zero = LSN(0)

    /// Parses PostgreSQL's `X/Y` text form (each half 1–8 hex digits).
    public init?(string: some StringProtocol) {
        let parts = string.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, (1...8).contains(parts[0].count), (1...8).contains(parts[1].count),
            let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16)
        else { return nil }
        self.rawValue = UInt64(high) << 32 | UInt64(low)
    }

    public var description: String {
        String(UInt32(truncatingIfNeeded: rawValue >> 32), radix: 16, uppercase: true) + "/"
            + String(UInt32(truncatingIfNeeded: rawValue), radix: 16, uppercase: true)
    }

    public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// PostgreSQL timestamps on the wire: microseconds since 2000-01-01 00:00:00 UTC.
public struct PostgresTimestamp: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }

    /// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
    public static let unixEpochOffsetSeconds: Int64 = 946_684_800

    /// Microseconds since the Unix epoch.
    public var unixMicroseconds: Int64 { rawValue &+ Self.unixEpochOffsetSeconds &* 1_000_000 }

    public init(unixMicroseconds: Int64) {
        self.rawValue = unixMicroseconds &- Self.unixEpochOffsetSeconds &* 1_000_000
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
