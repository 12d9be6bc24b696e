/// pgoutput message types, named by their ASCII letter.
/// PostgreSQL docs, "Logical Replication Message Formats" (protocol versions 1–4).
public enum PGOutputMessageType: UInt8, Sendable, CaseIterable {
    case begin = 66  // 'B'
    case message = 77  // 'M'
    case commit = 67  // 'C'
    case origin = 79  // 'O'
    case relation = 82  // 'R'
    case type = 89  // 'Y'
    case insert = 73  // 'I'
    case update = 85  // 'U'
    case delete = 68  // 'D'
    case truncate = 84  // 'T'
    case streamStart = 83  // 'S'  (protocol 2+)
    case streamStop = 69  // 'E'
    case streamCommit = 99  // 'c'
    case streamAbort = 65  // 'A'
    case beginPrepare = 98  // 'b'  (protocol 3+)
    case prepare = 80  // 'P'
    case commitPrepared = 75  // 'K'
    case rollbackPrepared = 114  // 'r'
    case streamPrepare = 112  // 'p'
}

/// One decoded pgoutput message.
public enum PGOutputMessage: Sendable, Hashable {
    case begin(Begin)
    case commit(Commit)
    case origin(Origin)
    case relation(Relation)
    case type(TypeInfo)
    case insert(Insert)
    case update(Update)
    case delete(Delete)
    case truncate(Truncate)
    case message(LogicalMessage)
    case streamStart(StreamStart)
    case streamStop
    case streamCommit(StreamCommit)
    case streamAbort(StreamAbort)
    case beginPrepare(BeginPrepare)
    case prepare(Prepare)
    case commitPrepared(CommitPrepared)
    case rollbackPrepared(RollbackPrepared)
    case streamPrepare(Prepare)

    public var type: PGOutputMessageType {
        switch self {
        case .begin: .begin
        case .commit: .commit
        case .origin: .origin
        case .relation: .relation
        case .type: .type
        case .insert: .insert
        case .update: .update
        case .delete: .delete
        case .truncate: .truncate
        case .message: .message
        case .streamStart: .streamStart
        case .streamStop: .streamStop
        case .streamCommit: .streamCommit
        case .streamAbort: .streamAbort
        case .beginPrepare: .beginPrepare
        case .prepare: .prepare
        case .commitPrepared: .commitPrepared
        case .rollbackPrepared: .rollbackPrepared
        case .streamPrepare: .streamPrepare
        }
    }
}

/// 'B': start of a committed transaction (20 bytes after the type).
public struct Begin: Sendable, Hashable {
    /// LSN of the commit record ("final LSN").
    public var finalLSN: LSN
    public var commitTimestamp: PostgresTimestamp
    public var xid: UInt32
}

/// 'C': end of a transaction (25 bytes after the type).
public struct Commit: Sendable, Hashable {
    public var flags: UInt8
    /// LSN of the commit record. Reporting this as flushed would replay the transaction.
    public var commitLSN: LSN
    /// End LSN of the transaction: the position to confirm once all its events are acknowledged.
    public var endLSN: LSN
    public var commitTimestamp: PostgresTimestamp
}

/// 'O': the transaction was replayed from another node's replication origin.
public struct Origin: Sendable, Hashable {
    public var commitLSN: LSN
    public var name: String
}

/// 'R': describes a relation's columns. Sent before the first change of a
/// relation and again after any schema change, possibly mid-stream.
public struct Relation: Sendable, Hashable {
    public struct Column: Sendable, Hashable {
        /// Bit 1: part of the replica identity key.
        public var flags: UInt8
        public var name: String
        public var typeOID: UInt32
        public var typeModifier: Int32
        public var isKey: Bool { flags & 1 != 0 }
        public init(flags: UInt8 = 0, name: String, typeOID: UInt32, typeModifier: Int32 = -1) {
            self.flags = flags
            self.name = name
            self.typeOID = typeOID
            self.typeModifier = typeModifier
        }
    }
    /// Present only inside a streamed transaction (protocol 2+).
    public var xid: UInt32?
    public var oid: UInt32
    /// Empty means `pg_catalog`.
    public var namespace: String
    public var name: String
    /// `d` default, `n` nothing, `f` full, `i` index.
    public var replicaIdentity: UInt8
    public var columns: [Column]

    /// `schema.table`, with `pg_catalog` for an empty namespace.
    public var qualifiedName: String { (namespace.isEmpty ? "pg_catalog" : namespace) + "." + name }

    public init(
        xid: UInt32? = nil, oid: UInt32, namespace: String, name: String, replicaIdentity: UInt8 = 100,
        columns: [Column]
    ) {
        self.xid = xid
        self.oid = oid
        self.namespace = namespace
        self.name = name
        self.replicaIdentity = replicaIdentity
        self.columns = columns
    }
}

/// 'Y': a non-built-in data type used by a following Relation.
public struct TypeInfo: Sendable, Hashable {
    public var xid: UInt32?
    public var oid: UInt32
    public var namespace: String
    public var name: String
}

/// 'I': a new row.
public struct Insert: Sendable, Hashable {
    public var xid: UInt32?
    public var relationOID: UInt32
    public var newTuple: TupleData

    public init(xid: UInt32? = nil, relationOID: UInt32, newTuple: TupleData) {
        self.xid = xid
        self.relationOID = relationOID
        self.newTuple = newTuple
    }
}

/// 'U': an updated row. The old tuple is present with REPLICA IDENTITY FULL
/// (`O`) or when the key changed (`K`).
public struct Update: Sendable, Hashable {
    public enum OldTupleKind: UInt8, Sendable {
        case key = 75
        case old = 79
    }  // 'K', 'O'
    public var xid: UInt32?
    public var relationOID: UInt32
    public var oldTupleKind: OldTupleKind?
    public var oldTuple: TupleData?
    public var newTuple: TupleData
}

/// 'D': a deleted row, identified by its key (`K`) or whole old row (`O`).
public struct Delete: Sendable, Hashable {
    public var xid: UInt32?
    public var relationOID: UInt32
    public var oldTupleKind: Update.OldTupleKind
    public var oldTuple: TupleData
}

/// 'T': one TRUNCATE over one or more relations.
public struct Truncate: Sendable, Hashable {
    public var xid: UInt32?
    /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
    public var options: UInt8
    public var relationOIDs: [UInt32]
}

/// 'M': a logical decoding message (`pg_logical_emit_message`).
public struct LogicalMessage: Sendable, Hashable {
    public var xid: UInt32?
    /// Bit 1: transactional (part of the enclosing transaction, sent at its commit).
    public var flags: UInt8
    public var lsn: LSN
    public var prefix: String
    public var content: [UInt8]
    public var isTransactional: Bool { flags & 1 != 0 }
}

/// 'S': the start of a block of a streamed in-progress transaction.
public struct StreamStart: Sendable, Hashable {
    public var xid: UInt32
    /// 1 for the transaction's first block.
    public var firstSegment: UInt8
}

/// 'c': a streamed transaction committed.
public struct StreamCommit: Sendable, Hashable {
    public var xid: UInt32
    public var flags: UInt8
    public var commitLSN: LSN
    public var endLSN: LSN
    public var commitTimestamp: PostgresTimestamp
}

/// 'A': a streamed (sub)transaction aborted. Protocol 4 adds the abort LSN and time.
public struct StreamAbort: Sendable, Hashable {
    public var xid: UInt32
    public var subxid: UInt32
    public var abortLSN: LSN?
    public var abortTimestamp: PostgresTimestamp?
}

/// 'b': start of a prepared transaction (two-phase, protocol 3+).
public struct BeginPrepare: Sendable, Hashable {
    public var prepareLSN: LSN
    public var endLSN: LSN
    public var prepareTimestamp: PostgresTimestamp
    public var xid: UInt32
    public var gid: String
}

/// 'P' (and 'p' for a streamed transaction): the transaction was prepared.
public struct Prepare: Sendable, Hashable {
    public var flags: UInt8
    public var prepareLSN: LSN
    public var endLSN: LSN
    public var prepareTimestamp: PostgresTimestamp
    public var xid: UInt32
    public var gid: String
}

/// 'K': a prepared transaction was committed.
public struct CommitPrepared: Sendable, Hashable {
    public var flags: UInt8
    public var commitLSN: LSN
    public var endLSN: LSN
    public var commitTimestamp: PostgresTimestamp
    public var xid: UInt32
    public var gid: String
}

/// 'r': a prepared transaction was rolled back.
public struct RollbackPrepared: Sendable, Hashable {
    public var flags: UInt8
    public var prepareEndLSN: LSN
    public var rollbackEndLSN: LSN
    public var prepareTimestamp: PostgresTimestamp
    public var rollbackTimestamp: PostgresTimestamp
    public var xid: UInt32
    public var gid: String
}
