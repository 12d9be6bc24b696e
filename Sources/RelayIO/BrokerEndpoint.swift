import Foundation

/// A broker's `scheme://[user:password@]host[:port]`: plain and TLS schemes,
/// each with its default port. Parsed once for every destination that takes
/// such a URL; the password never reaches a message or a log.
public struct BrokerEndpoint: Sendable {
    public var scheme: String
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var tls: Bool

    /// The endpoint, or what is wrong with the URL given as `option` (never quoting it).
    public static func parse(
        _ url: String, option: String, plain: (scheme: String, port: Int), secure: (scheme: String, port: Int)
    ) -> Result<BrokerEndpoint, DestinationOptionError> {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme,
            scheme == plain.scheme || scheme == secure.scheme
        else {
            return .failure(
                DestinationOptionError(
                    "\(option) must be \(plain.scheme)://[user:password@]host[:port] or \(secure.scheme)://…"))
        }
        guard let host = parts.host, !host.isEmpty else {
            return .failure(DestinationOptionError("\(option) has no host"))
        }
        let tls = scheme == secure.scheme
        return .success(
            BrokerEndpoint(
                scheme: scheme, host: host, port: parts.port ?? (tls ? secure.port : plain.port), username: parts.user,
                password: parts.password, tls: tls))
    }

    public var redacted: String { "\(scheme)://\(username == nil ? "" : "[redacted]@")\(host):\(port)" }
}
