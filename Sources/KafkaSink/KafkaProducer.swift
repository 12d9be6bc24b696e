import CRdKafka
import Foundation
import Logging

/// A librdkafka producer handle and its main event queue.
///
/// One owner per C handle, freed on every path: `rd_kafka_new` takes the
/// configuration only on success (we destroy it otherwise), the queue
/// reference and the handle are released in `deinit`. Delivery reports,
/// errors and logs come through the event queue (`rd_kafka_queue_poll`), not
/// C callbacks, so no C code calls back into Swift and nothing is retained
/// across the C boundary: each message carries an integer as its opaque.
///
/// Not `Sendable`: used only from the relay's I/O thread, which is never a
/// thread of Swift's cooperative pool (polling blocks).
final class KafkaProducer {
    let handle: OpaquePointer
    private let queue: OpaquePointer
    private var scratch: [UInt8] = []

    /// A failure to configure or create the producer; the message names the property.
    struct ConfigurationError: Error, CustomStringConvertible {
        var description: String
    }

    init(configuration: [(key: String, value: String)]) throws {
        guard let conf = rd_kafka_conf_new() else {
            throw ConfigurationError(description: "rd_kafka_conf_new failed")
        }
        var errorText = [CChar](repeating: 0, count: 512)
        for (key, value) in configuration {
            guard rd_kafka_conf_set(conf, key, value, &errorText, errorText.count) == RD_KAFKA_CONF_OK
            else {
                rd_kafka_conf_destroy(conf)
                // librdkafka's text quotes the value: never for a secret.
                let reason =
                    KafkaSinkConfig.isSecret(key) ? "invalid value (not shown: a secret)" : Self.text(errorText)
                throw ConfigurationError(description: "Kafka property \(key): \(reason)")
            }
        }
        rd_kafka_conf_set_events(
            conf, Int32(RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR | RD_KAFKA_EVENT_LOG))
        guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errorText, errorText.count) else {
            rd_kafka_conf_destroy(conf)
            throw ConfigurationError(description: "cannot create Kafka producer: \(Self.text(errorText))")
        }
        self.handle = handle
        self.queue = rd_kafka_queue_get_main(handle)
        // With log.queue=true, logs are events on the main queue too.
        _ = rd_kafka_set_log_queue(handle, nil)
    }

    deinit {
        if wakeup.read >= 0 {
            rd_kafka_queue_io_event_enable(queue, -1, nil, 0)
            close(wakeup.read)
            close(wakeup.write)
        }
        rd_kafka_queue_destroy(queue)
        rd_kafka_destroy(handle)
    }

    private var wakeup: (read: Int32, write: Int32) = (-1, -1)

    /// A descriptor that becomes readable when the event queue goes from empty
    /// to non-empty (`rd_kafka_queue_io_event_enable`), so the relay waits for
    /// delivery reports in the same `poll(2)` as for PostgreSQL. librdkafka
    /// writes only on that transition: drain the queue to empty, and the
    /// descriptor with `clearWakeup()`, on every wake-up.
    func wakeupDescriptor() -> Int32? {
        if wakeup.read >= 0 { return wakeup.read }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeup = (fds[0], fds[1])
        rd_kafka_queue_io_event_enable(queue, fds[1], "1", 1)
        return fds[0]
    }

    /// Makes the wake-up descriptor readable: from a thread of ours whose
    /// blocking call (a transaction's commit, a metadata probe) has ended.
    /// Thread-safe once `wakeupDescriptor()` made the pipe.
    func signalWakeup() {
        guard wakeup.write >= 0 else { return }
        var one: UInt8 = 1
        _ = write(wakeup.write, &one, 1)
    }

    /// Empties the wake-up pipe (before draining the queue, so no write is lost).
    func clearWakeup() {
        guard wakeup.read >= 0 else { return }
        var scratch = [UInt8](repeating: 0, count: 256)
        while scratch.withUnsafeMutableBytes({ read(wakeup.read, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// Removes the records still in librdkafka's queues (not yet sent to a
    /// broker); their delivery reports come back with `_PURGE_QUEUE`. Records
    /// already on their way to a broker are not touched. Blocks until the
    /// broker threads have purged their queues.
    func purgeQueued() {
        _ = rd_kafka_purge(handle, Int32(RD_KAFKA_PURGE_F_QUEUE))
    }

    /// A NUL-terminated C buffer as a String.
    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static var libraryVersion: String { String(cString: rd_kafka_version_str()) }

    /// A produce call that librdkafka refused at once.
    struct ProduceError: Error {
        var code: rd_kafka_resp_err_t
        var message: String
        var isQueueFull: Bool { code == RD_KAFKA_RESP_ERR__QUEUE_FULL }
    }

    /// Enqueues one record (copied by librdkafka). A nil `value` is a null value
    /// (a tombstone). `opaque` comes back in the delivery report.
    func produce(
        topic: String, key: String, value: [UInt8]?, headers: [(name: String, value: String)],
        opaque: UInt64
    ) -> ProduceError? {
        // All strings go into one scratch buffer (NUL-terminated where C needs it),
        // so the pointers handed to rd_kafka_produceva live for the whole call.
        scratch.removeAll(keepingCapacity: true)
        func append(_ s: String, terminate: Bool) -> (Int, Int) {
            let start = scratch.count
            scratch.append(contentsOf: s.utf8)
            let length = scratch.count - start
            if terminate { scratch.append(0) }
            return (start, length)
        }
        let topicAt = append(topic, terminate: true)
        let keyAt = append(key, terminate: false)
        var valueAt: (Int, Int)?
        if let value {
            valueAt = (scratch.count, value.count)
            scratch.append(contentsOf: value)
        }
        let headerAt = headers.map {
            (name: append($0.name, terminate: true), value: append($0.value, terminate: false))
        }
        scratch.append(0)  // never empty, so baseAddress is non-nil

        return scratch.withUnsafeMutableBytes { buffer -> ProduceError? in
            let base = buffer.baseAddress!
            var vus: [rd_kafka_vu_t] = []
            vus.reserveCapacity(5 + headerAt.count)
            var vu = rd_kafka_vu_t()
            vu.vtype = RD_KAFKA_VTYPE_TOPIC
            vu.u.cstr = UnsafePointer((base + topicAt.0).assumingMemoryBound(to: CChar.self))
            vus.append(vu)
            vu = rd_kafka_vu_t()
            vu.vtype = RD_KAFKA_VTYPE_KEY
            vu.u.mem.ptr = base + keyAt.0
            vu.u.mem.size = keyAt.1
            vus.append(vu)
            vu = rd_kafka_vu_t()
            vu.vtype = RD_KAFKA_VTYPE_VALUE
            if let valueAt {
                vu.u.mem.ptr = base + valueAt.0
                vu.u.mem.size = valueAt.1
            } else {
                vu.u.mem.ptr = nil
                vu.u.mem.size = 0
            }
            vus.append(vu)
            vu = rd_kafka_vu_t()
            vu.vtype = RD_KAFKA_VTYPE_OPAQUE
            vu.u.ptr = UnsafeMutableRawPointer(bitPattern: UInt(opaque))
            vus.append(vu)
            vu = rd_kafka_vu_t()
            vu.vtype = RD_KAFKA_VTYPE_MSGFLAGS
            vu.u.i = Int32(RD_KAFKA_MSG_F_COPY)
            vus.append(vu)
            for header in headerAt {
                vu = rd_kafka_vu_t()
                vu.vtype = RD_KAFKA_VTYPE_HEADER
                vu.u.header.name = UnsafePointer((base + header.name.0).assumingMemoryBound(to: CChar.self))
                vu.u.header.val = UnsafeRawPointer(base + header.value.0)
                vu.u.header.size = header.value.1
                vus.append(vu)
            }
            guard let error = rd_kafka_produceva(handle, vus, vus.count) else { return nil }
            defer { rd_kafka_error_destroy(error) }
            return ProduceError(
                code: rd_kafka_error_code(error), message: String(cString: rd_kafka_error_string(error)))
        }
    }

    /// A failed transactional call (`rd_kafka_error_t`), turned into a Swift value and freed.
    struct TransactionError: Error, CustomStringConvertible {
        var code: rd_kafka_resp_err_t
        var message: String
        /// The producer cannot go on (e.g. fenced by a newer producer with the same `transactional.id`).
        var fatal: Bool
        /// The same call may succeed if repeated.
        var retriable: Bool
        /// The open transaction must be aborted; the producer stays usable.
        var requiresAbort: Bool
        var description: String { message }
    }

    private static func take(_ error: OpaquePointer?) -> TransactionError? {
        guard let error else { return nil }
        defer { rd_kafka_error_destroy(error) }
        return TransactionError(
            code: rd_kafka_error_code(error), message: String(cString: rd_kafka_error_string(error)),
            fatal: rd_kafka_error_is_fatal(error) != 0, retriable: rd_kafka_error_is_retriable(error) != 0,
            requiresAbort: rd_kafka_error_txn_requires_abort(error) != 0)
    }

    /// `rd_kafka_init_transactions`: registers the `transactional.id` with the
    /// transaction coordinator and fences every older producer with the same id.
    func initTransactions(timeoutMilliseconds: Int) -> TransactionError? {
        Self.take(rd_kafka_init_transactions(handle, Int32(clamping: timeoutMilliseconds)))
    }

    func beginTransaction() -> TransactionError? { Self.take(rd_kafka_begin_transaction(handle)) }

    /// Flushes the transaction's records and commits it (blocks up to the timeout).
    func commitTransaction(timeoutMilliseconds: Int) -> TransactionError? {
        Self.take(rd_kafka_commit_transaction(handle, Int32(clamping: timeoutMilliseconds)))
    }

    /// Aborts the open transaction: its queued records are purged, the ones a
    /// broker has are marked aborted (invisible to `read_committed` consumers).
    func abortTransaction(timeoutMilliseconds: Int) -> TransactionError? {
        Self.take(rd_kafka_abort_transaction(handle, Int32(clamping: timeoutMilliseconds)))
    }

    /// What one event-queue event carried, turned into Swift values at once.
    enum Event {
        case delivery([DeliveryReport])
        case error(code: rd_kafka_resp_err_t, message: String, fatal: Bool)
        case log(level: Int32, facility: String, message: String)
    }

    struct DeliveryReport {
        var opaque: UInt64
        var error: rd_kafka_resp_err_t
        var errorMessage: String
        var topic: String
        var key: [UInt8]
        var value: [UInt8]?
        var headers: [(name: String, value: String)]
    }

    /// The next event, waiting at most `timeoutMilliseconds`; each C event is
    /// destroyed before this returns.
    func poll(timeoutMilliseconds: Int) -> Event? {
        guard let event = rd_kafka_queue_poll(queue, Int32(clamping: timeoutMilliseconds)) else {
            return nil
        }
        defer { rd_kafka_event_destroy(event) }
        switch rd_kafka_event_type(event) {
        case Int32(RD_KAFKA_EVENT_DR):
            var reports: [DeliveryReport] = []
            while let message = rd_kafka_event_message_next(event) {
                let m = message.pointee
                let failed = m.err != RD_KAFKA_RESP_ERR_NO_ERROR
                var report = DeliveryReport(
                    opaque: UInt64(UInt(bitPattern: m._private)), error: m.err,
                    errorMessage: failed ? String(cString: rd_kafka_err2str(m.err)) : "", topic: "", key: [],
                    value: nil, headers: [])
                if failed {
                    // Keep what a dead-letter record needs.
                    report.topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
                    if let key = m.key {
                        report.key = Array(UnsafeRawBufferPointer(start: key, count: m.key_len))
                    }
                    if let payload = m.payload {
                        report.value = Array(UnsafeRawBufferPointer(start: payload, count: m.len))
                    }
                    report.headers = Self.headers(of: message)
                }
                reports.append(report)
            }
            return .delivery(reports)
        case Int32(RD_KAFKA_EVENT_ERROR):
            let code = rd_kafka_event_error(event)
            var message = String(cString: rd_kafka_event_error_string(event))
            let fatal = rd_kafka_event_error_is_fatal(event) != 0
            if fatal {
                var text = [CChar](repeating: 0, count: 512)
                _ = rd_kafka_fatal_error(handle, &text, text.count)
                message = Self.text(text)
            }
            return .error(code: code, message: message, fatal: fatal)
        case Int32(RD_KAFKA_EVENT_LOG):
            var facility: UnsafePointer<CChar>?
            var text: UnsafePointer<CChar>?
            var level: Int32 = 0
            _ = rd_kafka_event_log(event, &facility, &text, &level)
            return .log(
                level: level, facility: facility.map { String(cString: $0) } ?? "",
                message: text.map { String(cString: $0) } ?? "")
        default:
            return poll(timeoutMilliseconds: 0)
        }
    }

    private static func headers(
        of message: UnsafePointer<rd_kafka_message_t>
    ) -> [(
        name: String, value: String
    )] {
        var headers: OpaquePointer?
        guard rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR, let headers
        else { return [] }
        var out: [(name: String, value: String)] = []
        var index = 0
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        while rd_kafka_header_get_all(headers, index, &name, &value, &size)
            == RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let text =
                value.map {
                    String(decoding: UnsafeRawBufferPointer(start: $0, count: size), as: UTF8.self)
                } ?? ""
            out.append((name.map { String(cString: $0) } ?? "", text))
            index += 1
        }
        return out
    }

    /// Brokers that answered a metadata request within the timeout, or the error.
    func brokerCount(timeoutMilliseconds: Int) -> Result<Int, ProduceError> {
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(handle, 0, nil, &metadata, Int32(timeoutMilliseconds))
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            return .failure(ProduceError(code: error, message: String(cString: rd_kafka_err2str(error))))
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        return .success(Int(metadata.pointee.broker_cnt))
    }
}
