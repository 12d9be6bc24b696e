import OutboxCore
import OutboxRelay
import PGOutput
import PostgresClient
import Testing

/// `run` and `poll` map errors with the same function (`Relay.sinkFailure`,
/// `RelayError.disposition`) and the same `Supervisor`: one test per class.
@Suite("One error mapping for run and poll")
struct ErrorMappingTests {
    struct Other: Error {}

    @Test func aRetryableSinkErrorInterruptsTheSessionAndIsRetried() {
        let mapped = Relay.sinkFailure(SinkError("Kafka transaction aborted", retryable: true))
        guard case .sinkInterrupted = mapped else { return #expect(Bool(false), "\(mapped)") }
        #expect(mapped.disposition == .retry)
    }

    @Test func aPermanentSinkErrorStops() {
        #expect(Relay.sinkFailure(SinkError("NATS refused event id=1")).disposition == .fail)
        #expect(Relay.sinkFailure(Other()).disposition == .fail)
    }

    @Test func databaseAndReplicationErrorsMapAlike() {
        for wrap in [RelayError.database, RelayError.replication] {
            #expect(wrap(.connectionLost("reset")).disposition == .retry)
            #expect(wrap(.connectionFailed("refused")).disposition == .retry)
            #expect(
                wrap(.serverError(command: "claim", sqlState: "40001", message: "serialization")).disposition == .retry)
            #expect(wrap(.serverError(command: "claim", sqlState: "42P01", message: "no table")).disposition == .fail)
            #expect(wrap(.invalidConfiguration("x")).disposition == .fail)
        }
        #expect(RelayError.replication(.slotInUse(slot: "s", pid: 1)).disposition == .standBy)
        #expect(RelayError.replication(.slotSynced(slot: "s")).disposition == .standBy)
    }

    @Test func sessionEndsAndPoisonMapAsBefore() {
        #expect(RelayError.session(.receiveTimeout(milliseconds: 10)).disposition == .retry)
        #expect(RelayError.session(.protocolViolation("x")).disposition == .fail)
        #expect(RelayError.unexpectedMessage("x").disposition == .fail)
    }
}
