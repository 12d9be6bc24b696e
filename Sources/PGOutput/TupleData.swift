/// The columns of one row as pgoutput sends them (`TupleData`).
///
/// Values are kept as ranges into the message's bytes, so decoding a row
/// allocates nothing per column; `bytes(at:)` hands out slices.
public struct TupleData: Sendable, Hashable {
    public enum Column: Sendable, Hashable {
        /// 'n': NULL.
        case null
        /// 'u': an unchanged TOASTed value, not sent (only in updates).
        case unchanged
        /// 't': the value in the type's text output format.
        case text(Range<Int>)
        /// 'b': the value in the type's binary send format (`binary 'true'`).
        case binary(Range<Int>)
    }

    /// The message the ranges point into.
    public let storage: [UInt8]
    public let columns: [Column]

    public init(storage: [UInt8], columns: [Column]) {
        self.storage = storage
        self.columns = columns
    }

    public var count: Int { columns.count }

    /// The raw bytes of column `index` (text or binary), nil for NULL or unchanged.
    public func bytes(at index: Int) -> ArraySlice<UInt8>? {
        guard columns.indices.contains(index) else { return nil }
        switch columns[index] {
        case .text(let range), .binary(let range): return storage[range]
        case .null, .unchanged: return nil
        }
    }

    /// Column `index` as a string, for text-format values.
    public func string(at index: Int) -> String? {
        bytes(at: index).map { String(decoding: $0, as: UTF8.self) }
    }

    static func decode(_ reader: inout ByteReader) throws(DecodeError) -> TupleData {
        let count = try reader.int16("tuple column count")
        guard count >= 0 else {
            throw reader.error(.invalidValue(field: "tuple column count", value: Int64(count)))
        }
        var columns: [Column] = []
        columns.reserveCapacity(Int(count))
        for _ in 0..<count {
            let kindOffset = reader.offset
            let kind = try reader.uint8("column kind")
            switch kind {
            case 110: columns.append(.null)  // 'n'
            case 117: columns.append(.unchanged)  // 'u'
            case 116, 98:  // 't', 'b'
                let length = try reader.int32("column length")
                let range = try reader.range(Int(length), "column value")
                columns.append(kind == 116 ? .text(range) : .binary(range))
            default:
                throw reader.error(.invalidValue(field: "column kind", value: Int64(kind)), at: kindOffset)
            }
        }
        return TupleData(storage: reader.bytes, columns: columns)
    }
}
