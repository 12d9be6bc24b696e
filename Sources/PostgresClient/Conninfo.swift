import CLibPQ

/// Helpers for libpq connection strings (`key=value …` or `postgresql://` URIs).
public enum Conninfo {
    /// The connection string with every secret removed, safe for logs:
    /// `host=db port=5432 dbname=app user=relay`. Passwords, SSL keys and
    /// unknown options never appear. An unparsable string yields a placeholder,
    /// never the string itself.
    public static func redacted(_ conninfo: String) -> String {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &error) else {
            if let error { PQfreemem(error) }
            return "<unparsable connection string>"
        }
        defer { PQconninfoFree(options) }
        var parts: [String] = []
        var option = options
        let shown: Set<String> = [
            "host", "hostaddr", "port", "dbname", "user", "sslmode", "application_name",
        ]
        while let keyword = option.pointee.keyword {
            let key = String(cString: keyword)
            if shown.contains(key), let value = option.pointee.val {
                parts.append("\(key)=\(String(cString: value))")
            }
            option += 1
        }
        return parts.isEmpty ? "<defaults from the environment>" : parts.joined(separator: " ")
    }

    /// nil when libpq accepts the string, else libpq's reason (which never echoes a password).
    public static func validate(_ conninfo: String) -> String? {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &error) else {
            defer { if let error { PQfreemem(error) } }
            return error.map { String(cString: $0).trimmingTrailingNewlines }
                ?? "invalid connection string"
        }
        PQconninfoFree(options)
        return nil
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var s = self
        while s.last == "\n" || s.last == " " { s.removeLast() }
        return s
    }
}
