/// The record values Debezium's outbox EventRouter produces under Kafka
/// Connect's JsonConverter with `schemas.enable=false`, byte for byte, and its
/// topic routing (`route.topic.regex` / `route.topic.replacement`, Java syntax).
/// Pure: no I/O. The router calls it; unit tests pin each rule.
public enum DebeziumEncoding {
    /// A JSON string literal as Jackson writes one: `"` and `\` escaped, the
    /// control characters as `\b \t \n \f \r` or `\u00XX`, characters outside
    /// the Basic Multilingual Plane as a `\uD83D\uDE00` surrogate pair (measured:
    /// bench/debezium-compare.sh), everything else (other non-ASCII included) as is.
    public static func appendJacksonString(_ bytes: some Collection<UInt8>, to out: inout [UInt8]) {
        out.append(34)
        var iterator = bytes.makeIterator()
        while let byte = iterator.next() {
            if byte >= 0xF0 {
                appendSurrogates(lead: byte, &iterator, to: &out)
                continue
            }
            switch byte {
            case 34: out.append(contentsOf: [92, 34])
            case 92: out.append(contentsOf: [92, 92])
            case 8: out.append(contentsOf: [92, 98])
            case 9: out.append(contentsOf: [92, 116])
            case 10: out.append(contentsOf: [92, 110])
            case 12: out.append(contentsOf: [92, 102])
            case 13: out.append(contentsOf: [92, 114])
            case 0..<32:
                let hex = Array("0123456789ABCDEF".utf8)
                out.append(contentsOf: [92, 117, 48, 48, hex[Int(byte >> 4)], hex[Int(byte & 15)]])
            default: out.append(byte)
            }
        }
        out.append(34)
    }

    /// A four-byte UTF-8 sequence (its lead byte already read) as Jackson's `\uHHHH\uHHHH`.
    static func appendSurrogates<I: IteratorProtocol<UInt8>>(lead: UInt8, _ iterator: inout I, to out: inout [UInt8]) {
        var scalar = UInt32(lead & 0x07)
        var continuation: [UInt8] = []
        for _ in 0..<3 {
            guard let next = iterator.next() else { break }
            continuation.append(next)
            scalar = scalar << 6 | UInt32(next & 0x3F)
        }
        guard continuation.count == 3, scalar >= 0x10000, scalar <= 0x10FFFF else {
            out.append(lead)
            out.append(contentsOf: continuation)
            return
        }
        let value = scalar - 0x10000
        let hex = Array("0123456789ABCDEF".utf8)
        for unit in [0xD800 + (value >> 10), 0xDC00 + (value & 0x3FF)] {
            out.append(contentsOf: [
                92, 117, hex[Int(unit >> 12 & 15)], hex[Int(unit >> 8 & 15)], hex[Int(unit >> 4 & 15)],
                hex[Int(unit & 15)],
            ])
        }
    }

    /// `table.expand.json.payload`: a JSON text (as PostgreSQL prints json/jsonb) as
    /// the JsonConverter writes the Struct Debezium builds from it — compact, members
    /// in their order, integers as written, other numbers as Java's `Double.toString`,
    /// and, with `dropNullMembers` (`table.json.payload.null.behavior=ignore`, the
    /// default), members whose value is null left out. nil when Debezium would keep
    /// the string (it does not start with `{` or `[`, or does not parse): the caller
    /// then encodes it as a string, as Debezium does after its warning.
    public static func expand(_ text: some Collection<UInt8>, dropNullMembers: Bool) -> [UInt8]? {
        let bytes = Array(text)
        guard let first = bytes.first, first == 123 || first == 91 else { return nil }
        var parser = Parser(bytes: bytes, dropNullMembers: dropNullMembers)
        guard let value = try? parser.value(), parser.atEnd else { return nil }
        return value
    }

    /// Java's `Double.toString` for a finite double: plain decimal notation with
    /// at least one fractional digit for 10⁻³ ≤ |d| < 10⁷, else `d.dddE±n`
    /// (shortest digits that round-trip, as Swift's `description`).
    public static func javaDouble(_ value: Double) -> String {
        if value == 0 { return value.sign == .minus ? "-0.0" : "0.0" }
        let magnitude = abs(value)
        let sign = value < 0 ? "-" : ""
        // Shortest round-trip digits and decimal exponent from Swift's description.
        var (digits, exponent) = shortestDigits(magnitude)
        if magnitude >= 1e-3 && magnitude < 1e7 {
            // exponent: position of the decimal point after the first digit (d.ddd × 10^exponent)
            if exponent >= 0 {
                while digits.count <= exponent { digits.append("0") }
                let integer = digits.prefix(exponent + 1)
                var fraction = String(digits.dropFirst(exponent + 1))
                if fraction.isEmpty { fraction = "0" }
                return sign + integer + "." + fraction
            }
            return sign + "0." + String(repeating: "0", count: -exponent - 1) + digits
        }
        let fraction = digits.count > 1 ? String(digits.dropFirst()) : "0"
        return sign + String(digits.prefix(1)) + "." + fraction + "E" + String(exponent)
    }

    /// The significant digits (no leading or trailing zeros) and the decimal exponent
    /// of the first one, from Swift's shortest round-trip `description`.
    static func shortestDigits(_ magnitude: Double) -> (String, Int) {
        let text = magnitude.description  // "1.5", "1e-07", "1.234e+20", "123456.0"
        var mantissa = Substring(text)
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            mantissa = text[..<e]
            exponent = Int(text[text.index(after: e)...]) ?? 0
        }
        let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
        let integer = String(parts[0])
        let fraction = parts.count > 1 ? String(parts[1]) : ""
        var all = integer + fraction
        var pointAfter = integer.count  // digits before the decimal point
        while all.first == "0" && all.count > 1 {
            all.removeFirst()
            pointAfter -= 1
        }
        while all.last == "0" && all.count > 1 { all.removeLast() }
        return (all, exponent + pointAfter - 1)
    }

    /// Parses JSON and writes it back compact, as Jackson would write the Struct.
    struct Parser {
        let bytes: [UInt8]
        let dropNullMembers: Bool
        var offset = 0

        struct Invalid: Error {}

        var atEnd: Bool {
            mutating get {
                skipSpace()
                return offset == bytes.count
            }
        }

        mutating func skipSpace() {
            while offset < bytes.count, [32, 9, 10, 13].contains(bytes[offset]) { offset += 1 }
        }

        /// The value at `offset`, written compact; nil for JSON `null`.
        mutating func value() throws -> [UInt8]? {
            skipSpace()
            guard offset < bytes.count else { throw Invalid() }
            switch bytes[offset] {
            case 123: return try object()
            case 91: return try array()
            case 34:
                // PostgreSQL's escapes are Jackson's; only characters beyond the BMP differ.
                let literal = try stringLiteral()
                guard literal.contains(where: { $0 >= 0xF0 }) else { return Array(literal) }
                var out: [UInt8] = []
                var iterator = literal.makeIterator()
                while let byte = iterator.next() {
                    if byte >= 0xF0 { appendSurrogates(lead: byte, &iterator, to: &out) } else { out.append(byte) }
                }
                return out
            case 116: return try literal("true")
            case 102: return try literal("false")
            case 110:
                _ = try literal("null")
                return nil
            default: return try number()
            }
        }

        mutating func literal(_ word: String) throws -> [UInt8] {
            let w = Array(word.utf8)
            guard offset + w.count <= bytes.count, Array(bytes[offset..<offset + w.count]) == w else { throw Invalid() }
            offset += w.count
            return w
        }

        /// A string literal's bytes as written (PostgreSQL and Jackson escape alike).
        mutating func stringLiteral() throws -> ArraySlice<UInt8> {
            let start = offset
            offset += 1
            while offset < bytes.count {
                switch bytes[offset] {
                case 92: offset += 2
                case 34:
                    offset += 1
                    return bytes[start..<offset]
                default: offset += 1
                }
            }
            throw Invalid()
        }

        mutating func number() throws -> [UInt8] {
            let start = offset
            while offset < bytes.count,
                (48...57).contains(bytes[offset]) || [45, 43, 46, 101, 69].contains(bytes[offset])
            {
                offset += 1
            }
            let text = String(decoding: bytes[start..<offset], as: UTF8.self)
            guard !text.isEmpty else { throw Invalid() }
            if !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let integer = Int64(text) {
                return Array(String(integer).utf8)
            }
            guard let double = Double(text), double.isFinite else { throw Invalid() }
            return Array(javaDouble(double).utf8)
        }

        mutating func object() throws -> [UInt8] {
            offset += 1
            var out: [UInt8] = [123]
            var first = true
            skipSpace()
            if offset < bytes.count, bytes[offset] == 125 {
                offset += 1
                return [123, 125]
            }
            while true {
                skipSpace()
                guard offset < bytes.count, bytes[offset] == 34 else { throw Invalid() }
                let name = Array(try stringLiteral())
                skipSpace()
                guard offset < bytes.count, bytes[offset] == 58 else { throw Invalid() }
                offset += 1
                let member = try value()
                if member != nil || !dropNullMembers {
                    if !first { out.append(44) }
                    first = false
                    out.append(contentsOf: name)
                    out.append(58)
                    out.append(contentsOf: member ?? Array("null".utf8))
                }
                skipSpace()
                guard offset < bytes.count else { throw Invalid() }
                if bytes[offset] == 44 {
                    offset += 1
                    continue
                }
                guard bytes[offset] == 125 else { throw Invalid() }
                offset += 1
                out.append(125)
                return out
            }
        }

        mutating func array() throws -> [UInt8] {
            offset += 1
            var out: [UInt8] = [91]
            skipSpace()
            if offset < bytes.count, bytes[offset] == 93 {
                offset += 1
                return [91, 93]
            }
            var first = true
            while true {
                let element = try value()
                if !first { out.append(44) }
                first = false
                out.append(contentsOf: element ?? Array("null".utf8))
                skipSpace()
                guard offset < bytes.count else { throw Invalid() }
                if bytes[offset] == 44 {
                    offset += 1
                    continue
                }
                guard bytes[offset] == 93 else { throw Invalid() }
                offset += 1
                out.append(93)
                return out
            }
        }
    }
}

/// Java's `RegexRouter` as the EventRouter configures it: when `regex` matches
/// the whole routed value, the topic is `replacement` with `$n` and `${name}`
/// replaced by the groups (`\` escapes the next character); otherwise the value
/// itself is the topic.
public struct TopicRoute: Sendable, Equatable {
    public var regex: String
    public var replacement: String
    public static let debeziumDefault = TopicRoute(
        regex: "(?<routedByValue>.*)", replacement: "outbox.event.${routedByValue}")

    public init(regex: String, replacement: String) {
        self.regex = regex
        self.replacement = replacement
    }

    /// What is wrong with it, for a start-up error; nil when it is usable.
    public var problem: String? {
        do {
            _ = try Regex(regex)
            _ = try Self.expand(replacement, match: nil)  // syntax only: groups are looked up per match
            return nil
        } catch let error as ReplacementError {
            return "route.topic.replacement \"\(replacement)\": \(error.reason)"
        } catch {
            return "route.topic.regex \"\(regex)\" is not a regular expression Swift accepts: \(error)"
        }
    }

    struct ReplacementError: Error { var reason: String }

    /// The topic for a routed value; throws when the replacement names a group the regex lacks.
    public func topic(for value: String, compiled: Regex<AnyRegexOutput>) throws -> String {
        guard let match = try? compiled.wholeMatch(in: value) else { return value }
        do { return try Self.expand(replacement, match: match) } catch let error as ReplacementError {
            throw RouteError(description: "route.topic.replacement \"\(replacement)\": \(error.reason)")
        }
    }

    public struct RouteError: Error, CustomStringConvertible { public var description: String }

    /// `$n`, `${name}` and `\c` in a Java replacement string.
    static func expand(_ replacement: String, match: Regex<AnyRegexOutput>.Match?) throws -> String {
        var out = ""
        var rest = Substring(replacement)
        while let c = rest.popFirst() {
            switch c {
            case "\\":
                guard let next = rest.popFirst() else { throw ReplacementError(reason: "ends with a lone \\") }
                out.append(next)
            case "$":
                if rest.first == "{" {
                    guard let close = rest.firstIndex(of: "}") else { throw ReplacementError(reason: "an unclosed ${") }
                    let name = String(rest[rest.index(after: rest.startIndex)..<close])
                    guard !name.isEmpty else { throw ReplacementError(reason: "an empty group name ${}") }
                    rest = rest[rest.index(after: close)...]
                    if let match {
                        guard let group = match.output[name] else {
                            throw ReplacementError(reason: "no group named \(name)")
                        }
                        out += group.substring.map(String.init) ?? ""
                    }
                } else {
                    var digits = ""
                    while let d = rest.first, d.isASCII, d.isNumber {
                        digits.append(d)
                        rest = rest.dropFirst()
                    }
                    guard let index = Int(digits) else {
                        throw ReplacementError(reason: "a $ not followed by a group number or {name}")
                    }
                    if let match {
                        guard index < match.output.count else { throw ReplacementError(reason: "no group \(index)") }
                        out += match.output[index].substring.map(String.init) ?? ""
                    }
                }
            default: out.append(c)
            }
        }
        return out
    }
}
