import ArgumentParser
import Foundation
import Logging
import OutboxCore
import RelayIO

/// Where an SQS queue URL or SNS topic ARN is, and which region it names. Pure.
public enum AWSTarget {
    /// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (or a compatible service's URL).
    public static func queueProblem(_ url: String) -> String? {
        guard let parsed = URL(string: url), let scheme = parsed.scheme, ["http", "https"].contains(scheme),
            parsed.host != nil, parsed.path.split(separator: "/").count >= 2
        else {
            return "--sqs-queue-url must be a queue URL, https://sqs.REGION.amazonaws.com/ACCOUNT/NAME, got \"\(url)\""
        }
        return nil
    }

    /// `arn:PARTITION:sns:REGION:ACCOUNT:NAME`.
    public static func topicProblem(_ arn: String) -> String? {
        let parts = arn.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0] == "arn", parts[2] == "sns", !parts[3].isEmpty, !parts[5].isEmpty else {
            return "--sns-topic-arn must be a topic ARN, arn:aws:sns:REGION:ACCOUNT:NAME, got \"\(arn)\""
        }
        return nil
    }

    /// The region a queue URL's host (`sqs.REGION.amazonaws.com`) or a topic ARN names.
    public static func region(of target: String) -> String? {
        if target.hasPrefix("arn:") {
            let parts = target.split(separator: ":", omittingEmptySubsequences: false)
            return parts.count > 3 && !parts[3].isEmpty ? String(parts[3]) : nil
        }
        guard let host = URL(string: target)?.host else { return nil }
        let labels = host.split(separator: ".")
        guard labels.count >= 4, labels[0] == "sqs",
            host.hasSuffix(".amazonaws.com") || host.hasSuffix(".amazonaws.com.cn")
        else { return nil }
        return String(labels[1])
    }
}

/// The options `--sink sqs` and `--sink sns` share (`--aws-*`), and each one's target.
public struct AWSOptions: ParsableArguments, Sendable {
    @Option(
        help: ArgumentHelp(
            "The SQS queue URL (with --sink sqs); a name ending in .fifo keeps per-key order (MessageGroupId = key) and drops redeliveries (MessageDeduplicationId = event id).",
            valueName: "url"))
    public var sqsQueueUrl: String?

    @Option(
        help: ArgumentHelp(
            "The SNS topic ARN (with --sink sns); a name ending in .fifo keeps per-key order and drops redeliveries, as for SQS.",
            valueName: "arn"))
    public var snsTopicArn: String?

    @Option(
        help: ArgumentHelp(
            "The AWS region (with --sink sqs or sns); default AWS_REGION, AWS_DEFAULT_REGION, or the one the queue URL or topic ARN names.",
            valueName: "region"))
    public var awsRegion: String?

    @Option(
        help: ArgumentHelp(
            "The service endpoint instead of AWS's (with --sink sqs or sns), for tests and compatible services; default AWS_ENDPOINT_URL_SQS or _SNS, then AWS_ENDPOINT_URL. Used for STS too unless AWS_ENDPOINT_URL_STS is set.",
            valueName: "url"))
    public var awsEndpointUrl: String?

    @Option(help: ArgumentHelp("CA certificates (PEM) for HTTPS to AWS (with --sink sqs or sns).", valueName: "path"))
    public var awsCaFile: String?

    @Option(
        help: ArgumentHelp(
            "The largest message, body and attributes, the queue or topic takes (with --sink sqs or sns); larger events are refused at once (dead-letter queue or stop).",
            valueName: "bytes"))
    public var awsMaxMessageBytes = 262_144

    @Option(
        help: ArgumentHelp(
            "Batches (of up to 10 messages) in flight at once (with --sink sqs or sns); on FIFO queues and topics never two messages of one group.",
            valueName: "n"))
    public var awsMaxInFlight = 8

    @Option(
        help: ArgumentHelp(
            "How long one request may take before the link is taken as lost and its messages go again (with --sink sqs or sns).",
            valueName: "ms"))
    public var awsRequestTimeoutMs = 10_000

    @Option(
        help: ArgumentHelp(
            "How long web-identity credentials are asked for (STS DurationSeconds, with --sink sqs or sns); they are renewed before they expire.",
            valueName: "seconds"))
    public var awsSessionDurationS = 3_600

    public init() {}

    var sqs: SQSDestination { SQSDestination(options: self) }
    var sns: SNSDestination { SNSDestination(options: self) }

    func checkAlways() throws {
        if awsMaxMessageBytes < 1_024 { throw DestinationOptionError("--aws-max-message-bytes must be at least 1024") }
        if !(1...64).contains(awsMaxInFlight) { throw DestinationOptionError("--aws-max-in-flight must be 1 to 64") }
        if awsRequestTimeoutMs < 100 { throw DestinationOptionError("--aws-request-timeout-ms must be at least 100") }
        if !(5...43_200).contains(awsSessionDurationS) {
            throw DestinationOptionError("--aws-session-duration-s must be 5 to 43200")
        }
    }

    func makeSink(service: AWSService, target: String, deadLetter: String?, logger: Logger) throws -> any EventSink {
        let environment = ProcessInfo.processInfo.environment
        func env(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        guard
            let region = awsRegion ?? env("AWS_REGION") ?? env("AWS_DEFAULT_REGION") ?? AWSTarget.region(of: target)
        else {
            throw DestinationOptionError(
                "--sink \(service.rawValue): no AWS region; set --aws-region or AWS_REGION")
        }
        let suffix = service == .sqs ? "SQS" : "SNS"
        let endpoint =
            awsEndpointUrl ?? env("AWS_ENDPOINT_URL_" + suffix) ?? env("AWS_ENDPOINT_URL")
            ?? "https://\(service.rawValue).\(region).amazonaws.com/"
        let sts =
            env("AWS_ENDPOINT_URL_STS") ?? awsEndpointUrl ?? env("AWS_ENDPOINT_URL")
            ?? "https://sts.\(region).amazonaws.com/"
        var config = AWSSinkConfig(
            service: service, target: target, region: region, endpointURL: endpoint, stsURL: sts,
            environment: environment)
        config.deadLetterTarget = deadLetter
        config.caFile = awsCaFile
        config.maximumMessageBytes = awsMaxMessageBytes
        config.maximumRequestsInFlight = awsMaxInFlight
        config.requestTimeoutMilliseconds = awsRequestTimeoutMs
        config.sessionDurationSeconds = awsSessionDurationS
        return try AWSSink(config: config, logger: logger)
    }
}

/// `--sink sqs`.
public struct SQSDestination: DestinationOptions {
    public static let sinkName = "sqs"
    public static let deadLetterMeaning = "an SQS queue URL"
    let options: AWSOptions

    public var givenOptions: [String] { options.sqsQueueUrl != nil ? ["--sqs-queue-url"] : [] }
    public func checkAlways() throws { try options.checkAlways() }

    public func check(deadLetter: String?) throws {
        guard let url = options.sqsQueueUrl, !url.isEmpty else {
            throw DestinationOptionError("--sink sqs needs --sqs-queue-url")
        }
        if let problem = AWSTarget.queueProblem(url) { throw DestinationOptionError(problem) }
        if let deadLetter, let problem = AWSTarget.queueProblem(deadLetter) {
            throw DestinationOptionError(problem.replacingOccurrences(of: "--sqs-queue-url", with: "--dlq-topic"))
        }
        if options.snsTopicArn != nil { throw DestinationOptionError("--sns-topic-arn applies only to --sink sns") }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        try options.makeSink(service: .sqs, target: options.sqsQueueUrl!, deadLetter: deadLetter, logger: logger)
    }
}

/// `--sink sns`.
public struct SNSDestination: DestinationOptions {
    public static let sinkName = "sns"
    public static let deadLetterMeaning = "an SNS topic ARN"
    let options: AWSOptions

    public var givenOptions: [String] { options.snsTopicArn != nil ? ["--sns-topic-arn"] : [] }
    public func checkAlways() throws {}

    public func check(deadLetter: String?) throws {
        guard let arn = options.snsTopicArn, !arn.isEmpty else {
            throw DestinationOptionError("--sink sns needs --sns-topic-arn")
        }
        if let problem = AWSTarget.topicProblem(arn) { throw DestinationOptionError(problem) }
        if let deadLetter, let problem = AWSTarget.topicProblem(deadLetter) {
            throw DestinationOptionError(problem.replacingOccurrences(of: "--sns-topic-arn", with: "--dlq-topic"))
        }
    }

    public func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink {
        try options.makeSink(service: .sns, target: options.snsTopicArn!, deadLetter: deadLetter, logger: logger)
    }
}

extension AWSOptions {
    /// The two destinations these options serve, for the CLI's list.
    public var destinations: [any DestinationOptions] { [sqs, sns] }
}
