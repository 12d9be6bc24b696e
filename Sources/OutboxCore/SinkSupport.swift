/// Pieces every networked sink needs the same way: its queue of records not yet
/// handed over, the delay before the next connection attempt, and an event's
/// headers and body as message brokers carry them.

/// A FIFO with cheap removal at the front and insertion of a batch there (records
/// taken back after a lost connection go before everything newer).
public struct PendingQueue<Element> {
    private var items: [Element] = []
    private var head = 0

    public init() {}

    public var count: Int { items.count - head }
    public var isEmpty: Bool { count == 0 }
    public var first: Element? { head < items.count ? items[head] : nil }
    /// The element `index` places behind the front.
    public subscript(index: Int) -> Element { items[head + index] }

    public mutating func append(_ element: Element) { items.append(element) }

    public mutating func removeFirst() {
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }

    public mutating func insertAtFront(_ elements: [Element]) {
        items.replaceSubrange(0..<head, with: elements)
        head = 0
    }

    public mutating func removeAll() {
        items.removeAll()
        head = 0
    }
}

/// A broker URL for logs: any `user:password@` or token before the host, in each
/// comma-separated URL, replaced by `[redacted]`.
public func redactedURL(_ url: String) -> String {
    url.split(separator: ",", omittingEmptySubsequences: false).map { one -> String in
        guard let at = one.lastIndex(of: "@") else { return String(one) }
        let scheme = one.range(of: "://").map { String(one[..<$0.upperBound]) } ?? ""
        return scheme + "[redacted]@" + one[one.index(after: at)...]
    }.joined(separator: ",")
}

extension OutboxEvent {
    /// The headers a message broker carries for an event: `key` (the aggregate
    /// id), the event's headers (`id`, `type`, the `headers` members, extra
    /// columns), `lsn`, and `tombstone: true` for a tombstone (empty body).
    public var messageHeaders: [(name: String, value: String)] {
        var out: [(name: String, value: String)] = [("key", key)]
        out += headers
        if lsn != .zero { out.append(("lsn", lsn.description)) }
        if tombstone { out.append(("tombstone", "true")) }
        return out
    }

    /// The message body: the payload as stored; empty for a tombstone; `null`
    /// for a NULL payload kept as JSON.
    public var messageBody: [UInt8] {
        tombstone ? [] : (payload ?? Array("null".utf8))
    }
}

/// Name/value pairs safe to hand to a C client as C strings: NUL removed.
public func withoutNUL(_ pairs: [(name: String, value: String)]) -> [(name: String, value: String)] {
    pairs.map { ($0.name.replacingOccurrences(of: "\0", with: ""), $0.value.replacingOccurrences(of: "\0", with: "")) }
}

/// The C string in a fixed `char[N]` field of a C struct (imported as a tuple).
public func cString<T>(fromTuple tuple: inout T) -> String {
    withUnsafeBytes(of: &tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
}
