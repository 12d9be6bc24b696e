// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "outbox-relay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "outbox-relay", targets: ["OutboxRelayCLI"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // System library: a module map over libpq, nothing else.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // System library: a module map over librdkafka (Debian's librdkafka-dev), nothing else.
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        // Pure decoding of pgoutput and of the streaming replication framing. No I/O.
        .target(name: "PGOutput"),
        // The libpq replication connection: a thread owns the PGconn.
        .target(
            name: "PostgresReplication",
            dependencies: [
                "CLibPQ", "PGOutput",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Events, routing, the pipeline, acknowledgement tracking, simple sinks.
        .target(
            name: "OutboxRelay",
            dependencies: [
                "PGOutput", "PostgresReplication",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // EventSink over librdkafka: idempotent producer, delivery reports as acks, dead-letter topic.
        .target(
            name: "KafkaSink",
            dependencies: [
                "OutboxRelay", "CRdKafka",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The polling baseline and fallback: FOR UPDATE SKIP LOCKED batches, LISTEN/NOTIFY waker, same router and sinks.
        .target(
            name: "PollingRelay",
            dependencies: [
                "OutboxRelay", "PostgresReplication", "PGOutput",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "OutboxRelayCLI",
            dependencies: [
                "OutboxRelay", "PGOutput", "KafkaSink", "PollingRelay", "PostgresReplication",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "DecoderBench",
            dependencies: ["PGOutput", "OutboxRelay", "TestFixtures"],
            path: "bench/DecoderBench"
        ),
        // End-to-end latency: writer and Kafka consumer in one process, the relay binary under test in another (bench/latency.sh).
        .executableTarget(
            name: "LatencyBench",
            dependencies: ["CLibPQ", "CRdKafka", "PostgresReplication", .product(name: "Histogram", package: "hdrhistogram-swift")],
            path: "bench/LatencyBench"
        ),
        // Loads the pgoutput messages captured by scripts/capture-fixtures.sh.
        .target(name: "TestFixtures", dependencies: ["PGOutput"], path: "Tests/TestFixtures", exclude: ["Fixtures"]),
        .testTarget(name: "PGOutputTests", dependencies: ["PGOutput", "TestFixtures"]),
        .testTarget(name: "OutboxRelayTests", dependencies: ["OutboxRelay", "PGOutput", "TestFixtures"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["OutboxRelay", "PostgresReplication", "PGOutput", "CLibPQ", "KafkaSink", "PollingRelay"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
