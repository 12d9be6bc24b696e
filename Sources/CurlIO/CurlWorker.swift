import CCurl
import Foundation
import Glibc
import OutboxCore
import RelayIO
import Synchronization

/// One HTTP request as libcurl is to send it. `signing`: AWS Signature
/// Version 4, done by libcurl (`CURLOPT_AWS_SIGV4`); the secret goes to libcurl
/// only and is wiped with the request.
public struct CurlRequest: Sendable {
    public var url: String
    public var body: [UInt8]
    /// `Name: value` lines.
    public var headers: [String]
    public var timeoutMilliseconds: Int
    public var connectTimeoutMilliseconds: Int
    public var caFile: String?
    /// `aws:amz:REGION:SERVICE` and `key:secret`.
    public var signing: (provider: String, keyAndSecret: String)?
    /// How much of the answer's body to keep.
    public var responseLimit = 255

    public init(
        url: String, body: [UInt8], headers: [String], timeoutMilliseconds: Int, connectTimeoutMilliseconds: Int,
        caFile: String? = nil
    ) {
        self.url = url
        self.body = body
        self.headers = headers
        self.timeoutMilliseconds = timeoutMilliseconds
        self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
        self.caFile = caFile
    }
}

/// What came back for a request.
public struct CurlAnswer: Sendable {
    public var token: UInt64
    /// The HTTP status; 0 when the request failed below HTTP.
    public var status: Int
    /// libcurl's reason when it failed below HTTP (connection refused, timed out).
    public var transportError: String?
    public var retryAfter: String?
    public var location: String?
    /// The start of the body (up to the request's `responseLimit`).
    public var response: String
}

/// libcurl's multi interface on its own thread: requests go in, answers come
/// out through a lock, and `wakeup` tells the relay's thread. Used by the
/// webhook sink and by the AWS transports; the relay's thread never waits for it.
public final class CurlWorker: @unchecked Sendable {
    public let wakeup: Wakeup
    private let multi: UnsafeMutableRawPointer
    /// What the relay's thread and the worker share. `@unchecked Sendable`: the
    /// request pointers in `submitted` are handed over, owned by one side at a time.
    private struct Shared: @unchecked Sendable {
        var submitted: [UnsafeMutablePointer<outbox_http_request>] = []
        var answers: [CurlAnswer] = []
        var running = true
    }
    private let shared = Mutex(Shared())
    private let done = DispatchSemaphore(value: 0)

    /// `wakeup`: signalled when answers arrive (a delivery driver passes its own).
    public init(maxConnections: Int, wakeup: Wakeup = Wakeup(), name: String = "outbox-http") throws(SinkError) {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        guard let multi = outbox_http_multi_new(maxConnections) else {
            throw SinkError("cannot create a libcurl multi handle")
        }
        self.multi = multi
        self.wakeup = wakeup
        let thread = Thread { [unowned self] in self.run() }
        thread.name = name
        thread.start()
    }

    deinit {
        shared.withLock { $0.running = false }
        curl_multi_wakeup(multi)
        done.wait()
        curl_multi_cleanup(multi)
    }

    public func submit(_ request: CurlRequest, token: UInt64) {
        guard let handle = Self.make(request, token: token) else {
            shared.withLock {
                $0.answers.append(
                    CurlAnswer(token: token, status: 0, transportError: "cannot create a request", response: ""))
            }
            wakeup.signal()
            return
        }
        nonisolated(unsafe) let handed = handle
        shared.withLock { $0.submitted.append(handed) }
        curl_multi_wakeup(multi)
    }

    public func takeAnswers() -> [CurlAnswer] {
        shared.withLock { shared in
            defer { shared.answers.removeAll(keepingCapacity: true) }
            return shared.answers
        }
    }

    /// One request run to its end on the calling thread (blocking: connector threads only).
    public static func perform(_ request: CurlRequest) -> CurlAnswer {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        guard let handle = make(request, token: 0) else {
            return CurlAnswer(token: 0, status: 0, transportError: "cannot create a request", response: "")
        }
        outbox_http_perform(handle)
        defer { outbox_http_request_free(handle) }
        return answer(handle)
    }

    private static func make(_ request: CurlRequest, token: UInt64) -> UnsafeMutablePointer<outbox_http_request>? {
        let copies = request.headers.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        let handle = copies.map { UnsafePointer($0) }.withUnsafeBufferPointer { lines in
            request.body.withUnsafeBytes { bytes in
                outbox_http_request_new(
                    request.url, bytes.baseAddress, bytes.count, lines.baseAddress, Int32(lines.count),
                    request.timeoutMilliseconds, request.connectTimeoutMilliseconds, token, request.caFile)
            }
        }
        guard let handle else { return nil }
        outbox_http_request_sign(
            handle, request.signing?.provider, request.signing?.keyAndSecret, max(1, request.responseLimit))
        return handle
    }

    private static func answer(_ request: UnsafeMutablePointer<outbox_http_request>) -> CurlAnswer {
        let r = request.pointee
        let error =
            r.result == 0
            ? nil
            : text(r.error).nonEmpty ?? String(cString: curl_easy_strerror(CURLcode(UInt32(r.result))))
        return CurlAnswer(
            token: r.token, status: r.result == 0 ? Int(r.status) : 0, transportError: error,
            retryAfter: text(r.retry_after).nonEmpty, location: text(r.location).nonEmpty,
            response: r.response.map { String(cString: $0) } ?? "")
    }

    private func run() {
        var active: Set<UnsafeMutablePointer<outbox_http_request>> = []
        while true {
            nonisolated(unsafe) let (stop, new) = shared.withLock {
                shared -> (Bool, [UnsafeMutablePointer<outbox_http_request>]) in
                defer { shared.submitted.removeAll() }
                return (!shared.running, shared.submitted)
            }
            if stop {
                for request in active.union(new) {
                    curl_multi_remove_handle(multi, request.pointee.easy)
                    outbox_http_request_free(request)
                }
                done.signal()
                return
            }
            for request in new {
                curl_multi_add_handle(multi, request.pointee.easy)
                active.insert(request)
            }
            var stillRunning: Int32 = 0
            curl_multi_perform(multi, &stillRunning)
            var finished: [CurlAnswer] = []
            while let request = outbox_http_next_done(multi) {
                active.remove(request)
                finished.append(Self.answer(request))
                outbox_http_request_free(request)
            }
            if !finished.isEmpty {
                shared.withLock { $0.answers += finished }
                wakeup.signal()
            }
            curl_multi_poll(multi, nil, 0, 1000, nil)
        }
    }

    static func text<T>(_ tuple: T) -> String {
        withUnsafeBytes(of: tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

extension String {
    fileprivate var nonEmpty: String? { isEmpty ? nil : self }
}
