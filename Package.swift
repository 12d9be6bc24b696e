// swift-tools-version:6.0
import PackageDescription

/// The delivery machine and its driver are generic; destinations instantiate
/// them in their own modules. Cross-module optimization lets those modules
/// specialize them (unspecialized, NATS drained 10 % slower: generic metadata
/// looked up per event).
let crossModule: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]

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
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
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
        // System library: a module map over the NATS C client (Debian's libnats-dev), nothing else.
        .systemLibrary(
            name: "CNats",
            pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]
        ),
        // System library: libcurl (Debian's libcurl4-openssl-dev) with non-variadic helpers in the shim.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // System library: rabbitmq-c (Debian's librabbitmq-dev) with small C helpers in the shim.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // System library: libmosquitto (Debian's libmosquitto-dev), the MQTT 5 client, used as it is.
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]
        ),
        // System library: Qpid Proton C (Debian's libqpid-proton11-dev), its I/O-free connection driver, with helpers in the shim.
        // (No pkgConfig: Debian's libqpid-proton.pc has a C comment pkg-config parsers reject; the
        // headers and library are on the default paths.)
        .systemLibrary(
            name: "CProton",
            providers: [.apt(["libqpid-proton11-dev"])]
        ),
        // System library: <sys/epoll.h>, which Swift's Glibc module leaves out (libc, nothing to link).
        .systemLibrary(name: "CEpoll"),
        // The data flow, top to bottom: pure pieces first (no C library, no I/O), then
        // the libpq client, the replication session, the driver, the sinks, the CLI.
        //
        // Pure decoding of pgoutput and of the streaming replication framing. No I/O.
        .target(name: "PGOutput"),
        // Pure: events, routing, acknowledgement tracking, the stream state machine, the sink
        // contract. Links no C library, so tests, the fuzzer and benchmarks use it as it is.
        .target(name: "OutboxCore", dependencies: ["PGOutput"], swiftSettings: crossModule),
        // The I/O the pure core leaves out: the monotonic clock, wake-up pipes, the epoll set a
        // sink's wait stands for, threads for blocking connects, and the delivery driver that
        // carries out the delivery machine for every networked destination.
        .target(
            name: "RelayIO",
            dependencies: ["OutboxCore", "PGOutput", "CEpoll", .product(name: "Logging", package: "swift-log")],
            swiftSettings: crossModule
        ),
        // The libpq client (one PGconn per object): replication, polling, status and init use it.
        .target(name: "PostgresClient", dependencies: ["CLibPQ", "PGOutput"]),
        // The replication session: slot and publication checks, START_REPLICATION, status updates.
        .target(
            name: "PostgresReplication",
            dependencies: [
                "PostgresClient", "PGOutput",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The thin driver of the stream machine (one thread, one poll(2)), and the simple sinks.
        .target(
            name: "OutboxRelay",
            dependencies: [
                "OutboxCore", "RelayIO", "PGOutput", "PostgresClient", "PostgresReplication",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // EventSink over librdkafka: idempotent producer, delivery reports as acks, dead-letter topic.
        .target(
            name: "KafkaSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CRdKafka",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // EventSink over NATS JetStream (libnats): PubAcks as acks, Nats-Msg-Id = event id, dead-letter subject.
        .target(
            name: "NATSSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CNats",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // RabbitMQ sink (rabbitmq-c): publisher confirms as acks, mandatory returns and nacks as refusals.
        .target(
            name: "RabbitMQSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // libcurl's multi interface on a thread of its own (the webhook sink and the AWS transports share it).
        .target(name: "CurlIO", dependencies: ["OutboxCore", "RelayIO", "CCurl"]),
        // HTTP webhook sink (libcurl multi): 2xx as acks, retries with backoff, per-key order, HMAC signatures.
        .target(
            name: "HTTPSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CurlIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Redis Streams sink, in Swift over a socket (RESP2): MULTI/EXEC batches, WAIT for replicas, a duplicate window.
        .target(
            name: "RedisSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CEpoll",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // MQTT 5 sink (libmosquitto, driven by the relay's loop): PUBACK/PUBCOMP as acks, reason codes as refusals.
        .target(
            name: "MQTTSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CMosquitto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // AMQP 1.0 sink (Qpid Proton's connection driver on the relay's socket): outcomes as acks and refusals.
        .target(
            name: "AMQP1Sink",
            dependencies: [
                "OutboxCore", "RelayIO", "CProton",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // AWS SQS and SNS (libcurl signs with SigV4): batches, per-entry results, FIFO groups, web identity.
        .target(
            name: "AWSSink",
            dependencies: [
                "OutboxCore", "RelayIO", "CurlIO",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The polling baseline and fallback: FOR UPDATE SKIP LOCKED batches, LISTEN/NOTIFY waker, same router and sinks.
        .target(
            name: "PollingRelay",
            dependencies: [
                "OutboxCore", "RelayIO", "OutboxRelay", "PostgresClient", "PGOutput",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "OutboxRelayCLI",
            dependencies: [
                "OutboxCore", "RelayIO", "OutboxRelay", "PGOutput", "KafkaSink", "NATSSink", "RabbitMQSink", "HTTPSink",
                "RedisSink", "MQTTSink", "AMQP1Sink", "AWSSink", "PollingRelay", "PostgresClient",
                "PostgresReplication",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "DecoderBench",
            dependencies: ["PGOutput", "OutboxCore", "TestFixtures"],
            path: "bench/DecoderBench"
        ),
        // End-to-end latency: writer and Kafka consumer in one process, the relay binary under test in another (bench/latency.sh).
        .executableTarget(
            name: "LatencyBench",
            dependencies: [
                "CLibPQ", "CRdKafka", "PostgresClient", "PostgresReplication",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "bench/LatencyBench"
        ),
        // Loads the pgoutput messages captured by scripts/capture-fixtures.sh.
        .target(name: "TestFixtures", dependencies: ["PGOutput"], path: "Tests/TestFixtures", exclude: ["Fixtures"]),
        .testTarget(name: "PGOutputTests", dependencies: ["PGOutput", "TestFixtures"]),
        .testTarget(name: "OutboxCoreTests", dependencies: ["OutboxCore", "PGOutput", "TestFixtures"]),
        .testTarget(
            name: "OutboxRelayTests", dependencies: ["OutboxRelay", "OutboxCore", "PGOutput", "PostgresClient"]),
        .testTarget(
            name: "SinkTests",
            dependencies: [
                "RelayIO", "NATSSink", "RabbitMQSink", "HTTPSink", "RedisSink", "MQTTSink", "AWSSink", "OutboxCore",
                "PGOutput",
            ]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "OutboxCore", "RelayIO", "OutboxRelay", "PostgresClient", "PostgresReplication", "PGOutput", "CLibPQ",
                "KafkaSink",
                "PollingRelay", "NATSSink", "CNats", "RabbitMQSink", "CRabbitMQ", "HTTPSink", "RedisSink", "MQTTSink",
                "AMQP1Sink", "AWSSink", "CurlIO",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
