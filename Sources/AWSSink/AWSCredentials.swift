import CurlIO
import Foundation
import OutboxCore

/// A key pair (and session token) to sign with. `description` never shows the secret or the token.
public struct AWSCredentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?
    /// When temporary credentials expire (web identity); nil: they do not.
    public var expiration: Date?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil, expiration: Date? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.expiration = expiration
    }

    public var description: String { "AWSCredentials(\(accessKeyID), secret [redacted])" }

    /// When to ask for new ones: five minutes before they expire, or at two
    /// thirds of their life when that is shorter.
    public func refreshTime(issuedAt: Date) -> Date? {
        guard let expiration else { return nil }
        let life = expiration.timeIntervalSince(issuedAt)
        return expiration.addingTimeInterval(-min(300, max(0, life) / 3))
    }
}

/// Where credentials come from, in the order the AWS SDKs look (as far as a
/// sidecar needs): the environment's key pair, the shared credentials and
/// config files' profile, then web identity (EKS IRSA). Pure: the environment
/// and the files' text are inputs.
public enum AWSCredentialSource: Equatable, Sendable {
    case environment(AWSCredentials)
    case profile(name: String, AWSCredentials)
    case webIdentity(roleARN: String, tokenFile: String, sessionName: String)

    public var summary: String {
        switch self {
        case .environment: return "AWS_ACCESS_KEY_ID from the environment"
        case .profile(let name, _): return "profile \(name) of the shared credentials file"
        case .webIdentity(let role, _, _): return "web identity for role \(role)"
        }
    }

    public struct Missing: Error, CustomStringConvertible {
        public var description: String
    }

    /// `files`: the text of the credentials file and of the config file, when they exist.
    public static func resolve(
        environment: [String: String], credentialsFile: String?, configFile: String?
    ) -> Result<AWSCredentialSource, Missing> {
        func value(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        if let key = value("AWS_ACCESS_KEY_ID") {
            guard let secret = value("AWS_SECRET_ACCESS_KEY") else {
                return .failure(Missing(description: "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"))
            }
            return .success(
                .environment(
                    AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: value("AWS_SESSION_TOKEN")))
            )
        }
        let profile = value("AWS_PROFILE") ?? value("AWS_DEFAULT_PROFILE") ?? "default"
        let sections = [
            credentialsFile.map { ini($0)[profile] } ?? nil,
            configFile.map { text -> [String: String]? in
                let parsed = ini(text)
                return parsed[profile == "default" ? "default" : "profile " + profile] ?? parsed[profile]
            } ?? nil,
        ]
        for section in sections.compactMap({ $0 }) {
            guard let key = section["aws_access_key_id"] else { continue }
            guard let secret = section["aws_secret_access_key"] else {
                return .failure(
                    Missing(description: "profile \(profile) has aws_access_key_id but no aws_secret_access_key"))
            }
            return .success(
                .profile(
                    name: profile,
                    AWSCredentials(
                        accessKeyID: key, secretAccessKey: secret, sessionToken: section["aws_session_token"])))
        }
        if let role = value("AWS_ROLE_ARN"), let file = value("AWS_WEB_IDENTITY_TOKEN_FILE") {
            return .success(
                .webIdentity(
                    roleARN: role, tokenFile: file, sessionName: value("AWS_ROLE_SESSION_NAME") ?? "outbox-relay"))
        }
        if environment["AWS_PROFILE"] != nil {
            return .failure(Missing(description: "AWS_PROFILE names profile \(profile), which has no key pair"))
        }
        return .failure(
            Missing(
                description:
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials (AWS_PROFILE), or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE"
            ))
    }

    /// `[section]` → key → value; `#` and `;` comments; keys lowercased.
    static func ini(_ text: String) -> [String: [String: String]] {
        var out: [String: [String: String]] = [:]
        var section: String?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let section, let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            out[section, default: [:]][key] = value
        }
        return out
    }
}

/// Web identity: the STS request that trades the token file's token for
/// temporary credentials, and its answer. The request is not signed (the token
/// is the proof); the token and the secret it returns are never logged.
public enum AWSWebIdentity {
    public static func request(
        stsURL: String, roleARN: String, sessionName: String, token: String, durationSeconds: Int,
        timeoutMilliseconds: Int
    ) -> CurlRequest {
        let body = AWSBatchRequest.formEncoded([
            ("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"), ("RoleArn", roleARN),
            ("RoleSessionName", sessionName), ("WebIdentityToken", token), ("DurationSeconds", String(durationSeconds)),
        ])
        var request = CurlRequest(
            url: stsURL, body: body, headers: ["Content-Type: application/x-www-form-urlencoded"],
            timeoutMilliseconds: timeoutMilliseconds, connectTimeoutMilliseconds: min(timeoutMilliseconds, 5_000))
        request.responseLimit = 64 * 1024
        return request
    }

    /// The credentials in an `AssumeRoleWithWebIdentity` answer, or why there are none.
    public static func credentials(status: Int, body: String) -> Result<AWSCredentials, AWSCredentialSource.Missing> {
        switch AWSAnswer.query(status: status, body: body) {
        case .error(let code, let message):
            return .failure(.init(description: "STS AssumeRoleWithWebIdentity: \(code): \(message)"))
        case .batch:
            return .failure(.init(description: "STS AssumeRoleWithWebIdentity: an answer without credentials"))
        case .ok(let values):
            guard let key = values["AccessKeyId"], let secret = values["SecretAccessKey"] else {
                return .failure(.init(description: "STS AssumeRoleWithWebIdentity: an answer without credentials"))
            }
            return .success(
                AWSCredentials(
                    accessKeyID: key, secretAccessKey: secret, sessionToken: values["SessionToken"],
                    expiration: values["Expiration"].flatMap(date)))
        }
    }

    /// ISO 8601, with or without fractional seconds.
    static func date(_ text: String) -> Date? {
        let plain = ISO8601DateFormatter()
        if let d = plain.date(from: text) { return d }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)
    }
}
