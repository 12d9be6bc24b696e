// End-to-end latency of outbox events: COMMIT returned in the writer → record
// received by a Kafka consumer, with the writer and the consumer in this one
// process (one monotonic clock) and the relay under test as the real
// `outbox-relay` binary in its own process. Run through bench/latency.sh,
// which starts PostgreSQL (with pg_stat_statements) and the broker.
//
//   LatencyBench --relay PATH --conninfo ADMIN --relay-conninfo RELAY --brokers HOST:PORT --out DIR [--scale 1.0]
//                [--modes cdc,poll-10,poll-100,poll-1000,notify] [--rates 100,1000,10000] [--sizes 1,10]
//                [--tansu PATH] [--segment-seconds 5] [--relay-args "-X linger.ms=1"]
import CLibPQ
import CRdKafka
import Foundation
import Glibc
import Histogram
import PostgresClient
import PostgresReplication
import Synchronization

// MARK: - Options

struct Options {
    var relay = ""
    var conninfo = ""
    var relayConninfo = ""
    var brokers = ""
    var out = "bench/results"
    var scale = 1.0
    var modes = ["cdc", "poll-10", "poll-100", "poll-1000", "notify-1000"]
    var rates = [100, 1_000, 10_000]
    var sizes = [1, 10]
    var writers = 4
    /// Extra arguments for every relay run, e.g. "-X linger.ms=0".
    var relayArguments: [String] = []
    /// With a tansu binary, every cell gets a fresh broker (empty memory storage),
    /// so no cell pays for the records of the cells before it.
    var tansu: String?
    /// Cells run in segments of at most this many seconds of events, each with
    /// a fresh broker and relay (0: a cell in one piece).
    var segmentSeconds = 5

    init(_ arguments: [String]) {
        var i = 0
        func value() -> String {
            i += 1
            guard i < arguments.count else { fail("missing value for \(arguments[i - 1])") }
            return arguments[i]
        }
        while i < arguments.count {
            switch arguments[i] {
            case "--relay": relay = value()
            case "--conninfo": conninfo = value()
            case "--relay-conninfo": relayConninfo = value()
            case "--brokers": brokers = value()
            case "--out": out = value()
            case "--scale": scale = Double(value()) ?? 1
            case "--modes": modes = value().split(separator: ",").map(String.init)
            case "--rates": rates = value().split(separator: ",").compactMap { Int($0) }
            case "--sizes": sizes = value().split(separator: ",").compactMap { Int($0) }
            case "--writers": writers = Int(value()) ?? 4
            case "--tansu": tansu = value()
            case "--relay-args": relayArguments = value().split(separator: " ").map(String.init)
            case "--segment-seconds": segmentSeconds = Int(value()) ?? 5
            default: fail("unknown argument \(arguments[i])")
            }
            i += 1
        }
        if relay.isEmpty || conninfo.isEmpty || relayConninfo.isEmpty || (brokers.isEmpty && tansu == nil) {
            fail("--relay, --conninfo, --relay-conninfo and --brokers are required")
        }
    }
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("LatencyBench: \(message)\n".utf8))
    exit(1)
}

func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func log(_ message: String) {
    FileHandle.standardError.write(Data("\(message)\n".utf8))
}

func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func sleep(untilNanos deadline: UInt64) {
    let now = nowNanos()
    guard deadline > now else { return }
    var ts = timespec(tv_sec: Int((deadline - now) / 1_000_000_000), tv_nsec: Int((deadline - now) % 1_000_000_000))
    nanosleep(&ts, nil)
}

// MARK: - Shared timeline: one slot per event, written once by the writer and once by the consumer

final class Timeline: @unchecked Sendable {
    // @unchecked Sendable: each slot of `committed` is written by one writer
    // thread and each slot of `received` by the consumer thread; they are read
    // only after those threads are done (ordered by the atomics below).
    let capacity: Int
    let committed: UnsafeMutablePointer<UInt64>
    let received: UnsafeMutablePointer<UInt64>
    let receivedCount = Atomic<Int>(0)
    let duplicates = Atomic<Int>(0)
    let foreign = Atomic<Int>(0)

    init(capacity: Int) {
        self.capacity = capacity
        committed = .allocate(capacity: capacity)
        committed.initialize(repeating: 0, count: capacity)
        received = .allocate(capacity: capacity)
        received.initialize(repeating: 0, count: capacity)
    }

    deinit {
        committed.deallocate()
        received.deallocate()
    }
}

// MARK: - Writer

/// A writer connection handed to one thread at a time.
final class WriterConnection: @unchecked Sendable {
    // @unchecked Sendable: used by one writer thread at a time (write() joins its threads).
    let connection: PGConnection
    var pid: Int32 = 0
    init(conninfo: String) throws {
        connection = try PGConnection(conninfo: conninfo, replication: false, applicationName: "bench-writer")
        try connection.query("SET synchronous_commit = on")
        pid = Int32(try connection.query("SELECT pg_backend_pid() AS pid")[0, "pid"] ?? "0") ?? 0
    }
}

/// Commits `range` events in transactions of `size` rows at `rate` events/s,
/// spread over the writer connections, and records when each COMMIT returned.
/// Returns the achieved rate. Connections persist across cells so that their
/// backends' CPU can be told apart from the relay's cost.
func write(
    _ range: Range<Int>, rate: Int, size: Int, aggregate: String, writers: ArraySlice<WriterConnection>,
    timeline: Timeline
) -> Double {
    let transactions = (range.count + size - 1) / size
    let period = 1_000_000_000.0 / (Double(rate) / Double(size))
    let start = nowNanos() + 20_000_000
    let done = DispatchGroup()
    let failures = Mutex<[String]>([])
    for (w, writer) in writers.enumerated() {
        done.enter()
        Thread {
            defer { done.leave() }
            do {
                var t = w
                while t < transactions {
                    sleep(untilNanos: start + UInt64(Double(t) * period))
                    let first = range.lowerBound + t * size
                    let last = min(first + size, range.upperBound)
                    var sql = "INSERT INTO bench.outbox (id, aggregatetype, aggregateid, type, payload) VALUES "
                    for seq in first..<last {
                        if seq > first { sql += "," }
                        sql += "('\(uuid(seq))','\(aggregate)','a\(seq % 64)','BenchEvent','{\"seq\": \(seq)}')"
                    }
                    try writer.connection.query(sql)
                    let committed = nowNanos()
                    for seq in first..<last { timeline.committed[seq] = committed }
                    t += writers.count
                }
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }.start()
    }
    done.wait()
    if let failure = failures.withLock({ $0.first }) { fail("writer: \(failure)") }
    return Double(range.count) / (Double(nowNanos() - start) / 1e9)
}

func uuid(_ seq: Int) -> String {
    let hex = String(seq, radix: 16)
    return "00000000-0000-4000-8000-" + String(repeating: "0", count: max(0, 12 - hex.count)) + hex
}

// MARK: - Consumer (assigned partitions, no group: tansu's group joins are slow)

final class Consumer: @unchecked Sendable {
    // @unchecked Sendable: the handle is used by the polling thread only, after setup.
    let handle: OpaquePointer
    let stopFlag = Atomic<Bool>(false)
    let finished = DispatchSemaphore(value: 0)

    init(brokers: String) {
        let conf = rd_kafka_conf_new()
        var errorText = [CChar](repeating: 0, count: 512)
        for (key, value) in [
            ("bootstrap.servers", brokers), ("group.id", "latency-bench"), ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "5"), ("fetch.error.backoff.ms", "5"), ("enable.partition.eof", "false"),
            ("log_level", "3"),
        ] {
            guard rd_kafka_conf_set(conf, key, value, &errorText, errorText.count) == RD_KAFKA_CONF_OK else {
                fail("consumer \(key): \(cText(errorText))")
            }
        }
        guard let handle = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errorText, errorText.count) else {
            fail("consumer: \(cText(errorText))")
        }
        self.handle = handle
        rd_kafka_poll_set_consumer(handle)
    }

    deinit {
        rd_kafka_consumer_close(handle)
        rd_kafka_destroy(handle)
    }

    /// The topic's partition count once it exists (the relay creates it with its first record).
    func partitions(of topic: String, within seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        guard let topicHandle = rd_kafka_topic_new(handle, topic, nil) else { return nil }
        defer { rd_kafka_topic_destroy(topicHandle) }
        while Date() < deadline {
            var metadata: UnsafePointer<rd_kafka_metadata>?
            if rd_kafka_metadata(handle, 0, topicHandle, &metadata, 2_000) == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata {
                defer { rd_kafka_metadata_destroy(metadata) }
                if metadata.pointee.topic_cnt > 0 {
                    let t = metadata.pointee.topics[0]
                    if t.err == RD_KAFKA_RESP_ERR_NO_ERROR && t.partition_cnt > 0 { return t.partition_cnt }
                }
            }
            usleep(100_000)
        }
        return nil
    }

    /// Reads `topic` from the beginning on its own thread, stamping each event's receipt.
    func start(topic: String, partitions: Int32, timeline: Timeline) {
        let list = rd_kafka_topic_partition_list_new(partitions)
        for p in 0..<partitions {
            rd_kafka_topic_partition_list_add(list, topic, p).pointee.offset = Int64(RD_KAFKA_OFFSET_BEGINNING)
        }
        let err = rd_kafka_assign(handle, list)
        rd_kafka_topic_partition_list_destroy(list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { fail("assign: \(String(cString: rd_kafka_err2str(err)))") }
        Thread { [self] in
            while !stopFlag.load(ordering: .acquiring) {
                guard let message = rd_kafka_consumer_poll(handle, 50) else { continue }
                let received = nowNanos()
                defer { rd_kafka_message_destroy(message) }
                guard message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR, let payload = message.pointee.payload else {
                    continue
                }
                let bytes = UnsafeRawBufferPointer(start: payload, count: message.pointee.len)
                guard let seq = Self.sequence(bytes), seq < timeline.capacity else {
                    timeline.foreign.add(1, ordering: .relaxed)
                    continue
                }
                if timeline.received[seq] != 0 {
                    timeline.duplicates.add(1, ordering: .relaxed)
                } else {
                    timeline.received[seq] = received
                    timeline.receivedCount.add(1, ordering: .releasing)
                }
            }
            finished.signal()
        }.start()
    }

    func stop() {
        stopFlag.store(true, ordering: .releasing)
        finished.wait()
    }

    /// The number after `"seq": ` in the payload (jsonb's text form).
    static func sequence(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let marker = Array("\"seq\": ".utf8)
        guard bytes.count > marker.count else { return nil }
        var i = 0
        while i + marker.count <= bytes.count {
            if bytes[i] == marker[0] && zip(marker, bytes[i..<(i + marker.count)]).allSatisfy({ $0 == $1 }) {
                var j = i + marker.count
                var value = 0
                var digits = 0
                while j < bytes.count, bytes[j] >= 48, bytes[j] <= 57 {
                    value = value * 10 + Int(bytes[j] - 48)
                    j += 1
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            i += 1
        }
        return nil
    }
}

// MARK: - Resource probes

/// utime + stime of a process, in seconds (0 when it is gone).
func cpuSeconds(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command: state is field 3, utime field 14, stime field 15 (1-based) → indices 11 and 12 here.
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// The fields of /proc/PID/stat after the command name (index 0 = field 3, "state").
func statFields(_ pid: Int32) -> [Substring] {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return [] }
    return text[text.index(after: close)...].split(separator: " ")
}

/// CPU seconds of the whole PostgreSQL cluster: the postmaster, its live
/// children (backends, walsenders, autovacuum, WAL writer, checkpointer…) and
/// the children it already reaped (its cutime + cstime).
func clusterCPUSeconds(postmaster: Int32) -> Double {
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    let own = statFields(postmaster)
    guard own.count > 14 else { return 0 }
    var total = [11, 12, 13, 14].compactMap { Double(own[$0]) }.reduce(0, +) / ticks
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for entry in entries {
        guard let pid = Int32(entry), pid != postmaster else { continue }
        let fields = statFields(pid)
        guard fields.count > 12, Int32(fields[1]) == postmaster else { continue }
        total += cpuSeconds(pid)
    }
    return total
}

/// Peak resident set of a process in MiB (VmHWM).
func peakRSSMiB(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0
        return kb / 1024
    }
    return 0
}

// MARK: - A fresh broker per cell

/// A tansu broker on a free loopback port, killed when the cell ends.
final class Broker {
    let process = Process()
    let address: String

    init(binary: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        close(fd)
        self.address = "127.0.0.1:\(port)"
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [
            "broker", "--listener-url", "tcp://\(self.address)", "--advertised-listener-url", "tcp://\(self.address)",
            "--storage-engine", "memory://tansu/",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Ready when it accepts connections.
        for _ in 0..<100 {
            let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var target = sockaddr_in()
            target.sin_family = sa_family_t(AF_INET)
            target.sin_addr.s_addr = inet_addr("127.0.0.1")
            target.sin_port = in_port_t(UInt16(port).bigEndian)
            let connected = withUnsafeMutablePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            close(probe)
            if connected == 0 { return }
            usleep(50_000)
        }
        fail("tansu did not start on \(self.address)")
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)  // tansu waits for its clients on SIGTERM
        process.waitUntilExit()
    }
}

// MARK: - One cell

struct Mode {
    var name: String
    var label: String
    var arguments: [String]
    var isCDC: Bool
    var notify: Bool

    init(_ name: String) {
        self.name = name
        let parts = name.split(separator: "-")
        let interval = parts.count > 1 ? String(parts[1]) : "1000"
        switch parts[0] {
        case "cdc":
            label = "CDC (log tailing)"
            arguments = ["run", "--slot", "bench_slot", "--publication", "bench_pub"]
            isCDC = true
            notify = false
        case "poll":
            label = "polling every \(interval) ms"
            arguments = ["poll", "--interval-ms", interval]
            isCDC = false
            notify = false
        case "notify":
            label = "polling + LISTEN/NOTIFY (\(interval) ms safety poll)"
            arguments = ["poll", "--interval-ms", interval, "--notify-channel", "outbox_relay"]
            isCDC = false
            notify = true
        default: fail("unknown mode \(name)")
        }
    }
}

struct CellResult {
    var mode: Mode
    var rate: Int
    var size: Int
    var events: Int
    var achievedRate: Double
    var histogram: Histogram<UInt64>
    var lost: Int
    var duplicates: Int
    /// Segments the cell ran in (each with a fresh broker and relay).
    var segments: Int
    var seconds: Double
    var statementsPerSecond: Double
    /// The relay's own database sessions (walsender, or the poller's backend).
    var backendCPU: Double
    /// Everything PostgreSQL spent except the writers' backends: the relay's
    /// sessions, autovacuum, WAL writer, checkpointer, …
    var databaseCPU: Double
    var walBytesPerEvent: Double
    /// The writers' backends, per event: what the mode costs the service's own transactions.
    var writerMicrosPerEvent: Double
    var relayCPU: Double
    var relayRSS: Double
}

final class Bench {
    let options: Options
    let admin: PGConnection
    var writers: [WriterConnection] = []
    var postmaster: Int32 = 0
    var cellNumber = 0
    let runID = String(UInt32.random(in: 0..<UInt32.max), radix: 36)

    init(options: Options) throws {
        self.options = options
        admin = try PGConnection(conninfo: options.conninfo, replication: false, applicationName: "bench-admin")
    }

    func setUp() throws {
        let repo = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        try admin.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        try admin.query("CREATE SCHEMA IF NOT EXISTS bench")
        for file in ["sql/01-outbox-table.sql", "sql/05-polling.sql"] {
            let text = try String(contentsOf: repo.appendingPathComponent(file), encoding: .utf8)
                .replacingOccurrences(of: "public.outbox", with: "bench.outbox")
            try admin.query(text)
        }
        try admin.query("ALTER TABLE bench.outbox DISABLE TRIGGER outbox_notify")
        try admin.query(
            """
            DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_relay') THEN CREATE ROLE bench_relay LOGIN REPLICATION; END IF;
              IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'bench_pub') THEN CREATE PUBLICATION bench_pub FOR TABLE bench.outbox WITH (publish = 'insert'); END IF;
            END $$
            """)
        try admin.query("GRANT USAGE ON SCHEMA bench TO bench_relay")
        try admin.query("GRANT SELECT, UPDATE, DELETE ON bench.outbox TO bench_relay")
        writers = try (0..<options.writers).map { _ in try WriterConnection(conninfo: options.conninfo) }
        let adminPID = Int32(try admin.query("SELECT pg_backend_pid() AS pid")[0, "pid"] ?? "0") ?? 0
        postmaster = statFields(adminPID).dropFirst().first.flatMap { Int32($0) } ?? 0
        if postmaster == 0 { fail("cannot find the postmaster (is PostgreSQL local?)") }
    }

    /// One cell: `measured` events at `rate`, in segments of at most
    /// `--segment-seconds` of events. Each segment gets a fresh broker (with
    /// `--tansu`) and a freshly started relay, a warm-up that is not measured,
    /// then its share of the measured events; costs and latencies add up over
    /// the segments. tansu's in-memory storage slows down as it fills (see
    /// README, Performance), which would measure the test broker, not the relay.
    func run(mode: Mode, rate: Int, size: Int) throws -> CellResult {
        cellNumber += 1
        let aggregate = "c\(cellNumber)_\(runID)"
        let measured = max(
            size * 20, Int(Double(rate >= 1_000 ? max(20_000, rate * 5) : rate * 30) * options.scale) / size * size)
        let perSegment =
            options.segmentSeconds > 0 ? max(size * 20, rate * options.segmentSeconds / size * size) : measured
        let segments = (measured + perSegment - 1) / perSegment
        let warmup = max(size * 5, min(rate, 2_000) / size * size)
        let timeline = Timeline(capacity: segments * warmup + measured)

        try admin.query("TRUNCATE bench.outbox")
        try admin.query("ALTER TABLE bench.outbox \(mode.notify ? "ENABLE" : "DISABLE") TRIGGER outbox_notify")
        try admin.query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'bench_slot'")
        if mode.isCDC { try admin.query("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')") }
        try admin.query("VACUUM bench.outbox")

        var costs = Costs()
        var measuredRanges: [Range<Int>] = []
        var next = 0
        var written = 0
        var writeSeconds = 0.0
        for segment in 0..<segments {
            let count = min(perSegment, measured - written)
            let warmupRange = next..<(next + warmup)
            let measuredRange = warmupRange.upperBound..<(warmupRange.upperBound + count)
            let achieved = try runSegment(
                mode: mode, rate: rate, size: size, aggregate: aggregate, segment: segment, warmup: warmupRange,
                measured: measuredRange,
                timeline: timeline, costs: &costs)
            writeSeconds += Double(count) / achieved
            measuredRanges.append(measuredRange)
            next = measuredRange.upperBound
            written += count
        }

        var histogram = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        var lost = 0
        for seq in measuredRanges.joined() {
            let c = timeline.committed[seq]
            let r = timeline.received[seq]
            if c == 0 || r == 0 {
                lost += 1
                continue
            }
            // Microseconds; a record can arrive before the writer stamped COMMIT's return (the commit is visible first).
            _ = histogram.record(r > c ? (r - c) / 1_000 : 0)
        }
        let seconds = costs.seconds
        return CellResult(
            mode: mode, rate: rate, size: size, events: measured, achievedRate: Double(measured) / writeSeconds,
            histogram: histogram, lost: lost,
            duplicates: timeline.duplicates.load(ordering: .relaxed), segments: segments,
            seconds: seconds, statementsPerSecond: costs.statements / seconds, backendCPU: costs.backendCPU,
            databaseCPU: costs.databaseCPU,
            walBytesPerEvent: costs.walBytes / Double(measured),
            writerMicrosPerEvent: costs.writerCPU * 1e6 / Double(measured), relayCPU: costs.relayCPU,
            relayRSS: costs.relayRSS)
    }

    /// What the measured parts of a cell's segments cost, summed.
    struct Costs {
        var seconds = 0.0
        var statements = 0.0
        var backendCPU = 0.0
        var relayCPU = 0.0
        var writerCPU = 0.0
        var databaseCPU = 0.0
        var walBytes = 0.0
        var relayRSS = 0.0
    }

    /// One segment: broker, relay, warm-up, measured events; returns the achieved write rate.
    func runSegment(
        mode: Mode, rate: Int, size: Int, aggregate: String, segment: Int, warmup: Range<Int>, measured: Range<Int>,
        timeline: Timeline, costs: inout Costs
    ) throws -> Double {
        let topic = "bench.\(aggregate)"
        let broker = try options.tansu.map { try Broker(binary: $0) }
        let brokers = broker?.address ?? options.brokers
        defer { withExtendedLifetime(broker) {} }

        // The relay under test: the real binary, its own process.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: options.relay)
        process.arguments =
            mode.arguments + [
                "--source", options.relayConninfo, "--table", "bench.outbox", "--sink", "kafka", "--kafka-brokers",
                brokers, "--topic-template", "bench.{aggregatetype}",
                "--log-level", "warning",
            ] + options.relayArguments
        let logURL = URL(fileURLWithPath: options.out).appendingPathComponent(
            "logs/\(aggregate)-\(mode.name)-\(segment).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: logURL)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
        }
        // Ready when its database session is there.
        let readyBy = Date().addingTimeInterval(15)
        while try admin.query("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = 'bench_relay'")[0, "n"] == "0"
        {
            guard Date() < readyBy, process.isRunning else { fail("relay did not connect; see \(logURL.path)") }
            usleep(50_000)
        }

        // Warm-up: same rate and shape, not measured; also creates the topic.
        let consumer = Consumer(brokers: brokers)
        let warmupDone = DispatchSemaphore(value: 0)
        let warmupWriters = writers[0..<1]
        Thread {
            _ = write(warmup, rate: rate, size: size, aggregate: aggregate, writers: warmupWriters, timeline: timeline)
            warmupDone.signal()
        }.start()
        guard let partitions = consumer.partitions(of: topic, within: 30) else {
            fail("topic \(topic) never appeared; see \(logURL.path)")
        }
        consumer.start(topic: topic, partitions: partitions, timeline: timeline)
        try waitFor(timeline, count: warmup.upperBound, within: 60, what: "warm-up events")
        warmupDone.wait()

        // Measured part.
        let backends = try admin.query("SELECT pid FROM pg_stat_activity WHERE usename = 'bench_relay'").values
            .compactMap { $0[0].flatMap { Int32($0) } }
        try admin.query("SELECT pg_stat_statements_reset()")
        let backendCPU0 = backends.map(cpuSeconds).reduce(0, +)
        let relayCPU0 = cpuSeconds(process.processIdentifier)
        let excluded =
            writers.map(\.pid) + [Int32(try admin.query("SELECT pg_backend_pid() AS pid")[0, "pid"] ?? "0") ?? 0]
        let writerCPU0 = writers.map { cpuSeconds($0.pid) }.reduce(0, +)
        let clusterCPU0 = clusterCPUSeconds(postmaster: postmaster) - excluded.map(cpuSeconds).reduce(0, +)
        let wal0 = try admin.query("SELECT pg_current_wal_lsn() AS l")[0, "l"] ?? "0/0"
        let start = nowNanos()
        let achieved = write(
            measured, rate: rate, size: size, aggregate: aggregate,
            writers: writers[0..<min(writers.count, max(1, rate / size / 500))], timeline: timeline)
        try waitFor(timeline, count: measured.upperBound, within: 60, what: "events", failHard: false)
        costs.seconds += Double(nowNanos() - start) / 1e9
        costs.statements +=
            Double(
                try admin.query(
                    "SELECT coalesce(sum(calls), 0) AS n FROM pg_stat_statements WHERE userid = 'bench_relay'::regrole")[
                        0, "n"] ?? "0") ?? 0
        costs.backendCPU += backends.map(cpuSeconds).reduce(0, +) - backendCPU0
        costs.relayCPU += cpuSeconds(process.processIdentifier) - relayCPU0
        costs.writerCPU += writers.map { cpuSeconds($0.pid) }.reduce(0, +) - writerCPU0
        costs.databaseCPU +=
            clusterCPUSeconds(postmaster: postmaster) - excluded.map(cpuSeconds).reduce(0, +) - clusterCPU0
        costs.walBytes +=
            Double(try admin.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '\(wal0)') AS d")[0, "d"] ?? "0") ?? 0
        costs.relayRSS = max(costs.relayRSS, peakRSSMiB(process.processIdentifier))
        usleep(200_000)  // late duplicates
        consumer.stop()
        // A clean stop: the CDC relay confirms what was delivered, so the next segment's relay resumes after it.
        process.terminate()
        process.waitUntilExit()
        return achieved
    }

    func waitFor(_ timeline: Timeline, count: Int, within seconds: Double, what: String, failHard: Bool = true) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while timeline.receivedCount.load(ordering: .acquiring) < count {
            if Date() > deadline {
                if failHard {
                    fail(
                        "timed out waiting for \(what): \(timeline.receivedCount.load(ordering: .acquiring)) of \(count)"
                    )
                }
                log("  timed out: \(timeline.receivedCount.load(ordering: .acquiring)) of \(count) \(what) received")
                return
            }
            usleep(5_000)
        }
    }
}

// MARK: - Output

func ms(_ microseconds: UInt64) -> String {
    let value = Double(microseconds) / 1_000
    return value < 10
        ? String(format: "%.2f", value) : value < 100 ? String(format: "%.1f", value) : String(format: "%.0f", value)
}

func markdown(_ results: [CellResult], options: Options, machine: String, command: String) -> String {
    var out = "End-to-end latency, COMMIT returned → record received by a Kafka consumer (milliseconds), \(machine).\n"
    out += "Command: `\(command)`.\n"
    if options.segmentSeconds > 0 {
        out +=
            "Each cell runs in segments of at most \(options.segmentSeconds) s of events, each against a fresh tansu broker with a freshly started relay and a warm-up that is not measured (tansu's in-memory storage slows down as it fills).\n"
    }
    out += "\n"
    out +=
        "| mode | rate (events/s) | rows/tx | events | p50 | p90 | p99 | p99.9 | max | ≥100 ms | lost | dup | relay's SQL statements/s | CPU of relay's DB sessions | DB CPU, all but writers | writers' DB CPU/event | WAL bytes/event | relay CPU | relay peak RSS |\n"
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for r in results {
        let h = r.histogram
        let slow = h.count(within: 100_000...UInt64.max / 2)
        out +=
            "| \(r.mode.label) | \(r.rate) (\(Int(r.achievedRate.rounded())) achieved) | \(r.size) | \(h.totalCount) | \(ms(h.valueAtPercentile(50))) | \(ms(h.valueAtPercentile(90))) | \(ms(h.valueAtPercentile(99))) | \(ms(h.valueAtPercentile(99.9))) | \(ms(h.max)) | \(slow) | \(r.lost) | \(r.duplicates) | "
        out += String(
            format: "%.0f | %.1f%% of a core | %.1f%% | %.0f µs | %.0f | %.1f%% | %.0f MiB |\n", r.statementsPerSecond,
            100 * r.backendCPU / r.seconds, 100 * r.databaseCPU / r.seconds, r.writerMicrosPerEvent, r.walBytesPerEvent,
            100 * r.relayCPU / r.seconds, r.relayRSS)
    }
    return out
}

func distributionCSV(_ results: [CellResult]) -> String {
    var out = "mode,label,rate,size,percentile,latency_ms\n"
    for r in results {
        for value in r.histogram.percentiles(ticksPerHalfDistance: 5) {
            out +=
                "\(r.mode.name),\"\(r.mode.label)\",\(r.rate),\(r.size),\(value.percentile),\(Double(value.value) / 1_000)\n"
            if value.percentile >= 100 { break }
        }
    }
    return out
}

// MARK: - Main

let options = Options(Array(CommandLine.arguments.dropFirst()))
try? FileManager.default.createDirectory(atPath: options.out + "/logs", withIntermediateDirectories: true)
let bench: Bench
do {
    bench = try Bench(options: options)
    try bench.setUp()
} catch {
    fail("setup: \(error)")
}
var results: [CellResult] = []
for size in options.sizes {
    for rate in options.rates {
        for name in options.modes {
            let mode = Mode(name)
            log("cell: \(mode.label), \(rate) events/s, \(size) rows/tx")
            do {
                let result = try bench.run(mode: mode, rate: rate, size: size)
                let h = result.histogram
                log(
                    "  p50 \(ms(h.valueAtPercentile(50))) ms, p99 \(ms(h.valueAtPercentile(99))) ms, max \(ms(h.max)) ms; lost \(result.lost), dup \(result.duplicates); \(String(format: "%.0f", result.statementsPerSecond)) statements/s"
                )
                results.append(result)
            } catch {
                fail("cell \(mode.name) \(rate) \(size): \(error)")
            }
        }
    }
}
let machine =
    ProcessInfo.processInfo.environment["BENCH_MACHINE"] ?? "\(ProcessInfo.processInfo.activeProcessorCount) cores"
let command = ProcessInfo.processInfo.environment["BENCH_COMMAND"] ?? "bash bench/latency.sh"
let table = markdown(results, options: options, machine: machine, command: command)
try? table.write(toFile: options.out + "/latency.md", atomically: true, encoding: .utf8)
try? distributionCSV(results).write(toFile: options.out + "/latency-percentiles.csv", atomically: true, encoding: .utf8)
print(table)
if results.contains(where: { $0.lost > 0 }) { fail("events were lost") }
