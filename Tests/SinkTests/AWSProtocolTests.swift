import AWSSink
import Foundation
import OutboxCore
import PGOutput
import Testing

/// The pure parts of the SQS and SNS sinks: mapping, request bodies, answers
/// (captured from moto 5.2's server, which answers as the services do), what a
/// failure means, and where credentials come from.
struct AWSProtocolTests {
    static func event(
        key: String = "o-1", payload: String? = #"{"total": 5}"#, headers: [(String, String)] = [],
        tombstone: Bool = false
    ) -> OutboxEvent {
        OutboxEvent(
            id: "e-1", topic: "orders", key: key, type: "OrderCreated", payload: payload.map { Array($0.utf8) },
            headers: [("id", "e-1"), ("type", "OrderCreated")] + headers, tombstone: tombstone,
            lsn: LSN(rawValue: 0x1_0000_0010), commitTime: PostgresTimestamp(rawValue: 0))
    }

    @Test func anEventBecomesAnEntryWithItsFieldsAsAttributes() {
        let (entry, problem) = AWSMapping.entry(
            for: Self.event(headers: [("tenant", "t9")]), fifo: true, maximumBytes: 262_144)
        #expect(problem == nil)
        #expect(entry.body == #"{"total": 5}"#)
        #expect(entry.group == "o-1" && entry.deduplicationID == "e-1")
        let names = entry.attributes.map(\.name)
        #expect(names == ["key", "id", "type", "tenant", "lsn"])
    }

    @Test func aTombstoneIsNullWithTheTombstoneAttribute() {
        let (entry, problem) = AWSMapping.entry(
            for: Self.event(payload: nil, tombstone: true), fifo: false, maximumBytes: 1_024)
        #expect(problem == nil && entry.body == "null")
        #expect(entry.attributes.contains(AWSAttribute(name: "tombstone", value: "true")))
    }

    @Test func tooLargeOrUnsendableBodiesAreProblems() {
        let big = Self.event(payload: "\"" + String(repeating: "x", count: 2_000) + "\"")
        #expect(
            AWSMapping.entry(for: big, fifo: false, maximumBytes: 1_024).problem?.contains("over the limit of 1024")
                == true)
        let control = Self.event(payload: "\"a\u{1}b\"")
        #expect(AWSMapping.entry(for: control, fifo: false, maximumBytes: 1_024).problem?.contains("U+1") == true)
    }

    @Test func moreThanTenAttributesFoldIntoHeaders() {
        let pairs = (0..<12).map { (name: "h\($0)", value: "v\($0)") }
        let attributes = AWSMapping.attributes(pairs)
        #expect(attributes.count == 10)
        #expect(attributes.last?.name == "headers")
        let folded = try? JSONSerialization.jsonObject(with: Data(attributes.last!.value.utf8)) as? [String: String]
        #expect(folded?.count == 12 && folded?["h11"] == "v11")
    }

    @Test func attributeNamesAreMadeValidAndEmptyValuesLeftOut() {
        let attributes = AWSMapping.attributes([
            ("trace id", "x"), ("AWS.thing", "y"), ("a..b", "z"), ("empty", ""), (".dot.", "w"),
        ])
        #expect(attributes.map(\.name) == ["trace_id", "x-AWS.thing", "a._b", "_dot_"])
    }

    @Test func groupAndDeduplicationIdsAreValidOrAStableHash() {
        #expect(AWSMapping.identifier("order-42") == "order-42")
        let long = String(repeating: "k", count: 200)
        #expect(AWSMapping.identifier(long).hasPrefix("h-") && AWSMapping.identifier(long).count == 34)
        #expect(AWSMapping.identifier(long) == AWSMapping.identifier(long))
        #expect(AWSMapping.identifier("ключ") != AWSMapping.identifier("ключ2"))
        #expect(AWSMapping.identifier("") != "")
    }

    @Test func theSQSBatchIsJSONWithPositionsAsIds() throws {
        let (entry, _) = AWSMapping.entry(for: Self.event(), fifo: true, maximumBytes: 262_144)
        var plain = entry
        plain.group = nil
        plain.deduplicationID = nil
        let body = AWSBatchRequest.sqs(
            queueURL: "https://sqs.eu-west-1.amazonaws.com/1/q.fifo", entries: [entry, plain])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        let entries = try #require(object["Entries"] as? [[String: Any]])
        #expect(entries.map { $0["Id"] as? String } == ["0", "1"])
        #expect(entries[0]["MessageBody"] as? String == #"{"total": 5}"#)
        #expect(entries[0]["MessageGroupId"] as? String == "o-1" && entries[1]["MessageGroupId"] == nil)
        let attributes = try #require(entries[0]["MessageAttributes"] as? [String: [String: String]])
        #expect(attributes["key"] == ["DataType": "String", "StringValue": "o-1"])
    }

    @Test func theSNSBatchIsFormEncoded() {
        let entry = AWSEntry(
            body: "a b&c", attributes: [AWSAttribute(name: "key", value: "k/1")], group: "g", deduplicationID: "d")
        let body = String(decoding: AWSBatchRequest.sns(topicARN: "arn:aws:sns:r:1:t", entries: [entry]), as: UTF8.self)
        #expect(body.hasPrefix("Action=PublishBatch&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Ar%3A1%3At&"))
        #expect(body.contains("PublishBatchRequestEntries.member.1.Message=a+b%26c"))
        #expect(body.contains("PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue=k%2F1"))
        #expect(body.contains("PublishBatchRequestEntries.member.1.MessageGroupId=g"))
    }

    // Answers captured from moto 5.2.1's server.

    @Test func sqsAnswersAreRead() {
        let ok =
            #"{"Successful": [{"Id": "0", "MessageId": "59eb", "MD5OfMessageBody": "5d41"}], "Failed": [{"Id": "1", "SenderFault": true, "Code": "InvalidParameterValue", "Message": "too long"}, {"Id": "2", "SenderFault": false, "Code": "InternalError", "Message": "retry"}]}"#
        #expect(
            AWSAnswer.sqs(status: 200, body: ok)
                == .batch(
                    successful: [0],
                    failed: [
                        .init(index: 1, code: "InvalidParameterValue", message: "too long", senderFault: true),
                        .init(index: 2, code: "InternalError", message: "retry", senderFault: false),
                    ]))
        let missing =
            #"{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "The specified queue does not exist."}"#
        #expect(
            AWSAnswer.sqs(status: 400, body: missing)
                == .error(code: "QueueDoesNotExist", message: "The specified queue does not exist."))
        let auth =
            #"<?xml version="1.0" encoding="utf-8"?><ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#
        #expect(
            AWSAnswer.sqs(status: 403, body: auth)
                == .error(
                    code: "SignatureDoesNotMatch",
                    message: "The request signature we calculated does not match the signature you provided."))
    }

    @Test func snsAnswersAreRead() {
        let ok =
            #"<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishBatchResult><Successful><member><Id>0</Id><MessageId>38f3</MessageId></member><member><Id>1</Id><MessageId>adf1</MessageId></member></Successful><Failed/></PublishBatchResult></PublishBatchResponse>"#
        #expect(AWSAnswer.query(status: 200, body: ok) == .batch(successful: [0, 1], failed: []))
        let failed =
            #"<PublishBatchResponse><PublishBatchResult><Successful/><Failed><member><Id>0</Id><Code>InvalidParameter</Code><Message>a &amp; b</Message><SenderFault>true</SenderFault></member></Failed></PublishBatchResult></PublishBatchResponse>"#
        #expect(
            AWSAnswer.query(status: 200, body: failed)
                == .batch(
                    successful: [],
                    failed: [.init(index: 0, code: "InvalidParameter", message: "a & b", senderFault: true)]))
        let missing =
            #"<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type><Code>NotFound</Code><Message>Topic does not exist</Message><message>Topic does not exist</message></Error></ErrorResponse>"#
        #expect(
            AWSAnswer.query(status: 404, body: missing) == .error(code: "NotFound", message: "Topic does not exist"))
    }

    @Test func webIdentityCredentialsAreRead() throws {
        let answer =
            #"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIARZPUZDIKDAZPY62A</AccessKeyId><SecretAccessKey>fpUVoPpa35kX/mLhxw</SecretAccessKey><SessionToken>FQoGZXIvYXdzEBYaDA6G+r0x=</SessionToken><Expiration>2026-12-06T13:33:59.746452Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#
        let credentials = try AWSWebIdentity.credentials(status: 200, body: answer).get()
        #expect(
            credentials.accessKeyID == "ASIARZPUZDIKDAZPY62A" && credentials.sessionToken == "FQoGZXIvYXdzEBYaDA6G+r0x="
        )
        let expiration = try #require(credentials.expiration)
        #expect(abs(expiration.timeIntervalSince1970 - 1_796_564_039.746) < 0.01)
        #expect(!"\(credentials)".contains("fpUVoPpa35kX"), "the secret never shows")
        let issued = expiration.addingTimeInterval(-3_600)
        #expect(credentials.refreshTime(issuedAt: issued) == expiration.addingTimeInterval(-300))
        #expect(
            credentials.refreshTime(issuedAt: expiration.addingTimeInterval(-6)) == expiration.addingTimeInterval(-2))
        if case .failure(let why) = AWSWebIdentity.credentials(
            status: 400,
            body:
                "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>bad</Message></Error></ErrorResponse>")
        {
            #expect(why.description.contains("InvalidIdentityToken: bad"))
        } else {
            Issue.record("an STS error is a failure")
        }
    }

    @Test func whatAFailedRequestMeans() {
        #expect(AWSVerdict.of(status: 400, code: "ThrottlingException") == .retry)
        #expect(AWSVerdict.of(status: 400, code: "RequestThrottled") == .retry)
        #expect(AWSVerdict.of(status: 503, code: "HTTP 503") == .retry)
        #expect(AWSVerdict.of(status: 500, code: "InternalError") == .retry)
        #expect(AWSVerdict.of(status: 400, code: "ExpiredToken") == .lostLink)
        #expect(AWSVerdict.of(status: 403, code: "SignatureDoesNotMatch") == .lostLink)
        #expect(AWSVerdict.of(status: 403, code: "AccessDenied") == .fatal)
        #expect(AWSVerdict.of(status: 403, code: "AuthorizationError") == .fatal)
        #expect(AWSVerdict.of(status: 400, code: "QueueDoesNotExist") == .fatal)
        #expect(AWSVerdict.of(status: 404, code: "NotFound") == .fatal)
        #expect(AWSVerdict.of(status: 400, code: "InvalidParameterValue") == .refuse)
        #expect(AWSVerdict.of(status: 400, code: "BatchRequestTooLong") == .refuse)
    }

    @Test func credentialsComeFromTheEnvironmentThenAProfileThenWebIdentity() throws {
        let file =
            "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n[prod]\naws_access_key_id=AKPROD\naws_secret_access_key=s2\naws_session_token=tok\n"
        let config = "[profile cfg]\naws_access_key_id = AKCFG\naws_secret_access_key = s3\n"
        let env = try AWSCredentialSource.resolve(
            environment: ["AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "s0", "AWS_PROFILE": "prod"],
            credentialsFile: file, configFile: nil
        ).get()
        #expect(env == .environment(AWSCredentials(accessKeyID: "AKENV", secretAccessKey: "s0")))
        let prod = try AWSCredentialSource.resolve(
            environment: ["AWS_PROFILE": "prod", "AWS_ROLE_ARN": "r", "AWS_WEB_IDENTITY_TOKEN_FILE": "/t"],
            credentialsFile: file, configFile: nil
        ).get()
        #expect(
            prod
                == .profile(
                    name: "prod", AWSCredentials(accessKeyID: "AKPROD", secretAccessKey: "s2", sessionToken: "tok")))
        let fromConfig = try AWSCredentialSource.resolve(
            environment: ["AWS_PROFILE": "cfg"], credentialsFile: file, configFile: config
        ).get()
        #expect(fromConfig == .profile(name: "cfg", AWSCredentials(accessKeyID: "AKCFG", secretAccessKey: "s3")))
        let web = try AWSCredentialSource.resolve(
            environment: ["AWS_ROLE_ARN": "arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"],
            credentialsFile: nil, configFile: nil
        ).get()
        #expect(
            web
                == .webIdentity(
                    roleARN: "arn:aws:iam::1:role/r", tokenFile: "/var/run/token", sessionName: "outbox-relay"))
        if case .failure(let missing) = AWSCredentialSource.resolve(
            environment: [:], credentialsFile: nil, configFile: nil)
        {
            #expect(missing.description.contains("no AWS credentials"))
        } else {
            Issue.record("no credentials is a failure")
        }
        if case .failure(let half) = AWSCredentialSource.resolve(
            environment: ["AWS_ACCESS_KEY_ID": "AK"], credentialsFile: nil, configFile: nil)
        {
            #expect(half.description.contains("AWS_SECRET_ACCESS_KEY is not"))
        } else {
            Issue.record("a key without a secret is a failure")
        }
    }

    @Test func targetsAreCheckedAndTheirRegionRead() {
        #expect(AWSTarget.queueProblem("https://sqs.eu-west-1.amazonaws.com/123/q.fifo") == nil)
        #expect(AWSTarget.queueProblem("orders") != nil)
        #expect(AWSTarget.topicProblem("arn:aws:sns:eu-west-1:123:t") == nil)
        #expect(AWSTarget.topicProblem("arn:aws:sqs:eu-west-1:123:t") != nil)
        #expect(AWSTarget.region(of: "https://sqs.eu-west-1.amazonaws.com/123/q") == "eu-west-1")
        #expect(AWSTarget.region(of: "arn:aws:sns:ap-south-1:123:t") == "ap-south-1")
        #expect(AWSTarget.region(of: "http://127.0.0.1:4566/123/q") == nil)
    }
}
