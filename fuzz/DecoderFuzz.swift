// libFuzzer target for the relay's pure core: replication framing, the
// pgoutput decoder, the stream state machine, the outbox router and the NDJSON
// encoder — the modules PGOutput and OutboxCore as they are, built by
// scripts/fuzz.sh with `swiftc -sanitize=fuzzer,address`.
//
// Input: byte 0 holds flags (protocol version, tombstones, extra header
// column, the outbox schema, ack policy); then messages, each a 2-byte
// big-endian length and its bytes. Each message is tried as a CopyData frame
// (XLogData or keepalive); what is not one is fed as the payload of an
// XLogData frame, so captured pgoutput messages reach the decoder. Between
// messages the clock moves, `next(now:)` is asked what to do, status updates
// are "sent", and published events are acknowledged (or not) by the flags.
// A session the machine ends is started again, so the fuzzer keeps going.
// Any trap or sanitizer report is a bug: the machine must only ever return
// actions, and the decoder and router only throw or return poison results.
import OutboxCore
import PGOutput

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    var routing = RoutingConfig()
    routing.tombstones = first & 0x10 != 0
    routing.headerColumns = first & 0x20 != 0 ? [.init(column: "extra", header: "x")] : []
    routing.schema = first & 0x40 != 0 ? "loose" : "public"
    var configuration = StreamConfiguration(routing: routing)
    configuration.protocolVersion = Int(first % 4) + 1
    configuration.maxInFlightEvents = 8
    let acknowledge = first & 0x80 == 0
    var machine = StreamMachine(configuration: configuration)
    var now = Instant.milliseconds(1_000)
    let settings = ServerSettings(slotConfirmedFlush: LSN(1), walSenderTimeoutMilliseconds: 10_000)
    _ = machine.sessionStarted(settings, now: now)
    var line: [UInt8] = []
    var offset = 1
    while offset + 2 <= input.count {
        let length = Int(input[offset]) << 8 | Int(input[offset + 1])
        offset += 2
        let end = min(input.count, offset + length)
        let bytes = Array(input[offset..<end])
        offset = end
        // The low bits of the length also move the clock: most steps are small, some cross deadlines.
        now = now + (length & 0x7 == 0x7 ? 6_000 : length & 0x3)
        let message =
            (try? ReplicationMessage.decode(bytes))
            ?? .xLogData(
                walStart: LSN(UInt64(offset)), walEnd: LSN(UInt64(offset)), sendTime: PostgresTimestamp(rawValue: 0),
                payload: bytes)
        var action = machine.received(message, now: now)
        while true {
            switch action {
            case .publish(let event, let ticket):
                line.removeAll(keepingCapacity: true)
                event.appendJSONLine(to: &line)
                if acknowledge { machine.acknowledged(Acknowledgement(ticket: ticket, weight: event.weight)) }
                action = .none
                continue
            case .deadLetter(let poison, _):
                _ = poison.description
                action = machine.deadLetterResult(poison, accepted: length & 1 == 0)
                continue
            case .end(let reason):
                _ = reason.description
                _ = machine.sessionStarted(settings, now: now)
            case .none:
                break
            }
            break
        }
        switch machine.next(now: now) {
        case .sendStatus(let report): machine.statusSent(report, now: now)
        case .end, .finish: _ = machine.sessionStarted(settings, now: now)
        case .read, .waitForSink, .drain: break
        }
    }
    return 0
}
