import OutboxCore

/// The Redis sink's pure rules: the URL, the stream entry of an event, the
/// commands of a batch, and what Redis's replies to a batch mean.

/// Where the Redis server is and how to log in, from `redis://[user[:password]@]host[:port][/db]`.
public struct RedisEndpoint: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int

    public init(host: String, port: Int = 6379, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }

    public static func parse(_ url: String) throws(RedisConfigurationError) -> RedisEndpoint {
        if url.hasPrefix("rediss://") {
            throw RedisConfigurationError(
                description:
                    "--redis-url \(redactedURL(url)): TLS (rediss://) is not supported by this sink; reach Redis over a private network or a local TLS tunnel"
            )
        }
        guard url.hasPrefix("redis://") else {
            throw RedisConfigurationError(description: "--redis-url \(redactedURL(url)) must start with redis://")
        }
        var rest = Substring(url.dropFirst("redis://".count))
        var endpoint = RedisEndpoint(host: "", port: 6379, username: nil, password: nil, database: 0)
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let user = percentDecoded(credentials[..<colon])
                endpoint.username = user.isEmpty ? nil : user
                endpoint.password = percentDecoded(credentials[credentials.index(after: colon)...])
            } else if !credentials.isEmpty {
                // A lone credential is the password (requirepass), as redis-cli reads it.
                endpoint.password = percentDecoded(credentials)
            }
        }
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !path.isEmpty {
                guard let db = Int(path), db >= 0 else {
                    throw RedisConfigurationError(
                        description: "--redis-url \(redactedURL(url)): the database \"\(path)\" is not a number")
                }
                endpoint.database = db
            }
        }
        var hostPart = rest
        var portPart: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw RedisConfigurationError(description: "--redis-url \(redactedURL(url)): unclosed [ in the host")
            }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portPart = after.dropFirst() }
        } else if let colon = rest.lastIndex(of: ":") {
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        }
        guard !hostPart.isEmpty else {
            throw RedisConfigurationError(description: "--redis-url \(redactedURL(url)) names no host")
        }
        endpoint.host = String(hostPart)
        if let portPart {
            guard let port = Int(portPart), (1...65535).contains(port) else {
                throw RedisConfigurationError(
                    description: "--redis-url \(redactedURL(url)): the port \"\(portPart)\" is not 1 to 65535")
            }
            endpoint.port = port
        }
        return endpoint
    }

    private static func percentDecoded(_ text: Substring) -> String {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == UInt8(ascii: "%"), bytes.count >= 2,
                let value = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(value)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Start-up problems the relay cannot run with: exit, not retry.
public struct RedisConfigurationError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

public enum RedisMessage {
    /// The stream entry of an event: the broker headers (`key`, `id`, `type`,
    /// the `headers` members, extra columns, `lsn`, `tombstone`), then `payload`
    /// (the payload as stored; empty for a tombstone).
    public static func fields(for event: OutboxEvent) -> [[UInt8]] {
        var out: [[UInt8]] = []
        for header in event.messageHeaders {
            out.append(Array(header.name.utf8))
            out.append(Array(header.value.utf8))
        }
        out.append(Array("payload".utf8))
        out.append(event.messageBody)
        return out
    }

    /// Adds an entry unless the event id was added within the window. Errors
    /// raise before anything is written (XADD first, then the marker), so a
    /// refused event leaves no marker to drop its retry.
    /// KEYS: the stream, the marker. ARGV: window (s), MAXLEN (0: none), field, value, …
    public static let deduplicatingAdd = """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        local id
        if ARGV[2] ~= '0' then
          id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
        else
          id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
        end
        redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
        return id
        """

    /// The command that adds one entry: `XADD stream [MAXLEN ~ n] * fields…`, or
    /// with a duplicate window `EVALSHA script 2 stream marker window maxlen fields…`.
    public static func addCommand(
        stream: String, fields: [[UInt8]], maxLength: Int, dedupe: (script: String, marker: String, seconds: Int)?
    ) -> [[UInt8]] {
        if let dedupe {
            return [
                Array("EVALSHA".utf8), Array(dedupe.script.utf8), Array("2".utf8), Array(stream.utf8),
                Array(dedupe.marker.utf8), Array(String(dedupe.seconds).utf8), Array(String(maxLength).utf8),
            ] + fields
        }
        var command: [[UInt8]] = [Array("XADD".utf8), Array(stream.utf8)]
        if maxLength > 0 { command += [Array("MAXLEN".utf8), Array("~".utf8), Array(String(maxLength).utf8)] }
        return command + [Array("*".utf8)] + fields
    }

    /// What an error reply means for the event it answers.
    public enum Refusal: Sendable, Equatable {
        /// This event can never be added as it is (the key holds another type, an
        /// ACL forbids it): the dead-letter stream, or stop.
        case permanent(String)
        /// Redis cannot take writes now (out of memory, loading, a replica, a
        /// failing disk, a busy script): nothing of the batch is kept; retry later.
        case transient(String)
        /// Nothing will work until an operator acts (a cluster, an unknown
        /// command): the relay stops, nothing of it confirmed.
        case fatal(String)
    }

    public static func classify(_ error: String) -> Refusal {
        let code = error.prefix { $0 != " " }
        switch code {
        case "WRONGTYPE", "NOPERM":
            return .permanent(error)
        case "OOM", "LOADING", "BUSY", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "NOSCRIPT",
            "NOAUTH", "WRONGPASS":
            return .transient(error)
        case "MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN":
            return .fatal(
                "\(error): Redis Cluster is not supported; point --redis-url at a standalone server or a primary")
        default:
            if error.hasPrefix("ERR max number of clients") { return .transient(error) }
            return .fatal(error)
        }
    }

    /// Whether an entry of the EXEC reply stored the event.
    public enum Result: Sendable, Equatable {
        /// Added under this entry id.
        case added(String)
        /// The duplicate window had the event id: the stream has it already.
        case duplicate
        case refused(Refusal)
    }

    /// What the replies to one batch (`MULTI`, its commands, `EXEC`, and `WAIT` if asked) say.
    public enum BatchOutcome: Sendable, Equatable {
        /// EXEC ran: one result per command, and how many replicas have the writes (nil: not asked).
        case executed([Result], replicas: Int?)
        /// Nothing of the batch was applied; `index` is the command that was refused, when one was.
        case aborted(index: Int?, Refusal)
    }

    /// How many replies a batch of `commands` gets.
    public static func replyCount(commands: Int, wait: Bool) -> Int { commands + 2 + (wait ? 1 : 0) }

    /// Reads the replies to a batch (exactly `replyCount` of them).
    public static func outcome(of replies: [RESPValue], commands: Int, wait: Bool) -> BatchOutcome {
        guard replies.count == replyCount(commands: commands, wait: wait) else {
            return .aborted(
                index: nil,
                .fatal("expected \(replyCount(commands: commands, wait: wait)) replies, got \(replies.count)"))
        }
        if case .error(let e) = replies[0] { return .aborted(index: nil, classify(e)) }
        var refusedAt: (Int, Refusal)?
        for i in 0..<commands {
            if case .error(let e) = replies[1 + i], refusedAt == nil { refusedAt = (i, classify(e)) }
        }
        var replicas: Int?
        if wait {
            switch replies[commands + 2] {
            case .integer(let n): replicas = Int(n)
            case .error(let e): return .aborted(index: nil, classify(e))
            default: return .aborted(index: nil, .fatal("WAIT answered \(replies[commands + 2])"))
            }
        }
        switch replies[commands + 1] {
        case .array(let entries?) where entries.count == commands:
            return .executed(
                entries.map { entry in
                    switch entry {
                    case .bulk(let id?): return .added(String(decoding: id, as: UTF8.self))
                    case .integer(0): return .duplicate
                    case .error(let e): return .refused(classify(e))
                    default: return .refused(.fatal("unexpected reply to an add: \(entry)"))
                    }
                }, replicas: replicas)
        case .error(let e):
            if let (index, refusal) = refusedAt { return .aborted(index: index, refusal) }
            return .aborted(index: nil, classify(e))
        case .array(nil):
            return .aborted(index: nil, .transient("EXEC returned no results (the transaction was discarded)"))
        default:
            return .aborted(index: nil, .fatal("EXEC answered \(replies[commands + 1])"))
        }
    }
}
