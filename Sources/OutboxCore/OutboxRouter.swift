import Foundation
import PGOutput

/// How outbox rows and messages become events. Defaults follow Debezium's
/// outbox event router, so tables built for it work unchanged.
public struct RoutingConfig: Sendable, Equatable {
    public var schema = "public"
    public var table = "outbox"
    public var idColumn = "id"
    public var aggregateTypeColumn = "aggregatetype"
    public var aggregateIDColumn = "aggregateid"
    public var typeColumn = "type"
    public var payloadColumn = "payload"
    /// A JSON object column whose members become headers; nil for none.
    public var headersColumn: String? = "headers"
    /// Extra columns sent as headers: (column, header name).
    public var headerColumns: [HeaderColumn] = []
    /// `{aggregatetype}` and `{type}` are replaced by the row's values.
    public var topicTemplate = "outbox.event.{aggregatetype}"
    /// A NULL payload becomes a tombstone (key, null value), as with Debezium's EventRouter
    /// and StringConverter; false: the 4-byte JSON text `null` (`--null-payload json-null`).
    public var tombstones = true
    /// `route.tombstone.on.empty.payload`: an empty or blank payload is a tombstone too.
    public var tombstoneOnEmptyPayload = false
    /// `route.topic.regex` and `route.topic.replacement` (Java syntax) applied to the
    /// routing column's value; nil: `topicTemplate`.
    public var topicRoute: TopicRoute?
    /// How a value is encoded: `string` (Kafka Connect's StringConverter: the payload's
    /// bytes as stored) or `json` (JsonConverter with `schemas.enable=false`).
    public enum ValueEncoding: String, Sendable, CaseIterable { case string, json }
    public var valueEncoding = ValueEncoding.string
    /// `table.expand.json.payload`: with `json` encoding, a JSON payload is written as
    /// JSON, not as a string holding it.
    public var expandJSONPayload = false
    /// `table.json.payload.null.behavior`: `ignore` (default) leaves members whose value
    /// is null out of an expanded payload; `optional_bytes` keeps them.
    public var keepNullMembers = false
    /// `table.fields.additional.placement` entries placed in the envelope: with `json`
    /// encoding the value becomes `{"payload":…, "<name>":<column>…}`.
    public var envelopeColumns: [HeaderColumn] = []
    /// `table.op.invalid.behavior`: what an UPDATE of an outbox row does (never an event).
    public enum InvalidOperation: String, Sendable, CaseIterable { case warn, error, fatal }
    public var updateBehavior = InvalidOperation.warn
    /// Transactional logical decoding messages with this prefix are events; nil to ignore all messages.
    public var messagePrefix: String? = "outbox"

    public struct HeaderColumn: Sendable, Equatable {
        public var column: String
        public var header: String
        public init(column: String, header: String) {
            self.column = column
            self.header = header
        }
    }

    /// The columns events are made of (headers and extra columns included).
    public var requiredColumns: [String] {
        [idColumn, aggregateTypeColumn, aggregateIDColumn, typeColumn, payloadColumn]
            + (headersColumn.map { [$0] } ?? [])
            + headerColumns.map(\.column) + envelopeColumns.map(\.column)
    }

    public init() {}

    /// Problems with the configuration itself, found before connecting.
    public func validate() -> [String] {
        var problems: [String] = []
        for (name, value) in [
            ("table", table), ("schema", schema), ("id column", idColumn),
            ("aggregate type column", aggregateTypeColumn), ("aggregate id column", aggregateIDColumn),
            ("type column", typeColumn), ("payload column", payloadColumn),
        ] where value.isEmpty {
            problems.append("\(name) must not be empty")
        }
        if topicTemplate.isEmpty { problems.append("topic template must not be empty") }
        let stripped = topicTemplate.replacingOccurrences(of: "{aggregatetype}", with: "a")
            .replacingOccurrences(of: "{type}", with: "t")
        if stripped.contains("{") || stripped.contains("}") {
            problems.append(
                "topic template \"\(topicTemplate)\" has an unknown placeholder; use {aggregatetype} and {type}"
            )
        }
        if let problem = topicRoute?.problem { problems.append(problem) }
        if !envelopeColumns.isEmpty && valueEncoding == .string {
            problems.append(
                "envelope placement (\(envelopeColumns.map(\.column).joined(separator: ", "))) needs the json value encoding: under StringConverter Debezium writes the envelope as Java's Struct{…} text, which no consumer parses"
            )
        }
        if expandJSONPayload && valueEncoding == .string {
            problems.append(
                "expanding the JSON payload needs the json value encoding (under StringConverter the payload is passed as stored)"
            )
        }
        if let prefix = messagePrefix, prefix.isEmpty {
            problems.append("message prefix must not be empty")
        }
        return problems
    }
}

/// A row or message that cannot become an event. It names the row and LSN, so
/// the relay can stop (or dead-letter it) before confirming its transaction.
public struct PoisonEvent: Error, Sendable, Equatable, CustomStringConvertible {
    /// The row's id when it could be read.
    public var id: String?
    public var source: String
    public var lsn: LSN
    public var reason: String
    /// What raw bytes there were, for a dead-letter record.
    public var payload: [UInt8]?

    public var description: String {
        "cannot relay \(source) row id=\(id.map { "\"\($0)\"" } ?? "<unknown>")\(lsn == .zero ? "" : " in the transaction committed at LSN \(lsn)"): \(reason)"
    }
}

/// Turns decoded changes into events. Pure: knows nothing of sockets or sinks.
///
/// The column layout of the outbox table is looked up by name whenever a
/// Relation message arrives, so `ALTER TABLE` mid-stream (adding, reordering
/// or dropping other columns) is followed.
public struct OutboxRouter: Sendable {
    public let config: RoutingConfig

    struct Layout: Sendable {
        var id: Int?, aggregateType: Int?, aggregateID: Int?, type: Int?, payload: Int?, headers: Int?
        var payloadType: UInt32 = 0
        var extra: [(index: Int, header: String)] = []
        var envelope: [(index: Int, name: String, typeOID: UInt32)] = []
        var missing: [String] = []
    }

    /// Why a value cannot be used.
    struct Failure: Error {
        var reason: String
    }

    static func fail<T>(_ reason: String) -> Result<T, Failure> { .failure(Failure(reason: reason)) }

    /// Relation OID → the outbox layout; absent for other tables.
    private var layouts: [UInt32: Layout] = [:]

    /// The topic template split once into literals and placeholders.
    enum TemplatePart: Sendable, Equatable {
        case literal(String)
        case aggregateType, type
    }
    private let template: [TemplatePart]
    /// `route.topic.regex`, compiled; topics already computed, per routed value.
    private let topicRegex: CompiledRegex?
    /// `Regex<AnyRegexOutput>` is not `Sendable` only because its output type holds
    /// `Any`; the compiled program is immutable and only read here.
    struct CompiledRegex: @unchecked Sendable { let regex: Regex<AnyRegexOutput> }
    private var topicCache: [String: String] = [:]

    public init(config: RoutingConfig) {
        self.config = config
        self.template = Self.compile(config.topicTemplate)
        self.topicRegex = config.topicRoute.flatMap { (try? Regex($0.regex)).map(CompiledRegex.init) }
    }

    static func compile(_ template: String) -> [TemplatePart] {
        var parts: [TemplatePart] = []
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            let tail = rest[open...]
            let placeholder: TemplatePart? =
                tail.hasPrefix("{aggregatetype}") ? .aggregateType : tail.hasPrefix("{type}") ? .type : nil
            guard let placeholder else {
                parts.append(.literal(String(rest[...open])))
                rest = rest[rest.index(after: open)...]
                continue
            }
            if open > rest.startIndex { parts.append(.literal(String(rest[..<open]))) }
            parts.append(placeholder)
            rest = tail.dropFirst(placeholder == .aggregateType ? 15 : 6)
        }
        if !rest.isEmpty { parts.append(.literal(String(rest))) }
        return parts
    }

    /// The topic: `route.topic.regex`/`replacement` when configured (cached per value), else the template.
    mutating func topic(aggregateType: String, type: String) throws -> String {
        guard let route = config.topicRoute, let regex = topicRegex else {
            return templateTopic(aggregateType: aggregateType, type: type)
        }
        if let cached = topicCache[aggregateType] { return cached }
        let topic = try route.topic(for: aggregateType, compiled: regex.regex)
        if topicCache.count >= 4096 { topicCache.removeAll(keepingCapacity: true) }
        topicCache[aggregateType] = topic
        return topic
    }

    func templateTopic(aggregateType: String, type: String) -> String {
        var topic = ""
        for part in template {
            switch part {
            case .literal(let text): topic += text
            case .aggregateType: topic += aggregateType
            case .type: topic += type
            }
        }
        return topic
    }

    /// Records a relation's columns. Only the configured outbox table gets a layout.
    public mutating func relationChanged(_ relation: Relation) {
        guard relation.namespace == config.schema && relation.name == config.table else {
            layouts[relation.oid] = nil
            return
        }
        let names = relation.columns.map(\.name)
        var layout = Layout()
        func find(_ column: String, required: Bool) -> Int? {
            let index = names.firstIndex(of: column)
            if index == nil && required { layout.missing.append(column) }
            return index
        }
        layout.id = find(config.idColumn, required: true)
        layout.aggregateType = find(config.aggregateTypeColumn, required: true)
        layout.aggregateID = find(config.aggregateIDColumn, required: true)
        layout.type = find(config.typeColumn, required: true)
        layout.payload = find(config.payloadColumn, required: true)
        layout.headers = config.headersColumn.flatMap { find($0, required: false) }
        layout.payloadType = layout.payload.map { relation.columns[$0].typeOID } ?? 0
        for extra in config.headerColumns {
            if let index = find(extra.column, required: true) {
                layout.extra.append((index, extra.header))
            }
        }
        for field in config.envelopeColumns {
            if let index = find(field.column, required: true) {
                layout.envelope.append((index, field.header, relation.columns[index].typeOID))
            }
        }
        layouts[relation.oid] = layout
    }

    /// Forget everything (a new stream re-sends Relation messages).
    public mutating func reset() { layouts.removeAll() }

    public func isOutbox(_ relationOID: UInt32) -> Bool { layouts[relationOID] != nil }

    /// An inserted row: nil if it is not in the outbox table, else the event or why it cannot be one.
    public mutating func route(
        _ insert: Insert, lsn: LSN, commitTime: PostgresTimestamp
    ) -> Result<
        OutboxEvent, PoisonEvent
    >? {
        guard let layout = layouts[insert.relationOID] else { return nil }
        let row = insert.newTuple
        let source = "\(config.schema).\(config.table)"
        let rowID = layout.id.flatMap { row.bytes(at: $0) }.map { String(decoding: $0, as: UTF8.self) }
        func poison(_ reason: String) -> Result<OutboxEvent, PoisonEvent> {
            .failure(
                PoisonEvent(
                    id: rowID, source: source, lsn: lsn, reason: reason,
                    payload: layout.payload.flatMap { row.bytes(at: $0) }.map(Array.init)))
        }
        if !layout.missing.isEmpty {
            return poison(
                "table \(source) has no column \(layout.missing.map { "\"\($0)\"" }.joined(separator: ", ")) (configured column names do not match the table)"
            )
        }
        func text(_ index: Int?, _ name: String) -> Result<String, Failure> {
            guard let index else { return Self.fail("column \"\(name)\" is missing") }
            switch row.columns[index] {
            case .null: return Self.fail("column \"\(name)\" is NULL")
            case .unchanged: return Self.fail("column \"\(name)\" was not sent (unchanged TOAST value)")
            case .binary: return Self.fail("column \"\(name)\" arrived in binary format")
            case .text(let range):
                guard let value = UTF8Text.string(row.storage[range]) else {
                    return Self.fail("column \"\(name)\" is not valid UTF-8")
                }
                return .success(value)
            }
        }
        let id: String
        let aggregateType: String
        let key: String
        let type: String
        switch (
            text(layout.id, config.idColumn), text(layout.aggregateType, config.aggregateTypeColumn),
            text(layout.aggregateID, config.aggregateIDColumn), text(layout.type, config.typeColumn)
        ) {
        case (.success(let a), .success(let b), .success(let c), .success(let d)):
            (id, aggregateType, key, type) = (a, b, c, d)
        case (.failure(let e), _, _, _), (_, .failure(let e), _, _), (_, _, .failure(let e), _),
            (_, _, _, .failure(let e)):
            return poison(e.reason)
        }

        var payload: [UInt8]?
        var format = OutboxEvent.PayloadFormat.json
        if let index = layout.payload {
            switch row.columns[index] {
            case .null: payload = nil
            case .unchanged:
                return poison("column \"\(config.payloadColumn)\" was not sent (unchanged TOAST value)")
            case .binary: return poison("column \"\(config.payloadColumn)\" arrived in binary format")
            case .text(let range):
                switch layout.payloadType {
                case 3802, 114:
                    format = .json  // jsonb, json: already JSON text
                    payload = Array(row.storage[range])
                case 17:  // bytea: text form is \x followed by hex
                    guard let bytes = Self.decodeByteaHex(row.storage[range]) else {
                        return poison("column \"\(config.payloadColumn)\" is bytea in an unexpected text form")
                    }
                    format = .bytes
                    payload = bytes
                default:
                    guard UTF8Text.string(row.storage[range]) != nil else {
                        return poison("column \"\(config.payloadColumn)\" is not valid UTF-8")
                    }
                    format = .text
                    payload = Array(row.storage[range])
                }
            }
        }

        var headers: [(name: String, value: String)] = [("id", id), ("type", type)]
        if let index = layout.headers, let raw = row.bytes(at: index) {
            switch Self.headerMembers(Array(raw), column: config.headersColumn ?? "headers", reserved: reservedHeaders)
            {
            case .success(let members):
                headers += members.kept
                droppedHeaderMembers += members.dropped
            case .failure(let failure): return poison(failure.reason)
            }
        }
        for extra in layout.extra {
            if case .text(let range) = row.columns[extra.index] {
                guard let value = UTF8Text.string(row.storage[range]) else {
                    return poison("column for header \"\(extra.header)\" is not valid UTF-8")
                }
                headers.append((extra.header, value))
            }
        }
        var envelope: [(name: String, json: [UInt8])] = []
        for field in layout.envelope {
            switch Self.envelopeValue(row.columns[field.index], storage: row.storage, typeOID: field.typeOID) {
            case .success(let json): envelope.append((field.name, json))
            case .failure(let failure): return poison("column for envelope field \"\(field.name)\": \(failure.reason)")
            }
        }
        return makeEvent(
            id: id, aggregateType: aggregateType, key: key, type: type, payload: payload, format: format,
            headers: headers, envelope: envelope, lsn: lsn, commitTime: commitTime, poison: poison)
    }

    /// A column's value as the JsonConverter writes the type Debezium gives it:
    /// integers and floats as numbers, booleans, text-like types (text, varchar,
    /// char, uuid, json, jsonb) as strings, NULL as null. Other types are refused
    /// rather than guessed (Debezium's mappings for them depend on its settings).
    static func envelopeValue(_ column: TupleData.Column, storage: [UInt8], typeOID: UInt32) -> Result<[UInt8], Failure>
    {
        guard case .text(let range) = column else {
            if case .null = column { return .success(Array("null".utf8)) }
            return fail("not sent as text (unchanged TOAST value or binary format)")
        }
        let raw = storage[range]
        var out: [UInt8] = []
        switch typeOID {
        case 20, 21, 23: return .success(Array(raw))
        case 16: return .success(Array((raw.first == 116 ? "true" : "false").utf8))
        case 701:
            guard let double = Double(String(decoding: raw, as: UTF8.self)), double.isFinite else {
                return fail("not a finite number")
            }
            return .success(Array(DebeziumEncoding.javaDouble(double).utf8))
        case 25, 1043, 1042, 2950, 114, 3802, 19:
            DebeziumEncoding.appendJacksonString(raw, to: &out)
            return .success(out)
        default:
            return fail(
                "type OID \(typeOID) has no envelope encoding here; use int2/4/8, float8, bool or a text-like type")
        }
    }

    /// A logical decoding message: nil if its prefix is not ours or it is not
    /// transactional; else the event or why its content cannot be one.
    public mutating func route(
        _ message: LogicalMessage, lsn: LSN, commitTime: PostgresTimestamp
    ) -> Result<
        OutboxEvent, PoisonEvent
    >? {
        guard let prefix = config.messagePrefix, message.prefix == prefix, message.isTransactional
        else { return nil }
        let content = message.content
        let source = "logical message with prefix \"\(prefix)\" (at \(message.lsn))"
        var rowID: String?
        func poison(_ reason: String) -> Result<OutboxEvent, PoisonEvent> {
            .failure(PoisonEvent(id: rowID, source: source, lsn: lsn, reason: reason, payload: content))
        }
        let members: [JSONText.Member]
        do { members = try JSONText.objectMembers(content) } catch {
            return poison("content is not a JSON object: \(error)")
        }
        func member(_ name: String) -> JSONText.Member? { members.last { $0.name == name } }
        func text(_ name: String) -> Result<String, Failure> {
            guard let m = member(name) else { return Self.fail("member \"\(name)\" is missing") }
            switch m.kind {
            case .string:
                do { return .success(try JSONText.stringValue(content, m.range)) } catch {
                    return Self.fail("member \"\(name)\": \(error)")
                }
            case .number: return .success(String(decoding: content[m.range], as: UTF8.self))
            case .null: return Self.fail("member \"\(name)\" is null")
            default: return Self.fail("member \"\(name)\" must be a string or number")
            }
        }
        if case .success(let id) = text(config.idColumn) { rowID = id }
        let id: String
        let aggregateType: String
        let key: String
        let type: String
        switch (
            text(config.idColumn), text(config.aggregateTypeColumn), text(config.aggregateIDColumn),
            text(config.typeColumn)
        ) {
        case (.success(let a), .success(let b), .success(let c), .success(let d)):
            (id, aggregateType, key, type) = (a, b, c, d)
        case (.failure(let e), _, _, _), (_, .failure(let e), _, _), (_, _, .failure(let e), _),
            (_, _, _, .failure(let e)):
            return poison(e.reason)
        }
        var payload: [UInt8]?
        if let m = member(config.payloadColumn), m.kind != .null { payload = Array(content[m.range]) }
        var headers: [(name: String, value: String)] = [("id", id), ("type", type)]
        if let name = config.headersColumn, let m = member(name), m.kind != .null {
            guard m.kind == .object else { return poison("member \"\(name)\" is not a JSON object") }
            switch Self.headerMembers(Array(content[m.range]), column: name, reserved: reservedHeaders) {
            case .success(let more):
                headers += more.kept
                droppedHeaderMembers += more.dropped
            case .failure(let failure): return poison(failure.reason)
            }
        }
        for extra in config.headerColumns {
            guard let m = member(extra.column), m.kind != .null else { continue }
            let value =
                m.kind == .string
                ? ((try? JSONText.stringValue(content, m.range)) ?? "")
                : String(decoding: content[m.range], as: UTF8.self)
            headers.append((extra.header, value))
        }
        let envelope = config.envelopeColumns.map { field in
            (name: field.header, json: member(field.column).map { Array(content[$0.range]) } ?? Array("null".utf8))
        }
        return makeEvent(
            id: id, aggregateType: aggregateType, key: key, type: type, payload: payload, format: .json,
            headers: headers, envelope: envelope, lsn: lsn, commitTime: commitTime, poison: poison)
    }

    private mutating func makeEvent(
        id: String, aggregateType: String, key: String, type: String, payload: [UInt8]?,
        format: OutboxEvent.PayloadFormat, headers: [(name: String, value: String)],
        envelope: [(name: String, json: [UInt8])], lsn: LSN,
        commitTime: PostgresTimestamp, poison: (String) -> Result<OutboxEvent, PoisonEvent>
    ) -> Result<OutboxEvent, PoisonEvent> {
        let topic: String
        do { topic = try self.topic(aggregateType: aggregateType, type: type) } catch { return poison("\(error)") }
        if let problem = Self.topicProblem(topic) { return poison(problem) }
        // Debezium: `payload == null || payload.toString().trim().isEmpty()` with
        // route.tombstone.on.empty.payload; Java's trim() drops bytes ≤ 0x20.
        let blank = payload?.allSatisfy { $0 <= 32 } ?? true
        let tombstone =
            (payload == nil && config.tombstones && envelope.isEmpty) || (blank && config.tombstoneOnEmptyPayload)
        var value = payload
        var valueFormat = format
        if !tombstone && config.valueEncoding == .json {
            value = encodeJSON(payload, format: format, envelope: envelope)
            valueFormat = .json
        }
        return .success(
            OutboxEvent(
                id: id, topic: topic, key: key, type: type, payload: value, payloadFormat: valueFormat,
                headers: headers, tombstone: tombstone, lsn: lsn, commitTime: commitTime))
    }

    /// The value as Kafka Connect's JsonConverter (`schemas.enable=false`) writes
    /// what the EventRouter built: the payload as a JSON string (bytea as base64),
    /// or expanded with `table.expand.json.payload`; inside `{"payload":…}` with the
    /// envelope fields after it when any are placed there.
    func encodeJSON(
        _ payload: [UInt8]?, format: OutboxEvent.PayloadFormat, envelope: [(name: String, json: [UInt8])]
    ) -> [UInt8] {
        var encoded: [UInt8] = []
        if let payload {
            switch format {
            case .bytes:
                encoded.append(34)
                encoded.append(contentsOf: Array(Base64.encode(payload).utf8))
                encoded.append(34)
            case .json, .text:
                if config.expandJSONPayload,
                    let expanded = DebeziumEncoding.expand(payload, dropNullMembers: !config.keepNullMembers)
                {
                    encoded = expanded
                } else {
                    DebeziumEncoding.appendJacksonString(payload, to: &encoded)
                }
            }
        } else {
            encoded = Array("null".utf8)
        }
        guard !envelope.isEmpty else { return encoded }
        var out = Array(#"{"payload":"#.utf8)
        out += encoded
        for field in envelope {
            out.append(44)
            DebeziumEncoding.appendJacksonString(Array(field.name.utf8), to: &out)
            out.append(58)
            out += field.json
        }
        out.append(125)
        return out
    }

    /// Kafka's rules for topic names: 1–249 of `[A-Za-z0-9._-]`, not `.` or `..`.
    public static func topicProblem(_ topic: String) -> String? {
        let valid = topic.utf8.allSatisfy {
            (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 46
                || $0 == 95 || $0 == 45
        }
        if topic.isEmpty || topic.utf8.count > 249 || !valid || topic == "." || topic == ".." {
            return "topic \"\(topic)\" is not a valid topic name (1–249 characters of A-Z a-z 0-9 . _ -)"
        }
        return nil
    }

    /// Header names the relay sets itself: `id`, `type`, `lsn` (the Kafka sink adds
    /// it) and the configured extra columns' headers. A `headers` member with one of
    /// these names would duplicate it (Java's `lastHeader("id")` would return the
    /// member), so it is dropped and counted, never passed on.
    public var reservedHeaders: Set<String> {
        Set(["id", "type", "lsn"] + config.headerColumns.map(\.header))
    }

    /// `headers` members dropped because they used a reserved name, since the router was made.
    public private(set) var droppedHeaderMembers = 0

    /// Members of a JSON object as headers: strings unescaped, other values as
    /// JSON text; JSON `null` means no headers; members with a reserved name are
    /// dropped (counted in `dropped`). Anything but an object or null is a poison row.
    static func headerMembers(
        _ raw: [UInt8], column: String, reserved: Set<String>
    ) -> Result<(kept: [(name: String, value: String)], dropped: Int), Failure> {
        let first = raw.first { $0 != 32 && $0 != 9 && $0 != 10 && $0 != 13 }
        if first == 110, String(decoding: raw, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "null"
        {
            return .success(([], 0))
        }
        let kind: String? =
            switch first {
            case 91: "an array"
            case 34: "a string"
            case 116, 102: "a boolean"
            case .some(let c) where c == 45 || (48...57).contains(c): "a number"
            default: nil
            }
        if let kind { return Self.fail("column \"\(column)\" must be a JSON object or null, not \(kind)") }
        do {
            var kept: [(name: String, value: String)] = []
            var dropped = 0
            for m in try JSONText.objectMembers(raw) {
                if reserved.contains(m.name) {
                    dropped += 1
                    continue
                }
                kept.append(
                    (
                        m.name,
                        m.kind == .string
                            ? try JSONText.stringValue(raw, m.range) : String(decoding: raw[m.range], as: UTF8.self)
                    ))
            }
            return .success((kept, dropped))
        } catch {
            return Self.fail("column \"\(column)\" is not a JSON object: \(error)")
        }
    }

    /// bytea's text form (`\\x` and hex digits) as bytes; nil when it is not one.
    public static func decodeByteaHex(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard text.count >= 2, text.first == 92, text[text.startIndex + 1] == 120, text.count % 2 == 0
        else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity((text.count - 2) / 2)
        var i = text.startIndex + 2
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        while i < text.endIndex {
            guard let hi = nibble(text[i]), let lo = nibble(text[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// `schema.table`, `table`, or either part double-quoted as in SQL (`"Sales"."Outbox"`,
/// `"my.schema".outbox`; `""` inside quotes is one `"`). Quoted parts are taken
/// exactly; unquoted ones as written (they are matched against the catalog's
/// names). nil when it is not one or two non-empty parts.
public func parseQualifiedTableName(_ text: String) -> (schema: String, name: String)? {
    var parts: [String] = []
    var current = ""
    var quoted = false
    var wasQuoted = false
    var characters = Array(text)[...]
    while let c = characters.popFirst() {
        if quoted {
            if c == "\"" {
                if characters.first == "\"" {
                    current.append("\"")
                    characters = characters.dropFirst()
                } else {
                    quoted = false
                }
            } else {
                current.append(c)
            }
        } else if c == "\"" {
            guard current.isEmpty else { return nil }  // a quote in the middle of a name
            quoted = true
            wasQuoted = true
        } else if c == "." {
            guard !current.isEmpty else { return nil }
            parts.append(current)
            current = ""
            wasQuoted = false
        } else {
            guard !wasQuoted else { return nil }  // text after a closing quote
            current.append(c)
        }
    }
    guard !quoted, !current.isEmpty else { return nil }
    parts.append(current)
    switch parts.count {
    case 1: return ("public", parts[0])
    case 2: return (parts[0], parts[1])
    default: return nil
    }
}
