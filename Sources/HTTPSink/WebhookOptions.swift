import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// `--sink http`: its options, their checks, and its sink.
public struct WebhookOptions: ParsableArguments, DestinationOptions {
    public static let sinkName = "http"
    public static let deadLetterMeaning = "a URL"

    @Option(help: ArgumentHelp("The URL each event is POSTed to as JSON (with --sink http).", valueName: "http[s]://…"))
    public var webhookUrl: String?

    @Option(
        help: ArgumentHelp(
            "A file holding the key for X-Outbox-Signature-256 (HMAC-SHA256 of the body; with --sink http). Never logged.",
            valueName: "path"))
    public var webhookSecretFile: String?

    @Option(
        help: ArgumentHelp(
            "An extra request header, e.g. \"Authorization: Bearer …\" (repeatable; with --sink http). Values are never logged.",
            valueName: "Name: value"))
    public var webhookHeader: [String] = []

    @Option(
        help: ArgumentHelp(
            "Requests in flight at once, across keys; one per key at a time (with --sink http).", valueName: "n"))
    public var webhookConcurrency = 16

    @Option(help: ArgumentHelp("Timeout of one request (with --sink http).", valueName: "ms"))
    public var webhookTimeoutMs = 10_000

    @Option(help: ArgumentHelp("CA certificates (PEM) for https:// (with --sink http).", valueName: "path"))
    public var webhookCaFile: String?

    public init() {}

    public var givenOptions: [String] {
        (webhookUrl != nil || webhookSecretFile != nil || !webhookHeader.isEmpty || webhookCaFile != nil)
            ? ["--webhook-url", "--webhook-secret-file", "--webhook-header", "--webhook-ca-file"] : []
    }

    public func checkAlways() throws {
        for header in webhookHeader {
            let parts = header.split(separator: ":", maxSplits: 1)
            if parts.count != 2 || parts[0].isEmpty || parts[0].contains(" ") || header.contains("\n")
                || header.contains("\r")
            {
                throw DestinationOptionError("--webhook-header takes \"Name: value\", got \"\(parts.first ?? "")…\"")
            }
        }
        if !(1...1024).contains(webhookConcurrency) {
            throw DestinationOptionError("--webhook-concurrency must be 1 to 1024")
        }
        if webhookTimeoutMs < 100 { throw DestinationOptionError("--webhook-timeout-ms must be at least 100") }
    }

    public func check(deadLetter: String?) throws {
        guard let url = webhookUrl, url.hasPrefix("http://") || url.hasPrefix("https://") else {
            throw DestinationOptionError("--sink http needs --webhook-url http://… or https://…")
        }
        if let deadLetter, !(deadLetter.hasPrefix("http://") || deadLetter.hasPrefix("https://")) {
            throw DestinationOptionError("--dlq-topic with --sink http is a URL (http:// or https://)")
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        var http = HTTPSinkConfig(url: webhookUrl!)
        http.deadLetterURL = deadLetter
        http.headers = webhookHeader
        http.concurrency = webhookConcurrency
        http.timeoutMilliseconds = webhookTimeoutMs
        http.caFile = webhookCaFile
        if let file = webhookSecretFile {
            guard let key = FileManager.default.contents(atPath: file), !key.isEmpty else {
                throw SinkError("--webhook-secret-file \(file) cannot be read or is empty")
            }
            // A trailing newline (echo secret > file) is not part of the key.
            var bytes = [UInt8](key)
            while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
            http.signingKey = bytes
        }
        return try HTTPSink(config: http, logger: logger)
    }
}
