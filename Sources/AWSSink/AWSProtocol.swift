import Foundation
import OutboxCore

/// The two AWS destinations: SQS (a queue URL, the AWS JSON 1.0 protocol) and
/// SNS (a topic ARN, the query protocol with XML answers).
public enum AWSService: String, Sendable {
    case sqs, sns

    /// The name SigV4 signs for.
    var signingName: String { rawValue }
    public var displayName: String { self == .sqs ? "SQS" : "SNS" }
}

/// One message of a batch, as SQS and SNS both take it.
public struct AWSEntry: Sendable, Equatable {
    /// The message (SQS `MessageBody`, SNS `Message`): never empty.
    public var body: String
    /// String message attributes, at most ten, valid names.
    public var attributes: [AWSAttribute]
    /// FIFO only: `MessageGroupId` (the key) and `MessageDeduplicationId` (the event id).
    public var group: String?
    public var deduplicationID: String?

    public init(body: String, attributes: [AWSAttribute], group: String? = nil, deduplicationID: String? = nil) {
        self.body = body
        self.attributes = attributes
        self.group = group
        self.deduplicationID = deduplicationID
    }

    /// Bytes the service counts against its size limit: the body and each attribute's name, type and value.
    public var size: Int {
        body.utf8.count + attributes.reduce(0) { $0 + $1.name.utf8.count + 6 + $1.value.utf8.count }
    }
}

public struct AWSAttribute: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// How an event becomes an entry: SQS and SNS rules for bodies, attribute
/// names, group and deduplication ids. Pure.
public enum AWSMapping {
    /// Both services take ten message attributes at most.
    public static let maximumAttributes = 10
    /// Both take ten entries per batch.
    public static let maximumBatchEntries = 10

    /// The entry for an event, or why the service can never take it.
    public static func entry(
        for event: OutboxEvent, fifo: Bool, maximumBytes: Int
    ) -> (AWSEntry, problem: String?) {
        // Neither service takes an empty message: a tombstone is `null` with `tombstone: true`.
        let raw = event.messageBody
        let body = raw.isEmpty ? "null" : String(decoding: raw, as: UTF8.self)
        var entry = AWSEntry(
            body: body, attributes: attributes(event.messageHeaders),
            group: fifo ? identifier(event.key.isEmpty ? "-" : event.key) : nil,
            deduplicationID: fifo ? identifier(event.id) : nil)
        if !raw.isEmpty, body.utf8.elementsEqual(raw) == false {
            entry.body = "null"
            return (entry, "the payload is not UTF-8 text, which SQS and SNS require")
        }
        if let bad = body.unicodeScalars.first(where: { !isMessageCharacter($0) }) {
            return (
                entry,
                "the payload holds U+\(String(bad.value, radix: 16, uppercase: true)), a character SQS and SNS refuse"
            )
        }
        if entry.size > maximumBytes {
            return (entry, "the message is \(entry.size) bytes with its attributes, over the limit of \(maximumBytes)")
        }
        return (entry, nil)
    }

    /// The event's fields as string attributes: names made valid (letters,
    /// digits, `_ - .`; not `AWS.`/`Amazon.`), empty values left out (the
    /// services refuse them); with more than ten, the first nine and
    /// `headers`, a JSON object of all of them.
    public static func attributes(_ pairs: [(name: String, value: String)]) -> [AWSAttribute] {
        let all = pairs.filter { !$0.value.isEmpty }.map {
            AWSAttribute(name: attributeName($0.name), value: attributeValue($0.value))
        }
        guard all.count > maximumAttributes else { return all }
        var json: [UInt8] = [123]
        for (index, pair) in pairs.enumerated() {
            if index > 0 { json.append(44) }
            JSONText.appendString(pair.name, to: &json)
            json.append(58)
            JSONText.appendString(pair.value, to: &json)
        }
        json.append(125)
        return Array(all.prefix(maximumAttributes - 1))
            + [AWSAttribute(name: "headers", value: attributeValue(String(decoding: json, as: UTF8.self)))]
    }

    static func attributeName(_ name: String) -> String {
        var out = String(
            name.unicodeScalars.prefix(256).map { scalar -> Character in
                let v = scalar.value
                let ok =
                    (v >= 0x30 && v <= 0x39) || (v >= 0x41 && v <= 0x5A) || (v >= 0x61 && v <= 0x7A) || v == 0x5F
                    || v == 0x2D || v == 0x2E
                return ok ? Character(scalar) : "_"
            })
        while out.contains("..") { out = out.replacingOccurrences(of: "..", with: "._") }
        if out.hasPrefix(".") { out = "_" + out.dropFirst() }
        if out.hasSuffix(".") { out = out.dropLast() + "_" }
        let lower = out.lowercased()
        if lower.hasPrefix("aws.") || lower.hasPrefix("amazon.") { out = "x-" + out }
        return out.isEmpty ? "_" : out
    }

    static func attributeValue(_ value: String) -> String {
        String(String.UnicodeScalarView(value.unicodeScalars.filter(isMessageCharacter)))
    }

    /// The characters SQS and SNS take in a message: #x9, #xA, #xD, #x20 to #xD7FF, #xE000 to #xFFFD, #x10000 and up.
    static func isMessageCharacter(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        return v == 0x9 || v == 0xA || v == 0xD || (v >= 0x20 && v <= 0xD7FF) || (v >= 0xE000 && v <= 0xFFFD)
            || v >= 0x10000
    }

    /// A group or deduplication id: 1 to 128 characters, letters, digits and
    /// ASCII punctuation. Anything else (a long key, non-ASCII) becomes a
    /// stable hash, `h-` and 32 hex digits: the same key always maps to the same id.
    public static func identifier(_ text: String) -> String {
        let valid =
            !text.isEmpty && text.utf8.count <= 128 && text.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }
        if valid { return text }
        var a: UInt64 = 0xcbf2_9ce4_8422_2325
        var b: UInt64 = 0x8422_2325_cbf2_9ce4
        for byte in text.utf8 {
            a = (a ^ UInt64(byte)) &* 0x100_0000_01b3
            b = (b ^ UInt64(byte)) &* 0x100_0000_01b3 &+ 0x9E37_79B9_7F4A_7C15
        }
        return "h-" + hex(a) + hex(b)
    }

    private static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// The request bodies of a batch. Pure.
public enum AWSBatchRequest {
    /// SQS `SendMessageBatch` in AWS JSON 1.0; entry ids are the entries' positions.
    public static func sqs(queueURL: String, entries: [AWSEntry]) -> [UInt8] {
        var out: [UInt8] = Array(#"{"QueueUrl":"#.utf8)
        JSONText.appendString(queueURL, to: &out)
        out += Array(#","Entries":["#.utf8)
        for (index, entry) in entries.enumerated() {
            if index > 0 { out.append(44) }
            out += Array(#"{"Id":""#.utf8) + Array(String(index).utf8) + Array(#"","MessageBody":"#.utf8)
            JSONText.appendString(entry.body, to: &out)
            if !entry.attributes.isEmpty {
                out += Array(#","MessageAttributes":{"#.utf8)
                for (n, attribute) in entry.attributes.enumerated() {
                    if n > 0 { out.append(44) }
                    JSONText.appendString(attribute.name, to: &out)
                    out += Array(#":{"DataType":"String","StringValue":"#.utf8)
                    JSONText.appendString(attribute.value, to: &out)
                    out.append(125)
                }
                out.append(125)
            }
            if let group = entry.group {
                out += Array(#","MessageGroupId":"#.utf8)
                JSONText.appendString(group, to: &out)
            }
            if let id = entry.deduplicationID {
                out += Array(#","MessageDeduplicationId":"#.utf8)
                JSONText.appendString(id, to: &out)
            }
            out.append(125)
        }
        out += Array("]}".utf8)
        return out
    }

    /// SNS `PublishBatch` in the query protocol (form-encoded).
    public static func sns(topicARN: String, entries: [AWSEntry]) -> [UInt8] {
        var form: [(String, String)] = [("Action", "PublishBatch"), ("Version", "2010-03-31"), ("TopicArn", topicARN)]
        for (index, entry) in entries.enumerated() {
            let p = "PublishBatchRequestEntries.member.\(index + 1)."
            form.append((p + "Id", String(index)))
            form.append((p + "Message", entry.body))
            for (n, attribute) in entry.attributes.enumerated() {
                let a = p + "MessageAttributes.entry.\(n + 1)."
                form += [
                    (a + "Name", attribute.name), (a + "Value.DataType", "String"),
                    (a + "Value.StringValue", attribute.value),
                ]
            }
            if let group = entry.group { form.append((p + "MessageGroupId", group)) }
            if let id = entry.deduplicationID { form.append((p + "MessageDeduplicationId", id)) }
        }
        return formEncoded(form)
    }

    /// `application/x-www-form-urlencoded` as the AWS SDKs write it: RFC 3986
    /// unreserved characters as they are, space as `+`, the rest percent-encoded.
    public static func formEncoded(_ pairs: [(String, String)]) -> [UInt8] {
        Array(pairs.map { percentEncoded($0.0) + "=" + percentEncoded($0.1) }.joined(separator: "&").utf8)
    }

    static func percentEncoded(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        let digits = Array("0123456789ABCDEF")
        for byte in text.utf8 {
            switch byte {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F, 0x7E:
                out.append(Character(Unicode.Scalar(byte)))
            case 0x20: out.append("+")  // as the AWS SDKs send it (a verifier that re-encodes the form expects it)
            default:
                out.append("%")
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 15)])
            }
        }
        return out
    }
}

/// What the service answered to a request, read from its body. Pure.
public enum AWSAnswer: Equatable, Sendable {
    /// A batch's per-entry results (entry ids are positions).
    case batch(successful: [Int], failed: [Failure])
    /// Another action's success (a probe), with the values asked for.
    case ok(values: [String: String])
    /// The whole request failed.
    case error(code: String, message: String)

    public struct Failure: Equatable, Sendable {
        public var index: Int
        public var code: String
        public var message: String
        /// The request was wrong (for good); false: the service failed (retry).
        public var senderFault: Bool

        public init(index: Int, code: String, message: String, senderFault: Bool) {
            self.index = index
            self.code = code
            self.message = message
            self.senderFault = senderFault
        }
    }

    /// An SQS answer (AWS JSON 1.0): `Successful`/`Failed`, or `__type` and `message` on an error.
    public static func sqs(status: Int, body: String) -> AWSAnswer {
        let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
        // Errors before the service (authentication) come in the query protocol's XML.
        if object == nil && body.hasPrefix("<") { return query(status: status, body: body) }
        guard (200..<300).contains(status) else {
            let type = (object?["__type"] as? String) ?? ""
            let code = type.split(separator: "#").last.map(String.init) ?? ""
            let message = (object?["message"] as? String) ?? (object?["Message"] as? String) ?? body
            return .error(code: code.isEmpty ? "HTTP \(status)" : code, message: shortened(message))
        }
        guard let object else { return .ok(values: [:]) }
        if object["Successful"] != nil || object["Failed"] != nil {
            let successful = ((object["Successful"] as? [[String: Any]]) ?? []).compactMap {
                ($0["Id"] as? String).flatMap(Int.init)
            }
            let failed = ((object["Failed"] as? [[String: Any]]) ?? []).compactMap { f -> Failure? in
                guard let index = (f["Id"] as? String).flatMap(Int.init) else { return nil }
                let fault = (f["SenderFault"] as? Bool) ?? ((f["SenderFault"] as? String) == "true")
                return Failure(
                    index: index, code: (f["Code"] as? String) ?? "",
                    message: shortened((f["Message"] as? String) ?? ""),
                    senderFault: fault)
            }
            return .batch(successful: successful, failed: failed)
        }
        var values: [String: String] = [:]
        if let attributes = object["Attributes"] as? [String: String] { values = attributes }
        return .ok(values: values)
    }

    /// An SNS or STS answer (query protocol, XML).
    public static func query(status: Int, body: String) -> AWSAnswer {
        guard (200..<300).contains(status) else {
            let code = XMLText.first("Code", in: body) ?? "HTTP \(status)"
            return .error(code: code, message: shortened(XMLText.first("Message", in: body) ?? body))
        }
        if let successful = XMLText.first("Successful", raw: true, in: body) {
            let ok = XMLText.all("member", in: successful).compactMap { XMLText.first("Id", in: $0).flatMap(Int.init) }
            let failed = XMLText.all("member", in: XMLText.first("Failed", raw: true, in: body) ?? "").compactMap {
                member -> Failure? in
                guard let index = XMLText.first("Id", in: member).flatMap(Int.init) else { return nil }
                return Failure(
                    index: index, code: XMLText.first("Code", in: member) ?? "",
                    message: shortened(XMLText.first("Message", in: member) ?? ""),
                    senderFault: XMLText.first("SenderFault", in: member) == "true")
            }
            return .batch(successful: ok, failed: failed)
        }
        var values: [String: String] = [:]
        for entry in XMLText.all("entry", in: body) {
            if let key = XMLText.first("key", in: entry) { values[key] = XMLText.first("value", in: entry) ?? "" }
        }
        for name in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
            if let value = XMLText.first(name, in: body) { values[name] = value }
        }
        return .ok(values: values)
    }

    static func shortened(_ text: String) -> String {
        let line = text.replacingOccurrences(of: "\n", with: " ")
        return line.count > 300 ? String(line.prefix(300)) + "…" : line
    }
}

/// What a failed request means for the records it carried. Pure.
public enum AWSVerdict: Equatable, Sendable {
    /// The service is busy or failed: send them again, in order, after a backoff.
    case retry
    /// The credentials expired, or the service was not reached: take the link down (a new one gets fresh credentials).
    case lostLink
    /// Not allowed, or no such queue or topic: no retry and no dead-letter queue helps; stop.
    case fatal
    /// The request itself is wrong (an entry the service refuses): look for the entry, then refuse it.
    case refuse

    public static func of(status: Int, code: String) -> AWSVerdict {
        let c = code.lowercased()
        if status == 429 || status >= 500 || c.contains("throttl") || c.contains("internal")
            || c.contains("unavailable") || c == "kmsthrottlingexception" || c == "requestthrottled"
            || c == "overlimit" || c == "toomanyrequestsexception"
        {
            return .retry
        }
        if c.contains("expired") || c == "requesttimetooskewed" || c == "signaturedoesnotmatch" {
            return .lostLink
        }
        if c.contains("accessdenied") || c == "authorizationerror" || c == "invalidclienttokenid"
            || c == "unrecognizedclientexception" || c == "missingauthenticationtoken" || c == "incompletesignature"
            || c.contains("nonexistentqueue") || c.contains("queuedoesnotexist") || c == "notfound"
            || c == "notfoundexception" || c.contains("kms") || c == "invalidsecurity" || c == "optinrequired"
        {
            return .fatal
        }
        if status == 403 || status == 401 { return .fatal }
        if status == 404 { return .fatal }
        return .refuse
    }
}

/// Just enough XML for the query protocol's answers: the text of elements by
/// name, entities decoded. Pure; no DTDs, no namespaces by prefix.
enum XMLText {
    /// The text of the first `<name>…</name>` (or `<name attr="…">`); `raw` keeps inner markup.
    static func first(_ name: String, raw: Bool = false, in text: String) -> String? {
        all(name, raw: raw, in: text, limit: 1).first
    }

    static func all(_ name: String, raw: Bool = true, in text: String, limit: Int = .max) -> [String] {
        var out: [String] = []
        var rest = text[...]
        while out.count < limit, let open = rest.range(of: "<" + name) {
            let after = rest[open.upperBound...]
            guard let first = after.first, first == ">" || first == " " || first == "/",
                let close = after.firstIndex(of: ">")
            else {
                rest = after
                continue
            }
            if close > after.startIndex && after[after.index(before: close)] == "/" {  // <name/>
                out.append("")
                rest = after[after.index(after: close)...]
                continue
            }
            let inner = after[after.index(after: close)...]
            guard let end = inner.range(of: "</" + name + ">") else { break }
            let content = String(inner[..<end.lowerBound])
            out.append(raw ? content : decoded(content))
            rest = inner[end.upperBound...]
        }
        return out
    }

    static func decoded(_ text: String) -> String {
        guard text.contains("&") else { return text }
        var out = ""
        var rest = text[...]
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].firstIndex(of: ";") else { break }
            let entity = rest[rest.index(after: amp)..<semi]
            switch entity {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                let number =
                    entity.hasPrefix("#x")
                    ? UInt32(entity.dropFirst(2), radix: 16) : entity.hasPrefix("#") ? UInt32(entity.dropFirst()) : nil
                if let number, let scalar = Unicode.Scalar(number) {
                    out.unicodeScalars.append(scalar)
                } else {
                    out += "&" + entity + ";"
                }
            }
            rest = rest[rest.index(after: semi)...]
        }
        return out + rest
    }
}
