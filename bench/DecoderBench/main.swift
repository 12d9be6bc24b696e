// Decoder throughput: how many single-row outbox transactions per second the
// pure pipeline stages handle on one core, on messages captured from
// PostgreSQL 15 (Tests/TestFixtures/Fixtures/v1-all.hex: Begin, Insert into
// public.outbox with a unicode jsonb payload and headers, Commit).
//
//   swift run -c release DecoderBench [iterations]
import Foundation
import OutboxCore
import PGOutput
import TestFixtures

let iterations = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 1_000_000 : 1_000_000
let messages = try Fixture.messages("v1-all")
let (begin, relation, insert, commit) = (messages[0], messages[1], messages[2], messages[3])
print(
    "fixture: Begin \(begin.count) B, Insert \(insert.count) B, Commit \(commit.count) B; \(iterations) transactions per stage"
)

func measure(_ name: String, _ body: () throws -> Int) rethrows -> (String, Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let checksum = try body()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    precondition(checksum > 0)
    return (name, Double(iterations) / seconds)
}

/// A decoder that has seen the outbox Relation message, and a router that knows the table.
func primed() throws -> (PGOutputDecoder, OutboxRouter) {
    var decoder = PGOutputDecoder()
    guard case .relation(let r) = try decoder.decode(relation) else {
        fatalError("fixture message 1 is not a Relation")
    }
    var router = OutboxRouter(config: RoutingConfig())
    router.relationChanged(r)
    return (decoder, router)
}

var results: [(String, Double)] = []
results.append(
    try measure("decode (B + I + C)") {
        var (decoder, _) = try primed()
        var count = 0
        for _ in 0..<iterations {
            _ = try decoder.decode(begin)
            if case .insert(let i) = try decoder.decode(insert) { count += i.newTuple.count }
            _ = try decoder.decode(commit)
        }
        return count
    })
results.append(
    try measure("decode + route") {
        var (decoder, router) = try primed()
        var count = 0
        for _ in 0..<iterations {
            guard case .begin(let b) = try decoder.decode(begin), case .insert(let i) = try decoder.decode(insert)
            else { fatalError() }
            if case .success(let e)? = router.route(i, lsn: b.finalLSN, commitTime: b.commitTimestamp) {
                count += e.weight
            }
            _ = try decoder.decode(commit)
        }
        return count
    })
results.append(
    try measure("decode + route + NDJSON line") {
        var (decoder, router) = try primed()
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20)
        var count = 0
        for _ in 0..<iterations {
            guard case .begin(let b) = try decoder.decode(begin), case .insert(let i) = try decoder.decode(insert)
            else { fatalError() }
            if case .success(let e)? = router.route(i, lsn: b.finalLSN, commitTime: b.commitTimestamp) {
                e.appendJSONLine(to: &out)
            }
            _ = try decoder.decode(commit)
            if out.count > 1 << 19 { count += out.count; out.removeAll(keepingCapacity: true) }
        }
        return count + out.count
    })

results.append(
    try measure("stream machine: XLogData → event → NDJSON line, acked") {
        // The relay's own path: framing already split, one clock read per
        // message as the driver does, the machine deciding, the ack fed back.
        var routing = RoutingConfig()
        routing.schema = "public"
        var machine = StreamMachine(configuration: StreamConfiguration(routing: routing))
        func now() -> Instant {
            var ts = timespec()
            clock_gettime(CLOCK_BOOTTIME, &ts)
            return Instant(nanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec))
        }
        _ = machine.sessionStarted(
            ServerSettings(slotConfirmedFlush: .zero, walSenderTimeoutMilliseconds: 0), now: now())
        func frame(_ payload: [UInt8]) -> ReplicationMessage {
            .xLogData(walStart: LSN(1), walEnd: LSN(1), sendTime: PostgresTimestamp(rawValue: 0), payload: payload)
        }
        let (b, r, i, c) = (frame(begin), frame(relation), frame(insert), frame(commit))
        _ = machine.received(b, now: now())
        _ = machine.received(r, now: now())
        _ = machine.received(c, now: now())
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20)
        var count = 0
        for _ in 0..<iterations {
            _ = machine.received(b, now: now())
            if case .publish(let e, let ticket) = machine.received(i, now: now()) {
                e.appendJSONLine(to: &out)
                machine.acknowledged(Acknowledgement(ticket: ticket, weight: e.weight))
            }
            _ = machine.received(c, now: now())
            if out.count > 1 << 19 { count += out.count; out.removeAll(keepingCapacity: true) }
        }
        precondition(machine.stats.eventsAcknowledged == iterations, "the machine must publish every insert")
        return count + out.count
    })

print("")
print("| stage | events/s | ns/event |")
print("|---|---:|---:|")
for (name, rate) in results {
    print("| \(name) | \(Int(rate).formatted()) | \(String(format: "%.0f", 1e9 / rate)) |")
}
