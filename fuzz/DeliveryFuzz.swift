// libFuzzer target for the delivery machine (OutboxCore's DeliveryMachine),
// built by scripts/fuzz.sh with `swiftc -sanitize=fuzzer,address`.
//
// Each input byte is one step of a simulated destination and relay: accept an
// event (key from the byte), let the machine act (connect, publish, close),
// complete or fail a connection attempt, store the oldest unstored record of
// the link (a broker stores what one connection sent in order), acknowledge a
// stored record (in any order, twice, or after its link is gone), refuse one
// for good, lose the link, hold or release it, move the clock, discard all.
//
// The invariants, checked after every step and at the end:
// - nothing is acknowledged that the destination did not store;
// - no ticket is acknowledged twice;
// - per key, the order of first stores equals the accept order;
// - every accepted event ends acknowledged, dead-lettered, refused (the relay
//   stopped), discarded (a stale session), or still held by the machine (waiting or in flight).
import OutboxCore
import PGOutput

struct Simulation {
    typealias Machine = DeliveryMachine<Int, Int>
    var machine: Machine
    var now = Instant.milliseconds(1_000)
    var nextEvent = 1
    /// The connection attempt under way.
    var connecting = false
    /// The link's records in send order: (token, event, stored).
    var link: [(token: Int, event: Int, stored: Bool)] = []
    var generation: UInt64 = 0
    var nextToken = 1
    /// Events the destination stored, in store order; and which ones are dead-letter copies.
    var storedOrder: [Int] = []
    var stored = Set<Int>()
    var acknowledged = Set<Int>()
    var deadLetterCopies = Set<Int>()
    var discarded = 0
    var stopped = false
    var keyOf: [Int: Int] = [:]
    var tokenEvent: [Int: Int] = [:]
    var deadLetterTokens = Set<Int>()

    init(deadLetter: Bool) {
        var c = Machine.Configuration(destination: "Fuzz")
        c.hasDeadLetter = deadLetter
        c.acknowledgementTimeoutMilliseconds = 500
        c.backoff = .init(initialMilliseconds: 10, capMilliseconds: 200)
        machine = Machine(configuration: c)
    }

    mutating func act() {
        var steps = 0
        while steps < 64, !stopped {
            steps += 1
            switch machine.next(now: now, canPublish: link.count < 16) {
            case .connect: connecting = true
            case .publish(let record):
                let token = nextToken
                nextToken += 1
                tokenEvent[token] = record.message
                if record.isDeadLetter { deadLetterTokens.insert(token) }
                link.append((token, record.message, false))
                machine.handedOver(token: token, now: now)
            case .close:
                link.removeAll()
            case .wait: return
            case .fail: stopped = true
            }
        }
    }

    mutating func handle(_ refusal: Machine.Refusal) {
        switch refusal {
        case .deadLetter(let record, let why):
            machine.acceptDeadLetter(record.message, for: record, because: why)
        case .stop(let error):
            precondition(!error.retryable)
            stopped = true
        case .ignored: break
        }
    }

    mutating func step(_ byte: UInt8) {
        guard !stopped else { return }
        switch byte >> 4 {
        case 0, 1, 2:
            let event = nextEvent
            nextEvent += 1
            keyOf[event] = Int(byte & 0x3)
            machine.accept(
                event, ticket: UInt64(event), weight: 1, eventID: "\(event)", lsn: LSN(UInt64(event)),
                key: "\(byte & 0x3)")
        case 3:
            if connecting {
                connecting = false
                if byte & 0x1 == 0 {
                    link.removeAll()
                    generation = machine.connected(now: now)
                } else {
                    machine.connectFailed("refused", permanent: false, now: now)
                }
            }
        case 4, 5, 6:
            // The broker stores the oldest record it has not stored on this link.
            if let i = link.firstIndex(where: { !$0.stored }) {
                link[i].stored = true
                let event = link[i].event
                if deadLetterTokens.contains(link[i].token) {
                    deadLetterCopies.insert(event)
                } else if stored.insert(event).inserted {
                    storedOrder.append(event)
                }
            }
        case 7, 8, 9:
            // An acknowledgement for a stored record, in any order (byte picks which), maybe twice.
            let candidates = link.filter(\.stored)
            guard !candidates.isEmpty else { return }
            let pick = candidates[Int(byte & 0xF) % candidates.count]
            if let ack = machine.delivered(pick.token, generation: generation) {
                let event = Int(ack.ticket)
                precondition(
                    stored.contains(event) || deadLetterCopies.contains(event),
                    "acknowledged \(event) that was never stored")
                precondition(acknowledged.insert(event).inserted, "acknowledged \(event) twice")
            }
            if byte & 0x8 == 0 { link.removeAll { $0.token == pick.token } }
        case 10:
            // A refusal for good of an unstored record.
            if let i = link.firstIndex(where: { !$0.stored }) {
                let token = link[i].token
                link.remove(at: i)
                handle(machine.refused(token, generation: generation, because: "too large"))
            }
        case 11:
            // The link drops: what was not stored is gone.
            if !link.isEmpty || byte & 1 == 1 {
                link.removeAll()
                machine.linkLost("reset", generation: generation, now: now)
            }
        case 12:
            // A late result from an older link.
            if generation > 1, let token = tokenEvent.keys.first {
                _ = machine.delivered(token, generation: generation - 1)
            }
        case 13:
            if byte & 1 == 0 {
                machine.hold(until: byte & 2 == 0 ? now + 50 : nil, because: "busy")
            } else {
                machine.release()
            }
        case 14:
            now = now + Int(byte & 0xF) * 40
        default:
            if byte == 0xFF {
                discarded += machine.discardAll()
                link.removeAll()
            }
        }
        act()
    }

    func check() {
        // Per key, first stores follow accept order (event numbers increase with accept order).
        var last: [Int: Int] = [:]
        for event in storedOrder {
            let key = keyOf[event]!
            if let previous = last[key] {
                precondition(event > previous, "key \(key): \(event) stored first after \(previous)")
            }
            last[key] = event
        }
        // Everything accepted is accounted for.
        let settled = acknowledged.count + discarded
        precondition(
            stopped || settled + machine.unsettled == nextEvent - 1,
            "accepted \(nextEvent - 1), settled \(settled), held \(machine.unsettled)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    var simulation = Simulation(deadLetter: first & 1 == 0)
    for byte in input.dropFirst() {
        simulation.step(byte)
        simulation.check()
    }
    return 0
}
