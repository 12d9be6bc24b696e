import ArgumentParser
import Foundation
import OutboxCore

/// One configuration surface: every option of every command can be given as
/// a flag, as an environment variable, or in a config file. Precedence:
/// command line, then environment, then config file, then the default.
///
/// - Environment: `OUTBOX_RELAY_<OPTION>` (`--kafka-brokers` →
///   `OUTBOX_RELAY_KAFKA_BROKERS`), and `OUTBOX_RELAY_<OPTION>_FILE` to read the
///   value from a file (secrets mounted by an orchestrator). Repeatable options
///   take one value per line. Flags take true/false.
/// - Config file (`--config PATH` or `OUTBOX_RELAY_CONFIG`): `option = value`
///   lines, `#` comments, repeated keys for repeatable options, `option_file =
///   PATH` to read a value from a file.
/// - `-X` librdkafka properties: `OUTBOX_RELAY_KAFKA_PROPERTY` (one per line),
///   `kafka-property` in the file, or a Java-style properties file through
///   `OUTBOX_RELAY_KAFKA_PROPERTIES_FILE` / `kafka-properties-file`.
///
/// The merge happens before parsing: values from the environment and the file
/// become command-line arguments, so ArgumentParser validates all of them the
/// same way; `origins` remembers where each came from for error messages.
/// Values are never printed (they may be secrets).
struct ConfigurationSources {
    enum Kind { case value, flag, repeated }
    struct Option {
        var name: String
        var kind: Kind
        /// The flag on the command line (`-X` for kafka-property).
        var flag: String { name == "kafka-property" ? "-X" : "--" + name }
        var environment: String { "OUTBOX_RELAY_" + name.uppercased().replacingOccurrences(of: "-", with: "_") }
    }

    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    /// The options a command declares, read from ArgumentParser's own
    /// description of it — the JSON its public `--experimental-dump-help` flag
    /// prints, obtained through the public `parseAsRoot` and `fullMessage(for:)`
    /// — so this list can never drift from the flags and `--help`. `-X` (short
    /// only) is `kafka-property`. A description it cannot read is an error, never
    /// an empty list: environment and file configuration must not stop silently.
    static func options(of name: String, root: any ParsableCommand.Type) throws -> [Option] {
        var dump = ""
        do { _ = try root.parseAsRoot([name, "--experimental-dump-help"]) } catch {
            dump = root.fullMessage(for: error)
        }
        guard
            let json = try? JSONSerialization.jsonObject(with: Data(dump.utf8)) as? [String: Any],
            let info = json["command"] as? [String: Any], let arguments = info["arguments"] as? [[String: Any]]
        else {
            throw Problem(
                description:
                    "cannot read the options of `\(name)` from ArgumentParser's --experimental-dump-help; environment and config-file settings would be ignored"
            )
        }
        return arguments.compactMap { argument in
            let names = (argument["names"] as? [[String: Any]]) ?? []
            let long = names.first { $0["kind"] as? String == "long" }?["name"] as? String
            let short = names.first { $0["kind"] as? String == "short" }?["name"] as? String
            guard let name = long ?? (short == "X" ? "kafka-property" : nil), name != "help" else { return nil }
            switch argument["kind"] as? String {
            case "flag": return Option(name: name, kind: .flag)
            case "option":
                return Option(name: name, kind: argument["isRepeating"] as? Bool == true ? .repeated : .value)
            default: return nil
            }
        }
    }

    /// The subcommands and, on demand, their options. Describing a command
    /// costs ArgumentParser a full pass over its declarations, so only the
    /// command being run is described — every command only when a config file
    /// (shared by all of them) has to be checked for unknown keys.
    struct Catalog {
        var names: [String]
        var describe: (String) throws -> [Option]

        init(of root: any ParsableCommand.Type) {
            names = root.configuration.subcommands.map {
                $0.configuration.commandName ?? String(describing: $0).lowercased()
            }
            describe = { try ConfigurationSources.options(of: $0, root: root) }
        }

        /// Every command's options by name.
        func all() throws -> [String: [Option]] {
            var commands: [String: [Option]] = [:]
            for name in names { commands[name] = try describe(name) }
            return commands
        }
    }

    /// The merged command line, and where each injected option came from.
    var arguments: [String]
    var origins: [String: String] = [:]
    /// Keys of an imported Debezium configuration that change nothing about the records.
    var debeziumIgnored: [String] = []

    init(
        arguments input: [String], environment: [String: String], catalog: Catalog,
        readFile: (String) throws -> String = Self.readFile
    ) throws {
        var arguments = input
        // --config PATH (or --config=PATH) is ours, not the command's.
        var configPath = environment["OUTBOX_RELAY_CONFIG"]
        if let index = arguments.firstIndex(where: { $0 == "--config" || $0.hasPrefix("--config=") }) {
            if arguments[index] == "--config" {
                guard index + 1 < arguments.count else { throw Problem(description: "--config needs a path") }
                configPath = arguments[index + 1]
                arguments.removeSubrange(index...(index + 1))
            } else {
                configPath = String(arguments[index].dropFirst("--config=".count))
                arguments.remove(at: index)
            }
        }
        // --debezium-config PATH likewise: a Debezium connector configuration, the lowest source.
        var debeziumPath = environment["OUTBOX_RELAY_DEBEZIUM_CONFIG"]
        if let index = arguments.firstIndex(where: { $0 == "--debezium-config" || $0.hasPrefix("--debezium-config=") })
        {
            if arguments[index] == "--debezium-config" {
                guard index + 1 < arguments.count else { throw Problem(description: "--debezium-config needs a path") }
                debeziumPath = arguments[index + 1]
                arguments.removeSubrange(index...(index + 1))
            } else {
                debeziumPath = String(arguments[index].dropFirst("--debezium-config=".count))
                arguments.remove(at: index)
            }
        }
        self.arguments = arguments
        guard let command = arguments.first, catalog.names.contains(command) else { return }
        // Every command's options only when a config file (shared by all of them) is checked for unknown keys.
        let everyCommand = try configPath.map { _ in try catalog.all() }
        let options = try everyCommand?[command] ?? catalog.describe(command)
        var debezium: [String: [String]] = [:]
        if let debeziumPath {
            let text: String
            do { text = try readFile(debeziumPath) } catch {
                throw Problem(description: "cannot read Debezium configuration \(debeziumPath): \(error)")
            }
            let translated: DebeziumConfig
            do { translated = DebeziumConfig.translate(try DebeziumConfig.pairs(text)) } catch {
                throw Problem(description: "Debezium configuration \(debeziumPath): \(error)")
            }
            if !translated.problems.isEmpty {
                throw Problem(
                    description: "Debezium configuration \(debeziumPath) has settings the relay cannot honour:\n"
                        + translated.problems.map { "  - \($0)" }.joined(separator: "\n"))
            }
            for (name, value) in translated.options { debezium[name, default: []].append(value) }
            debeziumIgnored = translated.ignored
        }

        var file: [(key: String, value: String, line: Int)] = []
        if let configPath {
            let text: String
            do { text = try readFile(configPath) } catch {
                throw Problem(description: "cannot read config file \(configPath): \(error)")
            }
            file = try Self.parse(text, path: configPath)
            let all = everyCommand?.values.flatMap { $0 } ?? []
            let known = Set(all.map(\.name) + ["kafka-properties"])
            let repeatable = Set(all.filter { $0.kind == .repeated }.map(\.name) + ["kafka-properties"])
            var firstLine: [String: Int] = [:]
            for entry in file {
                let key = entry.key.hasSuffix("-file") ? String(entry.key.dropLast(5)) : entry.key
                if !known.contains(key) {
                    throw Problem(
                        description: "config file \(configPath) line \(entry.line): unknown option \"\(entry.key)\"")
                }
                // A repeated key of a single-valued option is a mistake, not "the last one wins".
                if !repeatable.contains(key), let earlier = firstLine[key] {
                    throw Problem(
                        description:
                            "config file \(configPath) lines \(earlier) and \(entry.line) both set \"\(key)\", which takes one value"
                    )
                }
                firstLine[key] = firstLine[key] ?? entry.line
            }
        }

        var injected: [String] = []
        for option in options {
            if Self.given(option, in: arguments) { continue }
            var values: [String] = []
            var origin = ""
            if let value = environment[option.environment] {
                values = option.kind == .repeated ? value.split(whereSeparator: \.isNewline).map(String.init) : [value]
                origin = "environment variable \(option.environment)"
            } else if let path = environment[option.environment + "_FILE"] {
                values = try Self.fileValues(path, option: option, readFile: readFile)
                origin = "environment variable \(option.environment)_FILE"
            } else if option.name == "kafka-property", let path = environment["OUTBOX_RELAY_KAFKA_PROPERTIES_FILE"] {
                values = try Self.fileValues(path, option: option, readFile: readFile)
                origin = "environment variable OUTBOX_RELAY_KAFKA_PROPERTIES_FILE"
            } else if let configPath {
                let direct = file.filter { $0.key == option.name }
                let fromFile = file.filter {
                    $0.key == option.name + "-file"
                        || (option.name == "kafka-property" && $0.key == "kafka-properties-file")
                }
                if !direct.isEmpty {
                    values = option.kind == .repeated ? direct.map(\.value) : [direct.last!.value]
                    origin = "config file \(configPath) line \(direct.last!.line)"
                } else if let entry = fromFile.last {
                    values = try Self.fileValues(entry.value, option: option, readFile: readFile)
                    origin = "config file \(configPath) line \(entry.line)"
                }
            }
            if origin.isEmpty, let path = debeziumPath, let imported = debezium[option.name] {
                values = option.kind == .repeated ? imported : [imported.last!]
                origin = "Debezium configuration \(path)"
            }
            guard !origin.isEmpty else { continue }
            for value in values { try Self.checkControlCharacters(value, origin: origin) }
            switch option.kind {
            case .flag:
                switch values.first?.lowercased() ?? "" {
                case "true", "1", "yes", "on": injected.append(option.flag)
                case "false", "0", "no", "off", "": break
                default: throw Problem(description: "\(origin): \(option.flag) takes true or false")
                }
            case .value:
                injected += [option.flag, values.first ?? ""]
            case .repeated:
                for value in values { injected += [option.flag, value] }
            }
            origins[option.flag] = origin
        }
        // After the subcommand, before the user's own arguments (which win on repeats).
        self.arguments = [command] + injected + arguments.dropFirst()
    }

    /// A file's text, without a UTF-8 byte order mark (editors on Windows write one).
    static func readFile(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw Problem(description: "not readable") }
        let text = String(decoding: data, as: UTF8.self)
        return text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text
    }

    /// Control characters (NUL and the rest of C0 but tab) make no sense in a
    /// value and can hide what it is: refused, naming where, never the value.
    static func checkControlCharacters(_ value: String, origin: String) throws {
        if value.unicodeScalars.contains(where: { $0.value < 32 && $0 != "\t" || $0.value == 127 }) {
            throw Problem(description: "\(origin): the value contains a control character (NUL, a line break, …)")
        }
    }

    /// A value read from a file: the whole file without its trailing newline;
    /// for repeatable options (and properties files) one value per non-comment line.
    static func fileValues(_ path: String, option: Option, readFile: (String) throws -> String) throws -> [String] {
        let text: String
        do { text = try readFile(path) } catch {
            throw Problem(description: "cannot read \(path) for \(option.flag): \(error)")
        }
        if option.kind == .repeated {
            return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty && !$0.hasPrefix("#")
            }
        }
        var value = Substring(text)
        while let last = value.unicodeScalars.last, last == "\n" || last == "\r" {
            value = Substring(value.unicodeScalars.dropLast())
        }
        return [String(value)]
    }

    static func given(_ option: Option, in arguments: [String]) -> Bool {
        if option.kind == .repeated {
            return arguments.contains(option.flag) || arguments.contains { $0.hasPrefix(option.flag + "=") }
        }
        return arguments.contains { $0 == option.flag || $0.hasPrefix(option.flag + "=") }
    }

    /// `key = value` lines; keys may use `-` or `_`; values may be double-quoted.
    static func parse(_ text: String, path: String) throws -> [(key: String, value: String, line: Int)] {
        var entries: [(key: String, value: String, line: Int)] = []
        // A byte order mark and CRLF line ends (files written on Windows) are accepted.
        let text = (text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text).replacingOccurrences(
            of: "\r\n", with: "\n")
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw Problem(description: "config file \(path) line \(number + 1): expected option = value")
            }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "-")
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast())
            }
            try checkControlCharacters(value, origin: "config file \(path) line \(number + 1)")
            entries.append((key, value, number + 1))
        }
        return entries
    }

    /// The origin of the option an error message names, if it did not come from the command line.
    func originNote(for message: String) -> String {
        for (flag, origin) in origins.sorted(by: { $0.key.count > $1.key.count }) where message.contains(flag) {
            return " (\(flag) was set by \(origin))"
        }
        return ""
    }
}
