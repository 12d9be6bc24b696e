/// Just enough JSON for the relay, without re-encoding payloads: string
/// escaping for output, and a validating scanner that finds the members of a
/// top-level object as byte ranges (the `headers` column, logical-message
/// outboxes). Values keep their original bytes.
public enum JSONText {
    public enum Kind: Sendable, Equatable { case string, number, object, array, bool, null }

    /// One member of an object: its (unescaped) name and the byte range of its value.
    public struct Member: Sendable, Equatable {
        public var name: String
        public var kind: Kind
        public var range: Range<Int>
    }

    public struct SyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    /// Appends `value` as a JSON string literal, escaping what RFC 8259 requires.
    public static func appendString(_ value: String, to out: inout [UInt8]) {
        out.append(34)
        let utf8 = value.utf8
        // Fast path: most ids, keys and topics need no escaping.
        if !utf8.contains(where: { $0 < 32 || $0 == 34 || $0 == 92 }) {
            out.append(contentsOf: utf8)
            out.append(34)
            return
        }
        for byte in utf8 {
            switch byte {
            case 34: out.append(contentsOf: [92, 34])
            case 92: out.append(contentsOf: [92, 92])
            case 10: out.append(contentsOf: [92, 110])
            case 13: out.append(contentsOf: [92, 114])
            case 9: out.append(contentsOf: [92, 116])
            case 0..<32:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [92, 117, 48, 48, hex[Int(byte >> 4)], hex[Int(byte & 15)]])
            default: out.append(byte)
            }
        }
        out.append(34)
    }

    /// The members of the top-level JSON object in `bytes`, validating the whole
    /// document. Throws if it is not an object or not valid JSON.
    public static func objectMembers(_ bytes: [UInt8]) throws(SyntaxError) -> [Member] {
        var scanner = Scanner(bytes: bytes)
        scanner.skipSpace()
        guard scanner.peek() == 123 else {
            throw SyntaxError(offset: scanner.offset, reason: "expected an object")
        }
        let members = try scanner.object(collect: true)
        scanner.skipSpace()
        guard scanner.offset == scanner.bytes.count else {
            throw SyntaxError(offset: scanner.offset, reason: "trailing characters")
        }
        return members
    }

    /// The text of a string value (unescaped), given the range of its quoted literal.
    public static func stringValue(
        _ bytes: [UInt8], _ range: Range<Int>
    ) throws(SyntaxError)
        -> String
    {
        var scanner = Scanner(bytes: bytes, offset: range.lowerBound)
        return try scanner.string()
    }

    struct Scanner {
        let bytes: [UInt8]
        var offset = 0
        var depth = 0

        func peek() -> UInt8? { offset < bytes.count ? bytes[offset] : nil }
        func fail(_ reason: String) -> SyntaxError { SyntaxError(offset: offset, reason: reason) }

        mutating func skipSpace() {
            while let b = peek(), b == 32 || b == 9 || b == 10 || b == 13 { offset += 1 }
        }

        mutating func expect(_ byte: UInt8) throws(SyntaxError) {
            guard peek() == byte else { throw fail("expected '\(Character(UnicodeScalar(byte)))'") }
            offset += 1
        }

        mutating func object(collect: Bool) throws(SyntaxError) -> [Member] {
            depth += 1
            guard depth <= 512 else { throw fail("nested too deeply") }
            defer { depth -= 1 }
            try expect(123)
            var members: [Member] = []
            skipSpace()
            if peek() == 125 {
                offset += 1
                return members
            }
            while true {
                skipSpace()
                let name = try string()
                skipSpace()
                try expect(58)
                skipSpace()
                let start = offset
                let kind = try value()
                if collect { members.append(Member(name: name, kind: kind, range: start..<offset)) }
                skipSpace()
                guard let b = peek() else { throw fail("unterminated object") }
                offset += 1
                if b == 125 { return members }
                guard b == 44 else {
                    offset -= 1
                    throw fail("expected ',' or '}'")
                }
            }
        }

        mutating func value() throws(SyntaxError) -> Kind {
            guard let b = peek() else { throw fail("expected a value") }
            switch b {
            case 123:
                _ = try object(collect: false)
                return .object
            case 91:
                depth += 1
                guard depth <= 512 else { throw fail("nested too deeply") }
                defer { depth -= 1 }
                offset += 1
                skipSpace()
                if peek() == 93 {
                    offset += 1
                    return .array
                }
                while true {
                    skipSpace()
                    _ = try value()
                    skipSpace()
                    guard let c = peek() else { throw fail("unterminated array") }
                    offset += 1
                    if c == 93 { return .array }
                    guard c == 44 else {
                        offset -= 1
                        throw fail("expected ',' or ']'")
                    }
                }
            case 34:
                _ = try string()
                return .string
            case 116:
                try literal("true")
                return .bool
            case 102:
                try literal("false")
                return .bool
            case 110:
                try literal("null")
                return .null
            default:
                try number()
                return .number
            }
        }

        mutating func literal(_ word: String) throws(SyntaxError) {
            for byte in word.utf8 {
                guard peek() == byte else { throw fail("invalid literal") }
                offset += 1
            }
        }

        mutating func number() throws(SyntaxError) {
            let start = offset
            if peek() == 45 { offset += 1 }
            func digits() -> Int {
                var n = 0
                while let d = peek(), (48...57).contains(d) {
                    offset += 1
                    n += 1
                }
                return n
            }
            guard digits() > 0 else {
                offset = start
                throw fail("invalid number")
            }
            if peek() == 46 {
                offset += 1
                guard digits() > 0 else { throw fail("invalid fraction") }
            }
            if peek() == 101 || peek() == 69 {
                offset += 1
                if peek() == 43 || peek() == 45 { offset += 1 }
                guard digits() > 0 else { throw fail("invalid exponent") }
            }
        }

        /// A string literal; returns its unescaped text. Rejects control characters and invalid UTF-8.
        mutating func string() throws(SyntaxError) -> String {
            try expect(34)
            var out: [UInt8] = []
            while true {
                guard let b = peek() else { throw fail("unterminated string") }
                offset += 1
                switch b {
                case 34:
                    guard let text = UTF8Text.string(out) else { throw fail("string is not valid UTF-8") }
                    return text
                case 92:
                    guard let e = peek() else { throw fail("unterminated escape") }
                    offset += 1
                    switch e {
                    case 34, 92, 47: out.append(e)
                    case 98: out.append(8)
                    case 102: out.append(12)
                    case 110: out.append(10)
                    case 114: out.append(13)
                    case 116: out.append(9)
                    case 117:
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar) {
                            guard peek() == 92 else { throw fail("unpaired surrogate") }
                            offset += 1
                            guard peek() == 117 else { throw fail("unpaired surrogate") }
                            offset += 1
                            let low = try hex4()
                            guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                        out.append(contentsOf: Array(String(Character(unicode)).utf8))
                    default: throw fail("invalid escape")
                    }
                case 0..<32: throw fail("control character in string")
                default: out.append(b)
                }
            }
        }

        mutating func hex4() throws(SyntaxError) -> UInt32 {
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let h = peek() else { throw fail("short \\u escape") }
                offset += 1
                let digit: UInt32
                switch h {
                case 48...57: digit = UInt32(h - 48)
                case 97...102: digit = UInt32(h - 87)
                case 65...70: digit = UInt32(h - 55)
                default: throw fail("invalid \\u escape")
                }
                value = value << 4 | digit
            }
            return value
        }
    }
}
