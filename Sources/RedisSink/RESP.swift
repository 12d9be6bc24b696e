/// RESP2, the Redis serialization protocol: commands out, replies in. Pure:
/// no I/O, so the parser is tested on bytes captured from a real server,
/// split at every offset.

/// One reply.
public enum RESPValue: Sendable, Equatable {
    case simple(String)
    case error(String)
    case integer(Int64)
    /// nil: the null bulk string (`$-1`).
    case bulk([UInt8]?)
    /// nil: the null array (`*-1`).
    case array([RESPValue]?)

    /// The text of a simple or bulk string.
    public var text: String? {
        switch self {
        case .simple(let s): return s
        case .bulk(let b?): return String(decoding: b, as: UTF8.self)
        default: return nil
        }
    }
}

public struct RESPProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
}

public enum RESP {
    /// `*N $len arg …`: a command as an array of bulk strings.
    public static func append(command arguments: [[UInt8]], to out: inout [UInt8]) {
        appendHeader(UInt8(ascii: "*"), arguments.count, to: &out)
        for argument in arguments {
            appendHeader(UInt8(ascii: "$"), argument.count, to: &out)
            out += argument
            out += [13, 10]
        }
    }

    public static func command(_ arguments: String...) -> [UInt8] {
        var out: [UInt8] = []
        append(command: arguments.map { Array($0.utf8) }, to: &out)
        return out
    }

    private static func appendHeader(_ type: UInt8, _ count: Int, to out: inout [UInt8]) {
        out.append(type)
        out += Array(String(count).utf8)
        out += [13, 10]
    }
}

/// Replies from a byte stream that arrives in pieces. `append` what was read,
/// then take replies with `next()` until it returns nil (needs more bytes).
public struct RESPParser: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    /// A bulk string longer than Redis's own limit (proto-max-bulk-len, 512 MB) is a broken stream.
    static let maxBulk = 512 << 20
    static let maxDepth = 16

    public init() {}

    /// Bytes received and not yet parsed into a reply.
    public var buffered: Int { buffer.count - start }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The next complete reply, or nil when more bytes are needed.
    public mutating func next() throws(RESPProtocolError) -> RESPValue? {
        var position = start
        guard let value = try parse(&position, depth: 0) else { return nil }
        start = position
        if start > 1 << 16 && start * 2 > buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
        return value
    }

    private func parse(_ position: inout Int, depth: Int) throws(RESPProtocolError) -> RESPValue? {
        guard position < buffer.count else { return nil }
        let type = buffer[position]
        guard let line = self.line(from: position + 1) else {
            // A header line has no business being long: a stream that is not RESP.
            if buffer.count - position > 64 * 1024 {
                throw RESPProtocolError(description: "a reply line longer than 64 KiB")
            }
            return nil
        }
        let text = String(decoding: buffer[(position + 1)..<line], as: UTF8.self)
        let afterLine = line + 2
        switch type {
        case UInt8(ascii: "+"):
            position = afterLine
            return .simple(text)
        case UInt8(ascii: "-"):
            position = afterLine
            return .error(text)
        case UInt8(ascii: ":"):
            guard let number = Int64(text) else {
                throw RESPProtocolError(description: "integer reply \"\(text.prefix(40))\"")
            }
            position = afterLine
            return .integer(number)
        case UInt8(ascii: "$"):
            guard let length = Int(text), length >= -1, length <= Self.maxBulk else {
                throw RESPProtocolError(description: "bulk length \"\(text.prefix(40))\"")
            }
            if length == -1 {
                position = afterLine
                return .bulk(nil)
            }
            guard buffer.count >= afterLine + length + 2 else { return nil }
            guard buffer[afterLine + length] == 13, buffer[afterLine + length + 1] == 10 else {
                throw RESPProtocolError(description: "bulk string of \(length) bytes not followed by CRLF")
            }
            position = afterLine + length + 2
            return .bulk(Array(buffer[afterLine..<(afterLine + length)]))
        case UInt8(ascii: "*"):
            guard let count = Int(text), count >= -1, count <= Self.maxBulk else {
                throw RESPProtocolError(description: "array length \"\(text.prefix(40))\"")
            }
            if count == -1 {
                position = afterLine
                return .array(nil)
            }
            guard depth < Self.maxDepth else {
                throw RESPProtocolError(description: "arrays nested deeper than \(Self.maxDepth)")
            }
            var cursor = afterLine
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(count, 1024))
            for _ in 0..<count {
                guard let element = try parse(&cursor, depth: depth + 1) else { return nil }
                elements.append(element)
            }
            position = cursor
            return .array(elements)
        default:
            throw RESPProtocolError(description: "reply type byte 0x\(String(type, radix: 16)) (RESP2 has + - : $ *)")
        }
    }

    /// The index of the CR of the CRLF that ends the line starting at `from`.
    private func line(from: Int) -> Int? {
        var i = from
        while i + 1 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 { return i }
            i += 1
        }
        return nil
    }
}
