/// A destination name built from an event: a NATS subject, an AMQP routing key.
///
/// `{topic}` is the event's topic as the router chose it (`outbox.event.<aggregatetype>`
/// by default), `{key}` its aggregate id, `{type}` its type; anything else is
/// copied as it is. An unknown placeholder is refused when the template is parsed,
/// so a typo is a start-up error and not a subject no stream covers.
public struct DestinationTemplate: Sendable, Hashable, CustomStringConvertible {
    enum Part: Sendable, Hashable {
        case literal(String)
        case topic, key, type
    }

    let parts: [Part]
    public let description: String

    public static let placeholders = ["{topic}", "{key}", "{type}"]

    public init(_ text: String) throws(TemplateError) {
        var parts: [Part] = []
        var literal = ""
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{") {
            literal += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw TemplateError(template: text, problem: "has a \"{\" without its \"}\"")
            }
            let name = rest[rest.index(after: open)..<close]
            let part: Part
            switch name {
            case "topic": part = .topic
            case "key": part = .key
            case "type": part = .type
            default:
                throw TemplateError(
                    template: text,
                    problem: "names {\(name)}; the placeholders are \(Self.placeholders.joined(separator: ", "))")
            }
            if !literal.isEmpty { parts.append(.literal(literal)) }
            literal = ""
            parts.append(part)
            rest = rest[rest.index(after: close)...]
        }
        literal += rest
        if !literal.isEmpty { parts.append(.literal(literal)) }
        if parts.isEmpty { throw TemplateError(template: text, problem: "is empty") }
        self.parts = parts
        description = text
    }

    /// The template filled in with the event's fields.
    public func render(_ event: OutboxEvent) -> String {
        var out = ""
        for part in parts {
            switch part {
            case .literal(let text): out += text
            case .topic: out += event.topic
            case .key: out += event.key
            case .type: out += event.type
            }
        }
        return out
    }

    /// True when the template names no field: every event gets the same name.
    public var isConstant: Bool { parts.allSatisfy { if case .literal = $0 { true } else { false } } }
}

public struct TemplateError: Error, Sendable, CustomStringConvertible {
    public var template: String
    public var problem: String
    public var description: String { "template \"\(template)\" \(problem)" }
}
