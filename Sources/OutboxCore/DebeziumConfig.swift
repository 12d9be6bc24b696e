import Foundation

/// A Debezium PostgreSQL connector configuration — the `.properties` form or
/// the JSON posted to Kafka Connect's REST API — translated into the relay's
/// own options (`--debezium-config`). Pure: text in, options and problems out.
///
/// Every key is either translated, known to have no effect on the outbox
/// records (listed, so the operator sees it), or a problem: together the
/// problems make one start-up error. Values are never quoted in a problem
/// (the file holds the database password).
public struct DebeziumConfig: Sendable, Equatable {
    /// Relay options (long names without `--`) and their values; repeatable
    /// options appear once per value.
    public var options: [(name: String, value: String)] = []
    /// Keys accepted because they change nothing about the outbox records.
    public var ignored: [String] = []
    /// Keys or values the relay cannot honour, each with why.
    public var problems: [String] = []

    public static func == (lhs: DebeziumConfig, rhs: DebeziumConfig) -> Bool {
        lhs.options.elementsEqual(rhs.options, by: { $0 == $1 }) && lhs.ignored == rhs.ignored
            && lhs.problems == rhs.problems
    }

    public struct SyntaxError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The key/value pairs of a file: JSON when it starts with `{` (a flat object, or
    /// Kafka Connect's `{"name": …, "config": {…}}`), else Java properties.
    public static func pairs(_ text: String) throws(SyntaxError) -> [String: String] {
        let trimmed = text.drop { $0.isWhitespace || $0 == "\u{FEFF}" }
        if trimmed.first == "{" {
            guard let object = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw SyntaxError(description: "not a JSON object")
            }
            let config = (object["config"] as? [String: Any]) ?? object
            var pairs: [String: String] = [:]
            for (key, value) in config {
                switch value {
                case let string as String: pairs[key] = string
                case let number as NSNumber:
                    let isBool = String(cString: number.objCType) == "c"
                    pairs[key] = isBool ? (number.boolValue ? "true" : "false") : number.stringValue
                default: throw SyntaxError(description: "\"\(key)\" is not a string, number or boolean")
                }
            }
            return pairs
        }
        return properties(String(trimmed))
    }

    /// Java's `Properties.load`: `key=value`, `key: value` or `key value`; `#` and `!`
    /// comments; a trailing `\` continues the line; `\t \n \r \f \uXXXX` and `\x` escapes.
    public static func properties(_ text: String) -> [String: String] {
        var logical: [String] = []
        var pending = ""
        for raw in text.replacingOccurrences(of: "\r\n", with: "\n").split(
            separator: "\n", omittingEmptySubsequences: false)
        {
            let line =
                pending.isEmpty
                ? raw.drop { $0 == " " || $0 == "\t" || $0 == "\u{C}" } : raw.drop { $0 == " " || $0 == "\t" }
            if pending.isEmpty && (line.isEmpty || line.first == "#" || line.first == "!") { continue }
            let trailing = line.reversed().prefix { $0 == "\\" }.count
            if trailing % 2 == 1 {
                pending += line.dropLast()
                continue
            }
            logical.append(pending + line)
            pending = ""
        }
        if !pending.isEmpty { logical.append(pending) }
        var pairs: [String: String] = [:]
        for line in logical {
            var key = ""
            var value = ""
            var chars = Array(line)[...]
            var inKey = true
            while let c = chars.popFirst() {
                if c == "\\" {
                    guard let e = chars.popFirst() else { break }
                    var decoded = e
                    switch e {
                    case "t": decoded = "\t"
                    case "n": decoded = "\n"
                    case "r": decoded = "\r"
                    case "f": decoded = "\u{C}"
                    case "u":
                        let hex = String(chars.prefix(4))
                        if hex.count == 4, let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code) {
                            decoded = Character(scalar)
                            chars = chars.dropFirst(4)
                        }
                    default: break
                    }
                    if inKey { key.append(decoded) } else { value.append(decoded) }
                    continue
                }
                if inKey && (c == "=" || c == ":" || c == " " || c == "\t") {
                    inKey = false
                    // Separator: whitespace, then at most one = or :, then whitespace.
                    while let next = chars.first, next == " " || next == "\t" { chars = chars.dropFirst() }
                    if c != "=" && c != ":", let next = chars.first, next == "=" || next == ":" {
                        chars = chars.dropFirst()
                        while let next = chars.first, next == " " || next == "\t" { chars = chars.dropFirst() }
                    }
                    continue
                }
                if inKey { key.append(c) } else { value.append(c) }
            }
            pairs[key] = value
        }
        return pairs
    }

    static let eventRouter = "io.debezium.transforms.outbox.EventRouter"

    /// Keys that change nothing about outbox records (the EventRouter drops
    /// deletes; snapshots and heartbeats concern other topics; the rest is
    /// Connect's or Debezium's own bookkeeping).
    static func isInert(_ key: String) -> Bool {
        let exact: Set<String> = [
            "name", "tasks.max", "topic.prefix", "database.server.name", "tombstones.on.delete", "slot.drop.on.stop",
            "publication.autocreate.mode", "snapshot.mode", "poll.interval.ms", "max.batch.size", "max.queue.size",
            "max.queue.size.in.bytes", "status.update.interval.ms", "errors.max.retries",
            "retriable.restart.connector.wait.ms",
            "include.unknown.datatypes", "provide.transaction.metadata", "skipped.operations",
            "event.processing.failure.handling.mode",
            "offset.flush.interval.ms", "offset.storage", "offset.storage.file.filename", "offset.storage.topic",
            "schema.name.adjustment.mode", "field.name.adjustment.mode", "time.precision.mode",
            "interval.handling.mode",
            "hstore.handling.mode", "decimal.handling.mode", "key.converter.schemas.enable", "slot.stream.params",
            "database.tcpKeepAlive", "connector.class",
        ]
        let prefixes = [
            "heartbeat.", "schema.history.internal.", "offset.", "signal.", "notification.", "snapshot.", "errors.",
            "column.", "message.key.columns",
        ]
        return exact.contains(key) || prefixes.contains { key.hasPrefix($0) }
    }

    /// Translates a connector configuration's pairs.
    public static func translate(_ pairs: [String: String]) -> DebeziumConfig {
        var result = DebeziumConfig()
        var used: Set<String> = []
        func take(_ key: String) -> String? {
            used.insert(key)
            return pairs[key]
        }
        func option(_ name: String, _ value: String) { result.options.append((name, value)) }

        // Secrets through Kafka Connect's config providers (${file:…}, ${env:…}) are resolved by Connect, not here.
        for (key, value) in pairs.sorted(by: { $0.key < $1.key })
        where value.contains("${") && !key.hasSuffix("route.topic.replacement") {
            result.problems.append(
                "\(key) uses a Kafka Connect config provider (${…}); put the resolved value in the file, or give the relay --source through OUTBOX_RELAY_SOURCE_FILE"
            )
            used.insert(key)
        }

        if let connector = take("connector.class"), connector != "io.debezium.connector.postgresql.PostgresConnector" {
            result.problems.append("connector.class is not io.debezium.connector.postgresql.PostgresConnector")
        }
        switch take("plugin.name") {
        case "pgoutput": break
        case nil:
            result.problems.append(
                "plugin.name is not set, so Debezium decodes with decoderbufs; the relay reads pgoutput (set plugin.name=pgoutput, and use a slot created with it)"
            )
        default: result.problems.append("plugin.name must be pgoutput: the relay decodes pgoutput only")
        }

        // The connection, as a libpq keyword/value string (values quoted; the password never shown).
        var conninfo: [(String, String)] = []
        for (key, keyword) in [
            ("database.hostname", "host"), ("database.port", "port"), ("database.user", "user"),
            ("database.password", "password"),
            ("database.dbname", "dbname"), ("database.sslmode", "sslmode"), ("database.sslrootcert", "sslrootcert"),
            ("database.sslcert", "sslcert"), ("database.sslkey", "sslkey"),
        ] {
            if let value = take(key), !value.contains("${") { conninfo.append((keyword, value)) }
        }
        if !conninfo.isEmpty {
            option("source", conninfo.map { "\($0.0)=\(libpqQuoted($0.1))" }.joined(separator: " "))
        }
        option("slot", take("slot.name") ?? "debezium")
        option("publication", take("publication.name") ?? "dbz_publication")

        if let include = take("table.include.list") {
            let tables = include.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            // A regular expression in Debezium; a plain schema.table (dots match themselves) is what can be honoured.
            if tables.count != 1 || tables[0].contains(where: { "*+?[](){}|^$\\".contains($0) }) {
                result.problems.append(
                    "table.include.list must name exactly one outbox table as schema.table (the relay relays one table)"
                )
            } else {
                option("table", tables[0])
            }
        } else {
            result.problems.append(
                "table.include.list is not set: Debezium would capture every table; name the outbox table")
        }

        // Converters: StringConverter, or JsonConverter without schemas.
        var encoding = "string"
        if let value = take("value.converter") {
            switch value {
            case "org.apache.kafka.connect.storage.StringConverter": encoding = "string"
            case "org.apache.kafka.connect.json.JsonConverter":
                encoding = "json"
                if take("value.converter.schemas.enable")?.lowercased() != "false" {
                    result.problems.append(
                        "value.converter JsonConverter with schemas (schemas.enable is true by default): the relay writes schemaless JSON only; set value.converter.schemas.enable=false"
                    )
                }
            default:
                result.problems.append(
                    "value.converter must be StringConverter or JsonConverter (schemas.enable=false)")
            }
        }
        if let key = take("key.converter"), key != "org.apache.kafka.connect.storage.StringConverter" {
            result.problems.append(
                "key.converter must be StringConverter: the relay writes the key column's text as the key")
        }
        option("value-encoding", encoding)
        if let mode = take("binary.handling.mode"), mode != "bytes" {
            result.problems.append(
                "binary.handling.mode must be bytes (the default): bytea payloads are written as their bytes (base64 under JsonConverter)"
            )
        }

        // The EventRouter among the transforms.
        let names = (take("transforms") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        let routers = names.filter { pairs["transforms.\($0).type"] == eventRouter }
        for name in names where !routers.contains(name) {
            result.problems.append(
                "transform \"\(name)\" (\(pairs["transforms.\(name).type"] ?? "no type")) is not the outbox EventRouter; only the EventRouter is honoured"
            )
        }
        if routers.count != 1 {
            result.problems.append(
                routers.isEmpty
                    ? "no transform of type \(eventRouter) in transforms" : "more than one EventRouter transform")
        }
        for key in pairs.keys
        where key.hasPrefix("transforms.") && !routers.contains(where: { key.hasPrefix("transforms.\($0).") }) {
            used.insert(key)  // covered by the problem about its transform
        }
        if let router = routers.first {
            let p = "transforms.\(router)."
            used.insert(p + "type")
            for (setting, flag) in [
                ("table.field.event.id", "id-column"), ("table.field.event.key", "aggregate-id-column"),
                ("table.field.event.type", "type-column"), ("table.field.event.payload", "payload-column"),
                ("route.by.field", "aggregate-type-column"), ("route.topic.regex", "route-topic-regex"),
                ("route.topic.replacement", "route-topic-replacement"),
                ("table.json.payload.null.behavior", "json-payload-null-behavior"),
                ("table.op.invalid.behavior", "update-behavior"),
            ] {
                if let value = take(p + setting) { option(flag, value) }
            }
            // Debezium routes by its regex/replacement always: say so, so --topic-template is not used.
            if pairs[p + "route.topic.regex"] == nil && pairs[p + "route.topic.replacement"] == nil {
                option("route-topic-replacement", TopicRoute.debeziumDefault.replacement)
            }
            for (setting, flag) in [
                ("route.tombstone.on.empty.payload", "tombstone-on-empty-payload"),
                ("table.expand.json.payload", "expand-json-payload"),
            ] {
                if let value = take(p + setting) {
                    switch value.lowercased() {
                    case "true": option(flag, "true")
                    case "false": break
                    default: result.problems.append("\(p + setting) must be true or false")
                    }
                }
            }
            if let placement = take(p + "table.fields.additional.placement") {
                for entry in placement.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) })
                where !entry.isEmpty {
                    option("additional-field", entry)
                }
            }
            if let missing = take(p + "table.field.additional.missing"), missing != "error" {
                result.problems.append(
                    "\(p)table.field.additional.missing=\(missing == "ignore" ? "ignore" : "…"): the relay requires every configured column (error)"
                )
            }
            for unsupported in [
                "table.field.event.timestamp", "table.field.event.schema.version", "table.field.event.payload.id",
            ] {
                if take(p + unsupported) != nil {
                    result.problems.append("\(p + unsupported) has no counterpart in the relay yet")
                }
            }
            // Connect's predicate and negate settings of the transform change which records it applies to.
            for key in pairs.keys.sorted() where key.hasPrefix(p) && !used.contains(key) {
                result.problems.append("\(key) is not an EventRouter option the relay knows")
                used.insert(key)
            }
        }
        // The converters' other settings (schemas.enable is read above) and tracing change no record bytes.
        for key in pairs.keys
        where key.hasPrefix("value.converter.") || key.hasPrefix("key.converter.") || key.hasPrefix("tracing.") {
            if !used.contains(key) { result.ignored.append(key) }
            used.insert(key)
        }
        for key in pairs.keys.sorted() where !used.contains(key) {
            if isInert(key) {
                result.ignored.append(key)
            } else {
                result.problems.append("\(key) is not a setting the relay can honour")
            }
        }
        return result
    }

    /// A libpq connection-string value in single quotes, `\` and `'` escaped.
    static func libpqQuoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }
}
