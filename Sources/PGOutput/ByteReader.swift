/// Bounds-checked big-endian reader over one message. Every read checks the
/// remaining length first and throws `DecodeError` instead of trapping, so no
/// input can crash the decoder (the fuzz target and the truncation sweep hold
/// it to that).
struct ByteReader: ~Copyable {
    let bytes: [UInt8]
    private(set) var offset: Int
    let messageType: UInt8?

    init(_ bytes: [UInt8], offset: Int = 0, messageType: UInt8?) {
        self.bytes = bytes
        self.offset = offset
        self.messageType = messageType
    }

    var remaining: Int { bytes.count - offset }

    func error(_ reason: DecodeError.Reason, at offset: Int? = nil) -> DecodeError {
        DecodeError(
            messageType: messageType, offset: offset ?? self.offset, reason: reason, bytes: bytes)
    }

    @inline(__always)
    private func require(_ count: Int, _ field: String) throws(DecodeError) {
        guard count <= remaining else { throw error(.truncated(field: field, needed: count)) }
    }

    mutating func uint8(_ field: String) throws(DecodeError) -> UInt8 {
        try require(1, field)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint16(_ field: String) throws(DecodeError) -> UInt16 {
        try require(2, field)
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func uint32(_ field: String) throws(DecodeError) -> UInt32 {
        try require(4, field)
        var value: UInt32 = 0
        for i in 0..<4 { value = value << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return value
    }

    mutating func uint64(_ field: String) throws(DecodeError) -> UInt64 {
        try require(8, field)
        var value: UInt64 = 0
        for i in 0..<8 { value = value << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return value
    }

    mutating func int16(_ field: String) throws(DecodeError) -> Int16 {
        Int16(bitPattern: try uint16(field))
    }
    mutating func int32(_ field: String) throws(DecodeError) -> Int32 {
        Int32(bitPattern: try uint32(field))
    }
    mutating func int64(_ field: String) throws(DecodeError) -> Int64 {
        Int64(bitPattern: try uint64(field))
    }
    mutating func lsn(_ field: String) throws(DecodeError) -> LSN { LSN(try uint64(field)) }
    mutating func timestamp(_ field: String) throws(DecodeError) -> PostgresTimestamp {
        PostgresTimestamp(rawValue: try int64(field))
    }

    /// A NUL-terminated string (PostgreSQL's `String` field).
    mutating func cString(_ field: String) throws(DecodeError) -> String {
        var end = offset
        while end < bytes.count, bytes[end] != 0 { end += 1 }
        guard end < bytes.count else { throw error(.unterminatedString(field: field)) }
        defer { offset = end + 1 }
        return String(decoding: bytes[offset..<end], as: UTF8.self)
    }

    /// `count` raw bytes, returned as a range into `bytes` (no copy).
    mutating func range(_ count: Int, _ field: String) throws(DecodeError) -> Range<Int> {
        guard count >= 0 else { throw error(.invalidValue(field: field, value: Int64(count))) }
        try require(count, field)
        defer { offset += count }
        return offset..<(offset + count)
    }

    /// Every message must be consumed exactly: leftover bytes mean we misread it.
    func requireEnd() throws(DecodeError) {
        guard remaining == 0 else { throw error(.trailingBytes(count: remaining)) }
    }
}
