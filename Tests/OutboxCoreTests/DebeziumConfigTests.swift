import OutboxCore
import Testing

@Suite("Debezium connector configuration import")
struct DebeziumConfigTests {
    static let properties = #"""
        # A Debezium PostgreSQL connector with the outbox EventRouter
        name=orders-outbox
        connector.class=io.debezium.connector.postgresql.PostgresConnector
        database.hostname = 127.0.0.1
        database.port: 5432
        database.user=dbz
        database.password=se cr'et\\x
        database.dbname=shop
        topic.prefix=shop
        plugin.name=pgoutput
        slot.name=orders_slot
        publication.name=orders_pub
        table.include.list=public.outbox
        value.converter=org.apache.kafka.connect.json.JsonConverter
        value.converter.schemas.enable=false
        transforms=outbox
        transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
        transforms.outbox.route.by.field=kind
        transforms.outbox.route.topic.replacement=events.${routedByValue}
        transforms.outbox.table.fields.additional.placement=tenant:header:org,\
            version:envelope
        transforms.outbox.table.expand.json.payload=true
        """#

    @Test func propertiesTranslateToOptions() throws {
        let config = DebeziumConfig.translate(try DebeziumConfig.pairs(Self.properties))
        #expect(config.problems == [])
        let options = Dictionary(grouping: config.options, by: \.name).mapValues { $0.map(\.value) }
        #expect(
            options["source"] == [#"host='127.0.0.1' port='5432' user='dbz' password='se cr\'et\\x' dbname='shop'"#])
        #expect(options["slot"] == ["orders_slot"] && options["publication"] == ["orders_pub"])
        #expect(options["table"] == ["public.outbox"] && options["value-encoding"] == ["json"])
        #expect(
            options["aggregate-type-column"] == ["kind"]
                && options["route-topic-replacement"] == ["events.${routedByValue}"])
        #expect(options["additional-field"] == ["tenant:header:org", "version:envelope"])
        #expect(options["expand-json-payload"] == ["true"])
        #expect(config.ignored.contains("topic.prefix") && config.ignored.contains("name"))
    }

    @Test func connectRESTJSONIsReadToo() throws {
        let json =
            #"{"name": "x", "config": {"plugin.name": "pgoutput", "table.include.list": "app.outbox", "database.port": 5433, "transforms": "r", "transforms.r.type": "io.debezium.transforms.outbox.EventRouter", "transforms.r.route.tombstone.on.empty.payload": true}}"#
        let config = DebeziumConfig.translate(try DebeziumConfig.pairs(json))
        #expect(config.problems == [])
        #expect(config.options.contains { $0 == ("source", "port='5433'") })
        #expect(config.options.contains { $0 == ("tombstone-on-empty-payload", "true") })
        #expect(
            config.options.contains { $0 == ("slot", "debezium") }
                && config.options.contains { $0 == ("publication", "dbz_publication") })
    }

    @Test func whatCannotBeHonouredIsListedTogetherWithoutValues() throws {
        let text = """
            plugin.name=decoderbufs
            database.password=${file:/secrets/db.properties:password}
            table.include.list=public.outbox_.*
            value.converter=org.apache.kafka.connect.json.JsonConverter
            transforms=outbox,mask
            transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
            transforms.outbox.table.field.event.timestamp=created_at
            transforms.outbox.route.topic.regx=typo
            transforms.mask.type=org.apache.kafka.connect.transforms.MaskField$Value
            database.initial.statements=SET x
            """
        let config = DebeziumConfig.translate(try DebeziumConfig.pairs(text))
        let all = config.problems.joined(separator: "\n")
        for expected in [
            "plugin.name must be pgoutput", "database.password uses a Kafka Connect config provider",
            "table.include.list must name exactly one",
            "schemas.enable is true by default", "transform \"mask\"", "table.field.event.timestamp has no counterpart",
            "transforms.outbox.route.topic.regx is not an EventRouter option",
            "database.initial.statements is not a setting",
        ] {
            #expect(all.contains(expected), "\(expected)")
        }
        #expect(!all.contains("/secrets/db.properties"))
    }
}
