// libFuzzer target for the pgoutput decoder and the replication framing.
// Built by scripts/fuzz.sh with `swiftc -sanitize=fuzzer,address` together
// with Sources/PGOutput. Input: byte 0 picks the protocol version (1–4), then
// a sequence of messages, each a 2-byte big-endian length and its bytes, fed
// to one decoder in order (so Relation caching and stream blocks are reached).
// Any trap or sanitizer report is a bug: the decoder must only ever throw.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    var decoder = PGOutputDecoder(protocolVersion: Int(first % 4) + 1)
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
            case .insert(let i): for index in 0..<i.newTuple.count { _ = i.newTuple.string(at: index) }
            case .update(let u): _ = u.oldTuple?.bytes(at: 0); _ = u.newTuple.bytes(at: 0)
            default: break
            }
        }
        _ = try? ReplicationMessage.decode(message)
    }
    return 0
}
