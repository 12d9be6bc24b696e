import Foundation
import PGOutput

/// Real pgoutput messages captured by `scripts/capture-fixtures.sh` from
/// PostgreSQL 15: one message per line, hex.
public enum Fixture {
    public static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    public static func messages(_ name: String) throws -> [[UInt8]] {
        let text = try String(
            contentsOf: directory.appendingPathComponent("\(name).hex"), encoding: .utf8)
        return text.split(separator: "\n").map { line in
            var bytes: [UInt8] = []
            bytes.reserveCapacity(line.utf8.count / 2)
            var iterator = line.utf8.makeIterator()
            while let high = iterator.next(), let low = iterator.next() {
                bytes.append(hexValue(high) << 4 | hexValue(low))
            }
            return bytes
        }
    }

    private static func hexValue(_ c: UInt8) -> UInt8 {
        switch c {
        case 48...57: c - 48
        case 97...102: c - 87
        default: c - 55
        }
    }

    /// Decodes a whole fixture in order, as the relay would.
    public static func decodeAll(_ name: String, protocolVersion: Int) throws -> [PGOutputMessage] {
        var decoder = PGOutputDecoder(protocolVersion: protocolVersion)
        return try messages(name).map { try decoder.decode($0) }
    }
}
