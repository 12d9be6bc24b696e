import OutboxCore
import Testing

/// `outbox-relay doctor`'s judgement, fact by fact: a healthy database (as
/// PostgreSQL 15 and 18 report one) is ready, and each broken fact fails or
/// warns in its own line with a fix naming the setting or statement.
@Suite("SetupDoctor: each broken fact, its line and its fix")
struct SetupDoctorTests {
    static let expected = SetupDoctor.Expectations(
        requiredColumns: ["id", "aggregatetype", "aggregateid", "type", "payload"], optionalColumns: ["headers"])

    /// What SetupProbe reads from `outbox-relay init` plus a pgoutput slot, on 15.
    static func healthy(version: Int = 150_020) -> SetupFacts {
        var facts = SetupFacts(
            server: .init(
                version: version, versionText: "\(version / 10_000).x", database: "app", role: "outbox_relay",
                inRecovery: false))
        facts.settings = [
            "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
            "max_slot_wal_keep_size": "50GB",
            "hot_standby_feedback": "off", "primary_slot_name": "",
        ]
        if version >= 170_000 {
            facts.settings["sync_replication_slots"] = "off"; facts.settings["synchronized_standby_slots"] = ""
        }
        if version >= 180_000 { facts.settings["idle_replication_slot_timeout"] = "0" }
        facts.slotsInUse = 1
        facts.walSendersInUse = 0
        facts.roleCanReplicate = true
        facts.replication = .opened(systemIdentifier: "7716103339725453488", timeline: 1)
        facts.table = .init(
            columns: [
                "id": .init(type: "uuid"), "aggregatetype": .init(type: "character varying(255)"),
                "aggregateid": .init(type: "character varying(255)"), "type": .init(type: "character varying(255)"),
                "payload": .init(type: "jsonb"), "headers": .init(type: "jsonb"),
                "created_at": .init(type: "timestamp with time zone"),
            ])
        facts.publication = .init()
        facts.slot = .init(database: "app", failover: version >= 170_000)
        facts.registry = .present(writable: true)
        facts.registryRecord = .init(
            systemIdentifier: "7716103339725453488", timeline: 1, createdAt: "2026-12-06 08:00:00+00",
            confirmedLSN: "0/1A2B3C4")
        return facts
    }

    static func check(_ name: String, _ facts: SetupFacts) -> SetupDoctor.Check? {
        SetupDoctor.diagnose(facts, expected).first { $0.name == name }
    }

    static func expectFailure(
        _ name: String, _ facts: SetupFacts, fix: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let checks = SetupDoctor.diagnose(facts, expected)
        let line = checks.first { $0.name == name }
        #expect(line?.status == .failure, "\(checks)", sourceLocation: sourceLocation)
        #expect(line?.fix?.contains(fix) == true, "\(line?.fix ?? "no fix")", sourceLocation: sourceLocation)
        #expect(!SetupDoctor.ready(checks), sourceLocation: sourceLocation)
        let others = checks.filter { $0.status == .failure && $0.name != name }
        #expect(others.isEmpty, "only \(name) should fail: \(others)", sourceLocation: sourceLocation)
    }

    @Test(arguments: [140_013, 150_020, 160_009, 170_005, 180_001])
    func aHealthyDatabaseIsReadyWithNothingToFix(version: Int) {
        let checks = SetupDoctor.diagnose(Self.healthy(version: version), Self.expected)
        #expect(SetupDoctor.ready(checks))
        #expect(checks.allSatisfy { $0.status == .ok }, "\(checks.filter { $0.status != .ok })")
        #expect(checks.contains { $0.name == "idle_replication_slot_timeout" } == (version >= 180_000))
    }

    @Test func noConnectionIsOneFailingLineWithTheReason() {
        let facts = SetupFacts(
            server: nil, connectionError: "FATAL:  password authentication failed for user \"outbox_relay\"")
        let checks = SetupDoctor.diagnose(facts, Self.expected)
        #expect(checks.count == 1 && checks[0].status == .failure)
        #expect(checks[0].fix?.contains("password") == true)
    }

    @Test func postgres13IsRefused() {
        var facts = Self.healthy()
        facts.server?.version = 130_016
        Self.expectFailure("server version", facts, fix: "14 or later")
    }

    @Test func walLevelReplicaNeedsLogicalAndARestart() {
        var facts = Self.healthy()
        facts.settings["wal_level"] = "replica"
        Self.expectFailure("wal_level", facts, fix: "wal_level = logical; then restart")
    }

    @Test func noFreeSlotMattersOnlyWhenTheRelaysSlotIsMissing() {
        var facts = Self.healthy()
        facts.settings["max_replication_slots"] = "1"
        #expect(Self.check("max_replication_slots", facts)?.status == .ok)  // the one slot is the relay's
        facts.slot = nil
        facts.registryRecord = nil
        Self.expectFailure("max_replication_slots", facts, fix: "max_replication_slots = 2")
    }

    @Test func everyWALSenderInUseRefusesTheRelay() {
        var facts = Self.healthy()
        facts.walSendersInUse = 10
        Self.expectFailure("max_wal_senders", facts, fix: "max_wal_senders = 12")
    }

    @Test func unlimitedWALKeepSizeWarnsOfTheDiskAndALimitExplainsALostSlot() {
        var facts = Self.healthy()
        facts.settings["max_slot_wal_keep_size"] = "-1"
        let line = Self.check("max_slot_wal_keep_size", facts)
        #expect(line?.status == .warning && line?.detail.contains("disk") == true)
        #expect(SetupDoctor.ready(SetupDoctor.diagnose(facts, Self.expected)))
        #expect(
            Self.check("max_slot_wal_keep_size", Self.healthy())?.detail.contains("recreate-slot --accept-gap") == true)
    }

    @Test func idleSlotTimeoutOn18Warns() {
        var facts = Self.healthy(version: 180_001)
        facts.settings["idle_replication_slot_timeout"] = "1min"
        let line = Self.check("idle_replication_slot_timeout", facts)
        #expect(line?.status == .warning && line?.detail.hasPrefix("1min") == true)
    }

    @Test func aRoleWithoutReplicationIsToldTheAlterRole() {
        var facts = Self.healthy()
        facts.roleCanReplicate = false
        facts.replication = .refused("FATAL:  must be superuser or replication role to start walsender")
        let checks = SetupDoctor.diagnose(facts, Self.expected)
        #expect(
            checks.first { $0.name == "role" }?.fix
                == "ALTER ROLE outbox_relay REPLICATION (or use the least-privilege role of sql/03-relay-role.sql)")
        #expect(checks.first { $0.name == "replication connection" }?.fix == "ALTER ROLE outbox_relay REPLICATION")
    }

    @Test func aMissingPgHbaLineNamesTheDatabaseNotTheReplicationKeyword() {
        var facts = Self.healthy()
        facts.replication = .refused(
            "PostgreSQL rejected the connection: FATAL:  no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"outbox_relay\", database \"app\""
        )
        Self.expectFailure(
            "replication connection", facts, fix: "host app outbox_relay <relay address>/32 scram-sha-256")
        #expect(Self.check("replication connection", facts)?.fix?.contains("not the `replication` keyword") == true)
    }

    @Test func aMissingTableOrColumnFails() {
        var facts = Self.healthy()
        facts.table?.columns["aggregateid"] = nil
        Self.expectFailure("outbox table", facts, fix: "--aggregate-id-column")
        #expect(Self.check("outbox table", facts)?.detail.contains("\"aggregateid\"") == true)
        facts.table = nil
        Self.expectFailure("outbox table", facts, fix: "outbox-relay init")
    }

    @Test func noHeadersColumnIsFine() {
        var facts = Self.healthy()
        facts.table?.columns["headers"] = nil
        let line = Self.check("outbox table", facts)
        #expect(line?.status == .ok && line?.detail.contains("no column \"headers\"") == true)
    }

    @Test func aGeneratedColumnFailsUnless18PublishesIt() {
        var facts = Self.healthy()
        facts.table?.columns["type"]?.generated = true
        Self.expectFailure("outbox table", facts, fix: "ordinary column")
        var on18 = Self.healthy(version: 180_001)
        on18.table?.columns["type"]?.generated = true
        Self.expectFailure("outbox table", on18, fix: "publish_generated_columns = stored")
        on18.table?.generatedColumnsPublished = true
        #expect(Self.check("outbox table", on18)?.status == .ok)
    }

    @Test func withoutSelectOnlyPollingIsAffected() {
        var facts = Self.healthy()
        facts.table?.selectable = false
        let line = Self.check("outbox table privilege", facts)
        #expect(
            line?.status == .warning
                && line?.fix == "GRANT SELECT ON public.outbox TO outbox_relay (sql/03-relay-role.sql)")
    }

    @Test func publishedDeletesWithoutReplicaIdentityBreakTheServicesDeletes() {
        var facts = Self.healthy()
        facts.table?.replicaIdentity = "n"
        #expect(Self.check("replica identity", facts)?.status == .ok)  // inserts only: nothing needed
        facts.publication?.delete = true
        Self.expectFailure("replica identity", facts, fix: "SET (publish = 'insert')")
        #expect(Self.check("replica identity", facts)?.fix?.contains("REPLICA IDENTITY DEFAULT") == true)
        facts.table?.replicaIdentity = "d"
        facts.table?.hasPrimaryKey = false
        Self.expectFailure("replica identity", facts, fix: "primary key")
        facts.table?.replicaIdentity = "f"
        #expect(Self.check("replica identity", facts)?.status == .warning)
    }

    @Test func publicationMissingNotPublishingInsertsOrWithoutTheTableFails() {
        var facts = Self.healthy()
        facts.publication = nil
        Self.expectFailure(
            "publication", facts, fix: "CREATE PUBLICATION outbox_pub FOR TABLE public.outbox WITH (publish = 'insert')"
        )
        facts.publication = .init(insert: false, update: true)
        Self.expectFailure("publication", facts, fix: "SET (publish = 'insert')")
        facts.publication = .init(includesTable: false)
        Self.expectFailure("publication", facts, fix: "ALTER PUBLICATION outbox_pub ADD TABLE public.outbox")
    }

    @Test func publishingMoreThanInsertsOfTheOutboxWarns() {
        var facts = Self.healthy()
        facts.publication = .init(update: true, truncate: true)
        #expect(Self.check("publication", facts)?.detail.contains("update, truncate") == true)
        facts.publication = .init(allTables: true)
        #expect(Self.check("publication tables", facts)?.status == .warning)
        facts.publication = .init(otherTables: 2)
        #expect(Self.check("publication tables", facts)?.fix == "ALTER PUBLICATION outbox_pub SET TABLE public.outbox")
        #expect(SetupDoctor.ready(SetupDoctor.diagnose(facts, Self.expected)))
    }

    @Test func aMissingSlotIsAFirstStartUnlessTheRegistryRecordedIt() {
        var facts = Self.healthy()
        facts.slot = nil
        facts.registryRecord = nil
        let first = Self.check("slot", facts)
        #expect(first?.status == .warning && first?.fix?.contains("--create-slot") == true)
        facts.registryRecord = .init(
            systemIdentifier: "1", timeline: 1, createdAt: "2026-12-01", confirmedLSN: "0/16B3748")
        Self.expectFailure("slot", facts, fix: "recreate-slot --slot outbox_slot --accept-gap")
        #expect(Self.check("slot", facts)?.detail.contains("0/16B3748") == true)
    }

    @Test func aSlotOfAnotherPluginTypeOrDatabaseFails() {
        var facts = Self.healthy()
        facts.slot?.plugin = "test_decoding"
        Self.expectFailure("slot", facts, fix: "another slot name")
        facts = Self.healthy()
        facts.slot?.slotType = "physical"
        Self.expectFailure("slot", facts, fix: "--slot")
        facts = Self.healthy()
        facts.slot?.database = "other"
        Self.expectFailure("slot", facts, fix: "connect to other")
    }

    @Test func aLostOrInvalidatedSlotFailsAndAnUnreservedOneWarns() {
        var facts = Self.healthy()
        facts.slot?.walStatus = "lost"
        Self.expectFailure("slot", facts, fix: "--accept-gap")
        facts.slot?.walStatus = "lost"
        facts.slot?.invalidation = "wal_removed"
        Self.expectFailure("slot", facts, fix: "--accept-gap")
        facts = Self.healthy()
        facts.slot?.walStatus = "unreserved"
        facts.slot?.lagBytes = 3 << 30
        let line = Self.check("slot", facts)
        #expect(line?.status == .warning && line?.detail.contains("3 GB behind") == true)
    }

    @Test func aSlotInUseIsReportedAsARunningRelay() {
        var facts = Self.healthy()
        facts.slot?.active = true
        facts.slot?.activePID = 4242
        facts.walSendersInUse = 1
        let line = Self.check("slot", facts)
        #expect(line?.status == .ok && line?.detail.contains("in use by PID 4242") == true)
    }

    @Test func on17AnOrdinarySlotWarnsThatAFailoverLosesIt() {
        var facts = Self.healthy(version: 170_005)
        facts.slot?.failover = false
        #expect(Self.check("failover slot", facts)?.status == .warning)
        #expect(Self.check("failover slot", Self.healthy(version: 160_009)) == nil)
    }

    @Test func aFailoverSlotWithStandbysButNoSynchronizedStandbySlotsWarnsOfPhantomEvents() {
        var facts = Self.healthy(version: 180_001)
        facts.physicalSlots = 1
        let line = Self.check("failover", facts)
        #expect(line?.status == .warning && line?.detail.contains("phantom") == true)
        facts.settings["synchronized_standby_slots"] = "standby1"
        #expect(Self.check("failover", facts)?.status == .ok)
    }

    @Test func theRegistryCannotBeWrittenOrCreated() {
        var facts = Self.healthy()
        facts.registry = .present(writable: false)
        #expect(
            Self.check("slot registry", facts)?.fix?.contains(
                "GRANT SELECT, INSERT, UPDATE ON public.outbox_relay_slots") == true)
        facts.registry = .absent(mayCreate: false)
        facts.registryRecord = nil
        #expect(Self.check("slot registry", facts)?.status == .warning)
        facts.registry = .absent(mayCreate: true)
        #expect(Self.check("slot registry", facts)?.status == .ok)
    }

    @Test func theRegistrySaysWhenTheServerFailedOverSinceTheSlotWasRecorded() {
        var facts = Self.healthy()
        facts.replication = .opened(systemIdentifier: "7716103339725453488", timeline: 2)
        #expect(Self.check("slot registry", facts)?.detail.contains("a failover happened since") == true)
    }

    @Test func aStandbyBefore16CannotDecodeAndOn17NeedsSlotSynchronization() {
        var facts = Self.healthy()
        facts.server?.inRecovery = true
        Self.expectFailure("standby", facts, fix: "the primary")
        var on17 = Self.healthy(version: 170_005)
        on17.server?.inRecovery = true
        on17.slot?.failover = true
        on17.slot?.synced = true
        let line = Self.check("standby", on17)
        #expect(line?.status == .warning)
        for missing in ["hot_standby_feedback", "primary_slot_name", "sync_replication_slots", "dbname"] {
            #expect(line?.detail.contains(missing) == true, "\(missing)")
        }
        on17.settings["hot_standby_feedback"] = "on"
        on17.settings["primary_slot_name"] = "standby1"
        on17.settings["sync_replication_slots"] = "on"
        on17.primaryConninfoNamesDatabase = true
        #expect(Self.check("standby", on17)?.status == .ok)
        #expect(Self.check("failover", on17)?.detail.contains("synchronized copy") == true)
    }

    @Test func quotedIdentifiersInFixes() {
        var expected = Self.expected
        expected.publication = "Outbox Pub"
        var facts = Self.healthy()
        facts.publication = nil
        let line = SetupDoctor.diagnose(facts, expected).first { $0.name == "publication" }
        #expect(line?.fix?.hasPrefix("CREATE PUBLICATION \"Outbox Pub\" FOR TABLE") == true)
    }
}
