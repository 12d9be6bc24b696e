/// Decodes the pgoutput plugin's messages, one `XLogData` payload at a time.
///
/// Stateful only where the protocol is: it keeps the relation cache (Relation
/// messages may arrive anywhere, again after every schema change) and knows
/// whether it is inside a Stream Start … Stream Stop block, where changes carry
/// the transaction id. Layouts: PostgreSQL docs, "Logical Replication Message
/// Formats"; protocol versions 1–4.
public struct PGOutputDecoder: Sendable {
    /// The `proto_version` the stream was started with (1–4).
    public let protocolVersion: Int
    /// Relations described so far, by OID; the newest description wins.
    public private(set) var relations: [UInt32: Relation] = [:]
    /// Types described by 'Y' messages, by OID.
    public private(set) var types: [UInt32: TypeInfo] = [:]
    /// Inside a Stream Start … Stream Stop block (protocol 2+).
    public private(set) var inStreamBlock = false

    public init(protocolVersion: Int = 1) {
        self.protocolVersion = protocolVersion
    }

    /// Forgets all state, as after a reconnect: the server re-sends Relation
    /// messages on every new replication stream.
    public mutating func reset() {
        relations.removeAll(keepingCapacity: true)
        types.removeAll(keepingCapacity: true)
        inStreamBlock = false
    }

    /// Decodes one message. Throws `DecodeError` (never traps) on any malformed
    /// or truncated input; the decoder's state is unchanged when it throws.
    public mutating func decode(_ bytes: [UInt8]) throws(DecodeError) -> PGOutputMessage {
        guard let first = bytes.first else {
            throw DecodeError(
                messageType: nil, offset: 0, reason: .truncated(field: "message type", needed: 1),
                bytes: bytes)
        }
        var r = ByteReader(bytes, offset: 1, messageType: first)
        guard let type = PGOutputMessageType(rawValue: first) else {
            throw r.error(.unknownMessageType, at: 0)
        }
        let message: PGOutputMessage
        switch type {
        case .begin:
            message = .begin(
                Begin(
                    finalLSN: try r.lsn("final LSN"), commitTimestamp: try r.timestamp("commit timestamp"),
                    xid: try r.uint32("xid")))
        case .commit:
            message = .commit(
                Commit(
                    flags: try r.uint8("flags"), commitLSN: try r.lsn("commit LSN"),
                    endLSN: try r.lsn("end LSN"), commitTimestamp: try r.timestamp("commit timestamp")))
        case .origin:
            message = .origin(
                Origin(commitLSN: try r.lsn("origin commit LSN"), name: try r.cString("origin name")))
        case .relation:
            let xid = try streamedXID(&r)
            let oid = try r.uint32("relation OID")
            let namespace = try r.cString("namespace")
            let name = try r.cString("relation name")
            let identity = try r.uint8("replica identity")
            let count = try r.int16("column count")
            guard count >= 0 else {
                throw r.error(.invalidValue(field: "column count", value: Int64(count)))
            }
            var columns: [Relation.Column] = []
            columns.reserveCapacity(Int(count))
            for _ in 0..<count {
                columns.append(
                    Relation.Column(
                        flags: try r.uint8("column flags"), name: try r.cString("column name"),
                        typeOID: try r.uint32("column type OID"),
                        typeModifier: try r.int32("column type modifier")))
            }
            message = .relation(
                Relation(
                    xid: xid, oid: oid, namespace: namespace, name: name, replicaIdentity: identity,
                    columns: columns))
        case .type:
            message = .type(
                TypeInfo(
                    xid: try streamedXID(&r), oid: try r.uint32("type OID"),
                    namespace: try r.cString("namespace"), name: try r.cString("type name")))
        case .insert:
            let xid = try streamedXID(&r)
            let oid = try r.uint32("relation OID")
            let marker = try r.uint8("tuple marker")
            guard marker == 78 else {
                throw r.error(
                    .invalidValue(field: "tuple marker (expected 'N')", value: Int64(marker)),
                    at: r.offset - 1)
            }  // 'N'
            let tuple = try TupleData.decode(&r)
            try checkColumns(tuple, oid, &r)
            message = .insert(Insert(xid: xid, relationOID: oid, newTuple: tuple))
        case .update:
            let xid = try streamedXID(&r)
            let oid = try r.uint32("relation OID")
            var marker = try r.uint8("tuple marker")
            var oldKind: Update.OldTupleKind?
            var oldTuple: TupleData?
            if let kind = Update.OldTupleKind(rawValue: marker) {
                oldKind = kind
                oldTuple = try TupleData.decode(&r)
                marker = try r.uint8("new tuple marker")
            }
            guard marker == 78 else {
                throw r.error(
                    .invalidValue(field: "tuple marker (expected 'N')", value: Int64(marker)),
                    at: r.offset - 1)
            }
            let newTuple = try TupleData.decode(&r)
            try checkColumns(newTuple, oid, &r)
            message = .update(
                Update(
                    xid: xid, relationOID: oid, oldTupleKind: oldKind, oldTuple: oldTuple, newTuple: newTuple)
            )
        case .delete:
            let xid = try streamedXID(&r)
            let oid = try r.uint32("relation OID")
            let marker = try r.uint8("tuple marker")
            guard let kind = Update.OldTupleKind(rawValue: marker) else {
                throw r.error(
                    .invalidValue(field: "tuple marker (expected 'K' or 'O')", value: Int64(marker)),
                    at: r.offset - 1)
            }
            message = .delete(
                Delete(xid: xid, relationOID: oid, oldTupleKind: kind, oldTuple: try TupleData.decode(&r)))
        case .truncate:
            let xid = try streamedXID(&r)
            let count = try r.int32("relation count")
            guard count >= 0, Int(count) <= r.remaining / 4 else {
                throw r.error(
                    count < 0
                        ? .invalidValue(field: "relation count", value: Int64(count))
                        : .truncated(field: "relation OIDs", needed: Int(count) * 4))
            }
            let options = try r.uint8("options")
            var oids: [UInt32] = []
            oids.reserveCapacity(Int(count))
            for _ in 0..<count { oids.append(try r.uint32("relation OID")) }
            message = .truncate(Truncate(xid: xid, options: options, relationOIDs: oids))
        case .message:
            let xid = try streamedXID(&r)
            let flags = try r.uint8("flags")
            let lsn = try r.lsn("message LSN")
            let prefix = try r.cString("prefix")
            let length = try r.int32("content length")
            let content = Array(r.bytes[try r.range(Int(length), "content")])
            message = .message(
                LogicalMessage(xid: xid, flags: flags, lsn: lsn, prefix: prefix, content: content))
        case .streamStart:
            try requireVersion(2, &r)
            guard !inStreamBlock else {
                throw r.error(.unexpected("Stream Start inside a stream block"), at: 0)
            }
            message = .streamStart(
                StreamStart(xid: try r.uint32("xid"), firstSegment: try r.uint8("first segment")))
        case .streamStop:
            try requireVersion(2, &r)
            guard inStreamBlock else {
                throw r.error(.unexpected("Stream Stop outside a stream block"), at: 0)
            }
            message = .streamStop
        case .streamCommit:
            try requireVersion(2, &r)
            message = .streamCommit(
                StreamCommit(
                    xid: try r.uint32("xid"), flags: try r.uint8("flags"), commitLSN: try r.lsn("commit LSN"),
                    endLSN: try r.lsn("end LSN"), commitTimestamp: try r.timestamp("commit timestamp")))
        case .streamAbort:
            try requireVersion(2, &r)
            let xid = try r.uint32("xid")
            let subxid = try r.uint32("subtransaction xid")
            // Protocol 4 appends the abort LSN and timestamp (parallel apply).
            let lsn = protocolVersion >= 4 ? try r.lsn("abort LSN") : nil
            let ts = protocolVersion >= 4 ? try r.timestamp("abort timestamp") : nil
            message = .streamAbort(
                StreamAbort(xid: xid, subxid: subxid, abortLSN: lsn, abortTimestamp: ts))
        case .beginPrepare:
            try requireVersion(3, &r)
            message = .beginPrepare(
                BeginPrepare(
                    prepareLSN: try r.lsn("prepare LSN"), endLSN: try r.lsn("end LSN"),
                    prepareTimestamp: try r.timestamp("prepare timestamp"), xid: try r.uint32("xid"),
                    gid: try r.cString("gid")))
        case .prepare, .streamPrepare:
            try requireVersion(3, &r)
            let prepare = Prepare(
                flags: try r.uint8("flags"), prepareLSN: try r.lsn("prepare LSN"),
                endLSN: try r.lsn("end LSN"), prepareTimestamp: try r.timestamp("prepare timestamp"),
                xid: try r.uint32("xid"),
                gid: try r.cString("gid"))
            message = type == .prepare ? .prepare(prepare) : .streamPrepare(prepare)
        case .commitPrepared:
            try requireVersion(3, &r)
            message = .commitPrepared(
                CommitPrepared(
                    flags: try r.uint8("flags"), commitLSN: try r.lsn("commit LSN"),
                    endLSN: try r.lsn("end LSN"), commitTimestamp: try r.timestamp("commit timestamp"),
                    xid: try r.uint32("xid"),
                    gid: try r.cString("gid")))
        case .rollbackPrepared:
            try requireVersion(3, &r)
            message = .rollbackPrepared(
                RollbackPrepared(
                    flags: try r.uint8("flags"), prepareEndLSN: try r.lsn("prepare end LSN"),
                    rollbackEndLSN: try r.lsn("rollback end LSN"),
                    prepareTimestamp: try r.timestamp("prepare timestamp"),
                    rollbackTimestamp: try r.timestamp("rollback timestamp"), xid: try r.uint32("xid"),
                    gid: try r.cString("gid")))
        }
        try r.requireEnd()
        // State changes only after the whole message decoded.
        switch message {
        case .relation(let relation): relations[relation.oid] = relation
        case .type(let info): types[info.oid] = info
        case .streamStart: inStreamBlock = true
        case .streamStop: inStreamBlock = false
        default: break
        }
        return message
    }

    /// Changes inside a stream block carry the transaction id first (protocol 2+).
    private func streamedXID(_ r: inout ByteReader) throws(DecodeError) -> UInt32? {
        inStreamBlock ? try r.uint32("xid") : nil
    }

    private func requireVersion(_ version: Int, _ r: inout ByteReader) throws(DecodeError) {
        guard protocolVersion >= version else {
            throw r.error(
                .unexpected("message needs protocol version \(version), stream uses \(protocolVersion)"),
                at: 0)
        }
    }

    /// A change must follow its Relation message and match its column count;
    /// anything else means the stream and our cache disagree.
    private func checkColumns(
        _ tuple: TupleData, _ oid: UInt32, _ r: inout ByteReader
    )
        throws(DecodeError)
    {
        guard let relation = relations[oid] else { throw r.error(.unknownRelation(oid: oid), at: 1) }
        guard relation.columns.count == tuple.count else {
            throw r.error(
                .columnCountMismatch(
                    relation: relation.qualifiedName, expected: relation.columns.count, actual: tuple.count))
        }
    }
}
