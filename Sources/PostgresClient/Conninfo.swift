import CLibPQ
import Glibc

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

    /// nil when libpq accepts the string, else what is wrong with it, in words that
    /// never repeat any part of the string: libpq's own parse errors quote the
    /// text around the mistake (`missing "=" after "<the rest of a password>"`,
    /// the whole URI for an unclosed `[`), so they are mapped, never passed on.
    public static func validate(_ conninfo: String) -> String? {
        if conninfo.utf8.contains(0) { return "it contains a NUL byte" }
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &error) else {
            let libpq = error.map { String(cString: $0) } ?? ""
            if let error { PQfreemem(error) }
            return describe(
                parseError: libpq, uri: conninfo.hasPrefix("postgres://") || conninfo.hasPrefix("postgresql://"))
        }
        defer { PQconninfoFree(options) }
        var option = options
        while let keyword = option.pointee.keyword {
            if String(cString: keyword) == "host", let value = option.pointee.val, strchr(value, 64) != nil {
                return
                    "its host contains \"@\": in a URI, a password (or user) containing @, :, / or % must be percent-encoded (@ as %40)"
            }
            option += 1
        }
        return nil
    }

    /// libpq's parse error (which quotes the input) as a message that quotes nothing.
    static func describe(parseError: String, uri: Bool) -> String {
        let quoting =
            uri
            ? "percent-encode special characters in values (@ as %40, space as %20)"
            : "quote values that contain spaces or quotes: password='a b', and escape ' and \\ inside them with a backslash"
        if parseError.contains("missing \"=\"") {
            return "a value is missing \"=\" or has an unquoted space (\(quoting))"
        }
        if parseError.contains("unterminated quoted string") { return "a quoted value is not closed" }
        if parseError.contains("invalid connection option") || parseError.contains("invalid URI query parameter") {
            return
                "it names an option libpq does not know (a value with an unquoted space or \"=\" can look like one; \(quoting))"
        }
        if parseError.contains("percent-encoded") {
            return "a % in the URI is not followed by two hexadecimal digits (write % as %25)"
        }
        if parseError.contains("IPv6") || parseError.contains("\"]\"") {
            return "an IPv6 host address in [brackets] is not closed"
        }
        if parseError.contains("out of memory") { return "out of memory while parsing it" }
        return "libpq cannot parse it (\(quoting))"
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var s = self
        while s.last == "\n" || s.last == " " { s.removeLast() }
        return s
    }
}
