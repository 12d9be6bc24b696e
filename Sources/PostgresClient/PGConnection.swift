import CLibPQ
import Glibc
import PGOutput

/// One libpq connection. It owns its `PGconn` and frees it in `deinit`.
///
/// Not `Sendable`: libpq connections must not be used from two threads at
/// once. The relay creates, uses and drops it on its own I/O thread, so the
/// blocking calls here (`PQconnectdbParams`, `poll(2)` on the socket) never
/// run on Swift's cooperative thread pool.
public final class PGConnection {
    let conn: OpaquePointer

    /// Connects. `replication: true` opens a walsender connection
    /// (`replication=database`), which accepts replication commands and plain SQL
    /// over the simple query protocol.
    ///
    /// The user's string may be `key=value` or a URI; it is passed as an
    /// expanded `dbname`, so its values win over our defaults placed before it
    /// (connect timeout, TCP keepalives), and `replication` placed after it wins.
    public init(
        conninfo: String, replication: Bool, applicationName: String = "outbox-relay", interrupt: Int32? = nil
    )
        throws(ReplicationError)
    {
        if let problem = Conninfo.validate(conninfo) {
            throw .invalidConfiguration("invalid PostgreSQL connection string: \(problem)")
        }
        var pairs =
            Self.defaultParameters.map { ($0.key, $0.value) } + [
                ("fallback_application_name", applicationName), ("dbname", conninfo),
            ]
        if replication { pairs.append(("replication", "database")) }
        let keys = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer { (keys + values).forEach { free($0) } }
        let keyPointers = keys.map { UnsafePointer($0) } + [nil]
        let valuePointers = values.map { UnsafePointer($0) } + [nil]
        guard let conn = PQconnectStartParams(keyPointers, valuePointers, 1) else {
            throw .connectionFailed("out of memory")
        }
        if let failure = Self.complete(conn, interrupt: interrupt) {
            PQfinish(conn)
            throw failure
        }
        self.conn = conn
    }

    /// Drives a non-blocking connect (`PQconnectPoll`) to its end, waiting in
    /// `poll(2)` on the socket and on `interrupt`, bounded by `connect_timeout`
    /// (as PQconnectdb would be): a stop request ends a connect attempt that a
    /// silent network cut would otherwise hold for the whole timeout.
    private static func complete(_ conn: OpaquePointer, interrupt: Int32?) -> ReplicationError? {
        var timeout = 0
        if let options = PQconninfo(conn) {
            var option = options
            while let keyword = option.pointee.keyword {
                if String(cString: keyword) == "connect_timeout", let value = option.pointee.val {
                    timeout = Int(String(cString: value)) ?? 0
                }
                option += 1
            }
            PQconninfoFree(options)
        }
        let deadline = timeout > 0 ? monotonicMilliseconds() + max(2, timeout) * 1000 : Int.max
        var status = PGRES_POLLING_WRITING
        while true {
            if PQstatus(conn) == CONNECTION_BAD || status == PGRES_POLLING_FAILED {
                return .connecting(String(cString: PQerrorMessage(conn)).trimmingTrailingNewlines)
            }
            if status == PGRES_POLLING_OK { return nil }
            let left = deadline == Int.max ? -1 : deadline - monotonicMilliseconds()
            if deadline != Int.max && left <= 0 {
                return .connectionFailed("timeout expired (connect_timeout=\(timeout) s)")
            }
            var fds = [
                pollfd(
                    fd: PQsocket(conn), events: Int16(status == PGRES_POLLING_READING ? POLLIN : POLLOUT), revents: 0)
            ]
            if let interrupt { fds.append(pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), Int32(clamping: left))
            if ready < 0 && errno != EINTR {
                return .connectionFailed("poll: \(String(cString: strerror(errno)))")
            }
            if fds.count > 1 && fds[1].revents != 0 {
                return .connectionFailed("connection attempt abandoned: the relay is stopping")
            }
            if ready > 0 { status = PQconnectPoll(conn) }
        }
    }

    deinit { PQfinish(conn) }

    /// Defaults placed before the user's connection string, which overrides
    /// any of them. A dead peer must be noticed in seconds, not after the
    /// kernel's 15-minute retransmission limit: TCP keepalives probe an idle
    /// connection after 10 s, every 5 s, 3 times; `tcp_user_timeout` drops a
    /// connection whose sent data stays unacknowledged for 30 s (a silent cut
    /// while a status update or a query is on its way).
    public static let defaultParameters: [(key: String, value: String)] = [
        ("connect_timeout", "10"), ("keepalives", "1"), ("keepalives_idle", "10"),
        ("keepalives_interval", "5"), ("keepalives_count", "3"), ("tcp_user_timeout", "30000"),
    ]

    /// `host=… port=… dbname=… user=…` of the live connection; no secrets.
    public var serverDescription: String {
        func s(_ p: UnsafeMutablePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "?" }
        return
            "host=\(s(PQhost(conn))) port=\(s(PQport(conn))) dbname=\(s(PQdb(conn))) user=\(s(PQuser(conn)))"
    }

    public var serverVersion: Int { Int(PQserverVersion(conn)) }

    /// Rows of a simple-protocol query, as text (nil for NULL).
    public struct Rows: Sendable {
        public var columns: [String]
        public var values: [[String?]]
        public subscript(row: Int, column: String) -> String? {
            guard let index = columns.firstIndex(of: column), values.indices.contains(row) else {
                return nil
            }
            return values[row][index]
        }
        public var count: Int { values.count }
    }

    /// Bounds every query on this connection: no answer for this long means the
    /// connection is dead (a silent network cut), and the query fails with
    /// `connectionLost` instead of waiting for the kernel to give up (minutes).
    /// nil: wait as long as libpq does.
    public var queryTimeoutMilliseconds: Int?
    /// A descriptor that becomes readable when the owner wants to stop: a
    /// running query then gets `stopGraceMilliseconds` more to finish.
    public var interruptDescriptor: Int32?
    public var stopGraceMilliseconds = 2_000

    /// PQexec, or, with a query timeout, PQsendQuery and a `poll(2)` bounded by
    /// it (and by a stop request). Returns the last result, as PQexec does.
    private func execute(_ sql: String, label: String) throws(ReplicationError) -> OpaquePointer {
        guard let timeout = queryTimeoutMilliseconds else {
            guard let result = PQexec(conn, sql) else { throw connectionError(label) }
            return result
        }
        guard PQsendQuery(conn, sql) == 1 else { throw connectionError(label) }
        var deadline = Self.monotonicMilliseconds() + timeout
        var interrupted = false
        var last: OpaquePointer?
        while true {
            guard PQconsumeInput(conn) == 1 else {
                if let last { PQclear(last) }
                throw .connectionLost(errorMessage)
            }
            while PQisBusy(conn) == 0 {
                guard let result = PQgetResult(conn) else {
                    guard let last else { throw connectionError(label) }
                    return last
                }
                if let last { PQclear(last) }
                last = result
            }
            let left = deadline - Self.monotonicMilliseconds()
            if left <= 0 {
                if let last { PQclear(last) }
                throw .connectionLost(
                    "no answer from PostgreSQL within \(interrupted ? stopGraceMilliseconds : timeout) ms (\(label)); the connection is treated as dead"
                )
            }
            var fds = [pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)]
            if let fd = interruptDescriptor, !interrupted {
                fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            }
            if poll(&fds, nfds_t(fds.count), Int32(clamping: left)) < 0 && errno != EINTR {
                if let last { PQclear(last) }
                throw .connectionLost("poll: \(String(cString: strerror(errno)))")
            }
            if fds.count > 1, fds[1].revents != 0 {
                interrupted = true
                deadline = min(deadline, Self.monotonicMilliseconds() + stopGraceMilliseconds)
            }
        }
    }

    static func monotonicMilliseconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec) / 1_000_000
    }

    /// Runs one statement with the simple query protocol (the only one a
    /// replication connection accepts). Build literals with `literal(_:)`.
    @discardableResult
    public func query(_ sql: String, label: String? = nil) throws(ReplicationError) -> Rows {
        let result = try execute(sql, label: label ?? sql)
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return Self.rows(result)
        default:
            throw resultError(result, command: label ?? sql)
        }
    }

    /// A result in the shape pgoutput gives rows: column names and type OIDs,
    /// and each row as `TupleData` (text format, one buffer per row), so rows
    /// read by a query go through the same router as rows read from the log.
    public struct TupleRows: Sendable {
        public var columns: [(name: String, typeOID: UInt32)]
        public var rows: [TupleData]
    }

    /// Runs a simple-protocol query string (it may hold several statements;
    /// the last result is returned) and returns its rows as `TupleData`.
    public func queryTuples(_ sql: String, label: String) throws(ReplicationError) -> TupleRows {
        let result = try execute(sql, label: label)
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY: break
        default: throw resultError(result, command: label)
        }
        let columnCount = PQnfields(result)
        let rowCount = PQntuples(result)
        let columns = (0..<columnCount).map {
            (name: String(cString: PQfname(result, $0)), typeOID: UInt32(PQftype(result, $0)))
        }
        var rows: [TupleData] = []
        rows.reserveCapacity(Int(rowCount))
        for row in 0..<rowCount {
            var size = 0
            for column in 0..<columnCount { size += Int(PQgetlength(result, row, column)) }
            var storage: [UInt8] = []
            storage.reserveCapacity(size)
            var values: [TupleData.Column] = []
            values.reserveCapacity(Int(columnCount))
            for column in 0..<columnCount {
                if PQgetisnull(result, row, column) == 1 {
                    values.append(.null)
                    continue
                }
                let length = Int(PQgetlength(result, row, column))
                let start = storage.count
                if let value = PQgetvalue(result, row, column) {
                    value.withMemoryRebound(to: UInt8.self, capacity: length) {
                        storage.append(contentsOf: UnsafeBufferPointer(start: $0, count: length))
                    }
                }
                values.append(.text(start..<storage.count))
            }
            rows.append(TupleData(storage: storage, columns: values))
        }
        return TupleRows(columns: columns, rows: rows)
    }

    /// Waits up to `timeoutMilliseconds` for notifications on the channels
    /// this session LISTENs to, and returns their channel names (empty when
    /// none came). Only valid while no query is running.
    public func waitForNotifications(timeoutMilliseconds: Int32) throws(ReplicationError) -> [String] {
        var channels: [String] = []
        func drain() {
            while let notification = PQnotifies(conn) {
                channels.append(String(cString: notification.pointee.relname))
                PQfreemem(notification)
            }
        }
        guard PQconsumeInput(conn) == 1 else { throw .connectionLost(errorMessage) }
        drain()
        if !channels.isEmpty || timeoutMilliseconds <= 0 { return channels }
        var descriptor = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
        guard descriptor.fd >= 0 else { throw .connectionLost("socket closed") }
        let ready = poll(&descriptor, 1, timeoutMilliseconds)
        if ready < 0 && errno != EINTR {
            throw .connectionLost("poll: \(String(cString: strerror(errno)))")
        }
        if ready > 0 {
            guard PQconsumeInput(conn) == 1 else { throw .connectionLost(errorMessage) }
            drain()
        }
        return channels
    }

    /// Sends a command that enters COPY BOTH mode (`START_REPLICATION`).
    public func startCopyBoth(_ command: String, label: String) throws(ReplicationError) {
        guard let result = PQexec(conn, command) else { throw connectionError(label) }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_BOTH else {
            throw resultError(result, command: label)
        }
    }

    /// The connection's socket, for a `poll(2)` that waits on it together with other descriptors.
    public var socket: Int32 { PQsocket(conn) }

    /// The next complete CopyData message already buffered by libpq, without
    /// waiting (nil when none is). Call `consumeInput()` when the socket is readable.
    public func bufferedCopyData() throws(ReplicationError) -> ReplicationMessage? {
        var buffer: UnsafeMutablePointer<CChar>?
        let length = PQgetCopyData(conn, &buffer, 1)
        if length > 0, let buffer {
            defer { PQfreemem(buffer) }
            do {
                return try ReplicationMessage.decode(UnsafeRawBufferPointer(start: buffer, count: Int(length)))
            } catch {
                throw .undecodable(error)
            }
        }
        if length == -1 { throw streamEnded() }
        if length < -1 { throw .connectionLost(errorMessage) }
        return nil
    }

    /// Reads what the socket has into libpq's buffer (after `poll(2)` said it is readable).
    public func consumeInput() throws(ReplicationError) {
        guard PQconsumeInput(conn) == 1 else { throw .connectionLost(errorMessage) }
    }

    /// Sends one CopyData message and flushes it.
    public func sendCopyData(_ bytes: [UInt8]) throws(ReplicationError) {
        let sent = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                PQputCopyData(conn, $0.baseAddress, Int32($0.count))
            }
        }
        guard sent == 1, PQflush(conn) == 0 else { throw .connectionLost(errorMessage) }
    }

    /// Ends COPY BOTH from our side (clean shutdown).
    public func endCopy() {
        _ = PQputCopyEnd(conn, nil)
        _ = PQflush(conn)
    }

    /// A string literal for the simple query protocol, escaped by libpq.
    public func literal(_ value: String) -> String {
        guard let escaped = PQescapeLiteral(conn, value, value.utf8.count) else { return "''" }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    /// An identifier, quoted by libpq.
    public func identifier(_ value: String) -> String {
        guard let escaped = PQescapeIdentifier(conn, value, value.utf8.count) else { return "\"\"" }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    var errorMessage: String { String(cString: PQerrorMessage(conn)).trimmingTrailingNewlines }

    private func connectionError(_ command: String) -> ReplicationError {
        PQstatus(conn) == CONNECTION_OK
            ? .serverError(command: command, sqlState: "XX000", message: errorMessage)
            : .connectionLost(errorMessage)
    }

    private func resultError(_ result: OpaquePointer, command: String) -> ReplicationError {
        if PQstatus(conn) != CONNECTION_OK { return .connectionLost(errorMessage) }
        let state =
            PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) } ?? "XX000"
        let message =
            PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) }
            ?? errorMessage
        return .serverError(command: command, sqlState: state, message: message)
    }

    /// The server ended COPY BOTH: fetch its reason (an ErrorResponse, e.g. the
    /// publication vanished, or the walsender's shutdown).
    private func streamEnded() -> ReplicationError {
        var failure: ReplicationError = .connectionLost("server ended the replication stream")
        while let result = PQgetResult(conn) {
            if PQresultStatus(result) == PGRES_FATAL_ERROR {
                failure = resultError(result, command: "replication stream")
            }
            PQclear(result)
        }
        if PQstatus(conn) != CONNECTION_OK { return .connectionLost(errorMessage) }
        return failure
    }

    private static func rows(_ result: OpaquePointer) -> Rows {
        let columnCount = PQnfields(result)
        let rowCount = PQntuples(result)
        let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
        var values: [[String?]] = []
        values.reserveCapacity(Int(rowCount))
        for row in 0..<rowCount {
            values.append(
                (0..<columnCount).map { column in
                    PQgetisnull(result, row, column) == 1
                        ? nil : String(cString: PQgetvalue(result, row, column))
                })
        }
        return Rows(columns: columns, values: values)
    }
}
