// libFuzzer target for the pgoutput decoder and the replication framing.
// Built by scripts/fuzz.sh with `swiftc -sanitize=fuzzer,address` together
// with Sources/PGOutput. Input: byte 0 picks the protocol version (1–4), then
// a sequence of messages, each a 2-byte big-endian length and its bytes, fed
// to one decoder in order (so Relation caching and stream blocks are reached).
// Every decoded Relation is presented to the outbox router as the outbox
// table, so every decoded Insert (and every transactional message) also goes
// through the router's row mapping and the NDJSON encoder.
// Any trap or sanitizer report is a bug: decoder and router must only ever
// throw or return a poison result.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    var decoder = PGOutputDecoder(protocolVersion: Int(first % 4) + 1)
    var config = RoutingConfig()
    config.tombstones = first & 0x10 != 0
    config.headerColumns = first & 0x20 != 0 ? [.init(column: "extra", header: "x")] : []
    var router = OutboxRouter(config: config)
    var line: [UInt8] = []
    func emit(_ routed: Result<OutboxEvent, PoisonEvent>?) {
        switch routed {
        case .success(let event)?:
            line.removeAll(keepingCapacity: true)
            event.appendJSONLine(to: &line)
        case .failure(let poison)?: _ = poison.description
        case nil: break
        }
    }
    var offset = 1
    while offset + 2 <= input.count {
        let length = Int(input[offset]) << 8 | Int(input[offset + 1])
        offset += 2
        let end = min(input.count, offset + length)
        let message = Array(input[offset..<end])
        offset = end
        if let decoded = try? decoder.decode(message) {
            // Touch what consumers read, so lazy paths run too.
            switch decoded {
            case .relation(var relation):
                relation.namespace = "public"
                relation.name = "outbox"
                router.relationChanged(relation)
            case .insert(let i):
                for index in 0..<i.newTuple.count { _ = i.newTuple.string(at: index) }
                emit(router.route(i, lsn: LSN(1), commitTime: PostgresTimestamp(rawValue: 0)))
            case .message(let m): emit(router.route(m, lsn: LSN(1), commitTime: PostgresTimestamp(rawValue: 0)))
            case .update(let u): _ = u.oldTuple?.bytes(at: 0); _ = u.newTuple.bytes(at: 0)
            default: break
            }
        }
        _ = try? ReplicationMessage.decode(message)
    }
    return 0
}
