import Foundation
import Logging

/// One line per log record on stderr, as logfmt (`ts=… level=… msg="…" key=value`)
/// or JSON (`{"ts":…,"level":…,"msg":…,…}`), for log shippers. Metadata never
/// carries secrets: connection strings are logged redacted, and librdkafka
/// secrets are masked, before they reach a logger.
struct StructuredLogHandler: LogHandler {
    enum Format: String, CaseIterable { case logfmt, json, text }

    let label: String
    let format: Format
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String, format: Format, level: Logger.Level) {
        self.label = label
        self.format = format
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level = event.level
        let message = event.message
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let explicit = event.metadata { fields.merge(explicit) { $1 } }
        if let error = event.error { fields["error"] = "\(error)" }
        let timestamp = Self.timestamp()
        var out = ""
        switch format {
        case .logfmt:
            out = "ts=\(timestamp) level=\(level.rawValue) msg=\(Self.logfmtValue(message.description))"
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
                out += " \(key)=\(Self.logfmtValue("\(value)"))"
            }
        case .json:
            out =
                "{\"ts\":\"\(timestamp)\",\"level\":\"\(level.rawValue)\",\"msg\":\(Self.jsonString(message.description))"
            for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
                out += ",\(Self.jsonString(key)):\(Self.jsonString("\(value)"))"
            }
            out += "}"
        case .text:
            out = "\(timestamp) \(level.rawValue) \(message)"
            if !fields.isEmpty {
                out +=
                    " " + fields.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            }
        }
        out += "\n"
        FileHandle.standardError.write(Data(out.utf8))
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var seconds = ts.tv_sec
        gmtime_r(&seconds, &tm)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
            Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec),
            ts.tv_nsec / 1_000_000)
    }

    static func logfmtValue(_ value: String) -> String {
        let plain =
            !value.isEmpty
            && value.unicodeScalars.allSatisfy {
                $0.value > 32 && $0 != "\"" && $0 != "=" && $0 != "\\" && $0.value != 127
            }
        return plain ? value : jsonString(value)
    }

    static func jsonString(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
