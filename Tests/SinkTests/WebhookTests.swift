import HTTPSink
import OutboxCore
import Testing

@Suite("HTTP sink: signatures, answers, per-key scheduling")
struct WebhookTests {
    func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            out.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return out
    }

    @Test func sha256MatchesFIPSVectors() {
        #expect(
            HMACSHA256.hex(SHA256.hash(Array("abc".utf8)))
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(HMACSHA256.hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(HMACSHA256.hex(SHA256.hash(long)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    /// RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
    @Test func hmacMatchesRFC4231() {
        #expect(
            HMACSHA256.hex(
                HMACSHA256.signature(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8)))
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        #expect(
            HMACSHA256.hex(
                HMACSHA256.signature(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(
            HMACSHA256.hex(
                HMACSHA256.signature(
                    key: [UInt8](repeating: 0xaa, count: 131),
                    message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)))
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        #expect(bytes("0b0b").count == 2)
    }

    @Test func answersAreDeliveredRetriedOrRefused() {
        func verdict(_ status: Int, error: String? = nil, retryAfter: String? = nil) -> WebhookScheduler.Verdict {
            WebhookScheduler.verdict(
                status: status, transportError: error, retryAfter: retryAfter,
                location: status == 301 ? "https://new" : nil,
                response: status == 200 ? "" : "{\"error\":\"x\"}", backoffMilliseconds: 500,
                nowUnixSeconds: 1_445_412_480)
        }
        #expect(verdict(200) == .delivered)
        #expect(verdict(204) == .delivered)
        #expect(verdict(0, error: "Connection refused") == .retry(afterMilliseconds: 500, why: "Connection refused"))
        #expect(verdict(503) == .retry(afterMilliseconds: 500, why: #"HTTP 503: {"error":"x"}"#))
        #expect(verdict(408) == .retry(afterMilliseconds: 500, why: #"HTTP 408: {"error":"x"}"#))
        #expect(verdict(429, retryAfter: "3") == .retry(afterMilliseconds: 3_000, why: #"HTTP 429: {"error":"x"}"#))
        #expect(
            verdict(429, retryAfter: "999999") == .retry(afterMilliseconds: 300_000, why: #"HTTP 429: {"error":"x"}"#),
            "capped at 5 minutes")
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480.
        #expect(
            verdict(503, retryAfter: "Wed, 21 Oct 2015 07:28:10 GMT")
                == .retry(afterMilliseconds: 10_000, why: #"HTTP 503: {"error":"x"}"#))
        #expect(
            verdict(503, retryAfter: "soon") == .retry(afterMilliseconds: 500, why: #"HTTP 503: {"error":"x"}"#),
            "unreadable: backoff")
        #expect(verdict(400) == .refused(#"HTTP 400: {"error":"x"}"#))
        #expect(verdict(404) == .refused(#"HTTP 404: {"error":"x"}"#))
        guard case .refused(let moved) = verdict(301) else { Issue.record("a redirect is refused"); return }
        #expect(moved.contains("redirects to https://new"))
        #expect(WebhookScheduler.retryAfterSeconds("Wed, 21 Oct 2015 07:28:00 GMT", nowUnixSeconds: 0) == 1_445_412_480)
    }

    @Test func oneRequestPerKeyInOrderAndOverlapAcrossKeys() {
        var s = WebhookScheduler(concurrency: 3)
        let t0 = Instant(nanoseconds: 1_000_000_000)
        for (ticket, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "d"), (6, "b")] {
            s.accept(UInt64(ticket), key: key)
        }
        #expect(s.due(now: t0) == [1, 3, 4], "heads of a, b, c; d waits for a slot; 2 and 6 wait for their key")
        #expect(s.due(now: t0) == [])
        s.finished(3, .delivered, now: t0)
        #expect(s.due(now: t0) == [5], "one slot: d's head; b's next (6) waits for a slot")
        s.finished(99, .delivered, now: t0)
        #expect(s.due(now: t0) == [], "an answer for something not in flight changes nothing")
        s.finished(1, .retry(afterMilliseconds: 250, why: "HTTP 503"), now: t0)
        #expect(s.due(now: t0) == [6], "the freed slot goes to b; a waits 250 ms and 2 stays behind 1")
        #expect(s.nextRetry == t0 + 250)
        s.finished(4, .delivered, now: t0)
        #expect(s.due(now: t0 + 249) == [])
        #expect(s.due(now: t0 + 250) == [1], "the same event again, before 2")
        #expect(s.backoffMilliseconds(after: 1) == 500)
        s.finished(1, .refused("HTTP 400"), now: t0 + 300)
        #expect(s.due(now: t0 + 300) == [2])
        #expect(s.due(now: t0 + 300) == [], "never twice")
        #expect(s.pending == 3, "2, 5 and 6")
        #expect(s.removeAll() == 3)
        #expect(s.pending == 0 && s.inFlight == 0)
    }

    @Test func backoffDoublesToItsCap() {
        var s = WebhookScheduler(concurrency: 1, maxBackoffMilliseconds: 2_000)
        s.accept(9, key: "k")
        var now = Instant(nanoseconds: 0)
        var delays: [Int] = []
        for _ in 0..<6 {
            #expect(s.due(now: now) == [9])
            let delay = s.backoffMilliseconds(after: 9)
            delays.append(delay)
            s.finished(9, .retry(afterMilliseconds: delay, why: "down"), now: now)
            now = now + delay
        }
        #expect(delays == [250, 500, 1_000, 2_000, 2_000, 2_000])
    }
}
