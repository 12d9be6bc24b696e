import Logging
import OutboxCore

/// A destination as the command line sees it: the options of one `--sink`,
/// how to check them, and how to make its sink. Each destination module
/// exports one (an ArgumentParser `ParsableArguments` that also conforms to
/// this), and the CLI registers it with one line; nothing else in the CLI
/// names a destination's options.
public protocol DestinationOptions: Sendable {
    /// The `--sink` value it answers to: `nats`, `rabbitmq`, …
    static var sinkName: String { get }
    /// What `--dlq-topic` names for it, for `--help`: `a subject`, `a URL`, …
    static var deadLetterMeaning: String { get }
    /// The names of its options that were given (they apply only to its `--sink`).
    var givenOptions: [String] { get }
    /// Checks its options when it is the chosen sink; `deadLetter` is `--dlq-topic`.
    /// Throws an error whose description is the message for the user.
    func check(deadLetter: String?) throws
    /// Checks its options whichever sink is chosen (templates, bounds).
    func checkAlways() throws
    /// Makes (and connects) the sink; blocking, called off the cooperative pool.
    func makeSink(deadLetter: String?, logger: Logger) throws -> any EventSink
}

extension DestinationOptions {
    public func checkAlways() throws {}
}

/// A mistake in a destination's options, said as the user should read it.
public struct DestinationOptionError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
